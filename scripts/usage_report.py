"""What `detour usage` reads and shows: the usage rows of a time window, summed by day, model,
provider, account, client tool and user, with totals.

The database keeps the rows summed per (day, model, provider, account, tool, user) in
`usage_daily` (triggers on `usage`, addons/usage.py); a window reads those sums for its whole
days and the rows themselves only for a partial first or last day, and the per-dimension
tables are rolled up from those few thousand groups in Python. A million rows are not read. A cost is summed only where it is
known: `unpriced` counts the calls whose model had no price (their cost is NULL, never 0), so a
total never looks complete when it is not. With `database: postgresql://...` the rows are in
Postgres, which sums the window's rows itself (`summarise_postgres`).
"""

import csv
import io
import json
import re
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path

from addons.usage import DAILY_COLUMNS, DAILY_KEYS, daily_select

DIMENSIONS = ("day", "model", "provider", "account", "tool", "user")
# a relative start: 7d, 24h, 30m, 2w
_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}

class WhenError(ValueError):
    """A --since/--until value that is no time."""


def parse_when(text: str, now: datetime, end_of_day: bool = False) -> datetime | None:
    """`7d`, `24h`, `30m`, `2w` (ago), `today`, `yesterday`, a date (its start; its end with
    `end_of_day`, so `--until 2026-12-01` includes that day), an ISO time, or `all` (None)."""
    text = text.strip().lower()
    if text in ("all", ""):
        return None
    m = _RELATIVE.match(text)
    if m:
        return now - timedelta(**{_UNITS[m.group(2)]: int(m.group(1))})
    if text == "now":
        return now
    if text in ("today", "yesterday"):
        day = now.date() - timedelta(days=1 if text == "yesterday" else 0)
    else:
        try:
            day = date.fromisoformat(text)
        except ValueError:
            try:
                moment = datetime.fromisoformat(text.upper())
            except ValueError:
                raise WhenError(f"{text!r} is not a time: use 7d, 24h, 30m, 2w, today, "
                                "a date (2026-12-01), an ISO time or all") from None
            return moment.astimezone(UTC) if moment.tzinfo else moment.replace(tzinfo=UTC)
    start = datetime.combine(day, time(), UTC)
    return start + timedelta(days=1) if end_of_day else start


def iso(moment: datetime) -> str:
    """As the usage rows write `ts`: comparable as text."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + \
        f"{moment.microsecond // 1000:03d}Z"


@dataclass
class Sums:
    calls: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float = 0.0  # of the priced calls
    subscription_usd: float = 0.0  # part of cost_usd that is a subscription's API equivalent
    unpriced: int = 0  # calls with tokens whose model had no price
    fallbacks: int = 0  # calls answered (or failed) after more than one attempt
    errors: int = 0  # calls the client got a status >= 400 for, or no answer at all
    _latency_total: float = field(default=0.0, repr=False)
    _latency_count: int = field(default=0, repr=False)
    _ttfb_total: float = field(default=0.0, repr=False)
    _ttfb_count: int = field(default=0, repr=False)

    @property
    def tokens(self) -> int:
        return (self.input_tokens + self.output_tokens + self.cache_read_tokens
                + self.cache_write_tokens)

    @property
    def avg_latency_ms(self) -> float | None:
        return round(self._latency_total / self._latency_count, 1) if self._latency_count else None

    @property
    def avg_ttfb_ms(self) -> float | None:
        return round(self._ttfb_total / self._ttfb_count, 1) if self._ttfb_count else None

    def add(self, values: tuple) -> None:
        (calls, inp, out, cread, cwrite, reasoning, cost, sub, unpriced, fallbacks, errors,
         lat, lat_n, ttfb, ttfb_n) = values
        self.calls += int(calls)
        self.input_tokens += int(inp)
        self.output_tokens += int(out)
        self.cache_read_tokens += int(cread)
        self.cache_write_tokens += int(cwrite)
        self.reasoning_tokens += int(reasoning)
        self.cost_usd += cost
        self.subscription_usd += sub
        self.unpriced += int(unpriced)
        self.fallbacks += int(fallbacks)
        self.errors += int(errors)
        self._latency_total += lat
        self._latency_count += int(lat_n)
        self._ttfb_total += ttfb
        self._ttfb_count += int(ttfb_n)

    def as_dict(self) -> dict:
        d = {k: v for k, v in asdict(self).items() if not k.startswith("_")}
        d["cost_usd"] = round(self.cost_usd, 6)
        d["subscription_usd"] = round(self.subscription_usd, 6)
        d["tokens"] = self.tokens
        d["avg_latency_ms"] = self.avg_latency_ms
        d["avg_ttfb_ms"] = self.avg_ttfb_ms
        return d


@dataclass
class Report:
    since: datetime | None
    until: datetime
    totals: Sums
    by: dict[str, dict[str, Sums]]  # dimension -> key -> sums

    def as_dict(self, dimensions=DIMENSIONS) -> dict:
        return {
            "since": iso(self.since) if self.since else None,
            "until": iso(self.until),
            "totals": self.totals.as_dict(),
            "by": {dim: [{dim: key, **sums.as_dict()} for key, sums in self.rows(dim)]
                   for dim in dimensions},
        }

    def rows(self, dimension: str) -> list[tuple[str, Sums]]:
        """A dimension's groups: days in order, the others by cost then tokens, largest first."""
        groups = self.by[dimension].items()
        if dimension == "day":
            return sorted(groups)
        return sorted(groups, key=lambda kv: (-kv[1].cost_usd, -kv[1].tokens, kv[0]))


