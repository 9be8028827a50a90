"""Secrets out of provider text: whatever a provider (or the original vendor) writes back may
echo the key it was sent (`Incorrect API key provided: Bearer sk-...`, as OpenAI-compatible
servers do), and that text goes on to the client, the usage database, mitmweb's flow comment and
the log. A `SecretScrubber` replaces every secret detour knows, whole or in part, before it does.

One scrubber is built per configuration (start and each reload) from the resolved secrets; a
call adds the client's own credentials to it only when it has provider text to clean.
"""

import re
from collections.abc import Iterable
from urllib.parse import unquote, urlsplit

MASK = "[redacted]"
# a secret shorter than this cannot be told from ordinary text (and is no real key): left alone
MIN_SECRET = 8
# an echoed fragment this long or longer of a key's own part is scrubbed: a provider that shows
# the first or last characters of a key, or cuts it off, still gives away too much. Shorter
# masks (`sk-abc...wxyz`) are left, as the vendors print them themselves. A fragment that reads
# as plain words ("no-key-required", "Production": made-up keys are made of them) is scrubbed
# only from LONG_FRAGMENT characters on, and a key's public prefix (its vendor's `sk-ant-api03-`,
# an auth scheme, a JWT's header: the same in everyone's keys) never counts.
MIN_FRAGMENT = 8
LONG_FRAGMENT = 16
PUBLIC_PREFIX = re.compile(
    r"(?:(?:Bearer|Basic|Token) +)?"
    r"(?:sk-ant-[a-z]+\d\d-|sk-(?:proj|svcacct|admin|or-v\d)-|sk-|AIza|ya29\.|gh[pousr]_|"
    r"github_pat_|xox[abprs]-|eyJ[\w-]*\.)?")
_SEPARATORS = str.maketrans("", "", "-_.:/ ")
# headers that carry a client's credentials (mitmweb and saved flows show them redacted)
CREDENTIAL_HEADERS = ("authorization", "x-api-key", "x-goog-api-key", "proxy-authorization",
                      "cookie")


class SecretScrubber:
    """Replaces each occurrence of a known secret, or of a fragment of its own part (past its
    public prefix) at least `MIN_FRAGMENT` characters long and not plain words, or
    `LONG_FRAGMENT` long, with `MASK`. One compiled regex finds a candidate (every window of
    `MIN_FRAGMENT` characters of every secret, as a trie: a flat alternation of a thousand
    windows scans 20x slower); the match is then grown both ways as far as the text goes on
    agreeing with the secret, so a whole key becomes one mask, and judged by what it covers.

    About 1 us per character of text for a dozen long keys: meant for error text, comments and
    rows, not for every chunk of a stream."""

    __slots__ = ("secrets", "_regex", "_windows", "_with", "_public")
    MAX_VARIANTS = 32  # scrubbers with one call's extra secrets kept ready (1-2 ms to build)

    def __init__(self, secrets: Iterable[str] = ()):
        self.secrets = tuple(sorted({s for s in secrets if s and len(s) >= MIN_SECRET},
                                    key=len, reverse=True))
        windows: dict[str, list[tuple[str, int]]] = {}
        self._public = {secret: PUBLIC_PREFIX.match(secret).end() for secret in self.secrets}
        for secret in self.secrets:
            for i in range(len(secret) - MIN_FRAGMENT + 1):
                windows.setdefault(secret[i:i + MIN_FRAGMENT], []).append((secret, i))
        self._windows = windows
        self._with: dict[tuple[str, ...], SecretScrubber] = {}
        alternatives = set(self.secrets) | set(windows)
        self._regex = re.compile(_trie_pattern(alternatives)) if alternatives else None

    def __bool__(self) -> bool:
        return self._regex is not None

    def __repr__(self) -> str:  # never the secrets themselves
        return f"SecretScrubber({len(self.secrets)} secrets)"

    def adding(self, secrets: Iterable[str]) -> "SecretScrubber":
        """This scrubber plus some secrets of one call (a client's own credentials)."""
        extra = tuple(sorted({s for s in secrets
                              if s and len(s) >= MIN_SECRET and s not in self.secrets}))
        if not extra:
            return self
        variant = self._with.get(extra)
        if variant is None:
            if len(self._with) >= self.MAX_VARIANTS:
                self._with.clear()
            variant = self._with[extra] = SecretScrubber(self.secrets + extra)
        return variant

    def scrub(self, text: str) -> str:
        if self._regex is None or not text:
            return text
        spans: list[tuple[int, int]] = []
        pos = 0
        while (m := self._regex.search(text, pos)) is not None:
            start, end = m.span()
            found = m.group() in self._public  # a whole secret
            for secret, offset in self._windows.get(m.group(), ()):
                a, b = _grown(text, start, end, secret, offset)
                if self._gives_away(secret, offset - (start - a), b - a):
                    start, end, found = min(start, a), max(end, b), True
            if not found:  # plain words or a public prefix: look on from the next character
                pos = start + 1
                continue
            pos = end
            if spans and start <= spans[-1][1]:
                spans[-1] = (spans[-1][0], max(end, spans[-1][1]))
            else:
                spans.append((start, end))
        if not spans:
            return text
        out, last = [], 0
        for start, end in spans:
            out += (text[last:start], MASK)
            last = end
        out.append(text[last:])
        return "".join(out)

    def _gives_away(self, secret: str, at: int, length: int) -> bool:
        """Whether text agreeing with `secret[at:at + length]` gives some of it away: the
        whole secret, or enough of its own part (past its public prefix)."""
        if at == 0 and length == len(secret):
            return True
        own = secret[max(at, self._public[secret]):at + length]
        return len(own) >= LONG_FRAGMENT or (len(own) >= MIN_FRAGMENT and not _plain(own))

    def scrub_bytes(self, data: bytes) -> bytes:
        """The same on raw bytes (a stream chunk may end inside a UTF-8 character:
        surrogateescape gives every byte back as it was)."""
        if self._regex is None or not data:
            return data
        text = data.decode("utf-8", "surrogateescape")
        scrubbed = self.scrub(text)
        return data if scrubbed is text else scrubbed.encode("utf-8", "surrogateescape")


