"""The usage store: one row per intercepted model call, in DETOUR_HOME/detour.db (SQLite, WAL).

Rows are queued on the request path and written in batches by a background flush, so a slow
disk never delays a response. A row SQLite refuses (a figure beyond 64 bits, a bad value) is
set aside in `usage_rejected` with its reason and never blocks the others. `close()` writes what
is queued, waiting a bounded time for a locked database; what still cannot be written (locked,
disk full) is spilled to DETOUR_HOME/usage-spill.jsonl (0600, fsynced) and imported at the next
start, once: a row whose flow_id is already stored is not stored again. A clean stop loses
nothing. The `usage` table's columns (USAGE_COLUMNS) are a public interface: extend them, never
rename or drop one without a migration and a README note.
"""

import asyncio
import errno
import functools
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path

import sqlite_utils
from sqlite_utils.migrations import Migrations

from addons.prices import price_rows
from addons.user_agents import client_tool

log = logging.getLogger(__name__)

USAGE_COLUMNS = {
    "id": int,
    "ts": str,  # ISO 8601 UTC, when the request arrived
    "flow_id": str,
    "client": str,  # the client program, from its User-Agent (claude-cli/2.1.197 ...)
    "client_tool": str,  # the client normalised (claude-code, codex, gemini-cli, curl ...)
    "client_version": str,  # its version, from the same User-Agent ("" if it has none)
    "client_format": str,
    "provider": str,
    "account": str,  # a label (env var name, key fingerprint), never the secret
    "model_requested": str,
    "model_upstream": str,
    "status": int,
    "attempts": int,
    "input_tokens": int,
    "output_tokens": int,
    "cache_read_tokens": int,
    "cache_write_tokens": int,
    "reasoning_tokens": int,
    "cost_usd": float,  # NULL when the model's price is unknown, never a guessed 0
    # what cost_usd is: "api" (what the call cost at API prices) or "subscription" (a
    # subscription/OAuth login: the equivalent API cost, not money spent); NULL with no cost
    "cost_basis": str,
    "price_source": str,  # where the price came from: "config" or "genai-prices"
    "latency_ms": float,
    "ttfb_ms": float,
    "stream": int,
    "error": str,
    "route": str,  # JSON list of attempts: provider, account, model, status, ms, error
    "user": str,  # the gateway user who made the call (detour user add); "" without users
}
ROW_COLUMNS = tuple(name for name in USAGE_COLUMNS if name != "id")
_INSERT = (f"INSERT INTO usage ({', '.join(ROW_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})")
# rows SQLite refused, with why: `row` is the row as JSON, as it would have been stored
REJECTED_COLUMNS = {"id": int, "ts": str, "flow_id": str, "reason": str, "row": str}
_INSERT_REJECTED = "INSERT INTO usage_rejected (ts, flow_id, reason, row) VALUES (?, ?, ?, ?)"
SPILL_NAME = "usage-spill.jsonl"
# set aside beside the spill file and given up when the disk is full, so that a clean stop can
# still spill (about 2,000 rows)
RESERVE_NAME = "usage-spill.reserve"
RESERVE_BYTES = 1 << 20
BUSY_TIMEOUT = 2.0  # seconds a write waits for another process's lock
# the database cannot be written now (locked, disk full, I/O error, missing): try again later;
# any other error is the row's own fault
UNAVAILABLE = (sqlite3.OperationalError, OSError)


@dataclass(slots=True)
class UsageRow:
    ts: str
    flow_id: str
    client: str
    client_format: str
    model_requested: str
    stream: bool
    provider: str = ""
    account: str = ""
    model_upstream: str = ""
    status: int = 0
    attempts: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0
    cost_usd: float | None = None
    latency_ms: float | None = None
    ttfb_ms: float | None = None
    error: str | None = None
    route: list[dict] = field(default_factory=list)
    client_tool: str = ""
    client_version: str = ""
    cost_basis: str | None = None
    price_source: str | None = None
    # not a column: set when the writer is to price the row (the provider's URL, or "")
    price_url: str | None = None
    user: str = ""

    def as_record(self) -> dict:
        # not dataclasses.asdict: it deep-copies `route`, which is written as JSON here anyway
        rec = {name: getattr(self, name) for name in ROW_FIELDS}
        rec["stream"] = int(self.stream)
        rec["route"] = json.dumps(self.route, separators=(",", ":"))
        return rec


