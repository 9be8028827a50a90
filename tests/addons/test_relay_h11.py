"""The relay's HTTP side as h11 frames it: chunked request bodies, bad requests refused with a
status, bounded heads, idle and slow-head timeouts."""

import asyncio

import httpx
import pytest

from addons import relay as relay_module
from tests.addons.test_forwarding import Upstreams, chat_stream
from tests.addons.test_relay import start


def sse_upstreams(n: int = 1) -> Upstreams:
    return Upstreams(**{"p.test": [httpx.Response(200, content=chat_stream("a"),
                                                  headers={"content-type": "text/event-stream"})
                                   for _ in range(n)]})


async def raw_exchange(port: int, request: bytes) -> bytes:
    """Everything the relay writes back until it closes (bounded in time)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        async with asyncio.timeout(10):
            return await reader.read()
    finally:
        writer.close()


async def test_a_chunked_request_body_is_drained_and_the_connection_kept():
    relay, fwd, job, finished = await start(sse_upstreams())
    url = httpx.URL(relay.submit(job))
    reader, writer = await asyncio.open_connection(url.host, url.port)
    target = url.raw_path
    writer.write(b"POST " + target + b" HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
                 b"3;ext=1\r\n{\"a\r\n4\r\n\": 1\r\n1\r\n}\r\n0\r\nx-trailer: y\r\n\r\n"
                 b"GET /relay/spent HTTP/1.1\r\nhost: x\r\n\r\n")
    await writer.drain()
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 ") and b"transfer-encoding: chunked" in head.lower()
        body = await reader.readuntil(b"\r\n0\r\n\r\n")
        assert b"message_stop" in body
        second = await reader.readuntil(b"\r\n\r\n")  # the same connection goes on
        assert second.startswith(b"HTTP/1.1 404 ")
    writer.close()
    assert finished == [job]
    relay.stop()
    await fwd.aclose()


@pytest.mark.parametrize("request_bytes,status", [
    (b"POST /relay/x HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n-6\r\n", b"400"),
    (b"POST /relay/x HTTP/1.1\r\nhost: x\r\ncontent-length: 1_0\r\n\r\n", b"400"),
    (b"NOT HTTP\r\n\r\n", b"400"),
    (b"GET /relay/x HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 70_000 + b"\r\n\r\n", b"431"),
], ids=["negative-chunk-size", "bad-length", "not-http", "head-too-large"])
async def test_bad_requests_are_refused_with_a_status_and_closed(request_bytes, status):
    relay, fwd, job, finished = await start(Upstreams())
    answer = await raw_exchange(relay.ports[0], request_bytes)
    assert answer.startswith(b"HTTP/1.1 " + status + b" ")
    relay.stop()


@pytest.mark.parametrize("request_bytes,idle,head", [
    (b"", 0.3, 60),  # connected and silent: the idle timeout
    # a head that never ends, trickled a byte at a time: the head timeout (each byte comes
    # well within the idle one, and without it the connection stayed open for 60 s)
    (b"POST /relay/x HTTP/1.1\r\nhost: x\r\nx-pad: " + b"a" * 1000, 60, 0.3),
    (b"POST /relay/x HTTP/1.1\r\nhost: x\r\ncontent-length: 10\r\n\r\n{}", 60, 0.3),  # a body cut short
], ids=["idle", "slow-head", "slow-body"])
async def test_idle_and_slow_connections_are_closed(request_bytes, idle, head, monkeypatch):
    monkeypatch.setattr(relay_module, "IDLE_TIMEOUT", idle)
    monkeypatch.setattr(relay_module, "HEAD_TIMEOUT", head)
    relay, fwd, job, finished = await start(Upstreams())
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.ports[0])

    async def trickle():
        for i in range(len(request_bytes)):
            writer.write(request_bytes[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.01)

    sending = asyncio.create_task(trickle())
    try:
        async with asyncio.timeout(10):  # closed by the relay, long before this
            try:
                assert await reader.read() == b""
            except ConnectionResetError:  # closed while bytes were still coming: a reset
                pass
    finally:
        sending.cancel()
        try:
            await sending
        except (asyncio.CancelledError, ConnectionError):
            pass
        writer.close()
        relay.stop()
