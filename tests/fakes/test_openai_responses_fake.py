"""FakeOpenAIResponses speaks the wire format of the captured Responses streams: the same event
names in the same order, numbered from 0, with the fields each event carries there."""

import json

import httpx
import pytest

from tests.captures import CAPTURES
from tests.fakes.openai_responses_provider import FakeOpenAIResponses
from tests.fakes.replies import Status, StreamError, Text, ToolCall, Usage
from translators import canonical, openai_responses

AUTH = {"authorization": "Bearer sk-fake-provider-key"}


def events_of(data: bytes) -> list[tuple[str, dict]]:
    out = []
    for block in data.decode().split("\n\n"):
        if block.strip():
            lines = dict(line.split(": ", 1) for line in block.splitlines())
            out.append((lines["event"], json.loads(lines["data"])))
    return out


def shape(events) -> list[tuple[str, list[str]]]:
    """Each event's name and its fields (their order included)."""
    return [(name, list(data)) for name, data in events]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAIResponses() as f:
        yield f


@pytest.fixture(autouse=True)
def fresh(fake):
    fake.clear()


def post(fake, body: dict, **kw) -> httpx.Response:
    return httpx.post(fake.url("/v1/responses"), json=body, headers=kw.pop("headers", AUTH),
                      timeout=10, **kw)


@pytest.mark.parametrize("capture, reply", [
    ("codex-gpt-5.5.responses.text", Text("STUB-OK: hello from the stub vendor", pieces=2)),
    ("codex-gpt-5.5.responses.tool-call", ToolCall("exec_command", {"cmd": "echo hi"}, pieces=1)),
])
def test_stream_matches_the_capture(fake, capture, reply):
    fake.enqueue(reply)
    r = post(fake, {"model": "gpt-5.5", "input": "hi", "stream": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    ours = events_of(r.content)
    theirs = events_of((CAPTURES / f"{capture}.response.txt").read_bytes())
    assert shape(ours) == shape(theirs)
    assert [d["sequence_number"] for _, d in ours] == list(range(len(ours)))
    assert all(d["type"] == name for name, d in ours)
    assert [d["item"] for n, d in ours if n == "response.output_item.done"] == \
        ours[-1][1]["response"]["output"]
    assert list(ours[-1][1]["response"]["usage"]) == list(theirs[-1][1]["response"]["usage"])


def test_usage_and_whole_response(fake):
    fake.enqueue(Text("whole", reasoning="hmm", usage=Usage(prompt=100, completion=20, cached=40,
                                                            reasoning=5)))
    body = post(fake, {"model": "m", "input": [{"role": "user", "content": "hi"}]}).json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert [i["type"] for i in body["output"]] == ["reasoning", "message"]
    assert body["usage"] == {"input_tokens": 100, "input_tokens_details": {"cached_tokens": 40},
                             "output_tokens": 20, "output_tokens_details": {"reasoning_tokens": 5},
                             "total_tokens": 120}
    response = openai_responses.decode_response(body)
    assert response.usage == canonical.Usage(60, 20, 40, 0, 5)


def test_stream_error_and_statuses(fake):
    fake.enqueue(StreamError(after=2, kind="server_error", message="boom"), Status(429),
                 StreamError())
    events = events_of(post(fake, {"model": "m", "input": "hi", "stream": True}).content)
    assert [n for n, _ in events] == ["response.created", "response.in_progress", "error"]
    assert events[-1][1] == {"type": "error", "sequence_number": 2, "code": "server_error",
                             "message": "boom", "param": None}
    r = post(fake, {"model": "m", "input": "hi"})
    assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
    assert post(fake, {"model": "m", "input": "hi"}).status_code == 500  # not streamed


def test_refusals(fake):
    fake.enqueue(Text("for a valid request"))
    assert post(fake, {"model": "m", "input": "hi"}, headers={}).status_code == 401
    assert post(fake, {"input": "hi"}).status_code == 400
    orphan = [{"type": "function_call_output", "call_id": "call_x", "output": "o"}]
    r = post(fake, {"model": "m", "input": orphan})
    assert r.status_code == 400 and "call_x" in r.json()["error"]["message"]
    assert httpx.post(fake.url("/v1/chat/completions"), json={}, headers=AUTH).status_code == 404
    assert fake.pending == 1  # none of them took the queued reply