ROW_FIELDS = tuple(f.name for f in fields(UsageRow))


def now_iso() -> str:
    t = time.time()
    return _iso_second(int(t)) + f".{int(t % 1 * 1000):03d}Z"


@functools.lru_cache(maxsize=4)
def _iso_second(second: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))


def open_db(path: Path) -> sqlite_utils.Database:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        # accounts and credentials will share this database: private from the first byte
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    db = sqlite_utils.Database(path)
    db.enable_wal()
    if "usage" not in db.table_names():
        db["usage"].create(USAGE_COLUMNS, pk="id", not_null={"ts"})
        db["usage"].create_index(["ts"])
    else:
        missing = {k: v for k, v in USAGE_COLUMNS.items() if k not in db["usage"].columns_dict}
        for name, typ in missing.items():
            db["usage"].add_column(name, typ)
    if "usage_rejected" not in db.table_names():
        db["usage_rejected"].create(REJECTED_COLUMNS, pk="id")
    MIGRATIONS.apply(db)
    return db


# Schema changes of databases written by earlier versions, applied once each by open_db (the
# `_sqlite_migrations` table says which ran). Columns new to USAGE_COLUMNS are added above;
# what they mean for the rows already stored is filled in here.
MIGRATIONS = Migrations("detour-usage")


@MIGRATIONS(name="0001_client_tool")
def _client_tool(db: sqlite_utils.Database) -> None:
    """client_tool and client_version of the rows written before they existed."""
    clients = [c for (c,) in db.execute(
        "SELECT DISTINCT client FROM usage WHERE client_tool IS NULL")]
    for client in clients:
        tool, version = client_tool(client or "")
        db.execute("UPDATE usage SET client_tool = ?, client_version = ? "
                   "WHERE client IS ? AND client_tool IS NULL", [tool, version, client])


@MIGRATIONS(name="0002_report_indexes")
def _report_indexes(db: sqlite_utils.Database) -> None:
    """What `detour usage` and the Datasette queries filter on: time ranges (the ts index,
    from the start) per tool, per provider and account; a call's row by its flow id."""
    usage = db["usage"]
    usage.create_index(["ts"], if_not_exists=True)
    usage.create_index(["flow_id"], if_not_exists=True)
    usage.create_index(["client_tool", "ts"], if_not_exists=True)
    usage.create_index(["provider", "account", "ts"], if_not_exists=True)


# `usage_daily`: the usage rows summed per UTC day, model, provider, account, client tool and
# user, kept by triggers on `usage` (whoever writes a row, the sums follow), so that a report
# over months reads a few thousand sums instead of millions of rows. Each sum is an expression
# over one row ({r}: NEW in the triggers, the table in a query of raw rows), written so that
# SQLite and Postgres read it alike (CASE, not a boolean as a number; `"user"` quoted).
DAILY_KEYS = {
    "day": "substr({r}.ts, 1, 10)",
    # the model that answered, or the one asked when none did
    "model": "CASE WHEN coalesce({r}.model_upstream, '') != '' THEN {r}.model_upstream "
             "ELSE coalesce({r}.model_requested, '') END",
    "provider": "coalesce({r}.provider, '')",
    "account": "coalesce({r}.account, '')",
    "client_tool": "coalesce({r}.client_tool, '')",
    "user": 'coalesce({r}."user", \'\')',  # the gateway's user ('' without users)
}
DAILY_SUMS = {
    "calls": "1",
    "input_tokens": "coalesce({r}.input_tokens, 0)",
    "output_tokens": "coalesce({r}.output_tokens, 0)",
    "cache_read_tokens": "coalesce({r}.cache_read_tokens, 0)",
    "cache_write_tokens": "coalesce({r}.cache_write_tokens, 0)",
    "reasoning_tokens": "coalesce({r}.reasoning_tokens, 0)",
    "cost_usd": "coalesce({r}.cost_usd, 0.0)",  # of the priced calls
    # the part of cost_usd that is a subscription's API-equivalent
    "subscription_usd": "CASE WHEN {r}.cost_basis = 'subscription' "
                        "THEN coalesce({r}.cost_usd, 0.0) ELSE 0.0 END",
    # calls with tokens whose model had no price
    "unpriced": "CASE WHEN {r}.cost_usd IS NULL AND "
                "coalesce({r}.input_tokens, 0) + coalesce({r}.output_tokens, 0) > 0 "
                "THEN 1 ELSE 0 END",
    # answered (or failed) after more than one attempt
    "fallbacks": "CASE WHEN {r}.attempts > 1 THEN 1 ELSE 0 END",
    # a status >= 400, or none at all (the client left, the proxy stopped)
    "errors": "CASE WHEN coalesce({r}.status, 0) >= 400 OR coalesce({r}.status, 0) = 0 "
              "THEN 1 ELSE 0 END",
    "latency_ms": "coalesce({r}.latency_ms, 0.0)",
    "latency_count": "CASE WHEN {r}.latency_ms IS NOT NULL THEN 1 ELSE 0 END",
    "ttfb_ms": "coalesce({r}.ttfb_ms, 0.0)",
    "ttfb_count": "CASE WHEN {r}.ttfb_ms IS NOT NULL THEN 1 ELSE 0 END",
}
DAILY_COLUMNS = {k: f'"{k}"' for k in DAILY_KEYS} | {k: k for k in DAILY_SUMS}