def summarise(db_path: Path, since: datetime | None, until: datetime) -> Report:
    """The report of the rows with since <= ts < until (every row from the start: since None).
    Whole UTC days come from `usage_daily`; only the hours of a partial first or last day are
    read from the rows themselves (through the `ts` index)."""
    first_day = _day_start(since, up=True) if since else None  # first whole day's start
    end_day = _day_start(until, up=False)  # end of the last whole day
    if first_day is not None and first_day >= end_day:  # no whole day inside: rows only
        parts = [(since, until)]
        days = None
    else:
        parts = [(since, first_day)] if since and since < first_day else []
        if end_day < until:
            parts.append((end_day, until))
        days = (first_day.date().isoformat() if first_day else "", end_day.date().isoformat())
    conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        cursors = [conn.execute(f"{daily_select()} WHERE ts >= ? AND ts < ? GROUP BY {_GROUP}",
                                (iso(start), iso(end))) for start, end in parts]
        if days is not None:
            cursors.append(conn.execute(
                f"SELECT {', '.join(DAILY_COLUMNS.values())} FROM usage_daily "
                "WHERE day >= ? AND day < ? AND calls > 0", days))
        return _folded(since, until, cursors)
    finally:
        conn.close()


def summarise_postgres(url: str, since: datetime | None, until: datetime) -> Report:
    """The same report from the usage rows in Postgres (`database:`): the rows of the window
    summed by the database in one query (through the `ts` index)."""
    import psycopg
    where, args = ("ts >= %s AND ts < %s", [iso(since), iso(until)]) if since else (
        "ts < %s", [iso(until)])
    with psycopg.connect(url, connect_timeout=10) as conn:
        cursor = conn.execute(f"{daily_select(total='coalesce(sum({}), 0)')} WHERE {where} "
                              f"GROUP BY {_GROUP}", args)
        return _folded(since, until, [cursor])


_GROUP = ", ".join(str(i + 1) for i in range(len(DAILY_KEYS)))


def _folded(since: datetime | None, until: datetime, cursors) -> Report:
    """The report of rows of daily sums (keys, then sums): totals, and each dimension's."""
    totals = Sums()
    by: dict[str, dict[str, Sums]] = {dim: {} for dim in DIMENSIONS}
    for cursor in cursors:
        for row in cursor:
            keys, values = row[:len(DAILY_KEYS)], [float(v) for v in row[len(DAILY_KEYS):]]
            totals.add(values)
            for dim, key in zip(DIMENSIONS, keys, strict=True):
                group_sums = by[dim].get(key)
                if group_sums is None:
                    group_sums = by[dim][key] = Sums()
                group_sums.add(values)
    return Report(since, until, totals, by)


def _day_start(moment: datetime, up: bool) -> datetime:
    """The UTC midnight at or after (`up`) or at or before `moment`."""
    start = datetime.combine(moment.astimezone(UTC).date(), time(), UTC)
    return start + timedelta(days=1) if up and start < moment else start


# ---------------------------------------------------------------- CSV and JSON

CSV_FIELDS = ("by", "key", "calls", "input_tokens", "output_tokens", "cache_read_tokens",
              "cache_write_tokens", "reasoning_tokens", "tokens", "cost_usd", "subscription_usd",
              "unpriced", "fallbacks", "errors", "avg_latency_ms", "avg_ttfb_ms")


def to_json(report: Report, dimensions=DIMENSIONS) -> str:
    return json.dumps(report.as_dict(dimensions), indent=2)


def to_csv(report: Report, dimensions=DIMENSIONS) -> str:
    """One table: a line per group (`by` names the dimension), then the totals (`by` total)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for dim in dimensions:
        for key, sums in report.rows(dim):
            writer.writerow({"by": dim, "key": key, **sums.as_dict()})
    writer.writerow({"by": "total", "key": "", **report.totals.as_dict()})
    return out.getvalue()
