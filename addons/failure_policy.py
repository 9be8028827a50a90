"""What a failed attempt means, in one table: the rest its account earns, whether the
provider's other accounts are skipped, and how it weighs in the status the client is told.

A candidate's failure is one of: an HTTP status of 300 or more, an error event before any
content (its kind), or a failure without a usable status (`Failed`: no connection, no answer
in time, an answer that is not one, a request that cannot be translated). `verdict()` maps it
to a `Verdict`; the forwarder applies it (forwarding.py `cool`, `failure`). How long a rest
lasts follows from its kind (`DURATIONS`).
"""

import enum
from dataclasses import dataclass

from addons.routing import Rest


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


class Duration(enum.Enum):
    BACKOFF = "backoff"  # 1 s, doubling while it keeps failing, up to cooldown_seconds
    RETRY_AFTER = "retry-after"  # the provider's Retry-After (capped), else cooldown_seconds
    AUTH = "auth"  # AUTH_SECONDS: the key is the operator's to fix


@dataclass(frozen=True, slots=True)
class Verdict:
    rest: Rest | None  # the rest the account earns; None: none (a passthrough never rests
    # for AUTH: the client's own key is the client's to fix)
    skip_provider: bool  # the request itself was refused: the provider's other accounts
    # would refuse it too
    weight: Weight


DURATIONS = {Rest.TRANSIENT: Duration.BACKOFF, Rest.RATE_LIMIT: Duration.RETRY_AFTER,
             Rest.QUOTA: Duration.RETRY_AFTER, Rest.AUTH: Duration.AUTH}
AUTH_SECONDS = 600.0
LIMITS = frozenset({Rest.RATE_LIMIT, Rest.QUOTA})

_TRANSIENT = Verdict(Rest.TRANSIENT, False, Weight.FAILED)
_AUTH = Verdict(Rest.AUTH, False, Weight.FAILED)
_REFUSED = Verdict(None, True, Weight.REFUSED)
_NO_REST = Verdict(None, False, Weight.FAILED)

# an HTTP status of 300 or more (other 3xx/4xx: `_NO_REST`; 5xx and others: `_TRANSIENT`)
STATUSES: dict[int, Verdict] = {
    400: _REFUSED, 404: _REFUSED, 413: _REFUSED, 422: _REFUSED,
    401: _AUTH, 403: _AUTH,
    402: Verdict(Rest.QUOTA, False, Weight.LIMIT),
    408: _TRANSIENT,
    429: Verdict(Rest.RATE_LIMIT, False, Weight.LIMIT),
}
# a 429 whose text says "quota": exhausted, not just too fast
QUOTA_429 = Verdict(Rest.QUOTA, False, Weight.LIMIT)
# an error event before any content, by kind (any other kind: `_TRANSIENT`: api_error,
# overloaded_error, timeout_error, ...)
STREAM_KINDS: dict[str, Verdict] = {
    "rate_limit_error": Verdict(Rest.RATE_LIMIT, False, Weight.LIMIT),
    "billing_error": Verdict(Rest.QUOTA, False, Weight.LIMIT),
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
    Failed.UNREACHABLE: Verdict(Rest.TRANSIENT, False, Weight.UNREACHABLE),
    Failed.BROKEN: _TRANSIENT,
    Failed.BAD_ANSWER: _TRANSIENT,
}


def verdict(status: int | None, stream_error: str | None = None,
            failed: Failed | None = None, message: str = "") -> Verdict:
    """What one failed attempt means. An error event (a 2xx whose stream opened with one)
    is judged by its kind; a status of 300 or more by the status; anything else by how it
    failed."""
    if stream_error is not None:
        return STREAM_KINDS.get(stream_error, _TRANSIENT)
    if failed is Failed.OVER_BUDGET:
        return FAILURES[failed]
    if status is not None and status >= 300:
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
