"""Rests that survive a restart: the `cooldowns` table of the usage database (detour.db).

One row per resting key (an account, an account for one model, a passthrough key): when its
rest ends (wall clock, seconds since the epoch), why, what happened, and how many consecutive
failures of that kind led to it (so a backoff keeps growing after a restart). Rests change
rarely: the book notes each change, and the changes are written off the request path, every
`interval` seconds in a worker thread, and once more when the proxy stops. At start the rows
are loaded into the book; those already over are dropped (and deleted).

With `database: postgresql://...` the rows go to that database instead, for every process
(addons/cooldown_postgres.py: the same design, with a merge rule for keys two processes wrote).
"""

import asyncio
import logging
import sqlite3
import time
from pathlib import Path

from addons.routing import CooldownBook

log = logging.getLogger(__name__)

TABLE = "cooldowns"
_CREATE = (f"CREATE TABLE IF NOT EXISTS {TABLE} (key TEXT PRIMARY KEY, until REAL NOT NULL, "
           "reason TEXT NOT NULL, cause TEXT, streak INTEGER NOT NULL DEFAULT 0, "
           "updated TEXT NOT NULL)")
_UPSERT = (f"INSERT INTO {TABLE} (key, until, reason, cause, streak, updated) "
           "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT(key) DO UPDATE SET until = excluded.until, "
           "reason = excluded.reason, cause = excluded.cause, streak = excluded.streak, "
           "updated = excluded.updated")
BUSY_TIMEOUT = 2.0


class CooldownStore:
    ERRORS: tuple[type[Exception], ...] = (sqlite3.Error, OSError)  # a write that can wait

    def __init__(self, path: Path | None, book: CooldownBook, interval: float = 0.5):
        self.path = path
        self.book = book
        self.interval = interval
        self._failing = ""  # why the last write failed, while it fails (logged once)

    @property
    def where(self) -> str:
        """The store, for messages (never a password)."""
        return str(self.path)

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT)
        conn.execute(_CREATE)
        return conn

    def load(self) -> int:
        """Put the rests an earlier run kept into the book, dropping those already over.
        Returns how many still rest."""
        kept = self.book.restore([(k, u, r, c or "", s or 0) for k, u, r, c, s in self._rows()])
        if kept:
            log.info("detour: %d rests kept from the last run (%s)", kept, self.where)
        return kept

    def _rows(self) -> list[tuple]:
        """The rests stored (key, until, reason, cause, streak), those over deleted first."""
        conn = self._connect()
        try:
            with conn:
                conn.execute(f"DELETE FROM {TABLE} WHERE until <= ?", (time.time(),))
                return conn.execute(
                    f"SELECT key, until, reason, cause, streak FROM {TABLE}").fetchall()
        finally:
            conn.close()

    def write(self) -> int:
        """Write what changed in the book since the last write (on the event loop's thread,
        or when nothing else runs); returns the rows touched."""
        changes = self.book.take_changes()
        return len(changes) if self._write(changes) else 0

    def _write(self, changes: dict) -> bool:
        """Store these changes; False (logged once per cause) when the database cannot take
        them now (locked, full): the book is told again, for the next write."""
        if not changes:
            return True
        now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        try:
            self._store(changes, now)
        except self.ERRORS as e:
            self.book.note_changed(changes)
            reason = f"{type(e).__name__}: {str(e).strip()}"
            if reason != self._failing:
                log.warning("detour: cannot keep rests in %s (%s); trying again", self.where,
                            reason)
                self._failing = reason
            return False
        self._failing = ""
        return True

    def _store(self, changes: dict, now: str) -> None:
        """One transaction: the rows of rests that ended go, the others are written."""
        conn = self._connect()
        try:
            with conn:
                conn.executemany(f"DELETE FROM {TABLE} WHERE key = ?",
                                 [(k,) for k, row in changes.items() if row is None])
                conn.executemany(_UPSERT, [(k, *row, now) for k, row in changes.items()
                                           if row is not None])
        finally:
            conn.close()

    async def run(self) -> None:
        """The background writer; cancel it, then call write() once more to stop. The book
        is read on the event loop; only the database work goes to a worker thread."""
        while True:
            await asyncio.sleep(self.interval)
            if self.book.changed:
                await asyncio.to_thread(self._write, self.book.take_changes())
            await self.tick()

    async def tick(self) -> None:
        """What the store does besides writing, once per interval (nothing here)."""

    def close(self) -> None:
        """After the last write (a connection is opened per write here)."""
