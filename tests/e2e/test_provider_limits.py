"""Through a real mitmdump, providers that misbehave within HTTP: a gzip bomb or an oversized
whole answer is a failed attempt (the next candidate answers), a stream that trickles forever
ends at limits.stream_seconds, one that only pings never passes timeouts.first_byte, and an
event-stream line that never ends is cut at the parser's limit; the proxy's peak memory stays
bounded and every call gets its row naming the limit."""

import itertools
import json
import time
import zlib

import pytest

from tests.captures import anthropic_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, start_proxy
from tests.fakes.replies import Raw, Text
from translators import canonical

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
SSE = {"content-type": "text/event-stream"}
MB = 1 << 20


def chunk_event(content: str) -> bytes:
    return b"data: " + json.dumps({
        "id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
        "choices": [{"index": 0, "delta": {"role": "assistant", "content": content},
                     "finish_reason": None}]}).encode() + b"\n\n"


def providers(base: str, *names: str, first_byte: float | None = None) -> str:
    timeouts = f", timeouts: {{first_byte: {first_byte}}}" if first_byte else ""
    return "\n".join(f'  {n}: {{kind: openai, base_url: "{base}/v1", api_keys: [{PROVIDER_KEY}]'
                     f'{timeouts}}}' for n in names)


@pytest.fixture(scope="module")
def gzip_bomb() -> bytes:
    """About 300 KB that inflates to 300 MB, made in steps."""
    z = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(MB)
    return b"".join([z.compress(zeros) for _ in range(300)] + [z.flush()])


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai):
    """Small limits: 16 MiB decoded, streams end after 2 s, first content within 1 s."""
    base = fake_openai.base_url
    config = f"""
providers:
{providers(base, "bomb", "trickle", "ok")}
{providers(base, "pings", first_byte=1)}
routes:
  bomb: [bomb/m, ok/m]
  trickle: [trickle/m]
  pings: [pings/m, ok/m]
limits: {{decompressed: {16 * MB}, stream_seconds: 2}}
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


@pytest.fixture(scope="module")
def big_proxy(confdir, tmp_path_factory, fake_openai):
    """Whole answers up to 1 MiB; the parser's own line limit (16 MiB) for streams."""
    base = fake_openai.base_url
    config = f"""
providers:
{providers(base, "big", "line", "ok")}
routes:
  big: [big/m, ok/m]
  line: [line/m]
limits: {{answer_body: {MB}}}
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


def ask(proxy, model: str, stream: bool = False, seconds: float = 60):
    body = {"model": model, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}
    with proxy.client(timeout=seconds) as c:
        return c.post(ANTHROPIC_URL, json=body, headers=HEADERS)


def attempts(row: dict) -> list[dict]:
    return json.loads(row["route"])


def test_a_provider_gzip_bomb_fails_the_attempt_in_bounded_memory(proxy, fake_openai, gzip_bomb):
    fake_openai.clear()
    fake_openai.enqueue(Raw(headers={"content-type": "application/json",
                                     "content-encoding": "gzip"}, body=gzip_bomb),
                        Text("after the bomb"))
    before = proxy.mitm.peak_rss_mb()
    r = ask(proxy, "bomb")
    grown = proxy.mitm.peak_rss_mb() - before
    print(f"gzip bomb: the proxy's peak grew {grown:.0f} MB")  # pytest -s
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "after the bomb"
    row = proxy.row_of(r)
    assert row["provider"] == "ok"
    first = attempts(row)[0]
    assert first["provider"] == "bomb" and "limits.decompressed" in first["error"], first
    assert grown < 150, f"the proxy's peak grew {grown:.0f} MB"


def test_an_oversized_whole_answer_fails_the_attempt(big_proxy, fake_openai):
    fake_openai.clear()
    fake_openai.enqueue(Raw(body=b'{"pad": "' + b"x" * (2 * MB) + b'"}'), Text("small"))
    r = ask(big_proxy, "big")
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "small"
    row = big_proxy.row_of(r)
    first = attempts(row)[0]
    assert row["provider"] == "ok"
    assert first["provider"] == "big" and "limits.answer_body" in first["error"], first


def read_stream(proxy, model: str, give_up: float = 30) -> tuple[object, bytes]:
    """A streamed call read to its end, or for `give_up` seconds (a stream that never ends)."""
    body = {"model": model, "max_tokens": 16, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    data = bytearray()
    deadline = time.monotonic() + give_up
    with proxy.client(timeout=give_up) as c, c.stream("POST", ANTHROPIC_URL, json=body,
                                                      headers=HEADERS) as r:
        for piece in r.iter_raw():
            data += piece
            assert time.monotonic() < deadline, "the stream did not end"
    return r, bytes(data)


def test_a_stream_trickling_forever_ends_at_stream_seconds(proxy, fake_openai):
    fake_openai.clear()
    fake_openai.enqueue(Raw(headers=SSE, pieces=itertools.repeat(chunk_event("x")), delay=0.2))
    r, data = read_stream(proxy, "trickle")
    assert r.status_code == 200
    events = anthropic_events(data)
    assert any(type(e) is canonical.TextDelta for e in events)
    assert type(events[-1]) is canonical.StreamError
    assert "limits.stream_seconds" in events[-1].message
    assert "limits.stream_seconds" in proxy.row_of(r)["error"]


def test_a_provider_sending_only_pings_fails_at_first_byte(proxy, fake_openai):
    fake_openai.clear()
    fake_openai.enqueue(Raw(headers=SSE, pieces=itertools.repeat(b": keepalive\n\n"), delay=0.1),
                        Text("content at last"))
    r, data = read_stream(proxy, "pings")
    assert r.status_code == 200
    events = anthropic_events(data)
    assert "".join(e.text for e in events if type(e) is canonical.TextDelta) == "content at last"
    row = proxy.row_of(r)
    assert row["provider"] == "ok"
    first = attempts(row)[0]
    assert first["provider"] == "pings" and "timeouts.first_byte" in first["error"], first


def test_a_line_that_never_ends_is_cut_in_bounded_memory(big_proxy, fake_openai):
    fake_openai.clear()
    # 160 MiB of one line: the parser gives up at 16 MiB (without its limit the proxy would
    # hold all of it)
    endless = itertools.chain([chunk_event("before"), b'data: {"pad": "'],
                              itertools.repeat(b"y" * (64 << 10), 2560), [b'"}\n\n'])
    fake_openai.enqueue(Raw(headers=SSE, pieces=endless))
    before = big_proxy.mitm.peak_rss_mb()
    r, data = read_stream(big_proxy, "line")
    grown = big_proxy.mitm.peak_rss_mb() - before
    print(f"endless line: the proxy's peak grew {grown:.0f} MB")  # pytest -s
    assert r.status_code == 200
    events = anthropic_events(data)
    assert "".join(e.text for e in events if type(e) is canonical.TextDelta) == "before"
    assert type(events[-1]) is canonical.StreamError
    assert "line longer than" in events[-1].message
    assert "line longer than" in big_proxy.row_of(r)["error"]
    assert grown < 150, f"the proxy's peak grew {grown:.0f} MB"
