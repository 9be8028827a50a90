"""Usage rows of several detour processes in one Postgres database (`database:
postgresql://...` in config.yaml); SQLite's detour.db stays the default.

The same store as addons/usage.py (rows queued on the request path, written in batches by a
background flush in a worker thread, what a clean stop cannot write spilled to
DETOUR_HOME/usage-spill.jsonl and imported at the next start), writing to Postgres: the same
`usage` and `usage_rejected` tables and columns (`user` is quoted there: a reserved word), a
row's `flow_id` unique, so a spill imported twice, or a batch retried after a lost answer,
stores each row once. Postgres away: the rows wait in the queue (logged once) and go when it is
back; a row Postgres refuses for itself is set aside in `usage_rejected`.
"""

import json
import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from addons.config import ConfigError
from addons.usage import (BUSY_TIMEOUT, RESERVE_NAME, ROW_COLUMNS, USAGE_COLUMNS,
                          UsageStore, _keep_reserve, now_iso, row_json)

log = logging.getLogger(__name__)

_TYPES = {int: "BIGINT", str: "TEXT", float: "DOUBLE PRECISION"}
_COLUMNS = ", ".join(f'"{name}"' for name in ROW_COLUMNS)
_INSERT = (f"INSERT INTO usage ({_COLUMNS}) VALUES ({', '.join(['%s'] * len(ROW_COLUMNS))}) "
           "ON CONFLICT (flow_id) DO NOTHING")
_INSERT_REJECTED = "INSERT INTO usage_rejected (ts, flow_id, reason, row) VALUES (%s, %s, %s, %s)"
# the database cannot be reached now: try again later; any other error is the row's own fault
UNAVAILABLE = (psycopg.OperationalError, psycopg.InterfaceError)


def safe_dsn(url: str) -> str:
    """The URL without its password, for logs."""
    u = urlsplit(url)
    host = u.hostname or ""
    netloc = (f"{u.username}@" if u.username else "") + host + (f":{u.port}" if u.port else "")
    return f"{u.scheme}://{netloc}{u.path}"


# a host gone without a word (a cut network: no reset) is told within seconds, not after TCP's
# minutes of retries, so a write, a poll or a lease never hangs that long (the URL may say
# otherwise; Unix sockets ignore these)
TCP_BOUNDS = {"keepalives": 1, "keepalives_idle": 5, "keepalives_interval": 2,
              "keepalives_count": 3, "tcp_user_timeout": 10_000}


def connect(url: str, timeout: float) -> psycopg.Connection:
    """An autocommit connection (a transaction only where one is asked for)."""
    given = conninfo_to_dict(url)
    return psycopg.connect(url, connect_timeout=max(1, int(timeout)), autocommit=True,
                           **{k: v for k, v in TCP_BOUNDS.items() if k not in given})


def table_rows(conn: psycopg.Connection, table: str, sql: str, args: tuple = ()) -> list[tuple]:
    """`sql`'s rows, or [] while `table` does not exist yet (no detour process has made it)."""
    if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone()[0] is None:
        return []
    return conn.execute(sql, args).fetchall()


def close_quietly(conn: psycopg.Connection | None) -> None:
    """Close a connection that may be broken already."""
    if conn is not None:
        try:
            conn.close()
        except psycopg.Error:
            pass


