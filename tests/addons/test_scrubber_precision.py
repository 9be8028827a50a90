"""The scrubber takes out what gives a secret away, and only that: a key's vendor prefix
(`sk-ant-api03-`, `sk-proj-`, an auth scheme, a JWT's header) is the same for everyone's keys,
and words a made-up key is built of ("no-key-required", "Production") are ordinary words; a
provider's error or a log line that merely mentions them keeps them. Any fragment of a key's
own part that could help rebuild it (8 characters that are not a plain word, or 16 of any
kind) is still taken out, wherever it appears."""

import base64
import string

from hypothesis import assume, given
from hypothesis import strategies as st

from addons.scrubber import MASK, PUBLIC_PREFIX, SecretScrubber, credentials_of

PREFIXES = ["sk-ant-api03-", "sk-ant-oat01-", "sk-proj-", "sk-or-v1-", "sk-", "AIza", "ya29.",
            "ghp_", "github_pat_", ""]
# what random key material looks like: base64url or hex of random bytes
bodies = st.binary(min_size=18, max_size=48).flatmap(lambda b: st.sampled_from([
    base64.urlsafe_b64encode(b).decode().rstrip("="), b.hex()]))
keys = st.tuples(st.sampled_from(PREFIXES), bodies)

WORDS = ["the", "key", "Provider", "request", "no-key-required", "Production", "limit",
         "sk-ant-api03-", "sk-proj-", "Bearer", "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.",
         "invalid", "x-api-key", "not-needed", "dark-mode-enabled", "2025-05-14", ":", ","]
prose = st.lists(st.sampled_from(WORDS), max_size=30).map(" ".join)


def plain(fragment: str) -> bool:
    letters = "".join(ch for ch in fragment if ch not in "-_.:/ ")
    return letters.isalpha() and letters.isascii() and (
        letters.islower() or (letters[0].isupper() and letters[1:].islower()))


@given(keys, st.integers(0, 60), st.integers(8, 48), prose, prose)
def test_a_fragment_of_a_keys_own_part_is_gone_wherever_it_is(key, start, length, before, after):
    prefix, body = key
    # (a body that happens to go on with another vendor's prefix: that part is public too)
    assume(PUBLIC_PREFIX.match(prefix + body).end() == len(prefix))
    fragment = body[start:start + length]
    assume(len(fragment) >= 8 and (len(fragment) >= 16 or not plain(fragment)))
    out = SecretScrubber([prefix + body]).scrub(f"{before} {fragment} {after}")
    assert fragment not in out and MASK in out


@given(keys, prose)
def test_the_whole_key_is_gone_and_so_is_its_bearer_header(key, text):
    secret = "".join(key)
    assume(len(secret) >= 8)
    s = SecretScrubber(credentials_of({"authorization": f"Bearer {secret}"}))
    out = s.scrub(f"{text} Bearer {secret}. {text}")
    assert secret not in out and secret[-8:] not in out


@given(keys, prose)
def test_text_that_only_shares_a_keys_prefix_or_words_is_left(key, text):
    """Ordinary text beside a realistic key (made-up local keys included) comes back as it
    was, unless it holds a fragment of the key's own part."""
    secret = "".join(key)
    scrubber = SecretScrubber([secret, *credentials_of({"authorization": f"Bearer {secret}"}),
                               "sk-no-key-required", "not-needed-local", "Production-EU-cluster"])
    assume(not any(key[1][i:i + 8] in text for i in range(len(key[1]) - 7)))
    assert scrubber.scrub(text) == text


def test_what_was_redacted_before_and_should_not_be():
    s = SecretScrubber(["sk-ant-api03-" + "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7" * 2, "sk-no-key-required",
                        "Production-EU-cluster", "Bearer sk-proj-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2"])
    for text in ("Anthropic keys start with sk-ant-api03- and are 108 characters long",
                 "set OPENAI_API_KEY=no-key-required for a local server",
                 "Production workloads should use a dedicated key",
                 "the header must read Bearer sk-proj-... with your project key"):
        assert s.scrub(text) == text


def test_a_vendor_masked_key_keeps_its_mask_and_a_longer_echo_does_not():
    body = "Ab3dE6gH9jK2mN5pQ8sT1vW4yZ7"
    s = SecretScrubber(["sk-proj-" + body])
    assert s.scrub(f"Incorrect API key provided: sk-proj-****{body[-4:]}") == \
        f"Incorrect API key provided: sk-proj-****{body[-4:]}"
    assert s.scrub(f"Incorrect API key provided: sk-proj-{body[:10]}...") == \
        f"Incorrect API key provided: {MASK}..."


def test_the_characters_a_plain_word_needs():
    assert plain("no-key-required") and plain("Production") and plain("provider")
    assert not plain("PROVIDER1") and not plain("AbCdEfGh") and not plain("20250514")
    assert set(string.digits).isdisjoint("".join(w for w in WORDS if plain(w)))
