"""Failures users of other gateways reported, through one real mitmdump: Claude Code's
non-streamed auto-mode classifier call answered in Anthropic JSON by every kind of provider
(9router PR #3319 sent it OpenAI JSON, and Claude Code then blocked every Bash call); no
thread per streamed chunk (LiteLLM #6404); the operator's port serves reads on loopback only,
no administrative action (9router #431)."""

import os
from pathlib import Path

import httpx
import pytest

from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, free_port, start_proxy
# the Gemini and Responses fakes (module fixtures) and the key the Gemini one takes
from tests.e2e.test_gemini import GEMINI_KEY, fake_gemini, fake_responses  # noqa: F401
from tests.fakes.replies import Text

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
           "user-agent": "claude-cli/2.1.220 (external, cli)"}
# the shape of Claude Code's auto-mode permission classifier: no `stream` field at all, a
# stop sequence, a short answer wanted
CLASSIFIER = {"max_tokens": 256, "temperature": 0, "stop_sequences": ["</block>"],
              "system": [{"type": "text", "text": "Classify the command: <block>yes|no</block>"}],
              "messages": [{"role": "user", "content": "Command: ls -la"}]}


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_responses, fake_gemini):
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  resp: {{kind: openai-responses, base_url: "{fake_responses.base_url}/v1",
          api_keys: [{PROVIDER_KEY}]}}
  gem: {{kind: gemini, base_url: "{fake_gemini.base_url}", api_keys: [{GEMINI_KEY}]}}
routes:
  to-chat: [chat/fake-model]
  to-resp: [resp/gpt-fake]
  to-gemini: [gem/gemini-2.5-flash]
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config,
                    extra=["--set", f"detour_metrics_port={free_port()}"])
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_openai, fake_responses, fake_gemini):
    for fake in (fake_openai, fake_responses, fake_gemini):
        fake.clear()


@pytest.mark.parametrize("model", ["to-chat", "to-resp", "to-gemini"])
def test_the_classifiers_unstreamed_call_is_answered_in_anthropic_json(proxy, model):
    with proxy.client() as client:
        r = client.post(URL, json=dict(CLASSIFIER, model=model), headers=HEADERS)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert "choices" not in body and "output" not in body and "candidates" not in body
    assert [b["type"] for b in body["content"]] == ["text"] and body["content"][0]["text"]
    assert body["stop_reason"] in ("end_turn", "stop_sequence")
    assert isinstance(body["usage"]["input_tokens"], int)


def threads(pid: int) -> set[str]:
    """The ids of the process's threads now."""
    return set(os.listdir(f"/proc/{pid}/task"))


def test_a_long_stream_adds_no_thread_per_chunk(proxy, fake_openai):
    pid = proxy.mitm.proc.pid
    with proxy.client() as client:  # warm: pools, the usage writer, the relay
        client.post(URL, json=dict(CLASSIFIER, model="to-chat", stream=True), headers=HEADERS)
        before = threads(pid)
        fake_openai.enqueue(Text(pieces=["word "] * 200, delay=0.01))
        seen = []
        with client.stream("POST", URL, json=dict(CLASSIFIER, model="to-chat", stream=True),
                           headers=HEADERS) as r:
            for _ in r.iter_raw():
                seen.append(threads(pid))
        assert r.status_code == 200 and len(seen) >= 20, seen
    # a few worker threads may come and go (the usage writer, asyncio's executor); a thread
    # per chunk would be hundreds at once, or, each ending quickly, hundreds of new thread ids
    assert max(map(len, seen)) <= len(before) + 4, (len(before), list(map(len, seen)))
    started = set().union(*seen) - before
    assert len(started) <= 4, (len(started), len(seen))


def listening_addresses(pid: int, port: int) -> set[str]:
    """The local addresses of the process's sockets listening on `port` (from /proc)."""
    found = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.rpartition(":")
            if state == "0A" and int(hex_port, 16) == port:
                found.add(address)
    return found


def test_the_operator_port_is_loopback_only_and_read_only(proxy):
    port = int(next(a.split("=")[1] for a in proxy.mitm.args
                    if a.startswith("detour_metrics_port=")))
    assert listening_addresses(proxy.mitm.proc.pid, port) == {"0100007F"}  # 127.0.0.1
    base = f"http://127.0.0.1:{port}"
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        for path in ("/accounts", "/routes", "/metrics", "/healthz", "/cooldowns"):
            r = httpx.request(method, base + path, content=b"{}", trust_env=False, timeout=10)
            assert r.status_code == 405, (method, path)
    r = httpx.get(base + "/accounts", trust_env=False, timeout=10)
    assert r.status_code == 200 and PROVIDER_KEY not in r.text and GEMINI_KEY not in r.text
