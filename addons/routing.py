"""Which provider and account answer a requested model: candidates in order, minus those
cooling down.

Routing only decides; forwarding.py sends. A candidate is one (provider, account, upstream
model), or the original vendor (passthrough) with the client's own credentials.
"""

import email.utils
import hashlib
import time
from dataclasses import dataclass

from addons.config import PASSTHROUGH, Config, Provider, resolve_secret


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


class CooldownBook:
    """Accounts resting after a failure, until a monotonic deadline. A Retry-After is honoured
    but capped (a provider's "retry in 18 days" must not outlive a quota reset we cannot see)."""

    MAX_SECONDS = 6 * 3600

    def __init__(self):
        self._until: dict[str, float] = {}

    def cool(self, key: str, seconds: float) -> None:
        seconds = max(0.0, min(seconds, self.MAX_SECONDS))
        until = time.monotonic() + seconds
        if until > self._until.get(key, 0.0):
            self._until[key] = until

    def remaining(self, key: str) -> float:
        until = self._until.get(key)
        if until is None:
            return 0.0
        left = until - time.monotonic()
        if left <= 0:
            del self._until[key]
            return 0.0
        return left

    def resting(self) -> dict[str, float]:
        """Every account still resting, with the seconds it has left."""
        return {key: left for key in list(self._until) if (left := self.remaining(key)) > 0}

    def clear(self, key: str) -> None:
        self._until.pop(key, None)


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


def plan(config: Config, providers: dict[str, ProviderRuntime], model: str) -> list[Candidate]:
    """Every candidate for `model`, accounts expanded in priority order."""
    out: list[Candidate] = []
    for cand in config.candidates(model):
        if cand == PASSTHROUGH:
            out.append(Candidate(None, None, model))
            continue
        name, _, upstream = cand.partition("/")
        provider = providers[name]
        if upstream == "*":
            upstream = model
        # a provider without keys (a local server) is one account that sends no credential
        for account in provider.accounts or (NO_KEY,):
            out.append(Candidate(provider, account, upstream))
    return out