def daily_select(r: str = "usage", total: str = "total({})") -> str:
    """The daily sums of raw rows: `SELECT keys..., sums... FROM usage` (add WHERE, GROUP BY);
    `total`: how a column is summed (SQLite's total; `coalesce(sum({}), 0)` on Postgres)."""
    keys = ", ".join(e.format(r=r) for e in DAILY_KEYS.values())
    sums = ", ".join(total.format(e.format(r=r)) for e in DAILY_SUMS.values())
    return f"SELECT {keys}, {sums} FROM usage"


def _create_daily(db: sqlite_utils.Database) -> None:
    """The table of daily sums, its triggers, and the sums of the rows already stored."""
    keys = [DAILY_COLUMNS[k] for k in DAILY_KEYS]
    sums = list(DAILY_SUMS)
    columns = ", ".join([f"{k} TEXT NOT NULL" for k in keys] + [f"{c} NUMERIC NOT NULL DEFAULT 0"
                                                                for c in sums])
    db.execute(f"CREATE TABLE IF NOT EXISTS usage_daily ({columns}, "
               f"PRIMARY KEY ({', '.join(keys)})) WITHOUT ROWID")
    new_values = ", ".join(e.format(r="NEW") for e in [*DAILY_KEYS.values(),
                                                        *DAILY_SUMS.values()])
    add = ", ".join(f"{c} = {c} + excluded.{c}" for c in sums)
    db.execute(f"""
        CREATE TRIGGER IF NOT EXISTS usage_daily_insert AFTER INSERT ON usage BEGIN
            INSERT INTO usage_daily ({', '.join(keys + sums)}) VALUES ({new_values})
            ON CONFLICT ({', '.join(keys)}) DO UPDATE SET {add};
        END""")
    subtract = ", ".join(f"{c} = {c} - {e.format(r='OLD')}" for c, e in DAILY_SUMS.items())
    match = " AND ".join(f"{DAILY_COLUMNS[k]} = {e.format(r='OLD')}"
                         for k, e in DAILY_KEYS.items())
    db.execute(f"""
        CREATE TRIGGER IF NOT EXISTS usage_daily_delete AFTER DELETE ON usage BEGIN
            UPDATE usage_daily SET {subtract} WHERE {match};
        END""")
    db.execute("DELETE FROM usage_daily")
    db.execute(f"INSERT INTO usage_daily ({', '.join(keys + sums)}) "
               f"{daily_select()} GROUP BY {', '.join(str(i + 1) for i in range(len(keys)))}")


@MIGRATIONS(name="0003_usage_daily")
def _usage_daily(db: sqlite_utils.Database) -> None:
    _create_daily(db)


@MIGRATIONS(name="0004_usage_daily_user")
def _usage_daily_user(db: sqlite_utils.Database) -> None:
    """The daily sums get the user: made again from the rows (which every sum equals: the
    triggers moved them with each row), the rows themselves untouched."""
    db.execute("DROP TRIGGER IF EXISTS usage_daily_insert")
    db.execute("DROP TRIGGER IF EXISTS usage_daily_delete")
    db.execute("DROP TABLE IF EXISTS usage_daily")
    _create_daily(db)


def row_json(rec: dict) -> str:
    # ASCII: a lone surrogate in a row must not stop it from being set aside or spilled
    return json.dumps(rec, separators=(",", ":"), default=repr)


