"""Which provider and account answer a requested model: candidates in order, those resting
last.

Routing only decides; forwarding.py sends. A candidate is one (provider, account, upstream
model), or the original vendor (passthrough) with the client's own credentials. A provider's
accounts are ordered by `order_accounts`: priority groups (lower first), inside a group
round-robin or least-recently-used (the provider's `strategy`), disabled accounts left out,
resting ones after every ready one (in the order they wake: the forwarder skips them, and may
still ask one resting only for a transient failure when nothing else is left).
"""

import email.utils
import enum
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from addons.config import (LEAST_RECENTLY_USED, PASSTHROUGH, Config, Provider,
                           resolve_api_key)
from addons.credentials.store import NEEDS_LOGIN
from addons.quota import QuotaBook, prefer_headroom


@dataclass(frozen=True, slots=True)
class Account:
    label: str  # shown in logs, flows and usage rows; never the secret itself
    secret: str
    # what clients are told (`x-detour-route`): its place in the provider's list, nothing of
    # where its secret lives (the label names a key file or an env var)
    name: str = "account 1"
    priority: int = 1  # its group: lower groups are asked first
    disabled: bool = False  # kept (its secret is scrubbed, operators see it), never asked
    # an account of detour's own store (`detour account add|login`): its id there; its
    # credential comes from addons/credentials (an OAuth token is refreshed), `secret` is the
    # one current when the providers were built
    stored_id: int | None = None
    # a subscription login (OAuth): its calls cost no API price, their rows record the API
    # price they would have cost, marked as such (addons/prices.py)
    subscription: bool = False
    # a stored login that is spent (`needs_login`: refresh refused), as the store said when the
    # providers were built: routed after every other account (the forwarder asks the
    # credential provider, which knows it at once, and never sends it)
    needs_login: bool = False

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


def build_providers(config: Config, stored=()) -> dict[str, ProviderRuntime]:
    """Resolve every provider's secrets now (start or reload), naming the bad one if any.
    `stored`: accounts of detour's own store (addons/credentials, secrets decrypted), which
    join their provider's list after its config.yaml keys."""
    out = {}
    for name, spec in config.providers.items():
        accounts = []
        for i, entry in enumerate(spec.api_keys):
            ref = entry if isinstance(entry, str) else entry.key
            secret = resolve_api_key(entry, f"providers.{name}.api_keys[{i}]")
            priority, disabled = (1, False) if isinstance(entry, str) else (entry.priority,
                                                                           entry.disabled)
            accounts.append(Account(account_label(ref, secret, i), secret, f"account {i + 1}",
                                    priority, disabled))
        for acct in stored:
            if acct.provider == name:
                accounts.append(Account(acct.label, acct.current_secret,
                                        f"account {len(accounts) + 1}", acct.priority,
                                        not acct.enabled, acct.id,
                                        subscription=acct.kind == "oauth",
                                        needs_login=acct.state == NEEDS_LOGIN))
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
        """What a cooldown applies to: one account of one provider (`model_key`: that account
        for its upstream model)."""
        return account_key(self.provider_name, self.account_label)


def account_key(provider: str, label: str) -> str:
    return f"{provider}/{label}"


