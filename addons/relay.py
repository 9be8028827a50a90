"""The relay: a small HTTP/1.1 server on 127.0.0.1, inside mitmproxy's own event loop, that
answers rerouted streaming calls.

mitmproxy streams a response to its client only when it comes from a real upstream
connection, and an addon cannot switch upstreams once mitmproxy has sent a request. So the
router's request hook points a streamed model call at `http://127.0.0.1:<port>/relay/<token>`;
here the job's candidates are tried in order (a fallback is possible until the first byte is
committed) and the translated answer is written back chunk by chunk, which mitmproxy passes on
(`stream = True`). Tokens are unguessable and single-use; anything else gets a 404.

The answer does not cross the loopback socket: mitmproxy's side of the connection is in this
process, read by detour's read loop (read_loop.py), and the relay puts its bytes straight into
that reader (a `Feed`, found once per connection by the connection's two addresses; the
socket where it is not found: another process connecting, or mitmproxy's own loop). The socket
carries mitmproxy's requests and, by closing, each side's end.

Every job is reported to `finished` exactly once, by whoever takes it out of the relay's
books: the connection that served it, `cancel` (client gone before the relay was reached),
`stop` (the proxy stopping) or the sweep (never delivered). `withdraw` reports nothing: the
caller ends that call itself.

Several ports, because mitmproxy opens at most 5 concurrent connections per (client
connection, upstream address): an HTTP/2 client's parallel streams would queue behind that.

The ports are on loopback, open to every local user: connections that have not presented a
request are bounded (beyond `max_waiting`, the one waiting longest is closed; mitmproxy sends
its request at once, so its own connections always get in), accepting survives running out of
file descriptors, and each condition is logged once, then as a count (`ConditionLog`).
"""

import asyncio
import errno
import logging
import secrets
import socket
import time
from collections.abc import Callable

import h11
from mitmproxy.utils.asyncio_utils import create_task

from addons import read_loop
from addons.forwarding import Failure, Forwarder, Job, internal_error

log = logging.getLogger(__name__)
# mitmproxy opens at most 5 connections at once per client connection and upstream address
# (an HTTP/2 client's parallel streams queue behind them): beyond, the next relay port
MAX_PER_ADDRESS = 5

MAX_HEAD = 64 * 1024  # a request head longer than this is refused (431)
READ_SIZE = 64 * 1024
IDLE_TIMEOUT = 60.0  # seconds a kept-alive connection may wait for its next request
HEAD_TIMEOUT = 10.0  # seconds for a request's head and body once its first byte came
YIELD_EVERY = 0.01  # seconds of relaying before the relay lets other tasks run
JOB_TTL = 120.0  # a job mitmproxy never delivered (the client left first) is dropped after this
MAX_WAITING = 256  # connections waiting for a request; beyond, the longest-waiting one is closed
LOG_EVERY = 60.0  # seconds between two log lines about the same condition
ACCEPT_PAUSE = 0.1  # seconds before accepting again after the system refused a descriptor
# accept() errors that say the process or system is out of something: wait, then go on
_ACCEPT_RETRY = {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.ECONNABORTED}
_REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden",
            404: "Not Found", 413: "Payload Too Large", 422: "Unprocessable Entity",
            429: "Too Many Requests", 500: "Internal Server Error", 502: "Bad Gateway",
            503: "Service Unavailable", 504: "Gateway Timeout"}


