"""What an open stream keeps on the provider leg: a read buffer of one TLS record (large answers
still arrive whole, read by pieces)."""

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
