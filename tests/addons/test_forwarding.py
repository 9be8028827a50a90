"""The forwarder against scripted upstreams (httpx.MockTransport): which failures fall back,
which cool an account down, what the client is told, and that translation keeps usage exact."""

import asyncio
import json

import httpx
import pytest

from addons.config import parse_config
from addons.forwarding import (NDJSON_HEADS, SSE_FIELDS, Failure, Forwarder, Job, not_a_stream,
                               stream_start)
from addons.routing import CooldownBook, build_providers, plan
from addons.call import Call
from tests.captures import CAPTURES, anthropic_events
from translators import canonical

CONFIG = """
providers:
  p: {kind: openai, base_url: "http://p.test/v1", api_keys: [key-a, key-b]}
  q: {kind: openai, base_url: "http://q.test/v1", api_keys: [key-q], max_output_tokens: 8192,
      reasoning_effort: medium, max_tokens_field: max_completion_tokens}
  ant: {kind: anthropic, base_url: "http://ant.test", api_keys: [key-ant]}
  slow: {kind: openai, base_url: "http://slow.test/v1", api_keys: [k1, k2],
         timeouts: {first_byte: 0.2}}
routes:
  only-slow: [slow/sm]
  two-providers: [p/pm, q/qm]
  only-q: [q/qm]
  same-format: [ant/claude-x]
  to-vendor: [passthrough]
cooldown_seconds: 30
"""

CHAT_OK = {"id": "c1", "object": "chat.completion", "model": "pm",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 100, "completion_tokens": 5,
                     "prompt_tokens_details": {"cached_tokens": 40}}}


def chat_stream(*pieces: str) -> bytes:
    out = []
    for i, p in enumerate(pieces):
        delta = {"role": "assistant", "content": p} if i == 0 else {"content": p}
        out.append({"id": "c2", "object": "chat.completion.chunk", "model": "pm",
                    "choices": [{"index": 0, "delta": delta, "finish_reason": None}]})
    out.append({"id": "c2", "object": "chat.completion.chunk", "model": "pm",
                "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    out.append({"id": "c2", "object": "chat.completion.chunk", "model": "pm", "choices": [],
                "usage": {"prompt_tokens": 100, "completion_tokens": 5,
                          "prompt_tokens_details": {"cached_tokens": 40}}})
    return b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in out) + b"data: [DONE]\n\n"


class Upstreams:
    """Scripted answers per host, and a log of what each got."""

    def __init__(self, **answers):
        self.answers = {h: list(a) for h, a in answers.items()}
        self.seen: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        todo = self.answers.get(request.url.host)
        if not todo:
            raise httpx.ConnectError("connection refused", request=request)
        answer = todo.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer


def setup(upstreams: Upstreams, model: str, stream: bool = False, config: str = CONFIG,
          client_key: str = "client-key"):
    config = parse_config(config)
    cooldowns = CooldownBook()
    fwd = Forwarder(config, cooldowns, transport=httpx.MockTransport(upstreams))
    body = json.loads((CAPTURES / "claude-code.messages.text.request.json").read_text())
    body.update(model=model, stream=stream)
    raw = json.dumps(body).encode()
    call = Call("flow1", "test", "anthropic", lambda row: None)
    call.requested(model, stream)
    job = Job("flow1", "anthropic", {"x-api-key": client_key, "anthropic-version": "2023-06-01",
                                     "anthropic-beta": "b1"},
              "http://vendor.test/v1/messages?beta=true", raw, body, model, stream,
              plan(config, build_providers(config), model),
              call)
    return fwd, job


sse_events = anthropic_events


