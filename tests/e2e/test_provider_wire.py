"""Through a real mitmdump, providers that break HTTP itself (tests/fakes/raw_wire.py writes the
bytes as given): a malformed chunk-size line (`-6` froze the whole proxy: the decoder looped on
the event loop without consuming input) ends that one call on every path a provider's bytes
take (the relay's own transport, mitmproxy's connection on the direct path, passthrough), and
the proxy serves the next call; a provider trickling a byte at a time is ended by the call's
overall deadline (`timeouts.total` for a whole answer, `limits.stream_seconds` for a stream,
`timeouts.first_byte` before the first content), not kept open by the per-read timeout."""

import json
import time

import httpx
import pytest

from tests.captures import anthropic_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, start_proxy
from tests.fakes.raw_wire import Answer, RawWire, trickle
from translators import canonical

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
ANTHROPIC_HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
OPENAI_HEADERS = {"authorization": f"Bearer {CLIENT_KEY}"}
CHUNKED_SSE = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
CHUNKED_JSON = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
# what h11 (mitmproxy's parser and the relay's) refuses: a sign, a prefix, a separator, a space,
# no digit at all, more hex digits than any size needs
BAD_SIZES = [b"-6", b"0x10", b"+a", b"1_0", b" 5", b"zz", b"1" * 40]
CALL_SECONDS = 20  # each call ends long before this; a frozen proxy never answers


def content_event(text: str) -> bytes:
    data = json.dumps({"id": "c1", "object": "chat.completion.chunk", "created": 1, "model": "m",
                       "choices": [{"index": 0, "delta": {"role": "assistant", "content": text},
                                    "finish_reason": None}]}).encode()
    return b"data: " + data + b"\n\n"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def bad_chunks(size: bytes, stream: bool) -> Answer:
    """A valid first chunk (a content event for a stream), then a chunk whose size line is
    `size`."""
    first = chunk(content_event("before")) if stream else b""
    return Answer((CHUNKED_SSE if stream else CHUNKED_JSON) + first + size + b"\r\n"
                  + b"x" * 16 + b"\r\n0\r\n\r\n")


