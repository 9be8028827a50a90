"""The relay: a small HTTP/1.1 server on 127.0.0.1, inside mitmproxy's own event loop, that
answers rerouted streaming calls.

mitmproxy streams a response to its client only when it comes from a real upstream
connection, and an addon cannot switch upstreams once mitmproxy has sent a request. So the
router's request hook points a streamed model call at `http://127.0.0.1:<port>/relay/<token>`;
here the job's candidates are tried in order (a fallback is possible until the first byte is
committed) and the translated answer is written back chunk by chunk, which mitmproxy passes on
(`stream = True`). Tokens are unguessable and single-use; anything else gets a 404.

Several ports, because mitmproxy opens at most 5 concurrent connections per (client
connection, upstream address): an HTTP/2 client's parallel streams would queue behind that.
"""

import asyncio
import logging
import secrets
import time
from collections.abc import Callable

from mitmproxy.utils.asyncio_utils import create_task

from addons.forwarding import Failure, Forwarder, Job

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
YIELD_EVERY = 0.01  # seconds of relaying before the relay lets other tasks run
JOB_TTL = 120.0  # a job mitmproxy never delivered (the client left first) is dropped after this
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 413: "Payload Too Large", 422: "Unprocessable Entity",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


class RelayServer:
    def __init__(self, forwarder: Forwarder, finished: Callable[[Job], None], ports: int = 8):
        self.forwarder = forwarder
        self.finished = finished  # called once per job, whatever happened (records usage)
        self.n_ports = ports
        self.ports: list[int] = []
        self._servers: list[asyncio.Server] = []
        self._jobs: dict[str, tuple[Job, float]] = {}
        self._by_flow: dict[str, str] = {}
        self._running: dict[str, tuple[asyncio.Task, Job]] = {}  # flow id -> its work
        self._next = 0

    async def start(self) -> None:
        for _ in range(self.n_ports):
            server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
            self._servers.append(server)
            self.ports.append(server.sockets[0].getsockname()[1])

    def stop(self) -> None:
        """Synchronous, for mitmproxy's `done`: every job still open is recorded now, while the
        usage store can still take it (`finished` must tolerate a second call for the same
        job, which the cancelled task may still make)."""
        for server in self._servers:
            server.close()
        for task, job in list(self._running.values()):
            job.row.error = job.row.error or "proxy stopped mid-answer"
            self.finished(job)
            task.cancel()
        for job, _ in self._jobs.values():
            job.row.error = job.row.error or "proxy stopped before the relay was reached"
            self.finished(job)
        self._running.clear()
        self._jobs.clear()
        self._by_flow.clear()
        self._servers.clear()

    def submit(self, job: Job) -> str:
        """Register a job; returns the URL mitmproxy must send the flow to."""
        self._sweep()
        token = secrets.token_urlsafe(24)
        self._jobs[token] = (job, time.monotonic())
        self._by_flow[job.flow_id] = token
        port = self.ports[self._next % len(self.ports)]
        self._next += 1
        return f"http://127.0.0.1:{port}/relay/{token}"

    def cancel(self, flow_id: str) -> None:
        """The client went away (mitmproxy's error hook): stop the work, if any is left."""
        token = self._by_flow.pop(flow_id, None)
        if token and token in self._jobs:
            job, _ = self._jobs.pop(token)
            job.row.error = job.row.error or "client-aborted before the relay was reached"
            self.finished(job)
        running = self._running.get(flow_id)
        if running is not None:
            running[0].cancel()

    def _sweep(self) -> None:
        now = time.monotonic()
        for token, (job, born) in list(self._jobs.items()):
            if now - born > JOB_TTL:
                del self._jobs[token]
                self._by_flow.pop(job.flow_id, None)
                job.row.error = "never delivered to the relay"
                self.finished(job)

    # ------------------------------------------------------------ the HTTP side

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except Exception:
            log.exception("relay: connection failed")
        finally:
            writer.close()

    async def _one_request(self, reader, writer) -> bool:
        """Serve one request; True if the connection may carry another."""
        head = await reader.readuntil(b"\r\n\r\n")
        if len(head) > MAX_HEAD:
            return False
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        path = parts[1] if len(parts) == 3 else ""
        length, chunked = 0, False
        for line in lines[1:]:
            name, _, value = line.partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        # the body is the client's original request, kept so mitmweb shows it; the job already
        # holds it parsed, so here it is only drained
        if chunked:
            await _drain_chunked(reader)
        elif length:
            await reader.readexactly(length)
        token = path.removeprefix("/relay/")
        entry = self._jobs.pop(token, None) if path.startswith("/relay/") else None
        if entry is None:
            writer.write(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n")
            await writer.drain()
            return True
        job = entry[0]
        self._by_flow.pop(job.flow_id, None)
        work = create_task(self._serve(job, writer), name=f"detour relay {job.flow_id}",
                           keep_ref=True)
        self._running[job.flow_id] = (work, job)
        # mitmproxy sends nothing more on this connection until the answer is complete, so
        # anything readable now is its EOF: the client went away, and the provider call with it
        gone = create_task(reader.read(1), name="detour relay watch", keep_ref=True)
        try:
            await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._running.pop(job.flow_id, None)
        if not work.done():
            work.cancel()
            try:
                await work
            except asyncio.CancelledError:
                pass
            if not job.row.error:
                job.row.error = "client-aborted"
            self.finished(job)
            return False
        gone.cancel()
        try:
            await gone
        except asyncio.CancelledError:
            pass
        if work.cancelled():
            keep = False
            job.row.error = job.row.error or "client-aborted"
        elif work.exception() is not None:
            keep = False
            log.error("relay: serving %s failed", job.flow_id, exc_info=work.exception())
            job.row.error = job.row.error or f"detour error: {work.exception()!r}"
        else:
            keep = work.result()
        self.finished(job)
        return bool(keep)

    async def _serve(self, job: Job, writer: asyncio.StreamWriter) -> bool:
        fwd = self.forwarder
        try:
            opened = await fwd.open(job)
        except Failure as f:
            status, headers, body = fwd._failure_response(job, f)
            _write_head(writer, status, headers, len(body))
            writer.write(body)
            await writer.drain()
            return True
        job.row.status = 200
        _write_head(writer, 200, {"content-type": fwd.stream_content_type(job),
                                  "cache-control": "no-cache",
                                  "x-detour-route": opened.candidate.public_name}, None)
        turn = 0.0  # the first chunk goes out at once: time to first token is what users see
        async for data in fwd.stream(job, opened):
            if job.row.ttfb_ms is None:
                job.row.ttfb_ms = round((time.perf_counter() - job.started) * 1000, 2)
            writer.write(b"%x\r\n%s\r\n" % (len(data), data))
            await writer.drain()
            # drain() does not yield while the buffer is small; a provider that answers faster
            # than we translate would keep the loop to itself and mitmproxy would pass nothing
            # on until the end: give the loop back now and then (each turn costs mitmproxy a
            # read and a write, so not after every chunk)
            now = time.perf_counter()
            if now - turn > YIELD_EVERY:
                await asyncio.sleep(0)
                turn = now
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True


def _write_head(writer, status: int, headers: dict[str, str], length: int | None) -> None:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    lines.append(f"content-length: {length}" if length is not None else "transfer-encoding: chunked")
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


async def _drain_chunked(reader: asyncio.StreamReader) -> None:
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")  # trailers are not used by mitmproxy
            return
        await reader.readexactly(size + 2)