class RelayServer:
    def __init__(self, forwarder: Forwarder, finished: Callable[[Job], None], ports: int = 8,
                 max_waiting: int = MAX_WAITING):
        self.forwarder = forwarder
        self.finished = finished  # called once per job, whatever happened (ends its call)
        self.n_ports = ports
        self.max_waiting = max_waiting
        self.ports: list[int] = []
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task] = set()  # accept loops and connections: all ours
        self._writers: set[asyncio.StreamWriter] = set()  # every open connection
        self._waiting: dict[asyncio.StreamWriter, None] = {}  # no request yet; oldest first
        self._jobs: dict[str, tuple[Job, float]] = {}
        self._by_flow: dict[str, str] = {}
        self._running: dict[str, tuple[asyncio.Task, Job]] = {}  # flow id -> its work
        # token -> an answer made before the request was read (status, headers, body, born)
        self._answers: dict[str, tuple[int, dict[str, str], bytes, float]] = {}
        self._next = 0
        # the port index each job was sent to, for its client connection (flow id -> (client
        # connection id, index)), and how many jobs not yet ended each pair has
        self._slots: dict[str, tuple[str, int]] = {}
        self._load: dict[tuple[str, int], int] = {}
        self.conditions = ConditionLog()

    async def start(self) -> None:
        for _ in range(self.n_ports):
            # our own accept loop, not asyncio.start_server: asyncio logs a traceback for each
            # accept() the system refuses, and does not say which connections are still open
            sock = socket.create_server(("127.0.0.1", 0))
            sock.setblocking(False)
            self._listeners.append(sock)
            self.ports.append(sock.getsockname()[1])
            self._spawn(self._accept(sock), "detour relay accept")

    def stop(self) -> None:
        """Synchronous, for mitmproxy's `done`: every job still open is recorded now, once,
        while the usage store can still take it; then every connection is closed and its task
        cancelled (`wait_closed` waits for them)."""
        loop = asyncio.get_running_loop()
        for sock in self._listeners:
            loop.remove_reader(sock.fileno())  # before the number can be reused
            sock.close()
        for flow_id in list(self._running):
            self._record(flow_id, "proxy stopped mid-answer")
        for job, _ in self._jobs.values():
            job.call.ended("proxy stopped before the relay was reached")
            self._ended(job)
        self._jobs.clear()
        self._by_flow.clear()
        self._listeners.clear()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        self.conditions.flush()

    async def wait_closed(self) -> None:
        """After `stop`: until every connection's task has ended."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))

    def stats(self) -> dict[str, int]:
        """What the relay holds now; all 0 when no call is in flight (but idle connections
        mitmproxy keeps alive)."""
        return {"jobs_waiting": len(self._jobs), "jobs_running": len(self._running),
                "connections": len(self._writers), "connections_waiting": len(self._waiting)}

    def submit(self, job: Job, client: str = "") -> str:
        """Register a job; returns the URL mitmproxy must send the flow to. `client`: the
        client connection's id, whose jobs share ports as mitmproxy can reuse them."""
        self._sweep()
        token = secrets.token_urlsafe(24)
        self._jobs[token] = (job, time.monotonic())
        self._by_flow[job.flow_id] = token
        return self._url(token, self._take_slot(job.flow_id, client))

    def _take_slot(self, flow_id: str, client: str) -> int:
        """The first port this client connection has fewer than MAX_PER_ADDRESS jobs on: an
        HTTP/1.1 client's streams (one at a time) all go to one port, so mitmproxy reuses its
        connection to the relay instead of opening one per stream (a connect, an accept and
        their hooks each), and an HTTP/2 client's parallel streams spread as the limit needs."""
        load = self._load
        for i in range(len(self.ports)):
            if load.get((client, i), 0) < MAX_PER_ADDRESS:
                break
        else:  # every port at the limit: mitmproxy queues; spread them anyway
            i = self._next % len(self.ports)
            self._next += 1
        key = (client, i)
        load[key] = load.get(key, 0) + 1
        self._slots[flow_id] = key
        return i

    def _free_slot(self, flow_id: str) -> None:
        key = self._slots.pop(flow_id, None)
        if key is not None:
            left = self._load[key] - 1
            if left:
                self._load[key] = left
            else:
                del self._load[key]

    def _ended(self, job: Job) -> None:
        """A job leaves the relay's books: its port slot is free, its end reported (once)."""
        self._free_slot(job.flow_id)
        self.finished(job)

    def answer(self, status: int, headers: dict[str, str], body: bytes) -> str:
        """A one-time URL answered with this, whatever its request's body: a request refused
        before mitmproxy read its body is sent here, its body streamed and dropped on the way
        (never held), and the client gets the answer in its own format."""
        self._sweep()
        token = secrets.token_urlsafe(24)
        self._answers[token] = (status, headers, body, time.monotonic())
        return self._url(token)

    def _url(self, token: str, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[index]}/relay/{token}"

    def cancel(self, flow_id: str) -> None:
        """The client went away (mitmproxy's error hook): stop the work, if any is left."""
        token = self._by_flow.pop(flow_id, None)
        if token and token in self._jobs:
            job, _ = self._jobs.pop(token)
            job.call.client_left(" before the relay was reached")
            self._ended(job)
        running = self._running.get(flow_id)
        if running is not None:
            running[0].cancel()

    def withdraw(self, flow_id: str) -> None:
        """Forget a job mitmproxy will not deliver (the flow was answered another way); its
        call is the caller's to end."""
        token = self._by_flow.pop(flow_id, None)
        if token is not None:
            self._jobs.pop(token, None)
        self._free_slot(flow_id)

    def _sweep(self) -> None:
        now = time.monotonic()
        for token, (job, born) in list(self._jobs.items()):
            if now - born > JOB_TTL:
                del self._jobs[token]
                self._by_flow.pop(job.flow_id, None)
                job.call.failed("never delivered to the relay")
                self._ended(job)
        for token, answer in list(self._answers.items()):
            if now - answer[3] > JOB_TTL:
                del self._answers[token]

    # ------------------------------------------------------------ connections

    def _spawn(self, coro, name: str) -> asyncio.Task:
        """A task of ours: `stop` cancels it, `wait_closed` waits for it."""
        task = create_task(coro, name=name, keep_ref=False)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(sock)
            except OSError as e:
                if sock.fileno() < 0:
                    return  # stopped
                if e.errno not in _ACCEPT_RETRY:
                    raise
                self.conditions.note(f"accept {e.errno}", "relay: cannot accept a connection: "
                                     "%s", e.strerror or e)
                if e.errno in (errno.EMFILE, errno.ENFILE) and self._waiting:
                    self._close_oldest_waiting()  # gives a descriptor back
                    self.conditions.note("evicted for descriptors", "relay: out of file "
                                         "descriptors; closing connections that sent nothing")
                await asyncio.sleep(ACCEPT_PAUSE)  # the backlog is still there: no busy loop
                continue
            self._spawn(self._connection(conn), "detour relay connection")

    def _close_oldest_waiting(self) -> None:
        oldest = next(iter(self._waiting))
        del self._waiting[oldest]
        oldest.close()

    def _waiting_for_request(self, writer: asyncio.StreamWriter) -> None:
        while self._waiting and len(self._waiting) >= self.max_waiting:
            self._close_oldest_waiting()
            self.conditions.note("evicted", "relay: more than %d connections waiting for a "
                                 "request (a local process holding connections open?); closing "
                                 "the oldest", self.max_waiting)
        self._waiting[writer] = None

    # ------------------------------------------------------------ the HTTP side

    async def _connection(self, conn: socket.socket):
        try:
            # asyncio turns Nagle off only for sockets whose proto says TCP, which an accepted
            # one's (0) does not: with it on, an answer's last small write waited for
            # mitmproxy's delayed ACK (~40 ms) on every reused relay connection
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            reader, writer = await asyncio.open_connection(sock=conn)
        except BaseException:
            conn.close()
            raise
        self._writers.add(writer)
        http = RelayHttp(reader, writer, (conn.getsockname()[:2], conn.getpeername()[:2]))
        try:
            while await self._one_request(http) and http.next_cycle():
                pass
        except h11.RemoteProtocolError as e:
            self.conditions.note("refused", "relay: refused a request it could not read: %s", e)
            await http.refuse(e.error_status_hint)
        except (ConnectionError, TimeoutError):
            pass
        except Exception as e:
            self.conditions.note("failed", "relay: connection failed: %r", e, exc_info=True)
        finally:
            self._waiting.pop(writer, None)
            self._writers.discard(writer)
            writer.close()

    def _record(self, flow_id: str, error: str | None = None) -> None:
        """A running job ends: recorded here, exactly once (by its connection or by `stop`)."""
        running = self._running.pop(flow_id, None)
        if running is None:
            return
        job = running[1]
        if error:
            job.call.ended(error)
        self._ended(job)

    async def _one_request(self, http: "RelayHttp") -> bool:
        """Serve one request; True if the connection may carry another."""
        self._waiting_for_request(http.writer)
        try:
            path = await http.read_request()
        finally:
            self._waiting.pop(http.writer, None)
        if path is None:
            return False
        token = path.removeprefix("/relay/")
        entry = self._jobs.pop(token, None) if path.startswith("/relay/") else None
        answer = self._answers.pop(token, None) if entry is None else None
        if answer is not None:
            status, headers, body, _ = answer
            http.write_head(status, headers, len(body))
            http.write_data(body)
            http.end()
            await http.drain()
            return True
        if entry is None:
            self.conditions.note("unknown token", "relay: refused a request for an unknown or "
                                 "spent job (404)")
            http.write_head(404, {}, 0)
            http.end()
            await http.drain()
            return True
        job = entry[0]
        self._by_flow.pop(job.flow_id, None)
        work = self._spawn(self._serve(job, http), f"detour relay {job.flow_id}")
        self._running[job.flow_id] = (work, job)  # until `_record`: it is recorded once
        # mitmproxy sends nothing more on this connection until the answer is complete, so
        # anything readable now is its EOF: the client went away, and the provider call with it
        gone = self._spawn(http.reader.read(1), "detour relay watch")
        await asyncio.wait((work, gone), return_when=asyncio.FIRST_COMPLETED)
        if not work.done():
            work.cancel()
            try:
                await work
            except asyncio.CancelledError:
                pass
            if job.flow_id in self._running:  # still ours to report (else `stop` did)
                # a client that leaves once the final event reached it did not abort anything
                job.call.client_left()
                self._record(job.flow_id)
            return False
        gone.cancel()
        try:
            early = await gone
        except asyncio.CancelledError:
            early = b""
        if early:  # the next request's first byte, read by the watch as the answer ended
            http.h11.receive_data(early)
        if job.flow_id not in self._running:
            keep = False  # `stop` reported it already
        elif work.cancelled():
            keep = False
            job.call.client_left()
        elif work.exception() is not None:
            keep = False
            log.error("relay: serving %s failed", job.flow_id, exc_info=work.exception())
            job.call.ended(f"detour error: {work.exception()!r}")
        else:
            keep = work.result()
        self._record(job.flow_id)
        return bool(keep)

    async def _serve(self, job: Job, http: "RelayHttp") -> bool:
        """Fail closed: whatever goes wrong, the client gets an answer in its format (a 500
        before the status line, a well-formed error event after it), and its call the cause."""
        try:
            return await self._serve_job(job, http)
        except Exception as e:
            log.error("relay: internal error serving %s", job.flow_id, exc_info=e)
            message = internal_error(e)
            job.call.failed(message)
            fwd = self.forwarder
            try:
                if http.h11.our_state is h11.SEND_RESPONSE:
                    status, headers, body = fwd.failure_response(job, Failure(500, message))
                    http.write_head(status, dict(headers, connection="close"), len(body))
                    http.write_data(body)
                    http.end()
                elif http.h11.our_state is h11.SEND_BODY:
                    http.write_data(fwd.stream_error(job, None, "api_error", message))
                    http.end()
                await http.drain()
            except (ConnectionError, h11.LocalProtocolError):
                pass
            return False

    async def _serve_job(self, job: Job, http: "RelayHttp") -> bool:
        fwd = self.forwarder
        try:
            opened = await fwd.open(job)
        except Failure as f:
            status, headers, body = fwd.failure_response(job, f)
            http.write_head(status, headers, len(body))
            http.write_data(body)
            http.end()
            await http.drain()
            return True
        job.let_go()
        job.call.status(200)
        http.write_head(200, {"content-type": fwd.stream_content_type(job),
                              "cache-control": "no-cache",
                              "x-detour-route": opened.candidate.public_name}, None)
        turn = 0.0  # the first chunk goes out at once: time to first token is what users see
        async for data in fwd.stream(job, opened):
            job.call.first_byte()
            http.write_data(data)
            await http.drain()
            # drain() does not yield while the buffer is small; a provider that answers faster
            # than we translate would keep the loop to itself and mitmproxy would pass nothing
            # on until the end: give the loop back now and then (each turn costs mitmproxy a
            # read and a write, so not after every chunk)
            now = time.perf_counter()
            if now - turn > YIELD_EVERY:
                await asyncio.sleep(0)
                turn = now
        http.end()
        await http.drain()
        return True


