"""Fallback through a real mitmdump: a stream that opens with an error falls back, one failure
does not lock a one-key user out, a dead provider is named as such (to the client and in the
proxy's own log), and a client that leaves at the final event got a successful call."""

import json
import re

import pytest

from tests.e2e.conftest import (CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, capture, free_port,
                                start_proxy)
# the same per-test fixtures: fakes cleared (autouse), and a client through this module's proxy
from tests.e2e.test_router_mitmdump import client, fresh_fakes  # noqa: F401
from tests.captures import anthropic_events
from tests.fakes.replies import Linger, Status, StreamError, Text
from translators import canonical

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
           "user-agent": "claude-cli/2.1.197 (test)"}


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = f"""
providers:
  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  single: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  ant: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
  ant0: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
  ant1: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
  dead: {{kind: openai, base_url: "{dead}", api_keys: [sk-dead-secret]}}
routes:
  ant0-then-fake: [ant0/claude-fake-sonnet, fake/fake-model]  # one each: a failed account rests
  ant1-then-fake: [ant1/claude-fake-sonnet, fake/fake-model]
  fake-then-ant: [fake/fake-model, ant/claude-fake-sonnet]
  only-single: [single/fake-model]
  only-dead: [dead/m]
  to-ant: [ant/claude-fake-sonnet]
  "*": [passthrough]
cooldown_seconds: 30
"""
    # flow_detail=1: mitmdump's own line per flow, as a user sees it
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config,
                    extra=["--set", "flow_detail=1"])
    yield p
    p.mitm.stop()


def claude_call(client, model: str, stream: bool):
    return client.post(ANTHROPIC_URL, json=dict(capture("text"), model=model, stream=stream),
                       headers=HEADERS)


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, canonical.TextDelta))


@pytest.mark.parametrize("after", [0, 1])  # at once, or after message_start
def test_anthropic_stream_opening_with_overloaded_error_falls_back(proxy, client, fake_anthropic,
                                                                   fake_openai, after):
    fake_anthropic.enqueue(StreamError(after=after, kind="overloaded_error"))
    fake_openai.enqueue(Text("from the second candidate"))
    r = claude_call(client, f"ant{after}-then-fake", stream=True)
    assert r.status_code == 200
    events = anthropic_events(r.content)
    assert text_of(events) == "from the second candidate"
    assert not any(isinstance(e, canonical.StreamError) for e in events)
    row = proxy.row_of(r)
    assert row["attempts"] == 2 and row["provider"] == "fake" and row["error"] is None
    first = json.loads(row["route"])[0]
    assert first["stream_error"] == "overloaded_error" and first["rest"] == "transient"


def test_chat_stream_whose_first_chunk_carries_an_error_falls_back(proxy, client, fake_openai,
                                                                   fake_anthropic):
    fake_openai.enqueue(StreamError(after=1, kind="server_error", message="provider down"))
    fake_anthropic.enqueue(Text("anthropic answered"))
    r = claude_call(client, "fake-then-ant", stream=True)
    assert r.status_code == 200
    assert text_of(anthropic_events(r.content)) == "anthropic answered"
    row = proxy.row_of(r)
    assert row["attempts"] == 2 and row["provider"] == "ant"
    assert "provider down" in json.loads(row["route"])[0]["error"]


@pytest.mark.parametrize("stream", [False, True])
def test_one_500_does_not_lock_out_a_single_key(proxy, client, fake_openai, stream):
    fake_openai.enqueue(Status(500), Text("back again"))
    failed = claude_call(client, "only-single", stream=stream)
    assert failed.status_code == 502
    r = claude_call(client, "only-single", stream=stream)  # at once, while it rests
    assert r.status_code == 200, r.text
    row = proxy.row_of(r)
    assert row["attempts"] == 1 and json.loads(row["route"])[0]["despite_rest"] is True


def test_dead_provider_is_a_502_naming_the_refusal_and_the_log_says_so(proxy, client):
    for stream in (True, False, True):  # and again while it rests: never a 429
        r = claude_call(client, "only-dead", stream=stream)
        assert r.status_code == 502, r.text
        assert r.json()["error"]["type"] == "api_error"
        message = r.json()["error"]["message"]
        assert "sk-dead-secret" not in message  # the key is never shown...
        assert "dead/account 1" in message and "connection refused" in message  # ...nor its label
        assert r.headers["x-should-retry"] == "false"  # the SDKs show the cause at once
        assert proxy.row_of(r)["status"] == 502
    # mitmdump's own output: each call under the URL the client called, and detour's line
    # with the route and the cause; never the relay's address
    log = proxy.mitm.text
    assert "/relay/" not in log, log
    flows = re.findall(r"POST https://api\.anthropic\.com/v1/messages\s*\n\s*<< 502", log)
    assert len(flows) >= 3, log
    causes = [line for line in log.splitlines()
              if f"detour: POST {ANTHROPIC_URL} only-dead -> 502" in line]
    assert len(causes) >= 3 and all("dead/key1:" in c and "connection refused" in c
                                    for c in causes), log


def test_openai_client_leaving_at_done_is_a_success(proxy, client, fake_anthropic):
    fake_anthropic.enqueue(Linger(5, Text("all of it", pieces=3)))  # slow to end its stream
    body = {"model": "to-ant", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "hi"}]}
    lines = []
    with client.stream("POST", OPENAI_URL, json=body,
                       headers={"authorization": f"Bearer {CLIENT_KEY}"}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            lines.append(line)
            if line == "data: [DONE]":
                break  # as the OpenAI SDK does
    text = "".join(
        (json.loads(line[6:])["choices"] or [{"delta": {}}])[0]["delta"].get("content") or ""
        for line in lines if line.startswith("data: {"))
    assert text == "all of it"
    row = proxy.row_of(r, timeout=10)
    assert row["status"] == 200 and row["error"] is None
    assert row["output_tokens"] > 0 and row["input_tokens"] > 0
    assert fake_anthropic.wait_until(lambda f: f.aborted_streams == 1)  # it was still open
