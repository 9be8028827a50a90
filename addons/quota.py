"""What detour has seen of each account besides its failures: the rate-limit windows its vendor
reported (`QuotaBook`) and its last few errors (`RecentErrors`), for routing and the operator.

Vendors say on every answer (a 429 included) how much of each window is left:
- Anthropic: `anthropic-ratelimit-{requests,tokens,input-tokens,output-tokens}-{limit,remaining,
  reset}`, the reset an RFC 3339 time (`2025-08-21T12:40:59Z`);
- OpenAI and the many that copy it (Groq, OpenRouter, Azure...): `x-ratelimit-{limit,remaining,
  reset}-{requests,tokens}`, the reset a Go duration (`6m0s`, `1s`, `20ms`); Azure sends plain
  seconds and -1 for "no figure".
Any other window name the same families carry is kept under its own name. A window seen at 0
remaining makes its account rest until the window resets (forwarding.py), before the vendor
ever answers 429; an account low on a window goes behind the others (`prefer_headroom`).

Parsing runs on every answer: one pass over the header names, a prefix test each, values
parsed only for the few rate-limit headers; a value that does not parse is ignored, never an
error (the answer is the client's either way).
"""

import collections
import datetime
import functools
import math
import re
import time
from collections.abc import Iterable
from dataclasses import dataclass

ANTHROPIC_PREFIX = b"anthropic-ratelimit-"
OPENAI_PREFIX = b"x-ratelimit-"
FIELDS = (b"limit", b"remaining", b"reset")
MAX_VALUE_BYTES = 64  # a longer value is no figure we know
MAX_WINDOWS = 8  # per account: a vendor inventing names cannot grow the book
MAX_RESET_SECONDS = 7 * 86400.0  # a reset further away is taken as that far
# a window at 0 whose reset the vendor did not say: vendors' windows are per minute
UNSAID_RESET_SECONDS = 60.0
# below this share of a window, an account goes behind those with more
LOW_HEADROOM = 0.1
# Go's time.ParseDuration units (OpenAI's resets), as seconds
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")


@dataclass(slots=True)
class Window:
    """One rate-limit window of one account as last seen: None where the vendor said nothing."""

    remaining: int | None = None
    limit: int | None = None
    resets_at: float | None = None  # wall-clock time (epoch seconds)

    def share_left(self, now: float) -> float | None:
        """remaining / limit while the window runs; None when unknown or already reset."""
        if self.resets_at is not None and self.resets_at <= now:
            return None
        if self.remaining is None or self.limit is None or self.limit <= 0 or self.remaining < 0:
            return None
        return min(1.0, self.remaining / self.limit)

    def exhausted_for(self, now: float) -> float:
        """Seconds until this window has room again (0: it has room, or nothing is known)."""
        if self.remaining != 0 or self.resets_at is None:
            return 0.0
        return max(0.0, self.resets_at - now)


def parse_reset(value: str, now: float) -> float | None:
    """A reset as a wall-clock time: an RFC 3339 time (Anthropic), a Go duration (OpenAI:
    `6m0s`, `20ms`), or plain seconds (Azure; a figure past 10^9 is an epoch time). None for
    anything else; never raises."""
    parsed = _reset_of(value.strip())
    if parsed is None:
        return None
    absolute, number = parsed
    if absolute:
        return min(number, now + MAX_RESET_SECONDS)
    return now + min(number, MAX_RESET_SECONDS)


@functools.lru_cache(maxsize=1024)
def _reset_of(value: str) -> tuple[bool, float] | None:
    """(True, epoch seconds) or (False, seconds from now). Cached: the same values come on
    answer after answer (a duration like `1s`, a reset time shared by the calls of a second)."""
    if not value or len(value) > MAX_VALUE_BYTES:
        return None
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None:
        if not math.isfinite(number) or number < 0:
            return None
        return (number > 1e9, number)  # past 10^9: an epoch time in seconds
    seconds = _go_duration(value)
    if seconds is not None:
        return False, seconds
    try:
        when = datetime.datetime.fromisoformat(value)
        if when.tzinfo is None:
            when = when.replace(tzinfo=datetime.UTC)
        return True, max(when.timestamp(), 0.0)
    except (ValueError, OverflowError, OSError):
        return None


def _go_duration(value: str) -> float | None:
    total, end = 0.0, 0
    for m in _DURATION_PART.finditer(value):
        if m.start() != end:
            return None
        total += float(m.group(1)) * _UNITS[m.group(2)]
        end = m.end()
    if end != len(value) or end == 0 or not math.isfinite(total):
        return None
    return total


def _count(value: str) -> int | None:
    value = value.strip()
    if not value or len(value) > 20:
        return None
    try:
        return int(value)
    except ValueError:
        try:  # some send "1000.0"
            number = float(value)
        except ValueError:
            return None
        return int(number) if math.isfinite(number) else None


