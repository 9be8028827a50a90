"""Which provider and account answer a requested model: candidates in order, minus those
cooling down.

Routing only decides; forwarding.py sends. A candidate is one (provider, account, upstream
model), or the original vendor (passthrough) with the client's own credentials.
"""

import email.utils
import enum
import hashlib
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from addons.config import PASSTHROUGH, Config, Provider, resolve_secret
from addons.quota import QuotaBook, prefer_headroom


@dataclass(frozen=True, slots=True)
class Account:
    label: str  # shown in logs, flows and usage rows; never the secret itself
    secret: str
    # what clients are told (`x-detour-route`): its place in the provider's list, nothing of
    # where its secret lives (the label names a key file or an env var)
    name: str = "account 1"

    def __repr__(self) -> str:  # keep the secret out of any accidental log line
        return f"Account({self.label!r})"


NO_KEY = Account("no-key", "")


def account_label(ref: str, secret: str, index: int) -> str:
    if ref.startswith(("env:", "file:")):
        return ref
    return f"key{index + 1}:{hashlib.sha256(secret.encode()).hexdigest()[:8]}"


@dataclass(frozen=True, slots=True)
class ProviderRuntime:
    name: str
    spec: Provider
    accounts: tuple[Account, ...]


def build_providers(config: Config) -> dict[str, ProviderRuntime]:
    """Resolve every provider's secrets now (start or reload), naming the bad one if any."""
    out = {}
    for name, spec in config.providers.items():
        accounts = []
        for i, ref in enumerate(spec.api_keys):
            secret = resolve_secret(ref, f"providers.{name}.api_keys[{i}]")
            accounts.append(Account(account_label(ref, secret, i), secret, f"account {i + 1}"))
        out[name] = ProviderRuntime(name, spec, tuple(accounts))
    return out


@dataclass(frozen=True, slots=True)
class Candidate:
    provider: ProviderRuntime | None  # None: passthrough to the original vendor
    account: Account | None
    model: str  # the model name sent upstream

    @property
    def provider_name(self) -> str:
        return self.provider.name if self.provider else PASSTHROUGH

    @property
    def account_label(self) -> str:
        return self.account.label if self.account else "client"

    @property
    def public_name(self) -> str:
        """provider/account as clients may see it (`x-detour-route`)."""
        return f"{self.provider_name}/{self.account.name}" if self.account else PASSTHROUGH

    @property
    def key(self) -> str:
        """What a cooldown applies to: one account of one provider."""
        return f"{self.provider_name}/{self.account_label}"


class Rest(enum.Enum):
    """Why an account rests; it decides how long, and whether it may still be tried."""

    TRANSIENT = "transient"  # 5xx, timeout, refused connection: short, growing backoff
    RATE_LIMIT = "rate-limit"  # 429 (Retry-After honoured), an in-stream rate_limit_error
    QUOTA = "quota"  # quota or billing exhausted
    AUTH = "auth"  # 401/403: the key is wrong or revoked


@dataclass(frozen=True, slots=True)
class Resting:
    until: float  # monotonic deadline
    reason: Rest
    cause: str  # what happened, for the client's message (never a secret)


class CooldownBook:
    """Accounts resting after a failure, until a monotonic deadline, with the reason why. A
    Retry-After is honoured but capped (a provider's "retry in 18 days" must not outlive a
    quota reset we cannot see). Transient failures back off: the first rests `FIRST_BACKOFF`
    seconds, each consecutive one twice as long, up to the caller's cap; a success resets it."""

    MAX_SECONDS = 6 * 3600
    FIRST_BACKOFF = 1.0

    def __init__(self):
        self._rests: dict[str, Resting] = {}
        self._streaks: dict[str, int] = {}  # consecutive transient failures per key

    def cool(self, key: str, seconds: float, reason: Rest = Rest.RATE_LIMIT,
             cause: str = "") -> None:
        seconds = max(0.0, min(seconds, self.MAX_SECONDS))
        until = time.monotonic() + seconds
        current = self._rests.get(key)
        if current is None or until > current.until:
            self._rests[key] = Resting(until, reason, cause)

    def fail_transient(self, key: str, cap: float, cause: str = "") -> float:
        """One more transient failure of `key`: rest for its backoff; returns the seconds."""
        streak = self._streaks.get(key, 0) + 1
        self._streaks[key] = streak
        seconds = min(cap, self.FIRST_BACKOFF * 2 ** min(streak - 1, 30))
        self.cool(key, seconds, Rest.TRANSIENT, cause)
        return seconds

    def succeeded(self, key: str) -> None:
        """`key` answered well: no rest, and its next transient failure backs off from the start."""
        self._rests.pop(key, None)
        self._streaks.pop(key, None)

    def rest(self, key: str) -> Resting | None:
        """`key`'s rest, if it still has one."""
        current = self._rests.get(key)
        if current is not None and current.until <= time.monotonic():
            del self._rests[key]
            return None
        return current

    def remaining(self, key: str) -> float:
        current = self.rest(key)
        return 0.0 if current is None else current.until - time.monotonic()

    def resting(self) -> dict[str, float]:
        """Every account still resting, with the seconds it has left."""
        return {key: left for key in list(self._rests) if (left := self.remaining(key)) > 0}

    def clear(self, key: str) -> None:
        self._rests.pop(key, None)


def passthrough_key(vendor_url: str, headers: dict[str, str]) -> str:
    """The cooldown key of a passthrough call: the vendor's origin and a short fingerprint of
    the client's own credential (never the credential), so one client's rejected key or
    exhausted quota rests neither another vendor nor another client."""
    url = urlsplit(vendor_url)
    origin = f"{url.scheme}://{url.netloc}"
    secret = headers.get("x-api-key") or headers.get("authorization") or ""
    fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:12] if secret else "none"
    return f"{PASSTHROUGH}/{origin}#{fingerprint}"


def retry_after_seconds(value: str | None) -> float | None:
    """Retry-After as delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def plan(config: Config, providers: dict[str, ProviderRuntime], model: str, *,
         user_agent: str = "", quotas: QuotaBook | None = None) -> list[Candidate]:
    """Every candidate for `model` as the client with this User-Agent asked for it (a client's
    own routes come first), accounts expanded in priority order, those the vendor said are low
    on a rate-limit window behind the others (`quotas`)."""
    return expand(config.candidates(model, user_agent), providers, model, quotas)


def expand(entries: list[str], providers: dict[str, ProviderRuntime], model: str,
           quotas: QuotaBook | None = None) -> list[Candidate]:
    """One route's entries (`provider/model`, `provider/*`, `passthrough`) as candidates."""
    out: list[Candidate] = []
    for cand in entries:
        if cand == PASSTHROUGH:
            out.append(Candidate(None, None, model))
            continue
        name, _, upstream = cand.partition("/")
        provider = providers[name]
        if upstream == "*":
            upstream = model
        # a provider without keys (a local server) is one account that sends no credential
        accounts = [Candidate(provider, account, upstream)
                    for account in provider.accounts or (NO_KEY,)]
        out += prefer_headroom(accounts, quotas)
    return out
