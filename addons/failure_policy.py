"""What a failed attempt means, in one table: the rest its account earns, whether the
provider's other accounts are skipped, and how it weighs in the status the client is told.

A candidate's failure is one of: an HTTP status of 300 or more, an error event before any
content (its kind), or a failure without a usable status (`Failed`: no connection, no answer
in time, an answer that is not one, a request that cannot be translated). `verdict()` maps it
to a `Verdict`; the forwarder applies it (forwarding.py `cool`, `failure`). A provider's
error body is read for what its status alone does not say (`ErrorBody`): a quota or billing
exhaustion is not a transient 429, and Gemini tells a daily quota from a per-minute one.

How long a rest lasts follows from its kind (`BACKOFFS`, `rest_seconds`): the first failure
rests `first` seconds, each consecutive failure of the same kind on the same key twice as long,
up to `cap`; a success resets it. A wait the vendor names (Retry-After, Gemini's retryDelay)
is honoured instead, up to `vendor_cap`. What a rest applies to (`Scope`): the account for one
model (vendors limit rates per model) or the whole account (a key, a balance).
"""

import enum
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass

from addons.routing import Rest, retry_after_seconds


class Failed(enum.Enum):
    """A failure that is not (only) a status: what the transport or the answer did."""

    UNTRANSLATABLE = "untranslatable"  # the request cannot be put in this candidate's format
    NO_ANSWER_IN_TIME = "no answer in time"  # a stream's first content not within first_byte
    OVER_BUDGET = "over budget"  # a whole call past its total time: the route stops there
    TIMEOUT = "timeout"  # a connect/read/write timeout of the HTTP client
    UNREACHABLE = "unreachable"  # no connection: refused, no route, TLS failure
    BROKEN = "broken"  # the connection failed some other way mid-answer
    BAD_ANSWER = "bad answer"  # a 2xx that is no answer: not an event stream, empty, unreadable


class Weight(enum.Enum):
    """How an attempt counts in the status the client gets when no candidate answered."""

    REFUSED = "refused"  # the request was refused: when all were, the last refusal's status
    LIMIT = "limit"  # at a rate limit or quota: when all are, 429 (Retry-After: first to wake)
    TIMEOUT = "timeout"  # when every asked candidate timed out, 504
    OVER_BUDGET = "over budget"  # 504 at once
    UNREACHABLE = "unreachable"  # when none could be reached, 502 with x-should-retry: false
    FAILED = "failed"  # anything else: 502
    RESTING = "resting"  # skipped, resting for something other than its limits


class Scope(enum.Enum):
    """What a rest applies to. A passthrough key (vendor origin + the client's credential)
    is one key whatever the scope."""

    MODEL = "model"  # this account for this (upstream) model: its other models still serve
    ACCOUNT = "account"  # this account for every model: a key, a balance, a dead endpoint


@dataclass(frozen=True, slots=True)
class Verdict:
    rest: Rest | None  # the rest the account earns; None: none (a passthrough never rests
    # for AUTH: the client's own key is the client's to fix)
    skip_provider: bool  # the request itself was refused: the provider's other accounts
    # would refuse it too
    weight: Weight
    scope: Scope = Scope.MODEL


@dataclass(frozen=True, slots=True)
class Backoff:
    """How long a kind of rest lasts: `first` seconds, doubling with each consecutive failure
    up to `cap` (None: the configuration's cooldown_seconds, for either); a wait the vendor
    names is taken instead, up to `vendor_cap` (0: vendors' waits are not read)."""

    first: float | None
    cap: float | None
    vendor_cap: float = 0.0


HOUR = 3600.0
MAX_REST = 24 * HOUR  # the longest rest of all: an exhausted daily quota
BACKOFFS = {
    # 5xx, timeouts, refused connections: 1 s, 2 s, 4 s ... up to cooldown_seconds
    Rest.TRANSIENT: Backoff(1.0, None),
    # too fast: as the vendor says (capped at 6 h), else cooldown_seconds doubling to an hour
    Rest.RATE_LIMIT: Backoff(None, HOUR, 6 * HOUR),
    # exhausted until the vendor's reset (24 h at most), else 15 min doubling to 24 h
    Rest.QUOTA: Backoff(15 * 60.0, MAX_REST, MAX_REST),
    # the key is the operator's to fix: 10 min doubling to 6 h (detour.cooldowns.clear ends it)
    Rest.AUTH: Backoff(600.0, 6 * HOUR),
}
AUTH_SECONDS = BACKOFFS[Rest.AUTH].first
LIMITS = frozenset({Rest.RATE_LIMIT, Rest.QUOTA})