def model_key(key: str, model: str) -> str:
    """The cooldown key of one account for one upstream model (vendors limit rates per model)."""
    return f"{key}@{model}"


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
    """What detour knows of each account's recent history: rests after a failure (until a
    monotonic deadline, with the reason why), consecutive failures per key and kind (a rest
    grows with them; a success resets them), when each account was last asked
    (least-recently-used) and each priority group's round-robin turn.

    A key is an account (`provider/label`), an account for one model (`provider/label@model`)
    or a passthrough key. Every change of a rest is noted for the cooldown store
    (`take_changes`), which keeps rests across a restart (cooldown_store.py)."""

    MAX_SECONDS = 24 * 3600  # no rest is longer (a daily quota's reset)
    FIRST_BACKOFF = 1.0

    def __init__(self):
        self._rests: dict[str, Resting] = {}
        self._streaks: dict[tuple[str, Rest], int] = {}  # consecutive failures per key, kind
        self._last_used: dict[str, float] = {}
        self._turns: dict[str, int] = {}
        self._changed: set[str] = set()
        # told each key whose rest changed (the shared state publishes it to other processes)
        self._listeners: list[Callable[[str], None]] = []

    # ------------------------------------------------------------ rests

    def cool(self, key: str, seconds: float, reason: Rest = Rest.RATE_LIMIT,
             cause: str = "") -> None:
        seconds = max(0.0, min(seconds, self.MAX_SECONDS))
        until = time.monotonic() + seconds
        current = self._rests.get(key)
        if current is None or until > current.until:
            self._rests[key] = Resting(until, reason, cause)
            self._note(key)

    def fail(self, key: str, reason: Rest, seconds_for: Callable[[int], float],
             cause: str = "") -> float:
        """One more consecutive failure of kind `reason` on `key`: rest `seconds_for(streak)`
        (1 for the first); returns the seconds."""
        streak = self._streaks.get((key, reason), 0) + 1
        self._streaks[(key, reason)] = streak
        seconds = min(seconds_for(streak), self.MAX_SECONDS)
        self.cool(key, seconds, reason, cause)
        self._note(key)
        return seconds

    def fail_transient(self, key: str, cap: float, cause: str = "") -> float:
        """One more transient failure of `key`: rest for its backoff; returns the seconds."""
        return self.fail(key, Rest.TRANSIENT,
                         lambda streak: min(cap, self.FIRST_BACKOFF * 2 ** min(streak - 1, 30)),
                         cause)

    def streak(self, key: str, reason: Rest) -> int:
        return self._streaks.get((key, reason), 0)

    def succeeded(self, key: str, model: str | None = None) -> None:
        """`key` (for `model`) answered well: no rest, and its next failure backs off from the
        start. Another model's rest of the same account stays."""
        for k in (key, model_key(key, model)) if model else (key,):
            had = self._rests.pop(k, None) is not None
            for reason in Rest:
                had |= self._streaks.pop((k, reason), None) is not None
            if had:
                self._note(k)

    def rest(self, key: str, model: str | None = None, now: float | None = None
             ) -> Resting | None:
        """The longest rest `key` has now: its own, or (given `model`) its rest for that model."""
        now = time.monotonic() if now is None else now
        found = None
        for k in (key, model_key(key, model)) if model else (key,):
            current = self._rests.get(k)
            if current is not None and current.until <= now:
                current = None  # expired: its row goes at the next start
            if current is not None and (found is None or current.until > found.until):
                found = current
        return found

    def remaining(self, key: str, model: str | None = None) -> float:
        now = time.monotonic()
        current = self.rest(key, model, now)
        return 0.0 if current is None else current.until - now

    def rests_of(self, key: str, now: float | None = None) -> dict[str | None, Resting]:
        """An account's rests now: its own (under None) and each upstream model's."""
        now = time.monotonic() if now is None else now
        prefix = key + "@"
        return {(None if k == key else k[len(prefix):]): r
                for k, r in list(self._rests.items())
                if r.until > now and (k == key or k.startswith(prefix))}

    def resting(self) -> dict[str, float]:
        """Every key still resting, with the seconds it has left."""
        now = time.monotonic()
        return {key: r.until - now for key, r in list(self._rests.items()) if r.until > now}

    def clear(self, key: str) -> None:
        self.clear_where(lambda k: k == key)

    def clear_where(self, match: Callable[[str], bool]) -> list[str]:
        """End every rest (and forget every failure streak) whose key matches; returns the
        keys whose rest ended."""
        ended = sorted(k for k in self._rests if match(k))
        for k in ended:
            del self._rests[k]
            self._note(k)
        for k, reason in [s for s in self._streaks if match(s[0])]:
            del self._streaks[(k, reason)]
            self._note(k)
        return ended

    # ------------------------------------------------------------ choosing among the ready

    def used(self, key: str, now: float | None = None) -> None:
        """`key` is being asked now (least-recently-used reads it)."""
        self._last_used[key] = time.monotonic() if now is None else now

    def last_used(self, key: str) -> float:
        return self._last_used.get(key, float("-inf"))

    def next_turn(self, group: str, take: bool = True) -> int:
        """A priority group's round-robin turn: 0, 1, 2, ... one per call planned (`take`
        False: the turn the next call will get, left for it: the operator's view)."""
        turn = self._turns.get(group, 0)
        if take:
            self._turns[group] = turn + 1
        return turn

    def set_turn(self, group: str, turn: int) -> None:
        """The group's next turn is `turn` (taken from the turns every process shares)."""
        self._turns[group] = turn

    # ------------------------------------------------------------ persistence

    def _note(self, key: str) -> None:
        self._changed.add(key)
        for listener in self._listeners:
            listener(key)

    def watch(self, listener: Callable[[str], None]) -> None:
        """Call `listener(key)` whenever the rest (or failure streak) of `key` changes here."""
        self._listeners.append(listener)

    def unwatch(self, listener: Callable[[str], None]) -> None:
        self._listeners.remove(listener)

    def snapshot(self, key: str) -> tuple[float, str, str, int] | None:
        """`key`'s rest as (wall-clock deadline, reason, cause, streak), None if it has none."""
        r = self._rests.get(key)
        if r is None:
            return None
        return (time.time() + (r.until - time.monotonic()), r.reason.value, r.cause,
                self._streaks.get((key, r.reason), 0))

    def apply_shared(self, key: str, rest: tuple[float, str, str, int] | None) -> None:
        """Another process's news of `key` (addons/shared_state.py): a rest (kept if it ends
        later than the one known here) or its end. Listeners are not told: it came from them."""
        if rest is None:
            self._rests.pop(key, None)
            for reason in Rest:
                self._streaks.pop((key, reason), None)
            return
        until, reason, cause, streak = rest
        try:
            kind = Rest(reason)
        except ValueError:
            return
        left = min(until - time.time(), self.MAX_SECONDS)
        current = self._rests.get(key)
        deadline = time.monotonic() + left
        if left > 0 and (current is None or deadline > current.until):
            self._rests[key] = Resting(deadline, kind, cause)
        if streak > self._streaks.get((key, kind), 0):
            self._streaks[(key, kind)] = streak

    @property
    def changed(self) -> bool:
        return bool(self._changed)

    def note_changed(self, keys) -> None:
        """These keys' rows must be written again (a write failed)."""
        self._changed.update(keys)

    def take_changes(self) -> dict[str, tuple[float, str, str, int] | None]:
        """The keys changed since the last call: each one's rest as (wall-clock deadline,
        reason, cause, streak), or None when it no longer rests (its row goes)."""
        changed, self._changed = self._changed, set()
        now_mono, now_wall = time.monotonic(), time.time()
        out: dict[str, tuple[float, str, str, int] | None] = {}
        for key in changed:
            r = self._rests.get(key)
            out[key] = None if r is None else (
                now_wall + (r.until - now_mono), r.reason.value, r.cause,
                self._streaks.get((key, r.reason), 0))
        return out

    def restore(self, rows: list[tuple[str, float, str, str, int]]) -> int:
        """Rests kept by an earlier run: (key, wall-clock deadline, reason, cause, streak);
        those already over are dropped. Returns how many still rest."""
        now_mono, now_wall = time.monotonic(), time.time()
        kept = 0
        for key, until, reason, cause, streak in rows:
            try:
                kind = Rest(reason)
            except ValueError:
                continue
            left = min(until - now_wall, self.MAX_SECONDS)
            if left <= 0:
                continue
            self._rests[key] = Resting(now_mono + left, kind, cause)
            if streak:
                self._streaks[(key, kind)] = streak
            kept += 1
        return kept


