"""The fake vendors themselves: their wire shapes, scripted faults and bookkeeping, over real
loopback HTTP (httpx), so that tests built on them can trust them."""

from __future__ import annotations

import asyncio
import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.fakes.anthropic_vendor import FakeAnthropic, thinking_signature
from tests.fakes.anthropic_vendor import agent_reply as anthropic_agent
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.openai_provider import agent_reply as openai_agent
from tests.fakes.replies import (CutAfter, Events, Garbage, Stall, Status, StreamError, Text,
                                 ToolCall, ToolCalls, Usage)
from tests.fakes.server import Received

REPO = Path(__file__).resolve().parents[2]
from tests.captures import CAPTURES  # noqa: E402


OPENAI_KEY = "sk-fake-provider-key"
ANTHROPIC_KEY = "sk-ant-fake-vendor-key"
USER_HI = [{"role": "user", "content": "hi"}]
# httpx loads certifi for every client unless given a context (~0.2 s each); the fakes' plain
# HTTP needs none, and this one trusts nothing, so it also shows an untrusted server fails.
TRUSTS_NOTHING = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)


def make_client(**kwargs) -> httpx.Client:
    kwargs.setdefault("verify", TRUSTS_NOTHING)
    return httpx.Client(**kwargs)


# --- helpers ---------------------------------------------------------------------------------

def parse_sse(text: str) -> list[tuple[str, str]]:
    """(event name or "", data) per event of a complete SSE body."""
    events = []
    for block in text.split("\n\n"):
        if not block.strip():
            continue
        name, data = "", []
        for line in block.split("\n"):
            if line.startswith("event:"):
                name = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        events.append((name, "\n".join(data)))
    return events


def openai_chunks(text: str) -> list[dict]:
    events = [data for _, data in parse_sse(text)]
    assert events[-1] == "[DONE]"
    return [json.loads(data) for data in events[:-1]]


def openai_client(fake: FakeOpenAI, key: str = OPENAI_KEY, **kwargs) -> httpx.Client:
    return make_client(base_url=fake.base_url, headers={"authorization": f"Bearer {key}"}, **kwargs)


def anthropic_client(fake: FakeAnthropic, key: str = ANTHROPIC_KEY, **kwargs) -> httpx.Client:
    return make_client(base_url=fake.base_url,
                  headers={"x-api-key": key, "anthropic-version": "2023-06-01"}, **kwargs)


def chat(stream: bool = False, **extra) -> dict:
    body = {"model": "gpt-fake-1", "messages": USER_HI, **extra}
    if stream:
        body["stream"] = True
    return body


def messages(stream: bool = False, **extra) -> dict:
    body = {"model": "claude-fake-sonnet", "max_tokens": 100, "messages": USER_HI, **extra}
    if stream:
        body["stream"] = True
    return body


def tool_arguments(chunks: list[dict]) -> dict[int, dict]:
    """OpenAI streamed tool calls reassembled: index -> {id, name, arguments (parsed)}."""
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for choice in chunk["choices"]:
            for delta in choice["delta"].get("tool_calls") or []:
                call = calls.setdefault(delta["index"], {"arguments": ""})
                if "id" in delta:
                    assert "id" not in call, "id sent twice"
                    call["id"] = delta["id"]
                    call["name"] = delta["function"]["name"]
                call["arguments"] += delta["function"].get("arguments", "")
    return {i: {**c, "arguments": json.loads(c["arguments"])} for i, c in calls.items()}


def check_anthropic_grammar(events: list[tuple[str, dict]]) -> list[dict]:
    """The Messages stream grammar; returns the content blocks rebuilt."""
    names = [name for name, _ in events]
    assert names[0] == "message_start" and names[-2:] == ["message_delta", "message_stop"]
    blocks: list[dict] = []
    open_index = None
    for name, data in events[1:-2]:
        assert data["type"] == name
        if name == "ping":
            continue
        if name == "content_block_start":
            assert open_index is None and data["index"] == len(blocks)
            open_index = data["index"]
            blocks.append({**data["content_block"], "_json": ""})
        elif name == "content_block_delta":
            assert data["index"] == open_index
            block, delta = blocks[open_index], data["delta"]
            kind = delta["type"]
            if kind == "text_delta":
                assert block["type"] == "text"
                block["text"] += delta["text"]
            elif kind == "thinking_delta":
                assert block["type"] == "thinking"
                block["thinking"] += delta["thinking"]
            elif kind == "signature_delta":
                assert block["type"] == "thinking"
                block["signature"] = delta["signature"]
            elif kind == "input_json_delta":
                assert block["type"] == "tool_use"
                block["_json"] += delta["partial_json"]
            else:
                raise AssertionError(f"unknown delta {kind}")
        elif name == "content_block_stop":
            assert data["index"] == open_index
            open_index = None
        else:
            raise AssertionError(f"unexpected event {name}")
    assert open_index is None
    for block in blocks:
        if block["type"] == "tool_use":
            block["input"] = json.loads(block["_json"])
        del block["_json"]
    return blocks


