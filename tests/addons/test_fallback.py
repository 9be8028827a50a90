"""Fallback and cooldowns against scripted upstreams: an error before any content falls back,
transient failures back off instead of locking a one-key user out, passthrough rests are the
client's own, whole calls get the SDKs' time, failures say what happened, and a stream whose
final event was sent is a success."""

import asyncio
import json
import time

import httpx
import pytest

from addons.routing import CooldownBook, Rest, passthrough_key
from tests.addons.test_forwarding import CHAT_OK, Upstreams, chat_stream, setup
from tests.captures import CAPTURES, anthropic_events
from translators import canonical

CONFIG = """
providers:
  ant: {kind: anthropic, base_url: "http://ant.test", api_keys: [key-ant]}
  p: {kind: openai, base_url: "http://p.test/v1", api_keys: [key-p]}
  q: {kind: openai, base_url: "http://q.test/v1", api_keys: [key-q]}
  whole: {kind: openai, base_url: "http://whole.test/v1", api_keys: [key-w],
          timeouts: {first_byte: 0.05, total: 5}}
  short: {kind: openai, base_url: "http://short.test/v1", api_keys: [key-s],
          timeouts: {total: 0.1}}
routes:
  ant-then-p: [ant/claude-x, p/pm]
  p-then-ant: [p/pm, ant/claude-x]
  p-then-q: [p/pm, q/qm]
  only-p: [p/pm]
  vendor-then-p: [passthrough, p/pm]
  whole-then-p: [whole/wm, p/pm]
  short-then-p: [short/sm, p/pm]
cooldown_seconds: 30
"""

