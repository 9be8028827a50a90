"""The usage store: one row per intercepted model call, in DETOUR_HOME/detour.db (SQLite, WAL).

Rows are queued on the request path and written in batches by a background flush, so a slow
disk never delays a response; `close()` writes whatever is queued, so a clean stop loses
nothing. The schema is the public interface described in DESIGN.md (`usage` table).
"""

import asyncio
import json
import logging
import os
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import sqlite_utils

log = logging.getLogger(__name__)

USAGE_COLUMNS = {
    "id": int,
    "ts": str,  # ISO 8601 UTC, when the request arrived
    "flow_id": str,
    "client": str,  # the client program, from its User-Agent (claude-cli/2.1.197 ...)
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
    "cost_usd": float,
    "latency_ms": float,
    "ttfb_ms": float,
    "stream": int,
    "error": str,
    "route": str,  # JSON list of attempts: provider, account, model, status, ms, error
}


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
    recorded: bool = False  # set once queued: a row is stored exactly once

    def as_record(self) -> dict:
        rec = asdict(self)
        del rec["recorded"]
        rec["stream"] = int(self.stream)
        rec["route"] = json.dumps(self.route, separators=(",", ":"))
        return rec


def now_iso() -> str:
    t = time.time()
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)) + f".{int(t % 1 * 1000):03d}Z"


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
    return db


class UsageStore:
    """Queue + batched writer. `add()` is called on mitmproxy's event loop and never blocks;
    the writes happen in a worker thread (sqlite3 is blocking I/O)."""

    def __init__(self, path: Path, flush_interval: float = 0.5, batch: int = 200):
        self.path = path
        self.flush_interval = flush_interval
        self.batch = batch
        self._queue: list[dict] = []
        self._lock = threading.Lock()  # guards the queue and serialises writers
        self._write_lock = threading.Lock()
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        open_db(path).close()

    @property
    def queued(self) -> int:
        return len(self._queue)

    def add(self, row: UsageRow) -> None:
        if row.recorded:
            return
        row.recorded = True
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
            if self._queue:
                await asyncio.to_thread(self.flush)

    def flush(self) -> int:
        with self._write_lock:
            with self._lock:
                rows, self._queue = self._queue, []
            if not rows:
                return 0
            try:
                db = sqlite_utils.Database(self.path)
                try:
                    db["usage"].insert_all(rows, batch_size=self.batch)
                finally:
                    db.close()
            except Exception:
                # keep the rows for the next flush rather than losing them
                with self._lock:
                    self._queue[:0] = rows
                log.exception("usage: writing %d rows to %s failed; will retry", len(rows), self.path)
                return 0
            return len(rows)

    def close(self) -> None:
        self.flush()
