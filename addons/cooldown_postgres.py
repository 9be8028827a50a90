"""Rests of every detour process in one Postgres database (`database: postgresql://...` in
config.yaml), instead of each process's detour.db: the `cooldowns` table there, with the
columns and the write-behind design of addons/cooldown_store.py (changes written off the
request path in batches, rows loaded at start, those over deleted).

Several processes write the same rows, so a write merges with what is there: the rest that
ends later wins (with its reason and cause), and a failure streak of the same kind keeps the
larger count, so one process's shorter or older rest never shortens another's. A rest that
ended here (a success, `detour.cooldowns.clear`) deletes the row, as it ends the rest for every
process through Redis.

A process that starts takes the rests every process stored. While it has no shared state to
hear the others through (no `state:` configured, or Redis away), it also reads the rows again
every PULL_SECONDS (one query off the request path) and takes the rests that end later than
its own: the others' 429s still rest their keys here, a few seconds late.
"""

import asyncio
import logging
import threading
import time
from collections.abc import Callable

import psycopg

from addons.config import ConfigError
from addons.cooldown_store import TABLE, CooldownStore
from addons.routing import CooldownBook
from addons.usage_postgres import UNAVAILABLE, close_quietly, connect, safe_dsn, table_rows

log = logging.getLogger(__name__)

PULL_SECONDS = 5.0
_CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, "
           "until DOUBLE PRECISION NOT NULL, reason TEXT NOT NULL, cause TEXT, "
           "streak INTEGER NOT NULL DEFAULT 0, updated TEXT NOT NULL)")
# the merge rule (module docstring); SET's right-hand sides all read the row as it was
_UPSERT = (f"INSERT INTO {TABLE} AS old (key, until, reason, cause, streak, updated) "
           "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
           "until = GREATEST(old.until, excluded.until), "
           "reason = CASE WHEN excluded.until > old.until THEN excluded.reason "
           "ELSE old.reason END, "
           "cause = CASE WHEN excluded.until > old.until THEN excluded.cause "
           "ELSE old.cause END, "
           "streak = CASE WHEN excluded.reason = old.reason "
           "THEN GREATEST(old.streak, excluded.streak) "
           "WHEN excluded.until > old.until THEN excluded.streak ELSE old.streak END, "
           "updated = excluded.updated")
_RESTING = f"SELECT key, until, reason, cause, streak FROM {TABLE} WHERE until > %s"
_LOCK_ID = 4244  # the advisory lock two processes creating the table at once take


class PostgresCooldownStore(CooldownStore):
    ERRORS = (psycopg.Error, OSError)

    def __init__(self, url: str, book: CooldownBook, interval: float = 0.5,
                 shared_up: Callable[[], bool] | None = None,
                 pull_seconds: float = PULL_SECONDS):
        super().__init__(None, book, interval)  # no file: `where` names the database
        self.url = url
        # whether this process hears the others' rests through Redis now (then no pull)
        self.shared_up = shared_up or (lambda: False)
        self.pull_seconds = pull_seconds
        self._conn: psycopg.Connection | None = None
        self._lock = threading.Lock()  # the connection: the writer's thread, or a stop's
        self._pulled = time.monotonic()

    @property
    def where(self) -> str:
        return safe_dsn(self.url)

    def _connection(self) -> psycopg.Connection:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url, 2)
            with self._conn.transaction():
                self._conn.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK_ID,))
                self._conn.execute(_CREATE)
        return self._conn

    def _drop_connection(self) -> None:
        close_quietly(self._conn)
        self._conn = None

    def load(self) -> int:
        """CooldownStore.load; a database that cannot be used now is an error naming it (at
        start, as the usage store's)."""
        try:
            return super().load()
        except psycopg.Error as e:
            raise ConfigError(f"database {self.where}: {type(e).__name__}: "
                              f"{str(e).strip()}") from None

    def _rows(self) -> list[tuple]:
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    conn.execute(f"DELETE FROM {TABLE} WHERE until <= %s", (time.time(),))
                    return conn.execute(_RESTING, (time.time(),)).fetchall()
            except psycopg.Error:
                self._drop_connection()
                raise

    def _store(self, changes: dict, now: str) -> None:
        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    cursor = conn.cursor()
                    cursor.executemany(f"DELETE FROM {TABLE} WHERE key = %s",
                                       [(k,) for k, row in changes.items() if row is None])
                    cursor.executemany(_UPSERT, [(k, *row, now) for k, row in changes.items()
                                                 if row is not None])
            except UNAVAILABLE:
                self._drop_connection()
                raise

    def pull(self) -> list[tuple]:
        """The rests stored now (in a worker thread); [] while the database is away."""
        with self._lock:
            try:
                return self._connection().execute(_RESTING, (time.time(),)).fetchall()
            except psycopg.Error as e:
                self._drop_connection()
                reason = f"{type(e).__name__}: {str(e).strip()}"
                if reason != self._failing:
                    log.warning("detour: cannot read rests from %s (%s); trying again",
                                self.where, reason)
                    self._failing = reason
                return []

    def take(self, rows: list[tuple]) -> None:
        """Apply stored rests on the event loop: each one ending later than this process's."""
        for key, until, reason, cause, streak in rows:
            self.book.apply_shared(key, (until, reason, cause or "", streak or 0))

    async def tick(self) -> None:
        if self.shared_up() or time.monotonic() - self._pulled < self.pull_seconds:
            return
        self._pulled = time.monotonic()
        self.take(await asyncio.to_thread(self.pull))

    def close(self) -> None:
        with self._lock:
            self._drop_connection()


def stored_rests(url: str) -> list[tuple[str, float, str, str]]:
    """The rests stored in the database at `url` now (key, until, reason, cause), for
    `detour status` and the `--serve` snapshot; [] when it has none yet. psycopg's errors
    propagate."""
    with connect(url, 5) as conn:
        return rests_in(conn)


def rests_in(conn: psycopg.Connection) -> list[tuple[str, float, str, str]]:
    """stored_rests, read through a connection the caller holds."""
    return [(k, u, r, c or "") for k, u, r, c, _ in
            table_rows(conn, TABLE, _RESTING, (time.time(),))]