class PostgresUsageStore(UsageStore):
    def __init__(self, url: str, home: Path, flush_interval: float = 0.5, batch: int = 200,
                 busy_timeout: float = BUSY_TIMEOUT):
        # not UsageStore.__init__: no SQLite file; the queue, spill and flush are the same
        self._init_queue(home / "usage.postgres",  # a label for messages
                         home, flush_interval, batch, busy_timeout)
        self.url = url
        with self._write_lock:
            try:  # at start: a database that cannot be used is an error that names it
                _create_tables(self._connect())
            except psycopg.Error as e:
                self._drop_connection()
                raise ConfigError(f"database {safe_dsn(url)}: {type(e).__name__}: "
                                  f"{str(e).strip()}") from None
        self.import_spill()
        _keep_reserve(home / RESERVE_NAME)

    def _connect(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, self.busy_timeout)
        return self._conn

    def _drop_writer(self) -> None:  # UsageStore's name for it
        self._drop_connection()

    def _drop_connection(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def _write(self, rows: list[dict]) -> tuple[int, list[dict]]:
        """Store `rows` (one transaction; row by row when one of them fails) and the rows set
        aside. Returns how many were stored and the ones to try again later."""
        try:
            conn = self._connect()
            written = _insert(conn, rows)
        except UNAVAILABLE as e:
            self._drop_connection()
            self._note_unavailable(e, len(rows))
            return 0, rows
        except psycopg.Error:
            written = 0
            for i, rec in enumerate(rows):
                try:
                    written += _insert(conn, [rec])
                except UNAVAILABLE as e:
                    self._drop_connection()
                    self._note_unavailable(e, len(rows) - i)
                    return written, rows[i:]
                except psycopg.Error as e:
                    reason = f"{type(e).__name__}: {e}".strip()
                    log.error("usage: row of flow %s set aside in usage_rejected: %s",
                              rec.get("flow_id"), reason)
                    self._rejected.append((rec, reason))
        if self._rejected:
            try:
                with conn.transaction():
                    conn.cursor().executemany(_INSERT_REJECTED, [
                        (now_iso(), str(rec.get("flow_id") or ""), reason, row_json(rec))
                        for rec, reason in self._rejected])
                self._rejected = []
            except UNAVAILABLE as e:
                self._drop_connection()
                self._note_unavailable(e, len(self._rejected))
        if self._unavailable:
            log.info("usage: %s is written again", safe_dsn(self.url))
            self._unavailable = ""
        return written, []

    def _note_unavailable(self, error: Exception, count: int) -> None:
        reason = f"{type(error).__name__}: {str(error).strip()}"
        if reason != self._unavailable:
            log.warning("usage: cannot write to %s (%s); %d rows wait", safe_dsn(self.url),
                        reason, count)
            self._unavailable = reason

    @property
    def where(self) -> str:
        """The database, for messages and /healthz (never its password)."""
        return safe_dsn(self.url)

    def check_writable(self, timeout: float = BUSY_TIMEOUT) -> str | None:
        """None when the database answers now (a connection and a query within `timeout`),
        else why not, naming it without its password (/healthz). Writes nothing."""
        try:
            with connect(self.url, timeout) as conn:
                conn.execute("SELECT 1")
        except psycopg.Error as e:
            return f"{safe_dsn(self.url)}: {type(e).__name__}: {str(e).strip()}"
        return None

    def close(self) -> None:
        super().close()
        with self._write_lock:
            self._drop_connection()

    def import_spill(self) -> int:
        """Store the rows an earlier stop spilled (the unique flow_id keeps each once)."""
        try:
            lines = self.spill_path.read_bytes().splitlines()
        except FileNotFoundError:
            return 0
        rows = []
        for line in lines:
            try:
                item = json.loads(line)
                rows.append({name: item["row"].get(name) for name in ROW_COLUMNS})
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a line cut by a crash: the rest still goes in
        with self._write_lock:
            written, unwritten = self._write(rows)
            if unwritten:
                log.error("usage: %s not imported now; trying at the next start",
                          self.spill_path)
                return 0
            self.spill_path.unlink()
        log.info("usage: imported %d rows from %s", written, self.spill_path)
        return written

    def spent_by_user(self, users: list[str], now: float) -> dict[str, tuple[int, float]]:
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        with connect(self.url, 2) as conn:
            rows = conn.execute(
                'SELECT "user", SUM(CASE WHEN ts >= %s THEN COALESCE(input_tokens, 0) + '
                "COALESCE(output_tokens, 0) + COALESCE(cache_read_tokens, 0) + "
                "COALESCE(cache_write_tokens, 0) ELSE 0 END), SUM(COALESCE(cost_usd, 0)) "
                'FROM usage WHERE ts >= %s AND "user" = ANY(%s) GROUP BY "user"',
                (day, day[:7], users)).fetchall()
        return {user: (int(tokens or 0), float(usd or 0)) for user, tokens, usd in rows}


def _create_tables(conn: psycopg.Connection) -> None:
    columns = ", ".join(f'"{name}" {_TYPES[typ]}' + (" NOT NULL" if name == "ts" else "")
                        for name, typ in USAGE_COLUMNS.items() if name != "id")
    with conn.transaction():
        # two processes starting at once: one creates, the other waits for its lock
        conn.execute("SELECT pg_advisory_xact_lock(4242)")
        conn.execute(f"CREATE TABLE IF NOT EXISTS usage (id BIGSERIAL PRIMARY KEY, {columns})")
        for name, typ in USAGE_COLUMNS.items():  # columns added since (a migration)
            if name != "id":
                conn.execute(f'ALTER TABLE usage ADD COLUMN IF NOT EXISTS "{name}" {_TYPES[typ]}')
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS usage_flow_id ON usage (flow_id)")
        conn.execute("CREATE INDEX IF NOT EXISTS usage_ts ON usage (ts)")
        conn.execute("CREATE TABLE IF NOT EXISTS usage_rejected (id BIGSERIAL PRIMARY KEY, "
                     "ts TEXT, flow_id TEXT, reason TEXT, row TEXT)")


def _insert(conn: psycopg.Connection, rows: list[dict]) -> int:
    if not rows:
        return 0
    with conn.transaction():
        conn.cursor().executemany(_INSERT, [tuple(rec.get(name) for name in ROW_COLUMNS)
                                            for rec in rows])
    return len(rows)