class UsageStore:
    """Queue + batched writer. `add()` is called on mitmproxy's event loop and never blocks;
    the writes happen in a worker thread (sqlite3 is blocking I/O)."""

    def __init__(self, path: Path, flush_interval: float = 0.5, batch: int = 200,
                 busy_timeout: float = BUSY_TIMEOUT):
        self._init_queue(path, path.parent, flush_interval, batch, busy_timeout)
        open_db(path).close()
        self.import_spill()
        _keep_reserve(path.parent / RESERVE_NAME)

    def _init_queue(self, path: Path, spill_dir: Path, flush_interval: float, batch: int,
                    busy_timeout: float) -> None:
        """What every store has, whatever its database (addons/usage_postgres.py too): the
        queue, the spill, the writer's state."""
        self.path = path
        self.spill_path = spill_dir / SPILL_NAME
        self.flush_interval = flush_interval
        self.batch = batch
        self.busy_timeout = busy_timeout
        self._queue: list[dict] = []
        self._rejected: list[tuple[dict, str]] = []  # set aside, not yet in usage_rejected
        self._lock = threading.Lock()  # guards the queue and serialises writers
        self._write_lock = threading.Lock()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._unavailable = ""  # why the database cannot be written, while it cannot
        self._conn = None  # the writer's connection (see _writer)
        self._conn_file: tuple[int, int] | None = None
        self.recording = True  # False: rows are dropped (detour_usage_record)
        # called with the records each flush stored (priced), in the writer's thread
        self.observers: list[Callable[[list[dict]], None]] = []

    def stats(self) -> dict[str, int]:
        """Rows waiting to be written, and rows SQLite refused waiting to be set aside."""
        return {"rows_queued": len(self._queue), "rows_rejected_waiting": len(self._rejected)}

    def add(self, row: UsageRow) -> None:
        """Queue a row (its `Call` calls this once: the store does not de-duplicate)."""
        if not self.recording:
            return
        with self._lock:
            self._queue.append(row.as_record())
            full = len(self._queue) >= self.batch
        if full and self._wakeup is not None:
            self._wakeup.set()

    async def run(self) -> None:
        """The background flusher; cancel it and call close() to stop."""
        self._wakeup = asyncio.Event()
        while True:
            try:
                await asyncio.wait_for(self._wakeup.wait(), self.flush_interval)
            except TimeoutError:
                pass
            self._wakeup.clear()
            if self._queue or self._rejected:
                await asyncio.to_thread(self.flush)

    def flush(self) -> int:
        """Write what is queued; return how many rows were stored. Rows the database cannot
        take now go back to the head of the queue."""
        with self._write_lock:
            with self._lock:
                rows, self._queue = self._queue, []
            if not rows and not self._rejected:
                return 0
            price_rows(rows)
            written, unwritten = self._write(rows)
            if unwritten:
                with self._lock:
                    self._queue[:0] = unwritten
            stored = rows[:len(rows) - len(unwritten)]  # what is not written is at the end
            for observer in self.observers:
                try:
                    observer(stored)
                except Exception as e:  # noqa: BLE001 - an observer never stops the writer
                    log.error("usage: observer %r failed", observer, exc_info=e)
            return written

    @property
    def where(self) -> str:
        """The store, for messages and /healthz."""
        return str(self.path)

    def check_writable(self, timeout: float = BUSY_TIMEOUT) -> str | None:
        """None when the database takes a write now (a write lock within `timeout`), else
        why not. Writes nothing."""
        try:
            if not self.path.is_file():
                return f"{self.path}: no database file"
            conn = sqlite3.connect(self.path, timeout=timeout, isolation_level=None)
            try:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("ROLLBACK")
            finally:
                conn.close()
        except UNAVAILABLE as e:
            return f"{self.path}: {type(e).__name__}: {e}"
        return None

    def close(self) -> None:
        """Write what is queued (waiting at most the busy timeout) and spill the rest."""
        self.flush()
        with self._write_lock, self._lock:
            rows, self._queue = self._queue, []
            rejected, self._rejected = self._rejected, []
            self._drop_writer()
        if rows or rejected:
            self._spill([{"row": rec} for rec in rows]
                        + [{"row": rec, "rejected": reason} for rec, reason in rejected])

    def spent_by_user(self, users: list[str], now: float) -> dict[str, tuple[int, float]]:
        """Each user's tokens today and cost_usd this month (UTC) in the stored rows: what
        their limits have counted before this start."""
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        conn = self._connect()
        try:
            rows = conn.execute(
                "SELECT user, SUM(CASE WHEN ts >= ? THEN COALESCE(input_tokens, 0) + "
                "COALESCE(output_tokens, 0) + COALESCE(cache_read_tokens, 0) + "
                "COALESCE(cache_write_tokens, 0) ELSE 0 END), SUM(COALESCE(cost_usd, 0)) "
                "FROM usage WHERE ts >= ? AND user IN (SELECT value FROM json_each(?)) "
                "GROUP BY user", (day, day[:7], json.dumps(users))).fetchall()
        finally:
            conn.close()
        return {user: (int(tokens or 0), float(usd or 0)) for user, tokens, usd in rows}

    # ------------------------------------------------------------ writing

    def _connect(self, check_same_thread: bool = True) -> sqlite3.Connection:
        if not self.path.is_file():  # sqlite3 would create an empty database without the tables
            raise FileNotFoundError(errno.ENOENT, "no database file", str(self.path))
        return sqlite3.connect(self.path, timeout=self.busy_timeout,
                               check_same_thread=check_same_thread)

    def _writer(self) -> sqlite3.Connection:
        """The flushes' connection, kept open between them (opening one per flush took two
        thirds of the writer's time), and opened again when the file at the path is no longer
        the one it has open (replaced, removed). synchronous=NORMAL: in WAL mode a commit then
        survives the process being killed, not a power cut, and costs no fsync."""
        st = os.stat(self.path)
        if self._conn is not None and self._conn_file == (st.st_dev, st.st_ino):
            return self._conn
        self._drop_writer()
        # flushes run in worker threads, one at a time (_write_lock)
        conn = self._connect(check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")
        # closing the last connection would checkpoint the WAL (~0.2 s, on mitmproxy's event
        # loop at a stop); the commits' own auto-checkpoints and the next open do it instead
        conn.setconfig(sqlite3.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, True)
        self._conn, self._conn_file = conn, (st.st_dev, st.st_ino)
        return conn

    def _drop_writer(self) -> None:
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()

    def _write(self, rows: list[dict]) -> tuple[int, list[dict]]:
        """Store `rows` (one transaction; row by row when one of them fails it) and the rows set
        aside. Returns how many were stored and the ones to try again later."""
        try:
            conn = self._writer()
        except UNAVAILABLE as e:
            self._drop_writer()
            self._note_unavailable(e, len(rows))
            return 0, rows
        try:
            try:
                written = _insert(conn, rows)
            except UNAVAILABLE as e:
                self._drop_writer()
                self._note_unavailable(e, len(rows))
                return 0, rows
            except Exception:  # noqa: BLE001 - one bad row: find it, keep the others
                written = 0
                for i, rec in enumerate(rows):
                    try:
                        written += _insert(conn, [rec])
                    except UNAVAILABLE as e:
                        self._drop_writer()
                        self._note_unavailable(e, len(rows) - i)
                        return written, rows[i:]
                    except Exception as e:  # noqa: BLE001
                        reason = f"{type(e).__name__}: {e}"
                        log.error("usage: row of flow %s set aside in usage_rejected: %s",
                                  rec.get("flow_id"), reason)
                        self._rejected.append((rec, reason))
            self._write_rejected(conn)
        except BaseException:
            self._drop_writer()
            raise
        if self._unavailable:
            log.info("usage: %s is written again", self.path)
            self._unavailable = ""
        return written, []

    def _write_rejected(self, conn: sqlite3.Connection) -> None:
        if not self._rejected:
            return
        try:
            with conn:
                conn.executemany(_INSERT_REJECTED, [
                    (now_iso(), str(rec.get("flow_id") or ""), reason, row_json(rec))
                    for rec, reason in self._rejected])
        except UNAVAILABLE as e:
            self._note_unavailable(e, len(self._rejected))
            return
        self._rejected = []

    def _note_unavailable(self, error: Exception, count: int) -> None:
        reason = f"{type(error).__name__}: {error}"
        if reason != self._unavailable:  # once per cause, not every half second
            log.warning("usage: cannot write to %s (%s); %d rows wait", self.path, reason, count)
            self._unavailable = reason

    # ------------------------------------------------------------ spilling

    def _spill(self, items: list[dict]) -> None:
        data = "".join(row_json(item) + "\n" for item in items).encode()
        try:
            _append_synced(self.spill_path, data)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                return _log_lost(self.spill_path, e, items)
            try:  # the disk is full: give up the reserve to make room
                (self.path.parent / RESERVE_NAME).unlink(missing_ok=True)
                _append_synced(self.spill_path, data)
            except OSError as e2:
                return _log_lost(self.spill_path, e2, items)
        log.warning("usage: %d rows could not be written to %s; kept in %s for the next start",
                    len(items), self.path, self.spill_path)

    def import_spill(self) -> int:
        """Store the rows spilled by an earlier stop, then remove the file. A row whose flow_id
        is already stored is skipped, so a file imported twice stores its rows once."""
        try:
            lines = self.spill_path.read_bytes().splitlines()
        except FileNotFoundError:
            return 0
        except OSError as e:
            log.error("usage: cannot read %s: %s", self.spill_path, e)
            return 0
        rows: dict[str, dict] = {}  # by flow_id: a row spilled twice is stored once
        rejected: list[tuple[dict, str]] = []
        for number, line in enumerate(lines, 1):
            try:
                item = json.loads(line)
                rec = {name: item["row"].get(name) for name in ROW_COLUMNS}
            except (ValueError, KeyError, TypeError, AttributeError):
                if line.strip():
                    rejected.append(({"line": line.decode("utf-8", "replace")},
                                     f"unreadable line {number} of {SPILL_NAME}"))
                continue
            if "rejected" in item:
                rejected.append((rec, str(item["rejected"])))
            else:
                rows.setdefault(str(rec["flow_id"] or "") or f"line {number}", rec)
        with self._write_lock:
            try:
                conn = self._connect()
                try:
                    flow_ids = [str(rec.get("flow_id") or "")
                                for rec in [*rows.values(), *(rec for rec, _ in rejected)]]
                    # rows a crashed earlier import stored already, as usage or set aside
                    stored = (_stored_flow_ids(conn, "usage", flow_ids)
                              | _stored_flow_ids(conn, "usage_rejected", flow_ids))
                finally:
                    conn.close()
            except UNAVAILABLE as e:
                log.error("usage: cannot import %s now (%s); trying at the next start",
                          self.spill_path, e)
                return 0
            fresh = [rec for rec in rows.values() if str(rec["flow_id"] or "") not in stored]
            self._rejected += [(rec, reason) for rec, reason in rejected
                               if str(rec.get("flow_id") or "") not in stored]
            written, unwritten = self._write(fresh)
            if unwritten or self._rejected:
                self._rejected = []
                log.error("usage: %s only partly imported; the rest at the next start",
                          self.spill_path)
                return written
            self.spill_path.unlink()
            _sync_dir(self.spill_path.parent)
        log.info("usage: imported %d rows from %s", written, self.spill_path)
        return written


def _insert(conn: sqlite3.Connection, rows: list[dict]) -> int:
    with conn:  # one transaction: all the rows or none
        conn.executemany(_INSERT, [tuple(rec.get(name) for name in ROW_COLUMNS) for rec in rows])
    return len(rows)


def _stored_flow_ids(conn: sqlite3.Connection, table: str, flow_ids: list[str]) -> set[str]:
    flow_ids = [flow_id for flow_id in flow_ids if flow_id]  # "": a row with no flow to match
    if not flow_ids:
        return set()
    cursor = conn.execute(f"SELECT flow_id FROM {table} WHERE flow_id IN "
                          "(SELECT value FROM json_each(?))", (json.dumps(flow_ids),))
    return {flow_id for (flow_id,) in cursor}


def _append_synced(path: Path, data: bytes) -> None:
    created = not path.exists()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    if created:
        _sync_dir(path.parent)


def _sync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _keep_reserve(path: Path) -> None:
    try:
        if path.stat().st_size >= RESERVE_BYTES:
            return
    except FileNotFoundError:
        pass
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.posix_fallocate(fd, 0, RESERVE_BYTES)
        finally:
            os.close(fd)
    except OSError as e:  # a full disk already: no reserve this time
        path.unlink(missing_ok=True)
        log.warning("usage: cannot set aside %s: %s", path, e)


def _log_lost(path: Path, error: OSError, items: list[dict]) -> None:
    # the last place a row can go: the operator can still recover it from the log
    log.error("usage: cannot spill %d rows to %s (%s); they follow, one per line", len(items),
              path, error)
    for item in items:
        log.error("usage: unsaved row %s", row_json(item))
