"""A lean httpx transport for the provider leg: HTTP/1.1 by h11 on asyncio's own streams (and
TLS), with a keep-alive pool.

Why: httpx's default transport (httpcore over anyio) was measured at 2-4 ms of CPU per call and
70-95 us per streamed chunk inside mitmproxy, against ~0.3 ms and ~20 us for plain asyncio
streams; on a proxy whose whole budget is a few ms per call that was most of detour's cost.
httpx stays the API (requests, responses, timeouts, exceptions); h11 parses and writes the
HTTP (1xx answers, framing, strict chunk sizes, bounded heads); this module only moves bytes:
one socket read is fed to h11 at once and every body piece it holds is passed on in one piece.
HTTP/1.1 only: every provider speaks it. No outbound proxy: `trust_env=False` is the rule on
this leg (an outbound-proxy setting would select httpx's default transport instead).
"""

import asyncio
import asyncio.sslproto
import select
import socket
import ssl
import time
from collections.abc import AsyncIterator
from itertools import zip_longest

import certifi
import h11
import httpx

READ_SIZE = 64 * 1024
TLS_READ_SIZE = 16 * 1024  # one TLS record's worth: what asyncio's TLS reads from the socket
MAX_HEAD = 64 * 1024  # a response head (or chunk-size line) longer than this is refused
IDLE_SECONDS = 60.0  # a pooled connection older than this is not reused (servers drop them)
HAPPY_EYEBALLS_DELAY = 0.25  # RFC 8305's recommended head start per address family
# asyncio's TLS transport keeps a read buffer of SSLProtocol.max_size (256 KiB, zero-filled, so
# resident) for each connection's life: with a provider connection per open stream that was
# 256 KB of detour's ~860 KB per open stream, and 64 KiB still the largest piece detour held.
# It is the socket read's buffer for the encrypted bytes: a TLS record is at most 16 KiB, so
# larger reads only save loop turns on large answers, and answers are small or streamed
# (more of it waits in the socket until the next turn). Only detour's own connections use
# asyncio's TLS in mitmproxy's process (mitmproxy does its own).
asyncio.sslproto.SSLProtocol.max_size = TLS_READ_SIZE
_SENT = httpx.ByteStream(b"")  # the body of a request as its answer keeps it
_NEED_DATA = h11.NEED_DATA
_Data = h11.Data
_EndOfMessage = h11.EndOfMessage


def ssl_context(verify: bool | ssl.SSLContext, ca_file: str | None = None) -> ssl.SSLContext:
    """TLS trust for a provider: the default store (certifi), a private CA's file, or none."""
    if isinstance(verify, ssl.SSLContext):
        return verify
    if verify:
        return ssl.create_default_context(cafile=ca_file or certifi.where())
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


_TIMEOUTS = {"connect": httpx.ConnectTimeout, "write": httpx.WriteTimeout,
             "read": httpx.ReadTimeout}
_OS_ERRORS = {"connect": httpx.ConnectError, "write": httpx.WriteError, "read": httpx.ReadError}


def _typed(exc: BaseException, phase: str, request: httpx.Request) -> BaseException:
    """The one place where what asyncio, ssl and h11 raise becomes httpx's typed errors, which
    the forwarder tells apart (a timeout, a refusal, a broken answer). Anything else (a
    cancellation, a bug) is returned as it is."""
    if isinstance(exc, httpx.TransportError):
        return exc
    if isinstance(exc, TimeoutError):  # before OSError: TimeoutError is one
        return _TIMEOUTS[phase](f"{phase} timed out", request=request)
    if isinstance(exc, h11.RemoteProtocolError):
        return httpx.RemoteProtocolError(str(exc), request=request)
    if isinstance(exc, h11.LocalProtocolError):
        return httpx.LocalProtocolError(str(exc), request=request)
    if isinstance(exc, OSError):  # ssl.SSLError included
        return _OS_ERRORS[phase](str(exc) or type(exc).__name__, request=request)
    return exc


class BodyDeadline(httpx.TransportError):
    """A body not read to its end by the deadline its reader set (`lean_body`)."""


