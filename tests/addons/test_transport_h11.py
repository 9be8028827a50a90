"""Where hand-written HTTP/1.1 fails and h11 must not: informational answers, stale pooled
connections, cancellation, strict chunk sizes, partial answers, header injection. Every server
here is a raw loopback one, so the bytes on the wire are exactly the ones written."""

import asyncio
import gc
import socket
import warnings

import httpx
import pytest

from tests.addons.test_transport import OK_LEN, RawServer, client


def ok(body: bytes) -> bytes:
    return b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)


EARLY_HINTS = b"HTTP/1.1 103 Early Hints\r\nlink: </style.css>; rel=preload\r\n\r\n"


async def test_informational_answers_are_skipped_on_a_pooled_connection():
    async with RawServer(*(EARLY_HINTS + ok(b"answer %d" % i) for i in range(3))) as srv:
        async with client() as c:
            for i in range(3):
                r = await c.post(srv.url, content=b"{}")
                assert (r.status_code, r.text) == (200, f"answer {i}")
        assert srv.connections == 1


async def test_two_informational_answers_then_a_stream():
    answer = (b"HTTP/1.1 100 Continue\r\n\r\n" + EARLY_HINTS
              + b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata:1\r\n0\r\n\r\n")
    async with RawServer(answer) as srv:
        async with client() as c:
            r = await c.post(srv.url, content=b"{}")
            assert (r.status_code, r.content) == (200, b"data:1")


class Leaving(RawServer):
    """Answers the first request on a connection, then says goodbye without being asked: a
    408 (kept open, or closed after), or a bare close. Later connections get plain answers."""

    def __init__(self, goodbye: bytes | None, close: bool):
        super().__init__()
        self.goodbye = goodbye
        self.close = close
        self.said = asyncio.Event()

    async def _conn(self, reader, writer):
        self.connections += 1
        first = self.connections == 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                self.requests.append(head)
                await reader.readexactly(2)  # every request here has the body b"{}"
                writer.write(ok(b"conn %d" % self.connections))
                await writer.drain()
                if first:
                    if self.goodbye:
                        writer.write(self.goodbye)
                        await writer.drain()
                    if self.close:
                        writer.close()
                        await writer.wait_closed()
                    self.said.set()
                    if self.close:
                        return
                    await reader.read()  # held open until the client closes it
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("goodbye,close", [
    (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", False),
    (b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n", True),
    (None, True),
], ids=["408-kept-open", "408-then-close", "bare-close"])
async def test_an_idle_connection_the_server_spoke_on_is_not_reused(goodbye, close):
    async with Leaving(goodbye, close) as srv:
        async with client() as c:
            assert (await c.post(srv.url, content=b"{}")).text == "conn 1"
            await asyncio.wait_for(srv.said.wait(), 5)
            r = await c.post(srv.url, content=b"{}")
            assert (r.status_code, r.text) == (200, "conn 2")  # never the stale 408
        assert srv.connections == 2
        assert len(srv.requests) == 2  # nothing was sent on the stale connection


class Silent(RawServer):
    """Reads a request and answers nothing (or only `partial`); records when each connection
    is closed by the client."""

    def __init__(self, partial: bytes = b""):
        super().__init__()
        self.partial = partial
        self.received = asyncio.Event()
        self.closed = asyncio.Event()

    async def _conn(self, reader, writer):
        self.connections += 1
        try:
            await reader.readuntil(b"\r\n\r\n")
            self.received.set()
            if self.partial:
                writer.write(self.partial)
                await writer.drain()
            while await reader.read(1024):
                pass
            self.closed.set()
        except ConnectionError:
            self.closed.set()
        finally:
            writer.close()


@pytest.mark.parametrize("partial", [
    b"",  # cancelled waiting for the head (a first-byte timeout)
    b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n6\r\ndata:1\r\n",  # in the body
], ids=["before-the-head", "mid-body"])
async def test_a_cancelled_request_closes_its_connection(partial):
    async with Silent(partial) as srv:
        async with client() as c:
            async def call():
                async with c.stream("POST", srv.url, content=b"{}") as r:
                    async for _ in r.aiter_raw():
                        pass

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                task = asyncio.create_task(call())
                await asyncio.wait_for(srv.received.wait(), 5)
                await asyncio.sleep(0.05)  # let the partial answer arrive, if any
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                await asyncio.wait_for(srv.closed.wait(), 5)  # closed now, not by the GC
                gc.collect()
            assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


@pytest.mark.timeout(20)  # the hand-written decoder looped forever on `-6`, holding the loop
@pytest.mark.parametrize("size", [b"-6", b"0x10", b"+a", b"1_0", b" 5", b"zz", b"1" * 40])
async def test_chunk_sizes_are_parsed_strictly(size):
    answer = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
              + size + b"\r\n" + b"x" * 16 + b"\r\n0\r\n\r\n")
    async with RawServer(answer) as srv:
        async with client() as c:
            with pytest.raises(httpx.RemoteProtocolError):
                async with asyncio.timeout(10):
                    await c.post(srv.url, content=b"{}")


async def test_a_response_head_beyond_the_limit_is_refused():
    huge = b"HTTP/1.1 200 OK\r\n" + b"x-pad: " + b"a" * 70_000 + b"\r\ncontent-length: 0\r\n\r\n"
    async with RawServer(huge) as srv:
        async with client() as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(srv.url, content=b"{}")


async def test_no_retry_once_part_of_the_answer_came():
    """A reused connection that breaks after a part of the answer: the server may have acted
    on the request, so it is not sent again."""
    async with RawServer(OK_LEN, b"HTTP/1.1 200 OK\r\ncontent-<close>", OK_LEN) as srv:
        async with client() as c:
            assert (await c.post(srv.url, content=b"{}")).text == "hello"
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(srv.url, content=b"{}")
        assert srv.connections == 1 and len(srv.requests) == 2


async def test_header_values_with_bare_cr_are_never_written():
    async with RawServer(OK_LEN) as srv:
        async with client() as c:
            with pytest.raises(httpx.LocalProtocolError):
                await c.post(srv.url, content=b"{}",
                             headers={"anthropic-beta": "a\rX-Injected-CR: yes"})
        assert srv.requests == []


async def test_a_pooled_connection_serves_a_stream_after_a_whole_answer():
    stream = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
              b"6\r\ndata:1\r\n6\r\ndata:2\r\n0\r\n\r\n")
    async with RawServer(OK_LEN, stream, OK_LEN) as srv:
        async with client() as c:
            assert (await c.post(srv.url, content=b"{}")).text == "hello"
            async with c.stream("POST", srv.url, content=b"{}") as r:
                assert b"".join([p async for p in r.aiter_raw()]) == b"data:1data:2"
            assert (await c.post(srv.url, content=b"{}")).text == "hello"
        assert srv.connections == 1


async def test_works_under_the_eager_task_factory_mitmproxy_uses():
    """asyncio's own happy eyeballs failed an assertion there (CPython 3.12.1)."""
    loop = asyncio.get_running_loop()
    loop.set_task_factory(asyncio.eager_task_factory)
    try:
        async with RawServer(OK_LEN) as srv:
            async with client() as c:
                assert (await c.post(srv.url, content=b"{}")).text == "hello"
    finally:
        loop.set_task_factory(None)


async def test_happy_eyeballs_goes_on_to_the_next_address(monkeypatch):
    """The first address refuses, the second answers (both on 127.0.0.1, by port)."""
    refused = socket.socket()
    refused.bind(("127.0.0.1", 0))
    closed_port = refused.getsockname()[1]
    refused.close()  # nothing listens there now
    async with RawServer(OK_LEN) as srv:
        port = int(srv.url.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()

        async def two_addresses(host, port_, **kw):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", p))
                    for p in (closed_port, port)]

        monkeypatch.setattr(loop, "getaddrinfo", two_addresses)
        async with client() as c:
            assert (await c.post("http://provider.test/", content=b"{}")).text == "hello"

        async def refused_only(host, port_, **kw):
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", closed_port))] * 2

        monkeypatch.setattr(loop, "getaddrinfo", refused_only)
        async with client() as c:
            with pytest.raises(httpx.ConnectError):
                await c.post("http://provider.test/", content=b"{}")