def anthropic_events(text: str) -> list[tuple[str, dict]]:
    return [(name, json.loads(data)) for name, data in parse_sse(text)]


def take_data_lines(lines, limit: int) -> list[str]:
    """Up to `limit` `data:` lines from a `response.iter_lines()` iterator. Keep the iterator
    referenced: closing it (as a `break` out of a `for` over it does) makes httpx close the
    connection."""
    out = []
    for line in lines:
        if line.startswith("data:"):
            out.append(line)
            if len(out) >= limit:
                break
    return out


@pytest.fixture
def openai():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def anthropic():
    with FakeAnthropic() as fake:
        yield fake


# --- OpenAI Chat Completions ---------------------------------------------------------------

def test_openai_whole_text_and_request_record(openai):
    openai.enqueue(Text("the answer", usage=Usage(prompt=50, completion=7, cached=20)))
    with openai_client(openai) as client:
        response = client.post("/v1/chat/completions", json=chat(), headers={"X-Trace": "t1"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert body["object"] == "chat.completion" and body["model"] == "gpt-fake-1"
    assert body["id"].startswith("chatcmpl-")
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert choice["message"]["content"] == "the answer"
    assert choice["finish_reason"] == "stop"
    assert body["usage"]["prompt_tokens"] == 50
    assert body["usage"]["completion_tokens"] == 7
    assert body["usage"]["total_tokens"] == 57
    assert body["usage"]["prompt_tokens_details"]["cached_tokens"] == 20
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 0

    [received] = openai.requests
    assert (received.method, received.path) == ("POST", "/v1/chat/completions")
    assert received.headers["x-trace"] == "t1"
    assert received.headers["authorization"] == f"Bearer {OPENAI_KEY}"
    assert received.json == chat()
    assert json.loads(received.body) == chat()


def test_openai_stream_text_shape(openai):
    openai.enqueue(Text(pieces=["Hel", "lo", " there"], reasoning="think first"))
    with openai_client(openai) as client:
        response = client.post("/v1/chat/completions",
                               json=chat(stream=True, stream_options={"include_usage": True}))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["transfer-encoding"] == "chunked"
    chunks = openai_chunks(response.text)
    assert {c["id"] for c in chunks} == {chunks[0]["id"]}
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert all("usage" in c for c in chunks)  # include_usage: null until the last
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": "",
                                                "refusal": None}
    deltas = [c["choices"][0]["delta"] for c in chunks if c["choices"]]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "think first"
    assert [d["content"] for d in deltas if d.get("content")] == ["Hel", "lo", " there"]
    finish = chunks[-2]
    assert finish["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                    "finish_reason": "stop"}
    assert finish["usage"] is None
    last = chunks[-1]
    assert last["choices"] == [] and last["usage"]["total_tokens"] == (
        last["usage"]["prompt_tokens"] + last["usage"]["completion_tokens"])
    assert last["usage"]["completion_tokens_details"]["reasoning_tokens"] >= 1


def test_openai_stream_without_include_usage_has_no_usage(openai):
    with openai_client(openai) as client:
        chunks = openai_chunks(client.post("/v1/chat/completions", json=chat(stream=True)).text)
    assert all("usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


@pytest.mark.parametrize("interleave", [False, True])
def test_openai_parallel_tool_calls_stream_and_reassemble(openai, interleave):
    calls = [ToolCall("Bash", {"command": "echo hi", "description": "say hi"}, pieces=4),
             ToolCall("Read", {"file_path": "/tmp/ü.txt", "limit": 5}, id="call_given", pieces=3)]
    openai.enqueue(ToolCalls(calls, interleave=interleave))
    with openai_client(openai) as client:
        response = client.post("/v1/chat/completions", json=chat(stream=True))
    chunks = openai_chunks(response.text)
    rebuilt = tool_arguments(chunks)
    assert rebuilt[0]["name"] == "Bash" and rebuilt[0]["id"].startswith("call_")
    assert rebuilt[0]["arguments"] == {"command": "echo hi", "description": "say hi"}
    assert rebuilt[1] == {"id": "call_given", "name": "Read",
                          "arguments": {"file_path": "/tmp/ü.txt", "limit": 5}}
    first_call_delta = chunks[1]["choices"][0]["delta"]["tool_calls"][0]
    assert first_call_delta["type"] == "function"
    assert first_call_delta["function"]["arguments"] == ""
    order = [c["choices"][0]["delta"]["tool_calls"][0]["index"] for c in chunks
             if c["choices"] and c["choices"][0]["delta"].get("tool_calls")]
    if interleave:
        assert order[:4] == [0, 1, 0, 1]
    else:
        assert order == sorted(order)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_whole_tool_call(openai):
    openai.enqueue(ToolCall("Bash", {"command": "ls"}))
    with openai_client(openai) as client:
        body = client.post("/v1/chat/completions", json=chat()).json()
    message = body["choices"][0]["message"]
    assert message["content"] is None
    [call] = message["tool_calls"]
    assert call["type"] == "function" and call["function"]["name"] == "Bash"
    assert json.loads(call["function"]["arguments"]) == {"command": "ls"}
    assert body["choices"][0]["finish_reason"] == "tool_calls"


def test_openai_auth(openai):
    openai.enqueue(Text("kept for the good key"))
    with openai_client(openai, key="sk-wrong-key-1234") as client:
        response = client.post("/v1/chat/completions", json=chat())
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
    assert error["param"] is None and "sk-wrong-key-1234" not in error["message"]
    with make_client(base_url=openai.base_url) as client:
        assert client.post("/v1/chat/completions", json=chat()).status_code == 401
        assert client.get("/v1/models").status_code == 401
    assert openai.pending == 1  # refused requests take no reply
    with openai_client(openai) as client:
        assert client.post("/v1/chat/completions", json=chat()).json()[
            "choices"][0]["message"]["content"] == "kept for the good key"
    openai.keys.add("sk-second")
    with openai_client(openai, key="sk-second") as client:
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_openai_bad_bodies(openai):
    with openai_client(openai) as client:
        response = client.post("/v1/chat/completions", content=b"{not json",
                               headers={"content-type": "application/json"})
        assert response.status_code == 400
        assert response.json()["error"]["type"] == "invalid_request_error"
        assert client.post("/v1/chat/completions", json={"model": "m"}).status_code == 400
        unanswered = [{"role": "user", "content": "go"},
                      {"role": "assistant", "content": None, "tool_calls": [
                          {"id": "call_1", "type": "function",
                           "function": {"name": "Bash", "arguments": "{}"}}]},
                      {"role": "user", "content": "and?"}]
        response = client.post("/v1/chat/completions", json=chat(messages=unanswered))
        assert response.status_code == 400
        assert "call_1" in response.json()["error"]["message"]
        orphan = [{"role": "user", "content": "go"},
                  {"role": "tool", "tool_call_id": "call_9", "content": "x"}]
        assert client.post("/v1/chat/completions",
                           json=chat(messages=orphan)).status_code == 400
        object_args = [unanswered[0], {**unanswered[1], "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "Bash", "arguments": {}}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
        assert client.post("/v1/chat/completions",
                           json=chat(messages=object_args)).status_code == 400
        good = unanswered[:2] + [{"role": "tool", "tool_call_id": "call_1", "content": "ok"}]
        assert client.post("/v1/chat/completions", json=chat(messages=good)).status_code == 200
        assert client.post("/v1/chat/completions", json=chat(
            stream_options={"include_usage": True})).status_code == 400


def test_openai_status_with_retry_after(openai):
    openai.enqueue(Status(429, headers={"Retry-After": "7"}), Status(503), Status(500, body=b"x"))
    with openai_client(openai) as client:
        response = client.post("/v1/chat/completions", json=chat(stream=True))
        assert response.status_code == 429
        assert response.headers["retry-after"] == "7"
        assert response.json()["error"]["code"] == "rate_limit_exceeded"
        response = client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 503 and response.json()["error"]["type"] == "server_error"
        response = client.post("/v1/chat/completions", json=chat())
        assert (response.status_code, response.content) == (500, b"x")
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200


def test_openai_garbage(openai):
    openai.enqueue(Garbage(), Garbage(), Garbage(status=502, content_type="text/html"))
    with openai_client(openai) as client:
        response = client.post("/v1/chat/completions", json=chat(stream=True))
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.content.startswith(b"<html>")
        response = client.post("/v1/chat/completions", json=chat())
        assert response.headers["content-type"] == "application/json"
        with pytest.raises(json.JSONDecodeError):
            response.json()
        response = client.post("/v1/chat/completions", json=chat())
        assert response.status_code == 502 and response.headers["content-type"] == "text/html"


@pytest.mark.parametrize("reset", [False, True])
def test_openai_cut_after_closes_mid_stream(openai, reset):
    openai.enqueue(CutAfter(3, Events(50), reset=reset))
    received = []
    with openai_client(openai) as client:
        with pytest.raises((httpx.RemoteProtocolError, httpx.ReadError)):
            with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
                assert r.status_code == 200
                for line in r.iter_lines():
                    if line.startswith("data:"):
                        received.append(line)
        if not reset:  # a RST may discard what the client had not read yet
            assert len(received) == 3
        # the client recovers on a new connection
        assert client.post("/v1/chat/completions", json=chat()).status_code == 200
    assert openai.cut_streams == 1 and openai.aborted_streams == 0


def test_openai_cut_whole_response(openai):
    openai.enqueue(CutAfter(0, Text("a fairly long answer " * 20)))
    with openai_client(openai) as client:
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/v1/chat/completions", json=chat())


def test_openai_stream_error_event(openai):
    openai.enqueue(StreamError(after=2, message="boom"), StreamError())
    with openai_client(openai) as client:
        response = client.post("/v1/chat/completions", json=chat(stream=True))
        events = [json.loads(d) for _, d in parse_sse(response.text)]
        assert len(events) == 3 and events[-1]["error"]["message"] == "boom"
        assert events[-1]["error"]["type"] == "server_error"
        assert client.post("/v1/chat/completions", json=chat()).status_code == 500


def test_stall_times_out_the_client_and_ends_early(openai):
    openai.enqueue(Stall(30))
    started = time.monotonic()
    with openai_client(openai) as client:
        with pytest.raises(httpx.ReadTimeout):
            client.post("/v1/chat/completions", json=chat(),
                        timeout=httpx.Timeout(5, read=0.2))
    assert time.monotonic() - started < 3
    assert openai.wait_until(lambda f: f.aborted_requests == 1)
    assert openai.aborted_streams == 0


def test_stall_then_reply_and_stall_then_close(openai):
    openai.enqueue(Stall(0.2, then=Text("late")), Stall(0.05))
    with openai_client(openai) as client:
        started = time.monotonic()
        body = client.post("/v1/chat/completions", json=chat()).json()
        assert time.monotonic() - started >= 0.2
        assert body["choices"][0]["message"]["content"] == "late"
        with pytest.raises(httpx.RemoteProtocolError):
            client.post("/v1/chat/completions", json=chat())


def test_client_disconnect_mid_stream_is_counted(openai):
    openai.enqueue(Events(100_000, delay=0.002))
    with openai_client(openai) as client:
        with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
            lines = r.iter_lines()
            assert len(take_data_lines(lines, 5)) == 5
            assert openai.open_streams == 1 and openai.aborted_streams == 0
        # leaving the block unread closes the connection
    assert openai.wait_until(lambda f: f.aborted_streams == 1 and f.open_streams == 0)
    assert openai.completed_streams == 0 and openai.aborted_requests == 1


def test_completed_stream_is_not_an_abort(openai):
    with openai_client(openai) as client:
        for _ in range(3):
            client.post("/v1/chat/completions", json=chat(stream=True))
    assert openai.wait_until(lambda f: f.completed_streams == 3)
    assert openai.aborted_streams == 0 and openai.open_streams == 0
    assert openai.connections == 1  # keep-alive


def test_default_reply_and_options():
    with FakeOpenAI(default_text="custom default", keys={"k1"}) as fake:
        with openai_client(fake, key="k1") as client:
            body = client.post("/v1/chat/completions", json=chat()).json()
    assert body["choices"][0]["message"]["content"] == "custom default"

    with FakeOpenAI() as fake:
        with openai_client(fake) as client:
            chunks = openai_chunks(
                client.post("/v1/chat/completions", json=chat(stream=True)).text)
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Hello from the fake provider" == FakeOpenAI.default_text

    seen: list[Received] = []

    def echo(received: Received):
        seen.append(received)
        return Text("echo " + received.json["messages"][-1]["content"]) if len(seen) == 1 else None

    with FakeOpenAI(default_reply=echo, check_auth=False) as fake:
        with make_client(base_url=fake.base_url) as client:
            first = client.post("/x/chat/completions", json=chat()).json()
            second = client.post("/x/chat/completions", json=chat()).json()
    assert first["choices"][0]["message"]["content"] == "echo hi"
    assert second["choices"][0]["message"]["content"] == "Hello from the fake provider"


def test_openai_routes(openai):
    with openai_client(openai) as client:
        assert client.post("/compatible-mode/v1/chat/completions",
                           json=chat()).status_code == 200
        assert client.post("/chat/completions", json=chat()).status_code == 200
        models = client.get("/v1/models").json()
        assert models["object"] == "list"
        assert [m["id"] for m in models["data"]] == ["gpt-fake-1", "gpt-fake-mini"]
        missing = client.post("/v1/completionz", json=chat())
        assert missing.status_code == 404
        assert missing.json()["error"]["message"] == "Invalid URL (POST /v1/completionz)"
    assert [r.route for r in openai.requests] == [
        "/compatible-mode/v1/chat/completions", "/chat/completions", "/v1/models",
        "/v1/completionz"]


def test_events_stream_for_benchmarks(openai):
    n = 10_000
    openai.enqueue(Events(n, piece="ab"), Events(n, piece="ab"))
    with openai_client(openai) as client:
        response = client.post("/v1/chat/completions",
                               json=chat(stream=True, stream_options={"include_usage": True}))
        chunks = openai_chunks(response.text)
        contents = [c["choices"][0]["delta"].get("content") for c in chunks if c["choices"]]
        assert contents.count("ab") == n
        assert chunks[-1]["usage"]["completion_tokens"] == n
    # the fake alone, read raw: it must not be what a benchmark measures
    body = json.dumps(chat(stream=True)).encode()
    with socket.create_connection(("127.0.0.1", openai.port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
                     b"authorization: Bearer " + OPENAI_KEY.encode() + b"\r\n"
                     b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        data = bytearray()
        while chunk := sock.recv(1 << 20):
            data += chunk
        elapsed = time.monotonic() - started
    assert data.count(b'"content":"ab"') == n and data.endswith(b"data: [DONE]\n\n\r\n0\r\n\r\n")
    assert elapsed < 2, f"{n} events took {elapsed:.2f}s"


def test_concurrent_streams():
    async def one(client: httpx.AsyncClient, i: int) -> str:
        response = await client.post("/v1/chat/completions", json=chat(stream=True))
        return "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in openai_chunks(response.text) if c["choices"])

    async def main(fake: FakeOpenAI) -> list[str]:
        async with httpx.AsyncClient(base_url=fake.base_url, verify=TRUSTS_NOTHING,
                                     headers={"authorization": f"Bearer {OPENAI_KEY}"}) as client:
            return await asyncio.gather(*(one(client, i) for i in range(20)))

    with FakeOpenAI(default_reply=Text("same for all", delay=0.01)) as fake:
        started = time.monotonic()
        texts = asyncio.run(main(fake))
        assert time.monotonic() - started < 3
    assert texts == ["same for all"] * 20


def test_tls_with_generated_ca():
    with FakeOpenAI(tls=True) as fake:
        assert fake.base_url.startswith("https://127.0.0.1:")
        context = ssl.create_default_context(cafile=fake.ca_pem_path)
        with openai_client(fake, verify=context) as client:
            body = client.post("/v1/chat/completions", json=chat()).json()
            assert body["choices"][0]["message"]["content"] == fake.default_text
            with client.stream("POST", "/v1/chat/completions", json=chat(stream=True)) as r:
                assert r.http_version == "HTTP/1.1"
                # role, 3 pieces, finish, [DONE]
                assert len(take_data_lines(r.iter_lines(), 100)) == 6
        localhost = f"https://localhost:{fake.port}/v1/models"
        with make_client(verify=context,
                          headers={"authorization": f"Bearer {OPENAI_KEY}"}) as client:
            assert client.get(localhost).status_code == 200
        with make_client() as untrusting:
            with pytest.raises(httpx.ConnectError):
                untrusting.get(fake.url("/v1/models"))
        ca_path = fake.ca_pem_path
        assert Path(ca_path).read_bytes().startswith(b"-----BEGIN CERTIFICATE-----")
    assert not Path(ca_path).exists()  # cleaned up on stop


def test_tls_abort_is_counted():
    with FakeAnthropic(tls=True, default_reply=Events(100_000, delay=0.002)) as fake:
        context = ssl.create_default_context(cafile=fake.ca_pem_path)
        with anthropic_client(fake, verify=context) as client:
            with client.stream("POST", "/v1/messages", json=messages(stream=True)) as r:
                lines = r.iter_lines()
                assert len(take_data_lines(lines, 5)) == 5
                assert fake.open_streams == 1
        assert fake.wait_until(lambda f: f.aborted_streams == 1 and f.open_streams == 0)


def test_raw_http10_and_malformed_requests(openai):
    body = json.dumps(chat(stream=True)).encode()
    request = (b"POST /v1/chat/completions HTTP/1.0\r\nhost: x\r\n"
               b"authorization: Bearer " + OPENAI_KEY.encode() + b"\r\n"
               b"content-type: application/json\r\ncontent-length: "
               + str(len(body)).encode() + b"\r\n\r\n" + body)
    with socket.create_connection(("127.0.0.1", openai.port), timeout=5) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, payload = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"transfer-encoding" not in head.lower()
    assert payload.endswith(b"data: [DONE]\n\n")  # close-delimited

    with socket.create_connection(("127.0.0.1", openai.port), timeout=5) as sock:
        sock.sendall(b"NONSENSE\r\n\r\n")
        assert sock.recv(65536).startswith(b"HTTP/1.1 400")


# --- Anthropic Messages --------------------------------------------------------------------

def test_anthropic_stream_text_grammar_and_usage(anthropic):
    anthropic.enqueue(Text("Hi there, friend", usage=Usage(prompt=100, completion=9, cached=60,
                                                           cache_write=10)))
    with anthropic_client(anthropic) as client:
        response = client.post("/v1/messages?beta=true", json=messages(stream=True))
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["request-id"].startswith("req_")
    events = anthropic_events(response.text)
    assert [n for n, _ in events][:3] == ["message_start", "content_block_start", "ping"]
    blocks = check_anthropic_grammar(events)
    assert blocks == [{"type": "text", "text": "Hi there, friend"}]
    start = events[0][1]["message"]
    assert start["role"] == "assistant" and start["model"] == "claude-fake-sonnet"
    assert start["id"].startswith("msg_") and start["content"] == []
    assert start["usage"]["input_tokens"] == 30
    assert start["usage"]["cache_read_input_tokens"] == 60
    assert start["usage"]["cache_creation_input_tokens"] == 10
    assert start["usage"]["output_tokens"] == 1
    delta = events[-2][1]
    assert delta["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert delta["usage"] == {"input_tokens": 30, "cache_creation_input_tokens": 10,
                              "cache_read_input_tokens": 60, "output_tokens": 9}
    assert anthropic.requests[0].path == "/v1/messages?beta=true"


def test_anthropic_stream_thinking_and_tools(anthropic):
    anthropic.enqueue(ToolCalls([ToolCall("Bash", {"command": "echo hi"}),
                                 ToolCall("Read", {"file_path": "/x"}, id="toolu_given")],
                                text="Let me run it.", reasoning="The user wants echo.",
                                interleave=True))
    with anthropic_client(anthropic) as client:
        events = anthropic_events(
            client.post("/v1/messages", json=messages(stream=True)).text)
    blocks = check_anthropic_grammar(events)
    assert [b["type"] for b in blocks] == ["thinking", "text", "tool_use", "tool_use"]
    assert blocks[0]["thinking"] == "The user wants echo."
    assert blocks[0]["signature"] == thinking_signature("The user wants echo.")
    assert blocks[1]["text"] == "Let me run it."
    assert blocks[2]["name"] == "Bash" and blocks[2]["input"] == {"command": "echo hi"}
    assert blocks[2]["id"].startswith("toolu_")
    assert blocks[3]["id"] == "toolu_given" and blocks[3]["input"] == {"file_path": "/x"}
    first_json = next(d for n, d in events if n == "content_block_delta"
                      and d["delta"]["type"] == "input_json_delta")
    assert first_json["delta"]["partial_json"] == ""
    assert events[-2][1]["delta"]["stop_reason"] == "tool_use"


def test_anthropic_whole_message_and_thinking_round_trip(anthropic):
    anthropic.enqueue(Text("ok", reasoning="hmm", finish="length"))
    with anthropic_client(anthropic) as client:
        body = client.post("/v1/messages", json=messages()).json()
        assert body["type"] == "message" and body["stop_reason"] == "max_tokens"
        thinking, text = body["content"]
        assert thinking["type"] == "thinking" and thinking["signature"]
        assert text == {"type": "text", "text": "ok"}
        assert body["usage"]["output_tokens"] >= 1
        history = USER_HI + [{"role": "assistant", "content": body["content"]},
                             {"role": "user", "content": "more"}]
        assert client.post("/v1/messages", json=messages(messages=history)).status_code == 200
        thinking["thinking"] = "edited"
        response = client.post("/v1/messages", json=messages(messages=history))
        assert response.status_code == 400
        assert "signature" in response.json()["error"]["message"]


def test_anthropic_auth(anthropic):
    with anthropic_client(anthropic, key="sk-ant-wrong") as client:
        response = client.post("/v1/messages", json=messages())
    assert response.status_code == 401
    body = response.json()
    assert body["type"] == "error" and body["error"]["type"] == "authentication_error"
    with make_client(base_url=anthropic.base_url,
                      headers={"anthropic-version": "2023-06-01"}) as client:
        assert client.post("/v1/messages", json=messages()).status_code == 401
        bearer = {"authorization": f"Bearer {ANTHROPIC_KEY}"}
        assert client.post("/v1/messages", json=messages(), headers=bearer).status_code == 200
        assert client.post("/v1/messages", json=messages(),
                           headers={"authorization": "Bearer nope"}).status_code == 401


def test_anthropic_errors_and_validation(anthropic):
    anthropic.enqueue(Status(529), Status(429, headers={"retry-after": "3"}))
    with anthropic_client(anthropic) as client:
        response = client.post("/v1/messages", json=messages(stream=True))
        assert response.status_code == 529
        assert response.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
        response = client.post("/v1/messages", json=messages())
        assert response.status_code == 429 and response.headers["retry-after"] == "3"
        assert response.json()["error"]["type"] == "rate_limit_error"

        no_max = {"model": "m", "messages": USER_HI}
        response = client.post("/v1/messages", json=no_max)
        assert response.status_code == 400
        assert response.json()["error"] == {"type": "invalid_request_error",
                                            "message": "max_tokens: Field required"}
        assert client.post("/v1/messages", content=b"[1, 2]").status_code == 400
        use = {"role": "assistant", "content": [
            {"type": "tool_use", "id": "toolu_1", "name": "Bash", "input": {}}]}
        unanswered = USER_HI + [use, {"role": "user", "content": "next"}]
        response = client.post("/v1/messages", json=messages(messages=unanswered))
        assert response.status_code == 400 and "toolu_1" in response.json()["error"]["message"]
        stray = USER_HI + [{"role": "assistant", "content": "x"}, {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "toolu_9", "content": "y"}]}]
        assert client.post("/v1/messages", json=messages(messages=stray)).status_code == 400
        answered = USER_HI + [use, {"role": "system", "content": "mid-conversation"},
                              {"role": "user", "content": [
                                  {"type": "tool_result", "tool_use_id": "toolu_1",
                                   "content": "ok"}]}]
        assert client.post("/v1/messages", json=messages(messages=answered)).status_code == 200
    with make_client(base_url=anthropic.base_url,
                      headers={"x-api-key": ANTHROPIC_KEY}) as client:
        response = client.post("/v1/messages", json=messages())
        assert response.status_code == 400
        assert "anthropic-version" in response.json()["error"]["message"]


def test_anthropic_stream_error_cut_and_garbage(anthropic):
    anthropic.enqueue(StreamError(after=3), CutAfter(2), Garbage(), StreamError())
    with anthropic_client(anthropic) as client:
        events = anthropic_events(client.post("/v1/messages", json=messages(stream=True)).text)
        assert [n for n, _ in events] == ["message_start", "content_block_start", "ping",
                                          "error"]
        assert events[-1][1]["error"]["type"] == "overloaded_error"
        lines = []
        with pytest.raises(httpx.RemoteProtocolError):
            with client.stream("POST", "/v1/messages", json=messages(stream=True)) as r:
                lines.extend(line for line in r.iter_lines() if line.startswith("event:"))
        assert lines == ["event: message_start", "event: content_block_start"]
        response = client.post("/v1/messages", json=messages())
        assert response.headers["content-type"] == "application/json"
        assert response.content.startswith(b"<html>")
        response = client.post("/v1/messages", json=messages())
        assert response.status_code == 529


def test_anthropic_other_routes(anthropic):
    with anthropic_client(anthropic) as client:
        models = client.get("/v1/models").json()
        assert models["data"][0]["type"] == "model" and models["has_more"] is False
        count = client.post("/v1/messages/count_tokens", json=messages()).json()
        assert count["input_tokens"] >= 1
        response = client.get("/api/claude_code/settings")
        assert response.status_code == 404
        assert response.json()["error"]["type"] == "not_found_error"
        assert client.post("/anthropic/v1/messages", json=messages()).status_code == 200
    with FakeAnthropic() as fake, anthropic_client(fake) as client:
        blocks = client.post("/v1/messages", json=messages()).json()["content"]
        assert blocks == [{"type": "text", "text": "Hello from the fake Anthropic vendor"}]


# --- the real clients' requests (captures) -------------------------------------------------

def _capture(name: str) -> dict:
    return json.loads((CAPTURES / f"{name}.request.json").read_bytes())


def _received(body: dict) -> Received:
    return Received("POST", "/", {}, json.dumps(body).encode(), body)


def test_captured_claude_code_requests_pass_and_drive_the_agent():
    with FakeAnthropic(default_reply=anthropic_agent) as fake:
        with anthropic_client(fake) as client:
            for name in ("text", "tool-call", "tool-result", "oauth-token"):
                body = _capture(f"claude-code.messages.{name}")
                response = client.post("/v1/messages?beta=true", json=body)
                assert response.status_code == 200, response.text
                check_anthropic_grammar(anthropic_events(response.text))
    text = _capture("claude-code.messages.text")
    reply = anthropic_agent(_received(text))
    assert reply is None  # no RUN: marker -> the default text
    text["messages"][0]["content"][-1]["text"] = "please RUN: echo hi there\nthanks"
    assert anthropic_agent(_received(text)) == ToolCall(
        "Bash", {"command": "echo hi there", "description": "run the requested command"})
    assert anthropic_agent(_received(_capture("claude-code.messages.tool-result"))) == \
        Text("FAKE-TOOL-RESULT: hi")


def test_captured_qwen_requests_pass_and_drive_the_agent():
    with FakeOpenAI(default_reply=openai_agent) as fake:
        with openai_client(fake) as client:
            for name in ("text", "tool-call", "tool-result"):
                body = _capture(f"qwen-code.chat-completions.{name}")
                response = client.post("/compatible-mode/v1/chat/completions", json=body)
                assert response.status_code == 200, response.text
                assert response.text.endswith("data: [DONE]\n\n")
    body = _capture("qwen-code.chat-completions.tool-call")  # ran with --yolo: a shell tool
    assert openai_agent(_received(body)) is None
    body["messages"][-1]["content"][-1]["text"] = "RUN: echo hi"
    assert openai_agent(_received(body)) == ToolCall("run_shell_command", {
        "command": "echo hi", "description": "run the requested command",
        "is_background": False})
    result = openai_agent(_received(_capture("qwen-code.chat-completions.tool-result")))
    assert result.text.startswith("FAKE-TOOL-RESULT: Command: echo hi\n")


# --- the subprocess CLI --------------------------------------------------------------------

@pytest.mark.parametrize("module, tls", [("tests.fakes.openai_provider", False),
                                         ("tests.fakes.anthropic_vendor", True)])
def test_cli_prints_one_line_and_stops_on_sigterm(tmp_path, module, tls):
    ca_file = tmp_path / "ca.pem"
    args = [sys.executable, "-m", module, "--port", "0", "--events", "7"]
    if tls:
        args += ["--tls", "--ca-file", str(ca_file)]
    with subprocess.Popen(args, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as proc:
        try:
            line = proc.stdout.readline()
            scheme = "https" if tls else "http"
            match = re.fullmatch(rf"listening on ({scheme}://127\.0\.0\.1:(\d+))\n", line)
            assert match, line
            verify = ssl.create_default_context(cafile=str(ca_file)) if tls else True
            if module.endswith("openai_provider"):
                with make_client(base_url=match[1], verify=verify,
                                  headers={"authorization": f"Bearer {OPENAI_KEY}"}) as client:
                    chunks = openai_chunks(
                        client.post("/v1/chat/completions", json=chat(stream=True)).text)
                assert sum(1 for c in chunks if c["choices"][0]["delta"].get("content")) == 7
            else:
                with make_client(base_url=match[1], verify=verify, headers={
                        "x-api-key": ANTHROPIC_KEY, "anthropic-version": "2023-06-01"}) as client:
                    events = anthropic_events(
                        client.post("/v1/messages", json=messages(stream=True)).text)
                assert sum(1 for n, _ in events if n == "content_block_delta") == 7
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0
            assert proc.stdout.read() == ""
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