def parse_rate_limits(headers: Iterable[tuple[bytes, bytes]],
                      now: float | None = None) -> dict[str, Window]:
    """Every rate-limit window these response headers tell, by window name (`requests`,
    `tokens`, `input-tokens`...). `headers`: (name, value) byte pairs, as httpx's
    `Headers.raw`. Empty when there are none; never raises."""
    windows: dict[str, Window] = {}
    now = time.time() if now is None else now
    for name, value in headers:
        if not name or name[0] not in b"aAxX":  # most headers end here
            continue
        name = name.lower()
        if name.startswith(ANTHROPIC_PREFIX):
            # anthropic-ratelimit-<window>-<field>
            window, _, field = name[len(ANTHROPIC_PREFIX):].rpartition(b"-")
        elif name.startswith(OPENAI_PREFIX):
            # x-ratelimit-<field>-<window>
            field, _, window = name[len(OPENAI_PREFIX):].partition(b"-")
        else:
            continue
        if field not in FIELDS or not window or len(value) > MAX_VALUE_BYTES:
            continue
        key = window.decode("latin-1")
        seen = windows.get(key)
        if seen is None:
            if len(windows) >= MAX_WINDOWS:
                continue
            seen = windows[key] = Window()
        text = value.decode("latin-1")
        if field == b"remaining":
            seen.remaining = _count(text)
        elif field == b"limit":
            seen.limit = _count(text)
        else:
            seen.resets_at = parse_reset(text, now)
    for seen in windows.values():
        if seen.remaining == 0 and seen.resets_at is None:
            seen.resets_at = now + UNSAID_RESET_SECONDS
    return windows


@dataclass(slots=True)
class Seen:
    windows: dict[str, Window]
    at: float  # wall-clock time of the answer that told it


class QuotaBook:
    """The rate-limit windows last seen per account key (`provider/label`, or a passthrough
    key). Each answer that carries rate-limit headers replaces what its account had."""

    MAX_KEYS = 4096  # passthrough keys come from clients: bounded

    def __init__(self):
        self._seen: dict[str, Seen] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def observe(self, key: str, headers: Iterable[tuple[bytes, bytes]]) -> None:
        """Read one answer's headers for `key` (kept as they were when it has none)."""
        now = time.time()
        windows = parse_rate_limits(headers, now)
        if not windows:
            return
        if key not in self._seen and len(self._seen) >= self.MAX_KEYS:
            self._seen.pop(next(iter(self._seen)))  # the oldest account seen goes
        self._seen[key] = Seen(windows, now)

    def seen(self, key: str) -> Seen | None:
        return self._seen.get(key)

    def exhausted(self, key: str) -> tuple[float, str] | None:
        """(seconds until every window at 0 has reset, which ones), if a window is at 0."""
        seen = self._seen.get(key)
        if seen is None:
            return None
        now = time.time()
        waits = {name: w.exhausted_for(now) for name, w in seen.windows.items()}
        at_zero = [name for name, wait in waits.items() if wait > 0]
        if not at_zero:
            return None
        return max(waits[n] for n in at_zero), ", ".join(at_zero)

    def headroom(self, key: str) -> float | None:
        """The smallest share left of any running window of `key`; None when unknown."""
        seen = self._seen.get(key)
        if seen is None:
            return None
        now = time.time()
        shares = [s for w in seen.windows.values() if (s := w.share_left(now)) is not None]
        return min(shares) if shares else None

    def describe(self, key: str) -> dict | None:
        """What was last seen of `key`, as JSON-ready data (the operator's view)."""
        seen = self._seen.get(key)
        if seen is None:
            return None
        now = time.time()
        return {
            "seen_at": iso(seen.at),
            "windows": {name: {"remaining": w.remaining, "limit": w.limit,
                               "resets_at": iso(w.resets_at) if w.resets_at else None,
                               "resets_in": (round(max(0.0, w.resets_at - now), 1)
                                             if w.resets_at else None)}
                        for name, w in seen.windows.items()},
        }


def prefer_headroom(candidates: list, quotas: QuotaBook | None) -> list:
    """The accounts of one route entry (already in the provider's order), those the vendor said
    are low on a window (under LOW_HEADROOM of it) moved behind the others, lowest last. A
    stable reorder: accounts with room, or with nothing known, keep their order."""
    if not quotas or len(candidates) < 2:
        return candidates
    low = []
    for i, cand in enumerate(candidates):
        share = quotas.headroom(cand.key)
        if share is not None and share < LOW_HEADROOM:
            low.append((share, i))
    if not low:
        return candidates
    moved = {i for _, i in low}
    low.sort(key=lambda s: -s[0])
    return ([c for i, c in enumerate(candidates) if i not in moved]
            + [candidates[i] for _, i in low])


class RecentErrors:
    """The last few failures of each account key, for the operator (scrubbed by the caller)."""

    PER_KEY = 5
    MAX_KEYS = 4096

    def __init__(self):
        self._errors: dict[str, collections.deque] = {}

    def note(self, key: str, error: str) -> None:
        errors = self._errors.get(key)
        if errors is None:
            if len(self._errors) >= self.MAX_KEYS:
                self._errors.pop(next(iter(self._errors)))
            errors = self._errors[key] = collections.deque(maxlen=self.PER_KEY)
        errors.append((time.time(), error[:300]))

    def of(self, key: str) -> list[dict]:
        """`key`'s last failures, oldest first."""
        return [{"at": iso(at), "error": error} for at, error in self._errors.get(key, ())]

    def keys(self) -> list[str]:
        return list(self._errors)


def iso(at: float) -> str:
    return datetime.datetime.fromtimestamp(at, datetime.UTC).isoformat(timespec="seconds")