def _trie_pattern(words: Iterable[str]) -> str:
    """A regex matching any of `words`, longest first, branching one character at a time."""
    trie: dict = {}
    for word in words:
        node = trie
        for ch in word:
            node = node.setdefault(ch, {})
        node[""] = {}  # a word ends here

    def build(node: dict) -> str:
        branches = [re.escape(ch) + build(child) for ch, child in sorted(node.items()) if ch]
        if not branches:
            return ""
        body = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        # a word ends here and a longer one goes on: optional, and greedy, so longest first
        return f"(?:{body})?" if "" in node else body

    return build(trie)


def _plain(fragment: str) -> bool:
    """Plain words: ASCII letters, all lower-case or one capitalised word, between separators."""
    letters = fragment.translate(_SEPARATORS)
    return letters.isascii() and letters.isalpha() and (
        letters.islower() or (letters[0].isupper() and letters[1:].islower()))


def _grown(text: str, start: int, end: int, secret: str, offset: int) -> tuple[int, int]:
    """The span around text[start:end] (== secret[offset:offset + its length]) over which the
    text agrees with the secret."""
    a, i = start, offset
    while a > 0 and i > 0 and text[a - 1] == secret[i - 1]:
        a, i = a - 1, i - 1
    b, j = end, offset + (end - start)
    while b < len(text) and j < len(secret) and text[b] == secret[j]:
        b, j = b + 1, j + 1
    return a, b


def credentials_of(headers) -> list[str]:
    """The secret values in a request's credential headers (the token of `Authorization:
    Bearer ...`, an API key header, each cookie's value), for a scrubber. `headers`: any mapping
    with `.get` (mitmproxy Headers, a dict with lower-case names)."""
    out = []
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name)
        if not value:
            continue
        if name == "cookie":
            out += [v.strip() for part in value.split(";") for v in part.split("=", 1)[1:]]
        else:
            out.append(value.rpartition(" ")[2])
            out.append(value.strip())
    return out


def proxy_credentials(upstream_auth: str) -> list[str]:
    """mitmproxy's `upstream_auth` (`user:password` for an outbound proxy)."""
    if not upstream_auth:
        return []
    return [upstream_auth, upstream_auth.partition(":")[2]]


def proxy_url_credentials(url: str | None) -> list[str]:
    """The `user:password` of a provider's `proxy:` URL (http://user:pass@host:port)."""
    if not url or "@" not in url:
        return []
    userinfo = urlsplit(url).netloc.rpartition("@")[0]
    return proxy_credentials(unquote(userinfo)) + proxy_credentials(userinfo)


def scrubber_for(providers, upstream_auth: str = "") -> SecretScrubber:
    """Every secret of a configuration: each provider account's, each provider's outbound
    proxy credentials and mitmproxy's own upstream proxy's."""
    secrets = [account.secret for provider in providers.values() for account in provider.accounts]
    for provider in providers.values():
        secrets += proxy_url_credentials(provider.spec.proxy)
    return SecretScrubber(secrets + proxy_credentials(upstream_auth))