def rest_seconds(rest: Rest, streak: int, vendor_wait: float | None,
                 cooldown_seconds: float) -> float:
    """How long a rest of kind `rest` lasts, the `streak`-th consecutive one on its key."""
    b = BACKOFFS[rest]
    if vendor_wait is not None and b.vendor_cap:
        return min(vendor_wait, b.vendor_cap)
    first = cooldown_seconds if b.first is None else b.first
    cap = cooldown_seconds if b.cap is None else b.cap
    return min(cap, first * 2 ** min(max(streak, 1) - 1, 40))


_TRANSIENT = Verdict(Rest.TRANSIENT, False, Weight.FAILED)
_AUTH = Verdict(Rest.AUTH, False, Weight.FAILED, Scope.ACCOUNT)
_REFUSED = Verdict(None, True, Weight.REFUSED)
_NO_REST = Verdict(None, False, Weight.FAILED)
_RATE_LIMIT = Verdict(Rest.RATE_LIMIT, False, Weight.LIMIT)
# a balance or a plan exhausted: the account's, whatever the model
_BILLING = Verdict(Rest.QUOTA, False, Weight.LIMIT, Scope.ACCOUNT)
# a quota the vendor counts per model and per day (Gemini's PerDay quota ids)
_MODEL_QUOTA = Verdict(Rest.QUOTA, False, Weight.LIMIT, Scope.MODEL)

# an HTTP status of 300 or more (other 3xx/4xx: `_NO_REST`; 5xx and others: `_TRANSIENT`)
STATUSES: dict[int, Verdict] = {
    400: _REFUSED, 404: _REFUSED, 413: _REFUSED, 422: _REFUSED,
    401: _AUTH, 403: _AUTH,
    402: _BILLING,
    408: _TRANSIENT,
    429: _RATE_LIMIT,
}
# a 429 whose text says "quota": exhausted, not just too fast
QUOTA_429 = _BILLING
# An error body's codes (error.type / error.code / error.status, lower-cased) that mean a
# balance or plan is exhausted, whatever the status (Anthropic answers a 400 for a credit
# balance too low, OpenAI a 429 insufficient_quota, OpenRouter a 402; a ChatGPT plan's usage
# limit, the Codex backend's 429 usage_limit_reached, is the login's for every model)
BILLING_CODES = frozenset({"insufficient_quota", "billing_error", "billing_hard_limit_reached",
                           "billing_not_active", "insufficient_credits", "credit_balance",
                           "usage_limit_reached"})
# ... and such words in its message, for vendors without a code of their own
BILLING_WORDS = re.compile(r"credit balance|insufficient (?:credits|balance|funds)|"
                           r"billing|exceeded your current quota|quota exceeded", re.I)
# statuses whose body may say "billing" (a 5xx or 401 never rests as a quota)
BILLING_STATUSES = frozenset({400, 402, 403, 429})
# Gemini: RESOURCE_EXHAUSTED is both a per-minute rate limit and a daily quota; its
# QuotaFailure's quota ids say which
RESOURCE_EXHAUSTED = "resource_exhausted"
DAILY_QUOTA = re.compile(r"per ?day|daily", re.I)
# an error event before any content, by kind (any other kind: `_TRANSIENT`: api_error,
# overloaded_error, timeout_error, ...)
STREAM_KINDS: dict[str, Verdict] = {
    "rate_limit_error": Verdict(Rest.RATE_LIMIT, False, Weight.LIMIT),
    "billing_error": _BILLING,
    "authentication_error": _AUTH, "permission_error": _AUTH,
    # these blame the request, not the account
    "invalid_request_error": _NO_REST, "not_found_error": _NO_REST,
    "request_too_large": _NO_REST,
}
FAILURES: dict[Failed, Verdict] = {
    Failed.UNTRANSLATABLE: _REFUSED,
    Failed.NO_ANSWER_IN_TIME: Verdict(Rest.TRANSIENT, False, Weight.TIMEOUT),
    Failed.OVER_BUDGET: Verdict(None, False, Weight.OVER_BUDGET),
    Failed.TIMEOUT: _TRANSIENT,
    # nothing answers at that address: every model of the account alike
    Failed.UNREACHABLE: Verdict(Rest.TRANSIENT, False, Weight.UNREACHABLE, Scope.ACCOUNT),
    Failed.BROKEN: _TRANSIENT,
    Failed.BAD_ANSWER: _TRANSIENT,
}