ANSWER = (CAPTURES / "claude-code.messages.text.response.txt").read_bytes()
SSE = {"content-type": "text/event-stream"}
MESSAGE_OK = {"id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x",
              "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
              "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}


def anthropic_sse(*events: tuple[str, dict]) -> bytes:
    return b"".join(f"event: {name}\ndata: {json.dumps(obj)}\n\n".encode() for name, obj in events)


MESSAGE_START = ("message_start", {"type": "message_start", "message": {
    "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-x", "content": [],
    "stop_reason": None, "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}})


def anthropic_error(kind: str) -> bytes:
    return anthropic_sse(MESSAGE_START, ("error", {"type": "error", "error": {
        "type": kind, "message": f"scripted {kind}"}}))


def chat_error_chunk(code: int | str, message: str = "Provider returned error") -> bytes:
    """OpenRouter's way: a 200 stream whose first chunk carries an `error` object."""
    role = {"id": "gen-1", "object": "chat.completion.chunk", "model": "pm",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                         "finish_reason": None}]}
    error = {"id": "gen-1", "object": "chat.completion.chunk", "model": "pm", "choices": [],
             "error": {"code": code, "message": message}}
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in (role, error))


def in_pieces(data: bytes, size: int):
    async def pieces():
        for i in range(0, len(data), size):
            yield data[i:i + size]
    return pieces()


async def read_stream(fwd, job) -> bytes:
    opened = await fwd.open(job)
    return b"".join([c async for c in fwd.stream(job, opened)])


# ---------------------------------------------------------------- 1. an error before content


@pytest.mark.parametrize("kind, rest, seconds", [
    ("overloaded_error", Rest.TRANSIENT, 1),
    ("api_error", Rest.TRANSIENT, 1),
    ("rate_limit_error", Rest.RATE_LIMIT, 30),
    ("authentication_error", Rest.AUTH, 600),
])
async def test_anthropic_stream_opening_with_an_error_falls_back(kind, rest, seconds):
    up = Upstreams(**{"ant.test": [httpx.Response(200, content=anthropic_error(kind),
                                                  headers=SSE)],
                      "p.test": [httpx.Response(200, content=chat_stream("Hel", "lo"),
                                                headers=SSE)]})
    fwd, job = setup(up, "ant-then-p", stream=True, config=CONFIG)
    before = time.monotonic()  # the rest is read as of then: a busy machine cannot end it first
    events = anthropic_events(await read_stream(fwd, job))
    assert "".join(e.text for e in events if isinstance(e, canonical.TextDelta)) == "Hello"
    assert not any(isinstance(e, canonical.StreamError) for e in events)
    assert [r.url.host for r in up.seen] == ["ant.test", "p.test"]
    assert job.row.attempts == 2 and job.row.provider == "p" and job.row.error is None
    first = job.row.route[0]
    assert first["status"] == 200 and first["stream_error"] == kind and first["rest"] == rest.value
    resting = fwd.cooldowns.rest(job.candidates[0].key, job.candidates[0].model, now=before)
    # rested by its kind, not cleared by its 200
    assert resting.reason is rest and seconds * 0.5 < resting.until - before
    assert resting.until - time.monotonic() <= seconds


@pytest.mark.parametrize("code, rest", [(502, Rest.TRANSIENT), ("server_error", Rest.TRANSIENT),
                                        (429, Rest.RATE_LIMIT)])
async def test_chat_chunk_carrying_an_error_falls_back(code, rest):
    up = Upstreams(**{"p.test": [httpx.Response(200, content=chat_error_chunk(code),
                                                headers=SSE)],
                      "ant.test": [httpx.Response(200, content=ANSWER, headers=SSE)]})
    fwd, job = setup(up, "p-then-ant", stream=True, config=CONFIG)
    assert await read_stream(fwd, job) == ANSWER  # the second candidate's bytes, untouched
    assert job.row.attempts == 2 and job.row.provider == "ant"
    assert fwd.cooldowns.rest(job.candidates[0].key, job.candidates[0].model).reason is rest


async def test_every_stream_opening_with_an_error_is_a_whole_error_response():
    up = Upstreams(**{"ant.test": [httpx.Response(200, content=anthropic_error(
                          "overloaded_error"), headers=SSE)],
                      "p.test": [httpx.Response(200, content=chat_error_chunk(503),
                                                headers=SSE)]})
    fwd, job = setup(up, "ant-then-p", stream=True, config=CONFIG)
    status, _, body = await fwd.complete(job)
    assert status == 502
    message = json.loads(body)["error"]["message"]
    assert "overloaded_error" in message and "scripted overloaded_error" in message


async def test_same_format_stream_read_in_small_pieces_reaches_the_client_once():
    """Buffering up to the first content loses and repeats nothing, whatever the chunking."""
    for size in (1, 7, 64, len(ANSWER)):
        up = Upstreams(**{"ant.test": [httpx.Response(200, content=in_pieces(ANSWER, size),
                                                      headers=SSE)]})
        fwd, job = setup(up, "ant-then-p", stream=True, config=CONFIG)
        assert await read_stream(fwd, job) == ANSWER
        assert (job.row.input_tokens, job.row.output_tokens) == (12, 6)


async def test_translated_stream_read_in_small_pieces_keeps_every_event():
    body = chat_stream("one ", "two ", "three")
    up = Upstreams(**{"p.test": [httpx.Response(200, content=in_pieces(body, 5), headers=SSE)]})
    fwd, job = setup(up, "p-then-q", stream=True, config=CONFIG)
    events = anthropic_events(await read_stream(fwd, job))
    assert "".join(e.text for e in events if isinstance(e, canonical.TextDelta)) == \
        "one two three"
    assert sum(isinstance(e, canonical.MessageStart) for e in events) == 1


async def test_a_stream_that_ends_before_any_content_falls_back():
    up = Upstreams(**{"ant.test": [httpx.Response(200, content=anthropic_sse(MESSAGE_START),
                                                  headers=SSE)],
                      "p.test": [httpx.Response(200, content=chat_stream("ok"), headers=SSE)]})
    fwd, job = setup(up, "ant-then-p", stream=True, config=CONFIG)
    await read_stream(fwd, job)
    assert job.row.provider == "p" and "before any content" in job.row.route[0]["error"]


# ---------------------------------------------------------------- 2. backoff


def test_transient_backoff_grows_is_capped_and_resets_on_success():
    book = CooldownBook()
    steps = [book.fail_transient("a/k", 10, "HTTP 500") for _ in range(6)]
    assert steps == [1, 2, 4, 8, 10, 10]
    assert book.rest("a/k").reason is Rest.TRANSIENT and book.rest("a/k").cause == "HTTP 500"
    book.succeeded("a/k")
    assert book.remaining("a/k") == 0 and book.fail_transient("a/k", 10) == 1
    book.cool("b/k", 60, Rest.AUTH, "HTTP 401")
    book.fail_transient("b/k", 10)  # a shorter transient rest never replaces a longer one
    assert book.rest("b/k").reason is Rest.AUTH
    assert set(book.resting()) == {"a/k", "b/k"}


@pytest.mark.parametrize("failure", [httpx.Response(500), httpx.ConnectError("refused"),
                                     httpx.ReadTimeout("slow")])
async def test_one_transient_failure_does_not_lock_a_one_key_user_out(failure):
    up = Upstreams(**{"p.test": [failure, httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "only-p", config=CONFIG)
    assert (await fwd.complete(job))[0] == 502
    _, job2 = setup(up, "only-p", config=CONFIG)
    fwd_again = fwd.__class__(fwd.config, fwd.cooldowns, transport=httpx.MockTransport(up))
    status, _, _ = await fwd_again.complete(job2)  # at once: the account still rests for ~1 s
    assert status == 200 and len(up.seen) == 2
    assert job2.row.route[0].get("despite_rest") is True
    assert fwd.cooldowns.remaining(job2.candidates[0].key, job2.candidates[0].model) == 0  # the success reset it


async def test_the_transient_rest_that_ends_first_is_tried_when_all_rest():
    up = Upstreams(**{"q.test": [httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "p-then-q", config=CONFIG)
    p_key, q_key = (c.key for c in job.candidates)
    for _ in range(3):
        fwd.cooldowns.fail_transient(p_key, 30)  # 4 s
    fwd.cooldowns.fail_transient(q_key, 30)  # 1 s: ends first
    assert (await fwd.complete(job))[0] == 200
    assert [r.url.host for r in up.seen] == ["q.test"] and job.row.attempts == 1


@pytest.mark.parametrize("reason", [Rest.RATE_LIMIT, Rest.QUOTA, Rest.AUTH])
async def test_rests_that_are_not_transient_are_kept(reason):
    up = Upstreams(**{"p.test": [httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "only-p", config=CONFIG)
    fwd.cooldowns.cool(job.candidates[0].key, 60, reason, "HTTP 429")
    status, headers, body = await fwd.complete(job)
    assert up.seen == []
    if reason is Rest.AUTH:
        assert status == 502
    else:
        assert status == 429 and 55 <= int(headers["retry-after"]) <= 60
    assert "cooling down for 60s after HTTP 429" in json.loads(body)["error"]["message"]


# ---------------------------------------------------------------- 3. passthrough rests


def test_passthrough_key_is_vendor_and_credential_fingerprint():
    a = passthrough_key("https://api.anthropic.com/v1/messages?beta=true",
                        {"x-api-key": "sk-ant-secret-one"})
    b = passthrough_key("https://api.anthropic.com/v1/messages", {"x-api-key": "sk-other"})
    c = passthrough_key("https://api.openai.com/v1/chat/completions",
                        {"authorization": "Bearer sk-ant-secret-one"})
    assert len({a, b, c}) == 3
    assert a.startswith("passthrough/https://api.anthropic.com#")
    assert "secret" not in a + b + c and "sk-" not in a + b + c


def test_passthrough_key_tells_gemini_clients_apart():
    """Gemini's API key rides in x-goog-api-key or the URL's `?key=`: one client's rest is not
    another's."""
    url = "https://generativelanguage.googleapis.com/v1beta/models/g:generateContent"
    by_header = {passthrough_key(url, {"x-goog-api-key": k}) for k in ("key-one", "key-two")}
    by_query = {passthrough_key(f"{url}?alt=sse&key={k}", {}) for k in ("key-one", "key-two")}
    assert len(by_header) == 2 and by_header == by_query
    assert passthrough_key(url, {}).endswith("#none")
    assert not any("key-" in k for k in by_header | by_query)


@pytest.mark.parametrize("status", [401, 403])
async def test_passthrough_auth_failure_cools_nothing(status):
    up = Upstreams(**{"vendor.test": [httpx.Response(status)],
                      "p.test": [httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "vendor-then-p", config=CONFIG)
    assert (await fwd.complete(job))[0] == 200
    assert fwd.cooldowns.resting() == {}


async def test_passthrough_rate_limit_rests_only_that_client_at_that_vendor():
    up = Upstreams(**{"vendor.test": [httpx.Response(429, headers={"retry-after": "60"}),
                                      httpx.Response(200, json=MESSAGE_OK)]})
    fwd, job = setup(up, "vendor-then-p", config=CONFIG, client_key="key-of-alice")
    up.answers["p.test"] = [httpx.Response(200, json=CHAT_OK)]
    assert (await fwd.complete(job))[0] == 200
    (key,) = fwd.cooldowns.resting()
    assert key.startswith("passthrough/http://vendor.test#") and "alice" not in key
    _, job_bob = setup(up, "vendor-then-p", config=CONFIG, client_key="key-of-bob")
    fwd_bob = fwd.__class__(fwd.config, fwd.cooldowns, transport=httpx.MockTransport(up))
    assert (await fwd_bob.complete(job_bob))[0] == 200
    assert job_bob.row.provider == "vendor.test"  # bob's own passthrough was not resting


# ---------------------------------------------------------------- 4. whole calls' budget


def slow_answer(seconds: float):
    async def handler(request):
        await asyncio.sleep(seconds)
        return httpx.Response(200, json=CHAT_OK)
    return handler


async def test_whole_call_is_bounded_by_total_not_first_byte():
    fwd, job = setup(Upstreams(), "whole-then-p", config=CONFIG)
    fwd.transport = httpx.MockTransport(slow_answer(0.3))  # far over first_byte: 0.05
    status, _, _ = await fwd.complete(job)
    assert status == 200 and job.row.provider == "whole" and job.row.attempts == 1
    await fwd.aclose()


async def test_whole_call_over_its_total_is_a_504_that_rests_nobody():
    fwd, job = setup(Upstreams(), "short-then-p", config=CONFIG)
    fwd.transport = httpx.MockTransport(slow_answer(5))
    status, _, body = await fwd.complete(job)
    assert status == 504
    assert "no complete answer within 0.1s (timeouts.total)" in json.loads(body)["error"][
        "message"]
    assert job.row.attempts == 1  # the client's SDK gives up at its own total: no fallback
    assert fwd.cooldowns.resting() == {}
    await fwd.aclose()


async def test_streams_keep_first_byte():
    fwd, job = setup(Upstreams(), "whole-then-p", stream=True, config=CONFIG)
    fwd.transport = httpx.MockTransport(slow_answer(0.3))
    await fwd.complete(job)
    assert job.row.route[0]["error"] == "no answer within 0.05s (timeouts.first_byte)"
    assert job.row.provider == "p" and job.row.route[0]["rest"] == "transient"
    await fwd.aclose()


# ---------------------------------------------------------------- 5. what the client is told


async def test_refused_connections_are_a_502_naming_provider_and_refusal_every_time():
    up = Upstreams()  # nothing listens: every connection refused
    book = CooldownBook()
    for _ in range(3):  # and again while the accounts rest: never a 429
        fwd, job = setup(up, "p-then-q", config=CONFIG)
        fwd.cooldowns = book
        status, headers, body = await fwd.complete(job)
        assert status == 502 and "retry-after" not in headers
        message = json.loads(body)["error"]["message"]
        assert "p/account 1" in message and "connection refused" in message
    assert len(up.seen) == 4  # both, then the one whose rest ends first, each time


async def test_all_rate_limited_is_a_429_with_retry_after_and_mixed_is_a_502():
    up = Upstreams(**{"p.test": [httpx.Response(429, headers={"retry-after": "40"})],
                      "q.test": [httpx.Response(429, headers={"retry-after": "20"})]})
    fwd, job = setup(up, "p-then-q", config=CONFIG)
    status, headers, _ = await fwd.complete(job)
    assert status == 429 and 15 <= int(headers["retry-after"]) <= 20
    up = Upstreams(**{"p.test": [httpx.Response(429, headers={"retry-after": "40"})]})
    fwd, job = setup(up, "p-then-q", config=CONFIG)  # q refuses connections
    status, headers, body = await fwd.complete(job)
    assert status == 502 and "connection refused" in json.loads(body)["error"]["message"]


# ---------------------------------------------------------------- 6. the final event


async def test_stream_marks_the_job_delivered_once_its_final_event_was_sent():
    gate = asyncio.Event()

    async def lingering():
        yield ANSWER  # every event, message_stop included
        await gate.wait()  # ... but the provider's end of stream has not come yet
        yield b""

    up = Upstreams(**{"ant.test": [httpx.Response(200, content=lingering(), headers=SSE)]})
    fwd, job = setup(up, "ant-then-p", stream=True, config=CONFIG)
    opened = await fwd.open(job)
    stream = fwd.stream(job, opened)
    assert await anext(stream) == ANSWER and not job.delivered
    pending = asyncio.ensure_future(anext(stream))
    await asyncio.sleep(0.05)
    assert job.delivered  # sent, and the client asked for more: it has it
    pending.cancel()  # the client leaves
    with pytest.raises(asyncio.CancelledError):
        await pending
    await stream.aclose()
    assert job.row.error is None and (job.row.input_tokens, job.row.output_tokens) == (12, 6)
