"""The loopback HTTP/1.1 server under every fake vendor: asyncio + h11, in a thread of its own.

    with FakeOpenAI() as fake:            # or fake = FakeOpenAI().start() ... fake.stop()
        fake.enqueue(Status(429, headers={"retry-after": "1"}), Text("ok"))
        ... point the code under test at fake.base_url ("http://127.0.0.1:PORT") ...
        assert fake.requests[0].json["model"] == ...

- One event loop per fake, in a daemon thread; `start()` returns once the port is bound.
- Keep-alive; a streamed response is chunked (close-delimited for an HTTP/1.0 client) and
  written one event at a time with a drain after each, so the client sees every event when it
  is sent.
- While a response is being sent the connection is watched: a client that goes away cancels
  the response at once (a stall or a slow stream does not run on), and a stream it left before
  the end counts in `aborted_streams` (`wait_until` waits for such counters).
- `FakeServer(tls=True)` serves HTTPS with a certificate for 127.0.0.1/localhost signed by a
  throwaway CA (`ca_pem_path`: the PEM to trust). ALPN offers only http/1.1.
- A subclass speaks one vendor's API: `plan(received)` turns a request into a `Plan` (a whole
  response, a stream of prebuilt event bytes, or a hold), usually by taking the next scripted
  reply (`take_reply`) and rendering it (`plan_reply` -> the subclass's `render`).
- `run_cli(cls)` is the subprocess entry (`python -m tests.fakes.openai_provider --port 0`):
  prints exactly one line, `listening on http://127.0.0.1:PORT`, and serves until SIGTERM/SIGINT.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import dataclasses
import http
import itertools
import json
import os
import shutil
import signal
import socket
import ssl
import struct
import sys
import tempfile
import threading
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import h11

from .replies import (CutAfter, Events, Garbage, Linger, Raw, Reply, Stall, Status,
                      StreamError, Text, ToolCall, ToolCalls, Usage)
from .selfsigned import loopback_certs

JSON_TYPE = "application/json"
SSE_TYPE = "text/event-stream; charset=utf-8"
READ_SIZE = 65536


@dataclass(frozen=True, slots=True)
class Received:
    """One request as the fake read it. `headers`: names lower-cased, repeated ones joined with
    ", ". `json`: the body parsed, when it is a JSON object."""

    method: str
    path: str  # the request target, query included
    headers: dict[str, str]
    body: bytes
    json: dict | None

    @property
    def route(self) -> str:
        """The path without the query."""
        return self.path.partition("?")[0]


# What a fake answers, ready to be written: headers are (name, value) byte pairs.
Headers = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Whole:
    """A response with a Content-Length. `cut`: write the headers and half the body, then close."""

    status: int
    headers: Headers
    body: bytes
    delay: float = 0.0
    cut: bool = False
    reset: bool = False


@dataclass(frozen=True, slots=True)
class Stream:
    """A streamed response: each item of `events` is written (and drained) on its own."""

    status: int
    headers: Headers
    events: Iterable[bytes]
    delay: float = 0.0  # between two events
    cut_after: int | None = None  # close the connection after this many events
    reset: bool = False
    linger: float = 0.0  # seconds between the last event and the end of the response


@dataclass(frozen=True, slots=True)
class Hold:
    """Nothing for `seconds`, then `then` (None: close the connection)."""

    seconds: float
    then: Whole | Stream | None


Plan = Whole | Stream | Hold


def _unmarked(value):
    if isinstance(value, dict):
        return {k: _unmarked(v) for k, v in value.items() if k != "cache_control"}
    if isinstance(value, list):
        return [_unmarked(v) for v in value]
    return value


def make_headers(content_type: str | None, *extra: Mapping[str, str] | None) -> Headers:
    out = [(b"content-type", content_type.encode())] if content_type else []
    for more in extra:
        for name, value in (more or {}).items():
            out.append((name.lower().encode("latin-1"), str(value).encode("latin-1")))
    return tuple(out)


def dumps(obj) -> bytes:
    """Compact JSON, as the vendors send it."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return {529: b"Overloaded"}.get(status, b"Unknown")