@dataclass(frozen=True, slots=True)
class ErrorBody:
    """What a provider's error answer says beyond its status (no secret is kept: codes, quota
    ids and a delay only)."""

    codes: frozenset[str] = frozenset()  # error.type, .code, .status, lower-cased
    quota_ids: tuple[str, ...] = ()  # Gemini QuotaFailure violations: quotaId / quotaMetric
    # Gemini RetryInfo.retryDelay ("43s"); the Codex backend's resets_in_seconds or
    # resets_at (epoch seconds): in seconds
    retry_delay: float | None = None

    @classmethod
    def read(cls, obj) -> "ErrorBody":
        """From a parsed error body (any shape; what is not there is left out)."""
        if isinstance(obj, list) and obj:  # Gemini may wrap its error in a list
            obj = obj[0]
        err = obj.get("error", obj) if isinstance(obj, dict) else None
        if not isinstance(err, dict):
            return cls()
        codes = frozenset(str(err[k]).lower() for k in ("type", "code", "status")
                          if isinstance(err.get(k), str))
        quota_ids: list[str] = []
        delay = None
        for detail in err.get("details") or ():
            if not isinstance(detail, dict):
                continue
            for violation in detail.get("violations") or ():
                if isinstance(violation, dict):
                    quota_ids += [str(violation[k]) for k in ("quotaId", "quotaMetric")
                                  if isinstance(violation.get(k), str)]
            if isinstance(detail.get("retryDelay"), str):
                delay = _duration(detail["retryDelay"])
        if delay is None:
            delay = _reset_wait(err)
        return cls(codes, tuple(quota_ids), delay)


def _reset_wait(err: dict) -> float | None:
    """The Codex backend's reset of a usage limit: `resets_in_seconds`, else `resets_at`."""
    seconds, at = err.get("resets_in_seconds"), err.get("resets_at")
    number = (int, float)
    if isinstance(seconds, number) and not isinstance(seconds, bool):
        return max(0.0, float(seconds))
    if isinstance(at, number) and not isinstance(at, bool):
        return max(0.0, float(at) - time.time())
    return None


def _duration(text: str) -> float | None:
    """A protobuf Duration as JSON ("43s", "1.5s")."""
    try:
        return max(0.0, float(text.strip().removesuffix("s")))
    except ValueError:
        return None


def vendor_wait(headers: Mapping[str, str], body: ErrorBody) -> float | None:
    """How long the vendor asks us to wait, if it says: Retry-After (seconds or a date),
    retry-after-ms (OpenAI), Gemini's retryDelay."""
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    after = retry_after_seconds(headers.get("retry-after"))
    return after if after is not None else body.retry_delay


def verdict(status: int | None, stream_error: str | None = None,
            failed: Failed | None = None, message: str = "",
            body: ErrorBody = ErrorBody()) -> Verdict:
    """What one failed attempt means. An error event (a 2xx whose stream opened with one)
    is judged by its kind; a status of 300 or more by the status and what its body says
    (an exhausted quota or balance is not a transient 429); anything else by how it
    failed."""
    if stream_error is not None:
        return STREAM_KINDS.get(stream_error, _TRANSIENT)
    if failed is Failed.OVER_BUDGET:
        return FAILURES[failed]
    if status is not None and status >= 300:
        if RESOURCE_EXHAUSTED in body.codes:
            daily = any(DAILY_QUOTA.search(q) for q in body.quota_ids)
            return _MODEL_QUOTA if daily else _RATE_LIMIT
        if status in BILLING_STATUSES and (body.codes & BILLING_CODES
                                           or BILLING_WORDS.search(message)):
            return _BILLING
        if status == 429 and "quota" in message.lower():
            return QUOTA_429
        found = STATUSES.get(status)
        if found is not None:
            return found
        return _NO_REST if status < 500 else _TRANSIENT
    return FAILURES.get(failed, _TRANSIENT) if failed is not None else _TRANSIENT


def skipped_weight(rest: Rest) -> Weight:
    """How a candidate skipped for its rest counts."""
    return Weight.LIMIT if rest in LIMITS else Weight.RESTING