class _Stale(Exception):
    """A reused connection broke before any byte of the answer came back: the server had
    dropped it while it was idle, so the request may be sent again on a fresh one."""


class _Connection:
    __slots__ = ("reader", "writer", "key", "idle_since", "h11")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: tuple):
        self.reader = reader
        self.writer = writer
        self.key = key
        self.idle_since = 0.0
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)

    def reusable(self) -> bool:
        """An idle connection may carry the next request only if the server sent nothing
        since the last answer ended: unread bytes (a 408 before closing) or an EOF mean it is
        on its way out, and its bytes would be read as the next request's answer."""
        if (self.writer.is_closing() or time.monotonic() - self.idle_since >= IDLE_SECONDS
                or self.reader._buffer or self.reader.at_eof()  # what asyncio already read
                or self.reader.exception() is not None):
            return False
        sock = self.writer.get_extra_info("socket")
        if sock is None:
            return False
        # what has arrived since the event loop last looked (httpcore's is_readable)
        poll = select.poll()
        poll.register(sock.fileno(), select.POLLIN | select.POLLPRI)
        return not poll.poll(0)

    def close(self) -> None:
        self.writer.close()


class StreamsTransport(httpx.AsyncBaseTransport):
    def __init__(self, verify: bool | ssl.SSLContext = True, max_idle_per_host: int = 32):
        self._ssl = ssl_context(verify)
        self._idle: dict[tuple, list[_Connection]] = {}
        self._max_idle = max_idle_per_host

    # ------------------------------------------------------------ connections

    def _take_idle(self, key: tuple) -> _Connection | None:
        conns = self._idle.get(key)
        while conns:
            conn = conns.pop()
            if conn.reusable():
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        """Back to the pool after an answer read to its end, if both sides may go on."""
        h = conn.h11
        conns = self._idle.setdefault(conn.key, [])
        if (h.our_state is not h11.DONE or h.their_state is not h11.DONE
                or h.trailing_data[0] or len(conns) >= self._max_idle):
            conn.close()
            return
        h.start_next_cycle()
        conn.idle_since = time.monotonic()
        conns.append(conn)

    async def _connect(self, key: tuple, request: httpx.Request,
                       timeout: float | None) -> _Connection:
        scheme, host, port = key
        tls = self._ssl if scheme == "https" else None
        try:
            async with asyncio.timeout(timeout):
                sock = await _happy_eyeballs(host, port)
                try:
                    reader, writer = await asyncio.open_connection(
                        sock=sock, ssl=tls, server_hostname=host if tls else None,
                        limit=READ_SIZE)
                except BaseException:
                    sock.close()
                    raise
        except Exception as e:
            raise _typed(e, "connect", request) from None
        return _Connection(reader, writer, key)

    async def aclose(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    # ------------------------------------------------------------ one exchange

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        if url.scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported scheme {url.scheme!r}")
        key = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        timeouts = request.extensions.get("timeout", {})
        body = await request.aread()
        conn = self._take_idle(key)
        if conn is not None:
            try:
                return await self._exchange(conn, request, body, timeouts, reused=True)
            except _Stale:
                pass  # one fresh try
        conn = await self._connect(key, request, timeouts.get("connect"))
        return await self._exchange(conn, request, body, timeouts, reused=False)

    async def _exchange(self, conn: _Connection, request: httpx.Request, body: bytes,
                        timeouts: dict, reused: bool) -> httpx.Response:
        phase = "write"
        received = 0  # bytes of the answer so far
        try:
            h = conn.h11
            head = h.send(h11.Request(method=request.method, target=request.url.raw_path,
                                      headers=_request_headers(request, body)))
            if body:
                body = h.send(_Data(data=body))
            h.send(_EndOfMessage())  # content-length framing: writes nothing
            writer = conn.writer
            if len(body) < 256 * 1024:
                writer.write(head + body)
            else:
                writer.write(head)
                writer.write(body)
            async with asyncio.timeout(timeouts.get("write")):
                await writer.drain()
            phase = "read"
            reader = conn.reader
            async with asyncio.timeout(timeouts.get("read")):
                while True:
                    event = h.next_event()
                    if event is _NEED_DATA:
                        # h11 bounds an incomplete head by what it holds between reads;
                        # this bounds the heads however the reads fall
                        if received >= MAX_HEAD:
                            raise httpx.RemoteProtocolError("response head too large",
                                                            request=request)
                        data = await reader.read(READ_SIZE)
                        if not data and not received:
                            raise httpx.RemoteProtocolError(
                                "server disconnected without sending a response",
                                request=request)
                        received += len(data)
                        h.receive_data(data)
                    elif type(event) is h11.Response:
                        break
                    # else an informational answer (103 Early Hints, 100 Continue): the
                    # final one follows
        except BaseException as e:
            conn.close()
            if reused and not received and isinstance(e, (OSError, httpx.RemoteProtocolError)) \
                    and not isinstance(e, TimeoutError):
                raise _Stale from None
            raise _typed(e, phase, request) from None
        # the request is sent and answered: the response keeps its line and headers (for its
        # errors) but not its body, which a stream would hold for its whole life (the
        # translated request: ~47 KB for Claude Code's)
        request = httpx.Request(request.method, request.url, headers=request.headers,
                                stream=_SENT, extensions=request.extensions)
        request.read()  # its content is b"" (not "not read yet")
        stream = _Body(self, conn, request, timeouts.get("read"))
        return httpx.Response(event.status_code, headers=event.headers.raw_items(),
                              stream=stream, request=request,
                              extensions={"http_version": b"HTTP/1.1",
                                          "reason_phrase": event.reason})


async def _happy_eyeballs(host: str, port: int) -> socket.socket:
    """A connected socket to `host` (RFC 8305): its addresses alternating by family, a new
    attempt started every HAPPY_EYEBALLS_DELAY or as soon as one fails, the first to connect
    wins. asyncio's own (`happy_eyeballs_delay=`) fails an assertion under the eager task
    factory mitmproxy runs with (CPython 3.12.1), hence this one."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    by_family: dict[int, list] = {}
    for info in infos:
        by_family.setdefault(info[0], []).append(info)
    ordered = [info for group in zip_longest(*by_family.values()) for info in group if info]
    if len(ordered) == 1:
        return await _connect_to(loop, ordered[0])
    attempts: list[asyncio.Task] = []
    winner = None
    try:
        for i, info in enumerate(ordered):
            attempts.append(asyncio.ensure_future(_connect_to(loop, info)))
            last = i == len(ordered) - 1
            while winner is None:
                running = [t for t in attempts if not t.done()]
                if not running:
                    break
                done, _ = await asyncio.wait(running, timeout=None if last else
                                             HAPPY_EYEBALLS_DELAY,
                                             return_when=asyncio.FIRST_COMPLETED)
                winner = next((t for t in done if t.exception() is None), None)
                if not last:
                    break  # the delay passed, or an attempt failed: start the next one
            if winner is not None:
                return winner.result()
        errors = [t.exception() for t in attempts]
        raise OSError(f"{host}:{port}: " + "; ".join(str(e) for e in errors if e))
    finally:
        for t in attempts:
            if t is winner:
                continue
            if not t.done():
                t.cancel()  # _connect_to closes its socket
            elif not t.cancelled() and t.exception() is None:
                t.result().close()  # connected too, but second


async def _connect_to(loop: asyncio.AbstractEventLoop, info: tuple) -> socket.socket:
    family, type_, proto, _, address = info
    sock = socket.socket(family, type_, proto)
    try:
        sock.setblocking(False)
        await loop.sock_connect(sock, address)
    except BaseException:
        sock.close()
        raise
    return sock


class _Body(httpx.AsyncByteStream):
    """The response body as h11 frames it. A connection goes back to the pool only when its
    body was read to the end; any other way out closes it.

    Its time limits (each read within `timeout`; with `deadline`, the whole body by then) are
    kept by one timer per body that fails the pending read (`_check`), not by an
    `asyncio.timeout` per read: that is a timer set and cancelled for every event of a
    stream (~3-5 us each, against ~130 us of mitmproxy's own work per event)."""

    def __init__(self, transport: StreamsTransport, conn: _Connection, request: httpx.Request,
                 timeout: float | None):
        self.transport = transport
        self.conn = conn
        self.request = request
        self.timeout = timeout
        self.done = False
        self.deadline: float | None = None  # loop time the whole body must be read by
        self._reading_since: float | None = None  # loop time the pending read began
        self._timer: asyncio.TimerHandle | None = None

    def _watch(self, loop: asyncio.AbstractEventLoop, now: float) -> None:
        """(Re)arm the timer for the first limit that can pass: the deadline, or the pending
        read's timeout (while no read is pending, no read can time out before now + timeout)."""
        due = self.deadline
        if self.timeout is not None:
            since = self._reading_since
            read_due = (now if since is None else since) + self.timeout
            due = read_due if due is None else min(due, read_due)
        self._timer = None if due is None else loop.call_at(due, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._timer = None
        conn = self.conn
        if conn is None or self.done:
            return
        now = loop.time()
        since = self._reading_since
        if self.deadline is not None and now >= self.deadline:
            conn.reader.set_exception(BodyDeadline("past its deadline", request=self.request))
        elif since is not None and self.timeout is not None and now >= since + self.timeout:
            conn.reader.set_exception(TimeoutError())  # the read raises it: a ReadTimeout
        else:
            self._watch(loop, now)

    def _unwatch(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self.conn
        if conn is None:
            return
        h = conn.h11
        reader = conn.reader
        next_event = h.next_event
        loop = asyncio.get_running_loop()
        time_of = loop.time
        self._watch(loop, time_of())
        try:
            while True:
                # everything h11 holds now, in one piece: one socket read, one chunk passed
                # on (as mitmproxy itself reads), not one await per HTTP chunk
                out = []
                while True:
                    event = next_event()
                    if type(event) is _Data:
                        out.append(event.data)  # a bytearray slice of h11's buffer
                    elif event is _NEED_DATA:
                        break
                    elif type(event) is _EndOfMessage:
                        self.done = True
                        break
                    else:
                        raise httpx.RemoteProtocolError(f"unexpected {event!r}",
                                                        request=self.request)
                if self.done:
                    # read to its end: back to the pool now (its timer first), as httpx's own
                    # iterator did by closing the response; a whole answer is never closed
                    self._unwatch()
                    last = b"".join(out)
                    self.conn = None
                    self.transport._release(conn)
                    conn = None
                    if last:
                        yield last
                    return
                if out:
                    yield b"".join(out)
                self._reading_since = time_of()
                data = await reader.read(READ_SIZE)
                self._reading_since = None
                h.receive_data(data)  # b"" is the end: h11 says whether that was allowed
        except BaseException as e:
            self._unwatch()
            if conn is not None:
                self.conn = None
                conn.close()
            if isinstance(e, GeneratorExit):
                raise
            raise _typed(e, "read", self.request) from None

    async def aclose(self) -> None:
        self._unwatch()
        conn, self.conn = self.conn, None
        if conn is None:
            return
        if self.done:
            self.transport._release(conn)
        else:
            conn.close()


def _request_headers(request: httpx.Request, body: bytes) -> list[tuple[bytes, bytes]]:
    headers = []
    has_length = False
    for name, value in request.headers.raw:
        lower = name.lower()
        if lower == b"content-length":
            has_length = True
        elif lower == b"transfer-encoding":
            continue  # the body is always sent whole, with a length
        headers.append((name, value))
    if not has_length and (body or request.method in ("POST", "PUT", "PATCH")):
        headers.append((b"Content-Length", str(len(body)).encode()))
    return headers


def lean_body(response: httpx.Response, deadline: float | None) -> AsyncIterator[bytes] | None:
    """The raw body of an answer this transport gave, to be read by `deadline` (loop time;
    BodyDeadline past it), without httpx's iterator on top; None for another transport's."""
    body = response.stream
    if type(body) is not _Body:
        return None
    body.deadline = deadline
    return body.__aiter__()
