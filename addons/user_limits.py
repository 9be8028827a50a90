"""Per-user limits of the gateway: model calls per minute, tokens per day, USD per month.

Windows are fixed and in UTC (this minute, this day, this calendar month), so every process
counts the same window and a refusal can say when it ends (`Retry-After`). A call is refused
when a window is spent: its tokens and cost are known only once it ends, so the call that
crosses a limit finishes, and the next is refused. A refused call does not count against the
per-minute window.

`LocalCounters` keeps the counts in this process (seeded at start from the usage rows already
stored, so a restart does not forget the month); with `state: redis://...` the shared state
(addons/shared_state.py) keeps them for every process, and these stay as the fallback.
"""

import calendar
import time
from dataclasses import dataclass

from addons.users import UserLimits

LIMIT_TEXT = {
    "rpm": "{limit} requests per minute",
    "tokens_per_day": "{limit} tokens per day",
    "usd_per_month": "{limit} USD per month",
}


@dataclass(frozen=True, slots=True)
class Windows:
    """The windows `now` falls in, their ids (the same in every process) and ends."""

    minute: str
    day: str
    month: str
    minute_ends: float
    day_ends: float
    month_ends: float

    @classmethod
    def at(cls, now: float) -> "Windows":
        t = time.gmtime(now)
        minute = int(now // 60)
        day_start = calendar.timegm((t.tm_year, t.tm_mon, t.tm_mday, 0, 0, 0))
        year, month = (t.tm_year + 1, 1) if t.tm_mon == 12 else (t.tm_year, t.tm_mon + 1)
        return cls(f"{minute}", f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}",
                   f"{t.tm_year:04d}-{t.tm_mon:02d}", (minute + 1) * 60.0, day_start + 86400.0,
                   float(calendar.timegm((year, month, 1, 0, 0, 0))))

    def ends(self, limit: str) -> float:
        return {"rpm": self.minute_ends, "tokens_per_day": self.day_ends,
                "usd_per_month": self.month_ends}[limit]


@dataclass(frozen=True, slots=True)
class Refusal:
    """A call over one of its user's limits: answered 429 with `Retry-After`."""

    user: str
    limit: str  # rpm | tokens_per_day | usd_per_month
    value: float  # the limit
    retry_after: int  # seconds until the window ends

    @property
    def message(self) -> str:
        what = LIMIT_TEXT[self.limit].format(limit=_number(self.value))
        return (f"user {self.user!r} is over its limit of {what} ({self.limit}, set with "
                f"`detour user limits`); try again in {self.retry_after} s")


def refusal(user: str, limits: UserLimits, limit: str, windows: Windows, now: float) -> Refusal:
    return Refusal(user, limit, getattr(limits, limit),
                   max(1, int(windows.ends(limit) - now + 0.999)))


def spent_tokens(row) -> int:
    """What a call counts against tokens_per_day: every token the provider processed."""
    return (row.input_tokens or 0) + (row.output_tokens or 0) + (row.cache_read_tokens or 0) \
        + (row.cache_write_tokens or 0)


@dataclass(slots=True)
class Spent:
    """One user's counts in the current windows."""

    minute: str = ""
    calls: int = 0
    day: str = ""
    tokens: int = 0
    month: str = ""
    usd: float = 0.0

    def roll(self, w: Windows) -> None:
        if self.minute != w.minute:
            self.minute, self.calls = w.minute, 0
        if self.day != w.day:
            self.day, self.tokens = w.day, 0
        if self.month != w.month:
            self.month, self.usd = w.month, 0.0


class LocalCounters:
    """Each user's counts in this process."""

    def __init__(self):
        self._spent: dict[str, Spent] = {}

    def _of(self, user: str, w: Windows) -> Spent:
        spent = self._spent.get(user)
        if spent is None:
            spent = self._spent[user] = Spent()
        spent.roll(w)
        return spent

    def admit(self, user: str, limits: UserLimits, now: float | None = None) -> Refusal | None:
        """Refuse the call if a window of `user` is spent; else count it (per minute)."""
        now = time.time() if now is None else now
        w = Windows.at(now)
        spent = self._of(user, w)
        if limits.usd_per_month is not None and spent.usd >= limits.usd_per_month:
            return refusal(user, limits, "usd_per_month", w, now)
        if limits.tokens_per_day is not None and spent.tokens >= limits.tokens_per_day:
            return refusal(user, limits, "tokens_per_day", w, now)
        if limits.rpm is not None and spent.calls >= limits.rpm:
            return refusal(user, limits, "rpm", w, now)
        spent.calls += 1
        return None

    def counted(self, user: str, now: float | None = None) -> None:
        """A call admitted elsewhere (the shared state): counted here too, for when it is gone."""
        now = time.time() if now is None else now
        self._of(user, Windows.at(now)).calls += 1

    def record(self, user: str, tokens: int, usd: float, now: float | None = None) -> None:
        now = time.time() if now is None else now
        spent = self._of(user, Windows.at(now))
        spent.tokens += tokens
        spent.usd += usd

    def seed(self, user: str, tokens_today: int, usd_this_month: float,
             now: float | None = None) -> None:
        """Counts already spent (the usage rows stored before this start)."""
        now = time.time() if now is None else now
        spent = self._of(user, Windows.at(now))
        spent.tokens, spent.usd = tokens_today, usd_this_month

    def snapshot(self, user: str) -> Spent | None:
        return self._spent.get(user)


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
