"""The provider-leg transport against real loopback servers: body framings, keep-alive reuse,
stale connections, timeouts, malformed answers, TLS."""

import asyncio
import ssl

import httpx
import pytest

from addons.transport import StreamsTransport
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Text


class RawServer:
    """Answers each request on a connection with the next scripted bytes (or an action)."""

    def __init__(self, *answers):
        self.answers = list(answers)
        self.connections = 0
        self.requests: list[bytes] = []

    async def __aenter__(self):
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        self.server.close()
        await self.server.wait_closed()

    async def _conn(self, reader, writer):
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), 0)
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer == "close":
                    break
                if isinstance(answer, tuple):  # (delay, bytes)
                    await asyncio.sleep(answer[0])
                    answer = answer[1]
                writer.write(answer)
                await writer.drain()
                if answer.endswith(b"<close>"):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def client(**kw) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=StreamsTransport(**kw), trust_env=False, timeout=5)


OK_LEN = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\r\nhello"
OK_CHUNKED = (b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
              b"3\r\nhel\r\n2;ext=1\r\nlo\r\n0\r\nx-trailer: 1\r\n\r\n")


async def test_content_length_and_chunked_bodies_reuse_one_connection():
    async with RawServer(OK_LEN, OK_CHUNKED, OK_LEN) as srv:
        async with client() as c:
            for _ in range(3):
                r = await c.post(srv.url + "/v1/x?q=1", content=b'{"a":1}')
                assert (r.status_code, r.text) == (200, "hello")
        assert srv.connections == 1
        assert srv.requests[0].startswith(b"POST /v1/x?q=1 HTTP/1.1\r\n")
        assert b"Content-Length: 7" in srv.requests[0] and srv.requests[0].endswith(b'{"a":1}')


async def test_close_delimited_body_is_read_to_the_end_and_not_reused():
    async with RawServer(b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end<close>",
                         OK_LEN) as srv:
        async with client() as c:
            r = await c.post(srv.url, content=b"{}")
            assert r.text == "until the end<close>"
            assert (await c.post(srv.url, content=b"{}")).text == "hello"
        assert srv.connections == 2


async def test_streamed_chunks_arrive_as_sent():
    async with RawServer(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\n\r\n6\r\ndata:1\r\n") as srv:
        async with client() as c:
            async with c.stream("POST", srv.url, content=b"{}") as r:
                first = await anext(r.aiter_raw())
                assert first == b"data:1"


async def test_a_stale_keep_alive_connection_is_replaced_once():
    async with RawServer(OK_LEN, "close", OK_LEN) as srv:
        async with client() as c:
            assert (await c.post(srv.url, content=b"{}")).text == "hello"
            # the server drops the pooled connection when the next request arrives
            assert (await c.post(srv.url, content=b"{}")).text == "hello"
        assert srv.connections == 2


async def test_body_cut_short_is_a_protocol_error():
    async with RawServer(b"HTTP/1.1 200 OK\r\ncontent-length: 50\r\n\r\nonly this<close>") as srv:
        async with client() as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(srv.url, content=b"{}")


@pytest.mark.parametrize("answer", [b"garbage\r\n\r\n", b"HTTP/1.1 abc OK\r\n\r\n",
                                    b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n"])
async def test_malformed_heads_are_protocol_errors(answer):
    async with RawServer(answer) as srv:
        async with client() as c:
            with pytest.raises(httpx.RemoteProtocolError):
                await c.post(srv.url, content=b"{}")


async def test_read_timeout_and_connect_errors():
    async with RawServer((3, OK_LEN)) as srv:
        async with httpx.AsyncClient(transport=StreamsTransport(), trust_env=False,
                                     timeout=httpx.Timeout(5, read=0.3)) as c:
            with pytest.raises(httpx.ReadTimeout):
                await c.post(srv.url, content=b"{}")
    async with client() as c:
        with pytest.raises(httpx.ConnectError):
            await c.post(srv.url, content=b"{}")  # the server is gone: refused


async def test_tls_verified_and_unverified():
    with FakeOpenAI(tls=True) as fake:
        fake.enqueue(Text("secure"), Text("secure"))
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        headers = {"authorization": "Bearer sk-fake-provider-key"}
        # the fake's self-signed CA is unknown to certifi: verification must refuse it
        async with client(verify=True) as c:
            with pytest.raises(httpx.ConnectError):
                await c.post(fake.base_url + "/v1/chat/completions", json=body, headers=headers)
        trusted = ssl.create_default_context(cafile=fake.ca_pem_path)
        async with client(verify=trusted) as c:
            r = await c.post(fake.base_url + "/v1/chat/completions", json=body, headers=headers)
            assert r.json()["choices"][0]["message"]["content"] == "secure"
        async with client(verify=False) as c:
            r = await c.post(fake.base_url + "/v1/chat/completions", json=body, headers=headers)
            assert r.status_code == 200


@pytest.mark.parametrize("split", [1, 2, 3, 5, 7, 64])
async def test_chunked_body_split_anywhere(split):
    """Chunk sizes, extensions, trailers and the end split across reads at every place."""
    body = (b"4\r\nwiki\r\n5;name=value\r\npedia\r\nE\r\n in\r\n\r\nchunks.\r\n"
            b"0\r\nx-trailer: yes\r\n\r\n")
    head = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n"
    pieces = [head] + [(0.002, body[i:i + split]) for i in range(0, len(body), split)]

    class Slow(RawServer):
        async def _conn(self, reader, writer):
            await reader.readuntil(b"\r\n\r\n")
            for piece in pieces:
                if isinstance(piece, tuple):
                    await asyncio.sleep(piece[0])
                    piece = piece[1]
                writer.write(piece)
                await writer.drain()
            await asyncio.sleep(0.5)  # keep the connection open: the end is the 0 chunk
            writer.close()

    async with Slow() as srv:
        async with client() as c:
            r = await c.post(srv.url, content=b"")
            assert r.content == b"wikipedia in\r\n\r\nchunks."


async def test_chunks_already_received_come_out_together():
    events = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in
                      [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"])
    async with RawServer(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n" + events
                         + b"0\r\n\r\n") as srv:
        async with client() as c:
            async with c.stream("POST", srv.url, content=b"{}") as r:
                parts = [p async for p in r.aiter_raw()]
    assert b"".join(parts) == b"data: 1\n\ndata: 2\n\ndata: 3\n\n"
    assert len(parts) == 1  # one socket read, one piece