class _Link:
    __slots__ = ("reader", "writer", "conn", "head")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.reader, self.writer = reader, writer
        self.conn = h11.Connection(h11.SERVER)
        self.head = False  # answering a HEAD request: headers only


class _Exchange:
    """What happened to one response, for the abort counters."""

    __slots__ = ("streaming", "finished", "counted")

    def __init__(self):
        self.streaming = self.finished = self.counted = False


class FakeServer:
    """Base of the fake vendors; see the module docstring. Constructor:

    keys: accepted API keys (None: the class's `default_keys`); `fake.keys` is a set the test
        may change while the fake runs. `check_auth=False` accepts any request.
    default_reply: what a model call gets when the queue is empty: a reply, or a callable
        `(Received) -> reply | None`; None (or the callable returning None) -> `Text(default_text)`.
    default_text: None -> the class's `default_text`.
    validate: reject (400, vendor format) requests the real API would reject for the checks a
        fake implements (required fields, tool-call pairing, ...).
    response_headers: added to every response (e.g. rate-limit headers).
    prefix_cache: report cached prompt tokens as a provider's prefix cache would: the prompt
        is rendered in the order a model reads it (`prompt_text`: system, tools, then each
        message, as compact JSON without cache markers), and a content reply without its own `usage` reports
        `prompt = len(prompt) // 4` and `cached = (longest common prefix with any earlier
        prompt) // 4` (OpenAI `prompt_tokens_details.cached_tokens`, Anthropic
        `cache_read_input_tokens`).
    """

    default_keys: frozenset[str] = frozenset()
    default_text = "Hello from the fake server"

    def __init__(self, *, keys: Iterable[str] | None = None, check_auth: bool = True,
                 default_reply: Reply | Callable[[Received], Reply | None] | None = None,
                 default_text: str | None = None, tls: bool = False, validate: bool = True,
                 response_headers: Mapping[str, str] | None = None,
                 host: str = "127.0.0.1", port: int = 0, prefix_cache: bool = False):
        self.keys: set[str] = set(self.default_keys if keys is None else keys)
        self.check_auth = check_auth
        self.default_reply = default_reply
        if default_text is not None:
            self.default_text = default_text
        self.tls = tls
        self.validate = validate
        self.response_headers = dict(response_headers or {})
        self.host, self.port = host, port
        self.ca_pem_path: str | None = None
        self.prefix_cache = prefix_cache
        self._prompts: list[str] = []  # what prefix_cache has seen

        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._queue: collections.deque[Reply] = collections.deque()
        self._requests: list[Received] = []
        self._ids = itertools.count(1)
        self.connections = 0  # accepted TCP connections
        self.open_streams = 0  # streamed responses being written now
        self.completed_streams = 0
        self.aborted_streams = 0  # streams the client left before their end
        self.aborted_requests = 0  # any response the client left before its end (streams too)
        self.cut_streams = 0  # connections closed on purpose by CutAfter

        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._tmpdir: str | None = None
        self._ssl: ssl.SSLContext | None = None
        self._tasks: set[asyncio.Task] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._stopping = False

    # --- life cycle -------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"{'https' if self.tls else 'http'}://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        return self.base_url + path

    def start(self):
        if self._thread is not None:
            raise RuntimeError(f"{type(self).__name__} already started")
        if self.tls:
            self._prepare_tls()
        self._ready.clear()
        self._start_error = None
        self._stopping = False
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()),
                                        name=f"{type(self).__name__}-loop", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError(f"{type(self).__name__} did not start within 10 s")
        if self._start_error is not None:
            self._thread.join()
            self._thread = None
            self._cleanup_tls()
            raise self._start_error
        return self

    def stop(self) -> None:
        thread, self._thread = self._thread, None
        if thread is None:
            return
        loop, stop_event = self._loop, self._stop_event
        if loop is not None and stop_event is not None:
            try:
                loop.call_soon_threadsafe(stop_event.set)
            except RuntimeError:  # the loop is already gone
                pass
        thread.join(10)
        self._cleanup_tls()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _prepare_tls(self) -> None:
        bundle = loopback_certs()
        self._tmpdir = tempfile.mkdtemp(prefix="detour-fake-tls-")
        paths = {}
        for name, data in (("ca.pem", bundle.ca_pem), ("cert.pem", bundle.cert_pem),
                           ("key.pem", bundle.key_pem)):
            paths[name] = os.path.join(self._tmpdir, name)
            with open(paths[name], "wb") as f:
                f.write(data)
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(paths["cert.pem"], paths["key.pem"])
        context.set_alpn_protocols(["http/1.1"])
        self._ssl = context
        self.ca_pem_path = paths["ca.pem"]

    def _cleanup_tls(self) -> None:
        if self._tmpdir:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
        self._tmpdir = self._ssl = self.ca_pem_path = None

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            kwargs = {"ssl": self._ssl, "ssl_shutdown_timeout": 1.0} if self._ssl else {}
            server = await asyncio.start_server(self._connection, self.host, self.port,
                                                limit=READ_SIZE, backlog=1024, **kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to start()
            self._start_error = exc
            self._ready.set()
            return
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        await self._stop_event.wait()

        self._stopping = True
        server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await asyncio.wait_for(server.wait_closed(), 2)
        except TimeoutError:
            pass

    # --- what the tests use -----------------------------------------------------------------

    @property
    def requests(self) -> list[Received]:
        with self._lock:
            return list(self._requests)

    def enqueue(self, *replies: Reply) -> None:
        """The next model calls get these replies, in order (a request refused for its key or
        its body does not take one); then the default applies again."""
        for reply in replies:
            if not isinstance(reply, (Text, ToolCall, ToolCalls, Events, Status, Garbage,
                                      CutAfter, StreamError, Stall, Linger, Raw)):
                raise TypeError(f"not a reply: {reply!r}")
        with self._lock:
            self._queue.extend(replies)

    @property
    def pending(self) -> int:
        """Replies still queued."""
        with self._lock:
            return len(self._queue)

    def clear(self) -> None:
        """Forget the queue, the recorded requests and the prompts prefix_cache saw (counters
        stay)."""
        with self._lock:
            self._queue.clear()
            self._requests.clear()
            self._prompts.clear()

    def wait_until(self, predicate: Callable[[FakeServer], bool], timeout: float = 5.0) -> bool:
        """Wait until `predicate(fake)` holds (counters change on the fake's thread)."""
        with self._changed:
            return self._changed.wait_for(lambda: predicate(self), timeout)

    # --- for subclasses ---------------------------------------------------------------------

    def plan(self, received: Received) -> Plan:
        raise NotImplementedError

    def render(self, reply: Text | ToolCalls | Events | StreamError, received: Received,
               stream: bool) -> Plan:
        """The vendor's rendering of a content reply (streamed or whole)."""
        raise NotImplementedError

    def error_plan(self, status: int, message: str | None = None, **details) -> Whole:
        """An error response in the vendor's format (`details`: vendor-specific fields)."""
        raise NotImplementedError

    def new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):012x}"

    def take_reply(self, received: Received) -> Reply:
        with self._lock:
            if self._queue:
                return self._queue.popleft()
        default = self.default_reply
        if callable(default):
            default = default(received)
        return default if default is not None else Text(self.default_text)

    def plan_reply(self, reply: Reply, received: Received, stream: bool) -> Plan:
        """The generic reply types; content replies go to `render`."""
        if isinstance(reply, ToolCall):
            reply = ToolCalls((reply,))
        if isinstance(reply, Status):
            if reply.body is None:
                plan = self.error_plan(reply.code, reply.message)
                return dataclasses.replace(plan, headers=plan.headers + make_headers(
                    None, reply.headers))
            body = reply.body if isinstance(reply.body, bytes) else dumps(reply.body)
            return Whole(reply.code, self.headers(JSON_TYPE, reply.headers), body)
        if isinstance(reply, Garbage):
            content_type = reply.content_type or (SSE_TYPE if stream else JSON_TYPE)
            return Whole(reply.status, self.headers(content_type), reply.body)
        if isinstance(reply, Raw):
            headers = make_headers(None, reply.headers)
            if reply.pieces is None:
                return Whole(reply.status, headers, reply.body)
            return Stream(reply.status, headers, reply.pieces, delay=reply.delay)
        if isinstance(reply, Stall):
            then = self.plan_reply(reply.then, received, stream) if reply.then else None
            return Hold(reply.seconds, then)
        if isinstance(reply, Linger):
            inner = self.plan_reply(reply.then, received, stream)
            return dataclasses.replace(inner, linger=reply.seconds) if isinstance(
                inner, Stream) else inner
        if isinstance(reply, CutAfter):
            inner = self.plan_reply(reply.then, received, stream)
            if isinstance(inner, Stream):
                return dataclasses.replace(inner, cut_after=reply.n_events, reset=reply.reset)
            return dataclasses.replace(inner, cut=True, reset=reply.reset)
        if self.prefix_cache and isinstance(reply, (Text, ToolCalls, Events)) and (
                reply.usage is None):
            reply = dataclasses.replace(reply, usage=self._cache_usage(received.json or {}))
        return self.render(reply, received, stream)

    @staticmethod
    def prompt_parts(body: dict) -> list:
        """The prompt in reading order (a vendor's fake may say otherwise): system, tools, then
        the messages."""
        system = body.get("system")
        return ([] if system is None else [system]) + list(body.get("tools") or []) + list(
            body.get("messages") or [])

    def prompt_text(self, body: dict) -> str:
        """The prompt prefix_cache compares: `prompt_parts` as compact JSON, without cache
        markers (they tell the provider where to cache; the model never reads them)."""
        return "".join(json.dumps(_unmarked(p), separators=(",", ":"), ensure_ascii=False)
                       for p in self.prompt_parts(body))

    def _cache_usage(self, body: dict) -> Usage:
        prompt = self.prompt_text(body)
        with self._lock:
            common = max((len(os.path.commonprefix([prompt, seen])) for seen in self._prompts),
                         default=0)
            self._prompts.append(prompt)
        return Usage(prompt=max(1, len(prompt) // 4), cached=common // 4)

    def headers(self, content_type: str | None, *extra: Mapping[str, str] | None) -> Headers:
        """Response headers: the content type, the fake's `response_headers`, then `extra`."""
        return make_headers(content_type, self.response_headers, *extra)

    # --- HTTP -------------------------------------------------------------------------------

    def _bump(self, counter: str, delta: int = 1) -> None:
        with self._changed:
            setattr(self, counter, getattr(self, counter) + delta)
            self._changed.notify_all()

    def _client_left(self, exchange: _Exchange) -> None:
        if exchange.finished or exchange.counted:
            return
        exchange.counted = True
        with self._changed:
            self.aborted_requests += 1
            if exchange.streaming:
                self.aborted_streams += 1
            self._changed.notify_all()

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        task = asyncio.current_task()
        self._tasks.add(task)
        self._writers.add(writer)
        self._bump("connections")
        link = _Link(reader, writer)
        try:
            while True:
                received = await self._read_request(link)
                if received is None:
                    break
                with self._changed:
                    self._requests.append(received)
                    self._changed.notify_all()
                link.head = received.method == "HEAD"
                if not await self._exchange(link, received):
                    break
                if link.conn.our_state is not h11.DONE or link.conn.their_state is not h11.DONE:
                    break
                link.conn.start_next_cycle()
        except h11.RemoteProtocolError:
            if link.conn.our_state in (h11.IDLE, h11.SEND_RESPONSE):
                writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n"
                             b"connection: close\r\n\r\n")
        except (ConnectionError, OSError, ssl.SSLError):
            pass
        finally:
            try:
                await self._close(writer)
            finally:
                self._writers.discard(writer)
                self._tasks.discard(task)

    async def _close(self, writer: asyncio.StreamWriter) -> None:
        if self._stopping or writer.transport.is_closing():
            writer.transport.abort()
            return
        writer.close()
        try:
            await asyncio.wait_for(writer.wait_closed(), 1.0)
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError):
            writer.transport.abort()

    async def _read_request(self, link: _Link) -> Received | None:
        conn = link.conn
        request, body = None, []
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                if conn.they_are_waiting_for_100_continue:
                    link.writer.write(conn.send(h11.InformationalResponse(status_code=100,
                                                                          headers=[])))
                conn.receive_data(await link.reader.read(READ_SIZE))
            elif isinstance(event, h11.Request):
                request = event
            elif isinstance(event, h11.Data):
                body.append(event.data)
            elif isinstance(event, h11.EndOfMessage):
                break
            else:  # ConnectionClosed, or PAUSED (cannot happen at the start of a cycle)
                return None
        headers: dict[str, str] = {}
        for name, value in request.headers:
            key, text = name.decode("latin-1"), value.decode("latin-1")
            headers[key] = f"{headers[key]}, {text}" if key in headers else text
        data = b"".join(body)
        parsed = None
        if data:
            try:
                parsed = json.loads(data)
            except ValueError:
                pass
        return Received(request.method.decode("ascii"), request.target.decode("latin-1"),
                        headers, data, parsed if isinstance(parsed, dict) else None)

    async def _exchange(self, link: _Link, received: Received) -> bool:
        """Answer one request while watching the connection; True: the connection may go on."""
        exchange = _Exchange()
        try:
            plan = self.plan(received)
        except Exception:  # a bug in the fake: say so instead of hanging the client
            body = traceback.format_exc().encode()
            plan = Whole(500, make_headers("text/plain; charset=utf-8"), body)
            print(body.decode(), file=sys.stderr)
        respond = asyncio.ensure_future(self._respond(link, plan, exchange))
        watch = asyncio.ensure_future(self._watch(link))
        try:
            await asyncio.wait((respond, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (respond, watch):
                if not task.done():
                    task.cancel()
            await asyncio.gather(respond, watch, return_exceptions=True)
        if not respond.cancelled():
            error = respond.exception()
            if error is None:
                return respond.result()
            traceback.print_exception(error, file=sys.stderr)
            return False
        self._client_left(exchange)  # the watcher saw the client go first
        return False

    async def _watch(self, link: _Link) -> None:
        """Returns when the client has closed the connection. Whatever it sends meanwhile (a
        pipelined request) is handed to h11 for the next cycle."""
        try:
            while True:
                data = await link.reader.read(READ_SIZE)
                if not data:
                    return
                link.conn.receive_data(data)
        except (ConnectionError, OSError, ssl.SSLError):
            return

    async def _respond(self, link: _Link, plan: Plan, exchange: _Exchange) -> bool:
        try:
            if isinstance(plan, Hold):
                await asyncio.sleep(plan.seconds)
                if plan.then is None:
                    return False
                plan = plan.then
            if isinstance(plan, Whole):
                return await self._send_whole(link, plan, exchange)
            return await self._send_stream(link, plan, exchange)
        except (ConnectionError, OSError, ssl.SSLError):
            self._client_left(exchange)
            return False

    async def _send_whole(self, link: _Link, plan: Whole, exchange: _Exchange) -> bool:
        writer, conn = link.writer, link.conn
        if plan.delay:
            await asyncio.sleep(plan.delay)
        headers = plan.headers + ((b"content-length", str(len(plan.body)).encode()),)
        writer.write(conn.send(h11.Response(status_code=plan.status, headers=headers,
                                            reason=_reason(plan.status))))
        if plan.cut:
            writer.write(conn.send(h11.Data(data=plan.body[:len(plan.body) // 2])))
            await self._cut(writer, plan.reset)
            return False
        if plan.body and not link.head:
            writer.writelines(conn.send_with_data_passthrough(h11.Data(data=plan.body)))
        writer.write(conn.send(h11.EndOfMessage()))
        exchange.finished = True
        await writer.drain()
        return True

    async def _send_stream(self, link: _Link, plan: Stream, exchange: _Exchange) -> bool:
        writer, conn = link.writer, link.conn
        if link.head:
            return await self._send_whole(link, Whole(plan.status, plan.headers, b""), exchange)
        # h11 writes the head and the end; the events are framed here, which is several times
        # faster than h11.Data per event. Chunked for HTTP/1.1, else delimited by the close
        # (h11 makes the same choice when it sees no length).
        chunked = conn.their_http_version >= b"1.1"
        headers = plan.headers + ((b"transfer-encoding", b"chunked"),) if chunked else \
            plan.headers
        writer.write(conn.send(h11.Response(status_code=plan.status, headers=headers,
                                            reason=_reason(plan.status))))
        exchange.streaming = True
        self._bump("open_streams")
        try:
            await writer.drain()
            delay, cut_after = plan.delay, plan.cut_after
            last_event = framed = None
            for i, event in enumerate(plan.events):
                if cut_after is not None and i >= cut_after:
                    break
                if delay and i:
                    await asyncio.sleep(delay)
                if not event:  # framed, it would read as the end of the body
                    continue
                if event is not last_event:  # an Events reply repeats one bytes object
                    last_event = event
                    framed = b"%x\r\n%s\r\n" % (len(event), event) if chunked else event
                writer.write(framed)
                await writer.drain()
                if not delay and i % 64 == 63:
                    await asyncio.sleep(0)  # drain() only yields when the buffer is full
            if cut_after is not None:
                await self._cut(writer, plan.reset)
                return False
            if plan.linger:
                await asyncio.sleep(plan.linger)
            writer.write(conn.send(h11.EndOfMessage()))
            exchange.finished = True
            self._bump("completed_streams")
            await writer.drain()
            return True
        finally:
            self._bump("open_streams", -1)

    async def _cut(self, writer: asyncio.StreamWriter, reset: bool) -> None:
        """Close the connection once what was written has left the process."""
        transport = writer.transport
        for _ in range(1000):
            if not transport.get_write_buffer_size():
                break
            await asyncio.sleep(0.001)
        sock = writer.get_extra_info("socket")
        if reset and sock is not None:
            # linger 0: close() sends a RST instead of a FIN
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()
        self._bump("cut_streams")


def run_cli(cls: type[FakeServer], argv: list[str] | None = None,
            agent: Callable[[Received], Reply | None] | None = None) -> int:
    """`python -m <fake module> [--port N] [--tls] [--events N] ...`: print one line
    `listening on http(s)://HOST:PORT`, serve until SIGTERM or SIGINT."""
    parser = argparse.ArgumentParser(prog=f"python -m {cls.__module__}",
                                     description=(cls.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0: any free port (default)")
    parser.add_argument("--tls", action="store_true", help="serve HTTPS (throwaway CA)")
    parser.add_argument("--ca-file", help="with --tls: write the CA certificate (PEM) here "
                                          "before printing the listening line")
    parser.add_argument("--events", type=int, default=0, metavar="N",
                        help="default reply: a stream of N content deltas (benchmarks)")
    parser.add_argument("--piece", default="x", help="with --events: the text of each delta")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="with --events: seconds between events")
    parser.add_argument("--key", action="append", metavar="KEY",
                        help="accepted API key (repeatable; default: the fake's own)")
    parser.add_argument("--any-key", action="store_true", help="accept any request")
    parser.add_argument("--default-text", help="the default reply's text")
    parser.add_argument("--agent", action="store_true",
                        help="default reply: the scripted agent (RUN: markers, tool results)")
    parser.add_argument("--no-validate", action="store_true",
                        help="do not reject requests the real API would reject")
    args = parser.parse_args(argv)

    if args.events:
        default_reply = Events(args.events, piece=args.piece, delay=args.delay)
    else:
        default_reply = agent if args.agent else None
    fake = cls(keys=args.key, check_auth=not args.any_key, default_reply=default_reply,
               default_text=args.default_text, tls=args.tls, validate=not args.no_validate,
               host=args.host, port=args.port)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    fake.start()
    try:
        if args.ca_file and fake.ca_pem_path:
            shutil.copyfile(fake.ca_pem_path, args.ca_file)
        print(f"listening on {fake.base_url}", flush=True)
        stop.wait()
    finally:
        fake.stop()
    return 0