def passthrough_key(vendor_url: str, headers: dict[str, str]) -> str:
    """The cooldown key of a passthrough call: the vendor's origin and a short fingerprint of
    the client's own credential (never the credential), so one client's rejected key or
    exhausted quota rests neither another vendor nor another client."""
    url = urlsplit(vendor_url)
    origin = f"{url.scheme}://{url.netloc}"
    # Anthropic's, OpenAI's (and OAuth bearers), Gemini's header or its `?key=` in the URL
    secret = (headers.get("x-api-key") or headers.get("authorization")
              or headers.get("x-goog-api-key") or _query_key(url.query))
    fingerprint = hashlib.sha256(secret.encode()).hexdigest()[:12] if secret else "none"
    return f"{PASSTHROUGH}/{origin}#{fingerprint}"


def _query_key(query: str) -> str:
    for name, value in parse_qsl(query):
        if name == "key":
            return value
    return ""


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


def order_accounts(provider: ProviderRuntime, model: str, now: float,
                   cooldowns: CooldownBook | None, take_turn: bool = True) -> list[Account]:
    """The order `provider`'s accounts are asked for upstream `model`: ready accounts by
    priority group (lower first), inside a group as the provider's `strategy` says
    (round-robin: the group's turn rotates it, one step per call; least-recently-used: the
    one asked longest ago first); then the resting ones, first to wake first; then the logins
    that need renewing (never asked: they take no turn from the others). Disabled accounts are
    left out. Without a book (no history), the order written."""
    if not provider.accounts:
        return [NO_KEY]  # a provider without keys (a local server): no credential sent
    accounts = [a for a in provider.accounts if not a.disabled]
    if cooldowns is None:
        return sorted(accounts, key=lambda a: (a.needs_login, a.priority))
    groups: dict[int, list[Account]] = {}
    resting: list[tuple[float, int, Account]] = []
    for i, account in enumerate(accounts):
        rest = cooldowns.rest(account_key(provider.name, account.label), model, now)
        if account.needs_login:
            resting.append((math.inf, i, account))
        elif rest is None:
            groups.setdefault(account.priority, []).append(account)
        else:
            resting.append((rest.until, i, account))
    out: list[Account] = []
    for priority in sorted(groups):
        group = groups[priority]
        if len(group) > 1:
            if provider.spec.strategy == LEAST_RECENTLY_USED:
                group.sort(key=lambda a: cooldowns.last_used(account_key(provider.name, a.label)))
            else:
                turn = cooldowns.next_turn(f"{provider.name}#{priority}", take_turn) % len(group)
                group = group[turn:] + group[:turn]
        out += group
    return out + [account for _, _, account in sorted(resting, key=lambda r: r[:2])]


