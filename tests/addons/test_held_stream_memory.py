"""What an open stream keeps on the provider leg: a read buffer of one TLS record (large answers
still arrive whole, read by pieces), and of its request only the line and headers (the body was
sent; a stream would hold it for its whole life)."""

import asyncio.sslproto
import json

import httpx

from addons.transport import TLS_READ_SIZE, StreamsTransport
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Text

HEADERS = {"authorization": "Bearer sk-fake-provider-key"}


def client() -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=StreamsTransport(verify=False), trust_env=False,
                             timeout=10)


async def test_a_large_tls_answer_arrives_whole_through_one_record_reads():
    assert asyncio.sslproto.SSLProtocol.max_size == TLS_READ_SIZE
    text = "".join(f"{i:07d} " for i in range(40_000))  # 320 KB: twenty records and more
    with FakeOpenAI(tls=True) as fake:
        fake.enqueue(Text(text), Text(text, pieces=500))
        body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
        async with client() as c:
            r = await c.post(fake.url("/v1/chat/completions"), json=body, headers=HEADERS)
            assert r.json()["choices"][0]["message"]["content"] == text
            got = []
            async with c.stream("POST", fake.url("/v1/chat/completions"), headers=HEADERS,
                                json=dict(body, stream=True)) as s:
                async for line in s.aiter_lines():
                    if line.startswith("data: {"):
                        for choice in json.loads(line[6:])["choices"]:
                            got.append(choice["delta"].get("content") or "")
            assert "".join(got) == text


async def test_the_answer_keeps_its_requests_head_not_its_body():
    # as the forwarder sends (straight to the transport; an httpx client would set the
    # response's request back to the one it was given)
    sent = b'{"model": "m", "stream": true, "messages": [{"role": "user", "content": "' \
        + b"x" * 50_000 + b'"}]}'
    transport = StreamsTransport(verify=False)
    with FakeOpenAI(tls=True) as fake:
        fake.enqueue(Text("hello", pieces=1))
        url = fake.url("/v1/chat/completions")
        request = httpx.Request("POST", url, content=sent, headers=dict(
            HEADERS, **{"content-type": "application/json"}), extensions={"timeout": {}})
        response = await transport.handle_async_request(request)
        try:
            kept = response.request
            assert kept is not request and kept.method == "POST" and kept.url == url
            assert kept.headers["content-length"] == str(len(sent))
            assert kept.headers["authorization"] == HEADERS["authorization"]
            assert kept.content == b""  # the body went out and is not held
            assert response.stream.request is kept  # nor by the body's reader
            assert b"hello" in b"".join([chunk async for chunk in response.stream])
        finally:
            await response.aclose()
            await transport.aclose()
        assert fake.requests[0].body == sent  # the provider had it all
