"""The lean transport's body keeps its time limits with one timer per body: a read that waits
past the read timeout fails as httpx.ReadTimeout, a body not read whole by its reader's deadline
fails as BodyDeadline (a trickle, each read in time, does not escape it), and a body read to its
end leaves nothing armed: its connection serves the next request, long after both limits."""

import asyncio

import httpx
import pytest

from addons.transport import BodyDeadline, StreamsTransport, lean_body

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class ChunkServer:
    """Answers every request on a connection with HEAD, then each (delay, bytes) of `script`;
    `end` closes the body, else the answer stalls until the test ends."""

    def __init__(self, script: list[tuple[float, bytes]], end: bool):
        self.script, self.end = script, end
        self.connections = 0

    async def __aenter__(self):
        self.stop = asyncio.Event()
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"
        return self

    async def __aexit__(self, *exc):
        self.stop.set()
        self.server.close()
        await self.server.wait_closed()

    async def _conn(self, reader, writer):
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                await reader.readexactly(length)
                writer.write(HEAD)
                for delay, data in self.script:
                    if self.stop.is_set():
                        return
                    await asyncio.sleep(delay)
                    writer.write(chunk(data))
                    await writer.drain()
                if not self.end:
                    await self.stop.wait()  # stalls until the test ends
                    return
                writer.write(b"0\r\n\r\n")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


async def answer(transport: StreamsTransport, url: str, read: float) -> httpx.Response:
    request = httpx.Request("POST", url, content=b"{}", extensions={
        "timeout": {"connect": 5, "read": read, "write": 5, "pool": 5}})
    return await transport.handle_async_request(request)


async def read_all(body) -> list[bytes]:
    return [piece async for piece in body]


async def test_a_read_waiting_past_the_read_timeout_is_a_read_timeout():
    async with ChunkServer([(0, b"data: 1\n\n")], end=False) as srv:
        transport = StreamsTransport()
        resp = await answer(transport, srv.url, read=0.3)
        pieces = []
        with pytest.raises(httpx.ReadTimeout):
            async with asyncio.timeout(10):  # the test's own bound, far beyond the limit
                async for piece in lean_body(resp, None):
                    pieces.append(piece)
        assert pieces == [b"data: 1\n\n"]
        await resp.aclose()
        await transport.aclose()


async def test_a_trickle_in_time_for_each_read_still_ends_at_the_deadline():
    script = [(0.1, b"data: %d\n\n" % i) for i in range(100)]  # 10 s, every read in time
    async with ChunkServer(script, end=True) as srv:
        transport = StreamsTransport()
        resp = await answer(transport, srv.url, read=0.5)
        deadline = asyncio.get_running_loop().time() + 0.6
        pieces = []
        with pytest.raises(BodyDeadline):
            async with asyncio.timeout(10):
                async for piece in lean_body(resp, deadline):
                    pieces.append(piece)
        assert 1 <= len(pieces) < 100
        await resp.aclose()
        await transport.aclose()


async def test_a_body_read_to_its_end_leaves_its_connection_reusable():
    async with ChunkServer([(0, b"data: 1\n\n"), (0.05, b"data: 2\n\n")], end=True) as srv:
        transport = StreamsTransport()
        resp = await answer(transport, srv.url, read=0.2)
        deadline = asyncio.get_running_loop().time() + 0.3
        assert b"".join(await read_all(lean_body(resp, deadline))) == b"data: 1\n\ndata: 2\n\n"
        await resp.aclose()
        await asyncio.sleep(0.5)  # past both limits: nothing fires on the pooled connection
        again = await answer(transport, srv.url, read=0.2)
        assert b"".join(await read_all(lean_body(again, None))) == b"data: 1\n\ndata: 2\n\n"
        await again.aclose()
        assert srv.connections == 1
        await transport.aclose()


async def test_a_body_read_to_its_end_goes_back_to_the_pool_unclosed():
    """A whole answer's response is never closed by the forwarder: reading its body to the end
    is what returns the connection (a new TLS connection per call otherwise)."""
    async with ChunkServer([(0, b"{}")], end=True) as srv:
        transport = StreamsTransport()
        for _ in range(3):
            resp = await answer(transport, srv.url, read=5)
            assert b"".join(await read_all(lean_body(resp, None))) == b"{}"
        assert srv.connections == 1
        await transport.aclose()


async def test_httpx_reads_keep_the_read_timeout_too():
    async with ChunkServer([(0, b"data: 1\n\n")], end=False) as srv:
        transport = StreamsTransport()
        resp = await answer(transport, srv.url, read=0.3)
        with pytest.raises(httpx.ReadTimeout):
            async with asyncio.timeout(10):
                await resp.aread()
        await resp.aclose()
        await transport.aclose()