def plan(config: Config, providers: dict[str, ProviderRuntime], model: str, *,
         user_agent: str = "", quotas: QuotaBook | None = None,
         cooldowns: CooldownBook | None = None, now: float | None = None) -> list[Candidate]:
    """Every candidate for `model` as the client with this User-Agent asked for it (a client's
    own routes come first), each provider's accounts in `order_accounts`' order, then those
    the vendor said are low on a rate-limit window behind the others (`quotas`)."""
    return expand(config.candidates(model, user_agent), providers, model, quotas, cooldowns,
                  now)


def expand(entries: list[str], providers: dict[str, ProviderRuntime], model: str,
           quotas: QuotaBook | None = None, cooldowns: CooldownBook | None = None,
           now: float | None = None, take_turn: bool = True) -> list[Candidate]:
    """One route's entries (`provider/model`, `provider/*`, `passthrough`) as candidates
    (`take_turn` False: as the next call would get them, no round-robin turn taken)."""
    now = time.monotonic() if now is None else now
    out: list[Candidate] = []
    for cand in entries:
        if cand == PASSTHROUGH:
            out.append(Candidate(None, None, model))
            continue
        name, _, upstream = cand.partition("/")
        provider = providers[name]
        if upstream == "*":
            upstream = model
        accounts = [Candidate(provider, account, upstream)
                    for account in order_accounts(provider, upstream, now, cooldowns,
                                                  take_turn)]
        out += prefer_headroom(accounts, quotas)
    return out