class RelayHttp:
    """The HTTP side of one relay connection: h11 (server role) frames what is read and
    written; the relay's logic sees paths, heads and data."""

    __slots__ = ("reader", "writer", "h11", "chunked", "ends", "sink")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 ends: tuple | None = None):
        """`ends`: the connection's (own address, peer address), to find mitmproxy's side of
        it in this process (read_loop.feeds)."""
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.chunked = False
        self.ends = ends
        self.sink: read_loop.Feed | asyncio.StreamWriter | None = None

    def _write(self, data: bytes) -> None:
        sink = self.sink
        if sink is None:
            # decided at the first write, for the connection's life: mitmproxy's reader of it
            # when mitmproxy's side is in this process, read by detour's read loop (no socket
            # hop per event), else the socket; never both, so nothing arrives out of order
            own, peer = self.ends or (None, None)
            sink = self.sink = read_loop.feeds.get((peer, own)) or self.writer
        sink.write(data)

    async def read_request(self) -> str | None:
        """The next request's path, its body read and dropped (the client's original request
        where its flow can be looked at, else empty; the job already holds it parsed), or
        None when the client closed between requests. Idle connections and slow heads time
        out (TimeoutError): a local peer cannot hold connections open for nothing."""
        h = self.h11
        path = None
        received = 0
        async with asyncio.timeout(IDLE_TIMEOUT) as deadline:
            while True:
                event = h.next_event()
                if event is h11.NEED_DATA:
                    # h11 bounds an incomplete head by what it holds between reads;
                    # this bounds it however the reads fall
                    if path is None and received >= MAX_HEAD:
                        raise h11.RemoteProtocolError("request head too large", 431)
                    data = await self.reader.read(READ_SIZE)
                    if not received:
                        deadline.reschedule(asyncio.get_running_loop().time() + HEAD_TIMEOUT)
                    received += len(data)
                    h.receive_data(data)
                elif type(event) is h11.Request:
                    path = event.target.decode("latin-1")
                elif type(event) is h11.EndOfMessage:
                    return path
                elif type(event) is h11.ConnectionClosed:
                    return None

    def write_head(self, status: int, headers: dict[str, str], length: int | None) -> None:
        """Chunked when `length` is None."""
        fields = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        fields.append((b"content-length", b"%d" % length) if length is not None
                      else (b"transfer-encoding", b"chunked"))
        self._write(self.h11.send(h11.Response(
            status_code=status, headers=fields, reason=_REASONS.get(status, "Error"))))
        self.chunked = length is None

    def write_data(self, data: bytes) -> None:
        if not data:
            return
        if self.chunked:
            # one chunk, framed as h11's chunked writer frames it, without an event object and
            # h11's state checks for every relayed event (~3 us each); h11 still writes the
            # head and the last chunk, and counts a length-framed body itself
            self._write(b"%x\r\n%b\r\n" % (len(data), data))
        else:
            self._write(self.h11.send(h11.Data(data=data)))

    def end(self) -> None:
        self._write(self.h11.send(h11.EndOfMessage()))

    async def drain(self) -> None:
        await (self.sink or self.writer).drain()

    def next_cycle(self) -> bool:
        """Ready for the next request, if both sides may go on (no `connection: close`)."""
        if self.h11.our_state is h11.DONE and self.h11.their_state is h11.DONE:
            self.h11.start_next_cycle()
            return True
        return False

    async def refuse(self, status: int) -> None:
        """A request h11 could not parse (bad framing, head too large): say so if no answer
        was begun; the connection is closed after."""
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            try:
                self.write_head(status, {"connection": "close"}, 0)
                self.end()
                await self.drain()
            except (ConnectionError, h11.LocalProtocolError):
                pass


class ConditionLog:
    """One log line per condition, not per occurrence: a peer that fails a thousand times a
    second must not fill the disk. The first occurrence is logged at once, later ones as a
    count at most every LOG_EVERY seconds (and at `flush`)."""

    def __init__(self, logger: logging.Logger = log):
        self.log = logger
        self._unlogged: dict[str, tuple[int, str]] = {}  # condition -> (count, message)
        self._logged_at: dict[str, float] = {}

    def note(self, condition: str, message: str, *args, exc_info: bool = False) -> None:
        now = time.monotonic()
        last = self._logged_at.get(condition)
        if last is None:
            self._logged_at[condition] = now
            self.log.warning(message, *args, exc_info=exc_info)
            return
        count = self._unlogged.get(condition, (0, ""))[0] + 1
        self._unlogged[condition] = (count, message % args if args else message)
        if now - last >= LOG_EVERY:
            self._emit(condition)
            self._logged_at[condition] = now

    def flush(self) -> None:
        for condition in list(self._unlogged):
            self._emit(condition)

    def _emit(self, condition: str) -> None:
        count, message = self._unlogged.pop(condition)
        self.log.warning("%s (%d more times since the last line)", message, count)