@pytest.fixture(scope="module")
def wire():
    with RawWire() as w:
        yield w


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, wire, fake_openai):
    """`raw` is the misbehaving provider; `ok` the fallback. Routes with one candidate go on
    mitmproxy's own connection (detour_direct), the others through the relay."""
    raw = f'{{kind: openai, base_url: "{wire.base_url}/v1", api_keys: [{PROVIDER_KEY}]'
    config = f"""
providers:
  raw: {raw}}}
  rawtotal: {raw}, timeouts: {{total: 2}}}}
  rawfirst: {raw}, timeouts: {{first_byte: 1}}}}
  ok: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  relayed: [raw/m, ok/m]
  direct: [raw/m]
  total-relayed: [rawtotal/m, ok/m]
  total-direct: [rawtotal/m]
  first-relayed: [rawfirst/m, ok/m]
  "*": [passthrough]
vendors:
  api.openai.com: "{wire.base_url}"
limits: {{stream_seconds: 3}}
cooldown_seconds: 0  # no rest after a failure: every test asks `raw` first
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config,
                    extra=["--set", "detour_direct=true"])
    yield p
    p.mitm.stop()


def call(proxy, model: str, stream: bool) -> tuple[int | None, bytes, str | None]:
    """An Anthropic client's call (an OpenAI client's for passthrough): its status (None when
    the connection broke), body and x-detour-id. Bounded: a frozen proxy fails the test."""
    url, headers = ((OPENAI_URL, OPENAI_HEADERS) if model == "gpt-pass"
                    else (ANTHROPIC_URL, ANTHROPIC_HEADERS))
    body = {"model": model, "max_tokens": 16, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}
    data = bytearray()
    with proxy.client(timeout=CALL_SECONDS) as c:
        try:
            with c.stream("POST", url, json=body, headers=headers) as r:
                for piece in r.iter_raw():
                    data += piece
        except httpx.RemoteProtocolError:  # the answer was cut: the call still ended
            return None, bytes(data), None
        except httpx.TimeoutException:
            pytest.fail(f"{model}: no end within {CALL_SECONDS} s: the proxy hangs")
    return r.status_code, bytes(data), r.headers.get("x-detour-id")


def last_row_of_model(proxy, model: str, timeout: float = 5.0) -> dict:
    """The newest usage row of `model` (mitmproxy's own 502 carries no x-detour-id)."""
    deadline = time.monotonic() + timeout
    while not (rows := [r for r in proxy.rows() if r["model_requested"] == model]):
        assert time.monotonic() < deadline, f"no usage row for {model}"
        time.sleep(0.05)
    return rows[-1]


def healthy(proxy) -> None:
    """The proxy serves the next call on the same provider (its default answer)."""
    status, data, _ = call(proxy, "direct", False)
    assert status == 200 and json.loads(data)["content"][0]["text"] == "fine", data


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("size", BAD_SIZES, ids=lambda s: s.decode())
def test_a_bad_chunk_size_fails_the_attempt_and_the_next_candidate_answers(
        proxy, wire, fake_openai, size, stream):
    """Through the relay: the provider leg's transport (h11) refuses the line, the attempt
    failed, the fallback answers, the row names both."""
    wire.clear()
    fake_openai.clear()
    wire.enqueue(bad_chunks(size, stream))
    status, data, flow_id = call(proxy, "relayed", stream)
    assert status == 200, data
    if stream:
        events = anthropic_events(data)
        assert type(events[-1]) is canonical.MessageStop, events[-3:]
    row = proxy.row_of(httpx.Response(200, headers={"x-detour-id": flow_id}))
    attempts = json.loads(row["route"])
    assert row["provider"] == "ok" and attempts[0]["provider"] == "raw", attempts
    assert len(wire.requests) == 1


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("size", [b"-6", b"1" * 40], ids=["-6", "40-digits"])
def test_a_bad_chunk_size_on_mitmproxys_own_connection_ends_that_call_only(
        proxy, wire, size, stream):
    """The direct path (mitmproxy reads the provider) and passthrough: the call ends (an
    error; a stream already begun: an error event on the direct path, cut in passthrough),
    the next is served."""
    for model in ("direct", "gpt-pass"):
        wire.clear()
        wire.enqueue(bad_chunks(size, stream))
        status, data, _ = call(proxy, model, stream)
        if model == "direct" and stream:
            # its head went out: detour ends it with an error event (error_reply.py)
            events = anthropic_events(data)
            assert status == 200 and type(events[-1]) is canonical.StreamError, data
            assert "broke off the stream" in events[-1].message
        else:
            # an error status, or a stream cut after its first event: never a complete answer
            assert status is None or status >= 500, (model, status, data)
        assert len(wire.requests) == 1
        healthy(proxy)


@pytest.mark.parametrize("model", ["total-relayed", "total-direct"])
def test_a_whole_answer_trickling_a_byte_at_a_time_ends_at_timeouts_total(proxy, wire, model):
    """Head sent, then one byte every 0.5 s of a body that never ends: each read arrives well
    within `read`, so only the call's own deadline ends it."""
    wire.clear()
    wire.enqueue(Answer(CHUNKED_JSON, (chunk(b) for b in trickle()), delay=0.5))
    status, data, flow_id = call(proxy, model, False)
    assert status in (502, 504), data  # the relay's 504; mitmproxy's 502 on the direct path
    row = last_row_of_model(proxy, model)
    assert "timeouts.total" in row["error"], row
    healthy(proxy)


@pytest.mark.parametrize("model", ["relayed", "direct"])
def test_a_stream_trickling_a_byte_at_a_time_ends_at_stream_seconds(proxy, wire, model):
    """One content event, then a byte every 0.5 s that never completes another event: the
    client gets what came and a well-formed error event at limits.stream_seconds."""
    wire.clear()
    first = chunk(content_event("before"))
    wire.enqueue(Answer(CHUNKED_SSE + first, (chunk(b) for b in trickle(b'data: {"')),
                        delay=0.5))
    status, data, flow_id = call(proxy, model, True)
    assert status == 200, data
    events = anthropic_events(data)
    assert "".join(e.text for e in events if type(e) is canonical.TextDelta) == "before"
    assert type(events[-1]) is canonical.StreamError, events[-3:]
    assert "limits.stream_seconds" in events[-1].message
    row = proxy.row_of(httpx.Response(200, headers={"x-detour-id": flow_id}))
    assert "limits.stream_seconds" in row["error"]
    healthy(proxy)


def test_a_stream_trickling_before_its_first_content_falls_back_at_first_byte(
        proxy, wire, fake_openai):
    wire.clear()
    fake_openai.clear()
    wire.enqueue(Answer(CHUNKED_SSE, (chunk(b) for b in trickle(b": keep\n")), delay=0.2))
    status, data, flow_id = call(proxy, "first-relayed", True)
    assert status == 200, data
    assert type(anthropic_events(data)[-1]) is canonical.MessageStop
    row = proxy.row_of(httpx.Response(200, headers={"x-detour-id": flow_id}))
    first = json.loads(row["route"])[0]
    assert row["provider"] == "ok" and "timeouts.first_byte" in first["error"], first


def test_a_stream_with_no_content_by_stream_seconds_ends_there_on_the_direct_path(proxy, wire):
    """`raw` waits 120 s for a first content (its first_byte), limits.stream_seconds is 3: the
    stream's own deadline comes first, and the client and the row are told that one."""
    wire.clear()
    wire.enqueue(Answer(CHUNKED_SSE, (chunk(b) for b in trickle(b": keep\n")), delay=0.5))
    status, data, flow_id = call(proxy, "direct", True)
    assert status == 200, data
    events = anthropic_events(data)
    assert type(events[-1]) is canonical.StreamError, events
    assert "limits.stream_seconds" in events[-1].message
    row = proxy.row_of(httpx.Response(200, headers={"x-detour-id": flow_id}))
    assert "limits.stream_seconds" in row["error"], row["error"]
    assert "limits.stream_seconds" in json.loads(row["route"])[-1]["error"], row["route"]
    healthy(proxy)