async def test_whole_call_translated_with_exact_usage():
    up = Upstreams(**{"p.test": [httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "two-providers")
    status, headers, body = await fwd.complete(job)
    assert status == 200
    msg = json.loads(body)
    assert msg["content"] == [{"type": "text", "text": "hi"}]
    assert msg["usage"]["input_tokens"] == 60 and msg["usage"]["cache_read_input_tokens"] == 40
    assert (job.row.input_tokens, job.row.cache_read_tokens, job.row.output_tokens) == (60, 40, 5)
    sent = up.seen[0]
    assert sent.headers["authorization"] == "Bearer key-a"
    assert "x-api-key" not in sent.headers and b"client-key" not in sent.content
    assert json.loads(sent.content)["model"] == "pm"
    await fwd.aclose()


@pytest.mark.parametrize("failure, cooled", [
    (httpx.Response(429, headers={"retry-after": "120"}), 120),
    # transient failures: the first backoff step (see test_fallback.py for the growth)
    (httpx.Response(500), 1),
    (httpx.Response(503), 1),
    (httpx.Response(401), 600),
    (httpx.Response(403), 600),
    (httpx.ConnectError("refused"), 1),
    (httpx.ReadTimeout("slow"), 1),
    (httpx.Response(200, text="<html>oops</html>", headers={"content-type": "text/html"}), 1),
])
async def test_failures_fall_back_to_the_next_account_and_cool_down(failure, cooled):
    up = Upstreams(**{"p.test": [failure, httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "two-providers")
    status, _, _ = await fwd.complete(job)
    assert status == 200
    assert [r.headers["authorization"] for r in up.seen] == ["Bearer key-a", "Bearer key-b"]
    assert cooled * 0.5 < fwd.cooldowns.remaining(job.candidates[0].key, job.candidates[0].model) <= cooled
    assert fwd.cooldowns.remaining(job.candidates[1].key, job.candidates[1].model) == 0
    assert job.row.attempts == 2 and job.row.account == job.candidates[1].account_label


async def test_a_refused_request_skips_the_providers_other_accounts_without_cooldown():
    up = Upstreams(**{"p.test": [httpx.Response(400, json={"error": {"message": "bad thing"}})],
                      "q.test": [httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "two-providers")
    status, _, _ = await fwd.complete(job)
    assert status == 200
    assert [r.url.host for r in up.seen] == ["p.test", "q.test"]  # key-b never tried
    assert all(fwd.cooldowns.remaining(c.key, c.model) == 0 for c in job.candidates)


async def test_all_failed_names_every_attempt_in_the_clients_format():
    up = Upstreams(**{"p.test": [httpx.Response(500), httpx.Response(429)],
                      "q.test": [httpx.Response(502, json={"error": {"message": "upstream gone"}})]})
    fwd, job = setup(up, "two-providers")
    status, headers, body = await fwd.complete(job)
    assert status == 502
    err = json.loads(body)
    assert err["type"] == "error" and err["error"]["type"] == "api_error"
    msg = err["error"]["message"]
    assert "HTTP 500" in msg and "HTTP 429" in msg and "upstream gone" in msg
    # the client is told each account's place in its provider's list; the row keeps labels
    assert "p/account 2 (pm): HTTP 429" in msg and "key2:" not in msg
    assert job.row.status == 502 and "p/key2:" in job.row.error


async def test_every_account_resting_is_a_429_with_retry_after():
    up = Upstreams(**{"q.test": [httpx.Response(429, headers={"retry-after": "90"})]})
    fwd, job = setup(up, "only-q")
    status, headers, _ = await fwd.complete(job)
    assert status == 429 and 85 <= int(headers["retry-after"]) <= 90
    fwd2, job2 = setup(Upstreams(), "only-q")
    fwd2.cooldowns = fwd.cooldowns
    with pytest.raises(Failure) as e:
        await fwd2.open(job2)
    assert e.value.status == 429 and "cooling down" in e.value.message
    assert up.seen and len(up.seen) == 1  # the resting account was not asked again


async def test_absurd_retry_after_is_capped():
    up = Upstreams(**{"q.test": [httpx.Response(429, headers={"retry-after": str(18 * 86400)})]})
    fwd, job = setup(up, "only-q")
    await fwd.complete(job)
    assert fwd.cooldowns.remaining(job.candidates[0].key, job.candidates[0].model) <= CooldownBook.MAX_SECONDS


async def test_max_tokens_capped_for_the_provider():
    up = Upstreams(**{"q.test": [httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "only-q")
    await fwd.complete(job)
    sent = json.loads(up.seen[0].content)
    assert sent["max_completion_tokens"] == 8192  # Claude Code asked for 64000
    assert "max_tokens" not in sent  # OpenAI's reasoning models refuse it


async def test_stream_translated_and_usage_recorded():
    up = Upstreams(**{"p.test": [httpx.Response(
        200, content=chat_stream("Hel", "lo"), headers={"content-type": "text/event-stream"})]})
    fwd, job = setup(up, "two-providers", stream=True)
    opened = await fwd.open(job)
    data = b"".join([c async for c in fwd.stream(job, opened)])
    events = sse_events(data)
    assert "".join(e.text for e in events if isinstance(e, canonical.TextDelta)) == "Hello"
    assert (job.row.input_tokens, job.row.cache_read_tokens, job.row.output_tokens) == (60, 40, 5)
    assert json.loads(up.seen[0].content)["stream_options"] == {"include_usage": True}


async def test_stream_asked_but_whole_answer_given_is_still_a_stream():
    up = Upstreams(**{"p.test": [httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "two-providers", stream=True)
    opened = await fwd.open(job)
    events = sse_events(b"".join([c async for c in fwd.stream(job, opened)]))
    assert [e.text for e in events if isinstance(e, canonical.TextDelta)] == ["hi"]
    assert isinstance(events[-1], canonical.MessageStop)


async def test_stream_cut_midway_ends_with_an_error_event():
    body = chat_stream("one", "two")
    cut = body[: body.index(b"\"stop\"") - 40]  # after the content, before the end

    async def broken():
        yield cut
        raise httpx.RemoteProtocolError("peer closed connection")

    up = Upstreams(**{"p.test": [httpx.Response(
        200, content=broken(), headers={"content-type": "text/event-stream"})]})
    fwd, job = setup(up, "two-providers", stream=True)
    opened = await fwd.open(job)
    events = sse_events(b"".join([c async for c in fwd.stream(job, opened)]))
    assert isinstance(events[-1], canonical.StreamError)
    assert "broke off" in job.row.error


async def test_same_format_passes_the_bytes_and_swaps_the_credential():
    answer = (CAPTURES / "claude-code.messages.text.response.txt").read_bytes()
    up = Upstreams(**{"ant.test": [httpx.Response(
        200, content=answer, headers={"content-type": "text/event-stream"})]})
    fwd, job = setup(up, "same-format", stream=True)
    opened = await fwd.open(job)
    data = b"".join([c async for c in fwd.stream(job, opened)])
    assert data == answer  # untouched
    sent = up.seen[0]
    assert sent.headers["x-api-key"] == "key-ant" and sent.headers["anthropic-beta"] == "b1"
    assert json.loads(sent.content)["model"] == "claude-x"
    assert (job.row.input_tokens, job.row.output_tokens) == (12, 6)


async def test_passthrough_keeps_the_clients_request_and_key():
    answer = (CAPTURES / "claude-code.messages.text.response.txt").read_bytes()
    up = Upstreams(**{"vendor.test": [httpx.Response(
        200, content=answer, headers={"content-type": "text/event-stream"})]})
    fwd, job = setup(up, "to-vendor", stream=True)
    opened = await fwd.open(job)
    assert b"".join([c async for c in fwd.stream(job, opened)]) == answer
    sent = up.seen[0]
    assert sent.content == job.raw_body and sent.headers["x-api-key"] == "client-key"
    assert str(sent.url) == "http://vendor.test/v1/messages?beta=true"
    assert job.row.provider == "vendor.test" and job.row.account == "client"


async def test_every_attempt_timing_out_is_a_504():
    async def never(request):
        await asyncio.sleep(5)

    config = parse_config(CONFIG)
    fwd = Forwarder(config, CooldownBook(), transport=httpx.MockTransport(never))
    _, job = setup(Upstreams(), "only-slow", stream=True)  # first_byte bounds streams only
    job.candidates = plan(config, build_providers(config), "only-slow")
    status, _, body = await fwd.complete(job)
    assert status == 504
    assert json.loads(body)["error"]["message"].count("no answer within 0.2s") == 2
    assert job.row.attempts == 2
    assert all(a["timed_out"] for a in job.row.route)


async def test_translated_requests_carry_no_client_identity_and_chosen_effort():
    up = Upstreams(**{"p.test": [httpx.Response(200, json=CHAT_OK)],
                      "q.test": [httpx.Response(200, json=CHAT_OK)]})
    for model in ("two-providers", "only-q"):
        fwd, job = setup(up, model)
        assert (await fwd.complete(job))[0] == 200
    to_p, to_q = (json.loads(r.content) for r in up.seen)
    assert "user" not in to_p and "user" not in to_q  # Claude Code's device/account ids
    assert b"device_id" not in up.seen[0].content
    assert "reasoning_effort" not in to_p  # default: dropped
    assert to_q["reasoning_effort"] == "medium"  # configured


@pytest.mark.parametrize("head, heads, start", [
    (b"data: {}\n\n", SSE_FIELDS, True),
    (b"\xef\xbb\xbf\r\n: ping\n\n", SSE_FIELDS, True),  # a BOM and blank lines may come first
    (b"da", SSE_FIELDS, None),  # too few bytes to tell
    (b"\n ", SSE_FIELDS, None),
    (b"<html><body>oops", SSE_FIELDS, False),
    (b'{"error": "no"}', SSE_FIELDS, False),  # a JSON error sent as a stream's 200
    (b'{"model": "m"', NDJSON_HEADS, True),
    (b"data: {}", NDJSON_HEADS, False),
])
def test_how_an_answers_first_bytes_read_as_a_stream(head, heads, start):
    """The check the relay (before a candidate is chosen) and the direct path (before the
    first content) both make."""
    assert stream_start(head, heads) is start


def test_an_answer_that_is_no_stream_is_told_by_its_start():
    assert not_a_stream(b"\xef\xbb\xbf  <html>\n<body>oops") == \
        "not an event stream: <html> <body>oops"
