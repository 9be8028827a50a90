"""Claude Code's calls through a real mitmdump with addons/router.py, answered by a loopback
OpenAI-compatible provider (and, for passthrough, a loopback Anthropic vendor)."""

import json
import os
import shutil
import ssl
import subprocess
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import (CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, Proxy, capture,
                                detour_home, free_port, start_proxy)
from tests.captures import anthropic_events
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import (CutAfter, Garbage, Stall, Status, StreamError, Text, ToolCall,
                                 Usage)
from tests.harness import Mitmdump
from translators import anthropic, canonical

URL = "https://api.anthropic.com/v1/messages?beta=true"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
           "anthropic-beta": "claude-code-20250219", "user-agent": "claude-cli/2.1.197 (test)"}


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = f"""
providers:
  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  rotating:
    kind: openai
    base_url: "{fake_openai.base_url}/v1"
    api_keys: [sk-wrong-key, {PROVIDER_KEY}]
  dead: {{kind: openai, base_url: "{dead}", api_keys: [k], timeouts: {{connect: 2}}}}
  slow:
    kind: openai
    base_url: "{fake_openai.base_url}/v1"
    api_keys: [{PROVIDER_KEY}]
    timeouts: {{first_byte: 1}}
  ant: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
routes:
  claude-opus-4-8: [fake/fake-model]
  via-dead: [dead/m, fake/fake-model]
  via-rotating: [rotating/fake-model]
  via-slow: [slow/slow-model, fake/fake-model]
  only-fake: [fake/fake-model]
  to-anthropic: [ant/claude-fake-sonnet]
  "*": [passthrough]
vendors:
  api.anthropic.com: "{fake_anthropic.base_url}"
cooldown_seconds: 1
prices:
  fake-model: {{input: 3, output: 15, cache_read: 0.3}}
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_openai, fake_anthropic):
    fake_openai.clear()
    fake_anthropic.clear()
    yield


@pytest.fixture
def client(proxy):
    with proxy.client() as c:
        yield c


events_of = anthropic_events


def post(client, body: dict, **kw) -> httpx.Response:
    return client.post(URL, json=body, headers=HEADERS, **kw)


# ---------------------------------------------------------------- the main path


def test_text_whole(proxy, client, fake_openai):
    r = post(client, dict(capture("text"), stream=False))
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["type"] == "message" and body["role"] == "assistant"
    assert body["content"] == [{"type": "text", "text": "Hello from the fake provider"}]
    assert body["stop_reason"] == "end_turn"
    sent = fake_openai.requests[-1]
    assert sent.route == "/v1/chat/completions"
    assert sent.json["model"] == "fake-model"
    assert sent.json["messages"][0]["role"] == "system"
    # Claude Code's mid-conversation system message keeps its place
    assert [m["role"] for m in sent.json["messages"]][1:3] == ["user", "system"]
    row = proxy.row_of(r)
    assert row["status"] == 200 and row["stream"] == 0 and row["client_format"] == "anthropic"
    assert row["provider"] == "fake" and row["model_upstream"] == "fake-model"
    assert row["model_requested"] == "claude-opus-4-8" and row["client"].startswith("claude-cli/")


def test_client_key_never_leaves(proxy, client, fake_openai):
    post(client, dict(capture("text"), stream=True)).read()
    sent = fake_openai.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert "x-api-key" not in sent.headers
    assert CLIENT_KEY.encode() not in sent.body
    assert all(CLIENT_KEY not in v for v in sent.headers.values())


def test_text_streamed_event_by_event(proxy, client, fake_openai):
    fake_openai.enqueue(Text(pieces=["one ", "two ", "three ", "four ", "five"], delay=0.25))
    arrivals = []
    ended_before = fake_openai.completed_streams
    with client.stream("POST", URL, json=capture("text"), headers=HEADERS) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        data = b""
        for chunk in r.iter_raw():
            data += chunk
            # was the provider still sending when this reached the client?
            arrivals.append((chunk, fake_openai.completed_streams))
    events = events_of(data)
    text = "".join(e.text for e in events if isinstance(e, canonical.TextDelta))
    assert text == "one two three four five"
    # the first words reached the client while the provider's stream was still running
    first_delta = next(i for i, (c, _) in enumerate(arrivals) if b"text_delta" in c)
    assert arrivals[first_delta][1] == ended_before
    assert b"five" not in b"".join(c for c, _ in arrivals[:first_delta + 1])
    assert isinstance(events[-1], canonical.MessageStop)


def test_usage_exact_with_cache_and_reasoning(proxy, client, fake_openai):
    fake_openai.enqueue(Text("cached answer", usage=Usage(prompt=1000, completion=50, cached=600,
                                                          reasoning=10)))
    r = post(client, capture("text"))
    delta = [e for e in events_of(r.content) if isinstance(e, canonical.MessageDelta)][0]
    assert delta.usage == canonical.Usage(input_tokens=400, output_tokens=50,
                                          cache_read_tokens=600, cache_write_tokens=0,
                                          reasoning_tokens=0)  # Anthropic has no reasoning field
    row = proxy.row_of(r)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"],
            row["reasoning_tokens"]) == (400, 600, 50, 10)
    assert row["cost_usd"] == pytest.approx((400 * 3 + 600 * 0.3 + 50 * 15) / 1e6)
    assert row["stream"] == 1 and row["ttfb_ms"] > 0 and row["latency_ms"] >= row["ttfb_ms"]


def test_tool_call_and_its_follow_up(proxy, client, fake_openai):
    fake_openai.enqueue(ToolCall("Bash", {"command": "echo hi", "description": "Print hi"},
                                 id="call_abc123", pieces=4))
    r = post(client, capture("tool-call"))
    events = events_of(r.content)
    start = next(e for e in events if isinstance(e, canonical.BlockStart))
    assert (start.kind, start.tool_name, start.tool_id) == ("tool_use", "Bash", "call_abc123")
    args = "".join(e.partial_json for e in events if isinstance(e, canonical.ToolInputDelta))
    assert json.loads(args) == {"command": "echo hi", "description": "Print hi"}
    assert [e for e in events if isinstance(e, canonical.MessageDelta)][0].stop_reason == "tool_use"
    # Claude Code runs the tool and sends the result back: the captured follow-up, whose ids
    # now are the provider's
    follow = json.loads(json.dumps(capture("tool-result")).replace(
        _tool_id(capture("tool-result")), "call_abc123"))
    r2 = post(client, follow)
    assert r2.status_code == 200
    msgs = fake_openai.requests[-1].json["messages"]
    call_msg = next(m for m in msgs if m.get("tool_calls"))
    assert call_msg["tool_calls"][0]["id"] == "call_abc123"
    assert call_msg["tool_calls"][0]["function"]["name"] == "Bash"
    tool_msg = msgs[msgs.index(call_msg) + 1]
    assert tool_msg["role"] == "tool" and tool_msg["tool_call_id"] == "call_abc123"
    assert "hi" in json.dumps(tool_msg["content"])


def _tool_id(body: dict) -> str:
    for m in body["messages"]:
        for block in m["content"] if isinstance(m["content"], list) else []:
            if block.get("type") == "tool_use":
                return block["id"]
    raise AssertionError("no tool_use in the capture")


def test_tool_call_whole(proxy, client, fake_openai):
    fake_openai.enqueue(ToolCall("Bash", {"command": "ls"}, id="call_w1"))
    r = post(client, dict(capture("tool-call"), stream=False))
    block = r.json()["content"][0]
    assert block == {"type": "tool_use", "id": "call_w1", "name": "Bash", "input": {"command": "ls"}}
    assert r.json()["stop_reason"] == "tool_use"


# ---------------------------------------------------------------- bad input


def test_not_json_gets_an_anthropic_400_and_the_proxy_serves_on(proxy, client):
    r = client.post(URL, content=b"{not json", headers=dict(HEADERS, **{"content-type": "application/json"}))
    assert r.status_code == 400
    err = r.json()
    assert err["type"] == "error" and err["error"]["type"] == "invalid_request_error"
    assert "not JSON" in err["error"]["message"]
    assert post(client, dict(capture("text"), stream=False)).status_code == 200


@pytest.mark.parametrize("body, names", [
    ({"model": "claude-opus-4-8", "max_tokens": 10, "messages": "hello"}, "messages"),
    ({"model": "claude-opus-4-8", "max_tokens": 10,
      "messages": [{"role": "user", "content": [{"type": "bogus"}]}]}, "messages[0].content[0]"),
    ({"max_tokens": 10, "messages": []}, "model"),
    ([1, 2, 3], "JSON object"),
])
def test_invalid_request_400_names_the_problem(proxy, client, body, names):
    r = client.post(URL, json=body, headers=HEADERS)
    assert r.status_code == 400
    assert names in r.json()["error"]["message"]
    assert proxy.row_of(r)["status"] == 400


# ---------------------------------------------------------------- provider faults


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("reply, status, says", [
    (Status(500), 502, "HTTP 500"),
    (Status(429, headers={"retry-after": "2"}), 429, "HTTP 429"),
    (Garbage(), 502, "<html>"),  # a 200 that is neither JSON nor SSE is a failure too
])
def test_provider_failure_is_an_anthropic_error(proxy, client, fake_openai, reply, status, says,
                                                stream):
    fake_openai.enqueue(reply)
    r = post(client, dict(capture("text"), model="only-fake", stream=stream))
    if stream and type(reply) is Garbage:
        # one candidate, streamed: the direct path, whose answer's head went out before its
        # body showed it is no stream; the error is the stream's one event
        assert r.status_code == 200, r.text
        events = events_of(r.content)
        assert [type(e) for e in events] == [canonical.StreamError], events
        message = events[0].message
    else:
        assert r.status_code == status, r.text
        err = r.json()
        assert err["type"] == "error"
        message = err["error"]["message"]
    assert "fake/" in message and says in message
    if status == 429:
        assert r.headers.get("retry-after")
    # the account cooled down by the failure must not block the next test
    _reset_cooldowns(proxy, client, fake_openai)


def _reset_cooldowns(proxy, client, fake_openai):
    """Failures cool the account down; wait it out by asking until it serves again."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        r = post(client, dict(capture("text"), model="only-fake", stream=False))
        if r.status_code == 200:
            return
        time.sleep(0.25)
    raise AssertionError("the account never came back from its cooldown")


def test_provider_cuts_the_stream_midway(proxy, client, fake_openai):
    fake_openai.enqueue(CutAfter(3))
    t0 = time.monotonic()
    r = post(client, capture("text"))
    assert time.monotonic() - t0 < 10  # never a hang
    assert r.status_code == 200
    events = events_of(r.content)
    assert isinstance(events[-1], canonical.StreamError)
    assert events[-1].kind == "api_error"
    row = proxy.row_of(r)
    assert row["status"] == 200 and "broke off the stream" in row["error"]


def test_provider_error_event_midway(proxy, client, fake_openai):
    fake_openai.enqueue(StreamError(after=2, message="boom from provider"))
    r = post(client, capture("text"))
    events = events_of(r.content)
    assert isinstance(events[-1], canonical.StreamError)
    assert "boom from provider" in events[-1].message


# ---------------------------------------------------------------- fallback


@pytest.mark.parametrize("stream", [False, True])
def test_fallback_on_connection_refused(proxy, client, fake_openai, stream):
    r = post(client, dict(capture("text"), model="via-dead", stream=stream))
    assert r.status_code == 200
    assert b"Hello from the fake provider" in r.content or "Hello" in "".join(
        e.text for e in events_of(r.content) if isinstance(e, canonical.TextDelta))
    row = proxy.row_of(r)
    route = json.loads(row["route"])
    assert route[-1]["provider"] == "fake" and route[-1]["status"] == 200
    assert row["provider"] == "fake"


def test_fallback_to_next_account_on_401(proxy, client, fake_openai):
    r = post(client, dict(capture("text"), model="via-rotating"))
    assert r.status_code == 200
    auths = [q.headers["authorization"] for q in fake_openai.requests]
    assert auths[-1] == f"Bearer {PROVIDER_KEY}"
    assert "Bearer sk-wrong-key" in auths or len(auths) == 1  # 2nd run: the bad key cools down


def test_fallback_when_a_provider_never_answers(proxy, client, fake_openai):
    fake_openai.enqueue(Stall(30))
    r = post(client, dict(capture("text"), model="via-slow"))
    assert r.status_code == 200
    # the stalled provider was given up at its first_byte timeout, not waited out
    route = json.loads(proxy.row_of(r)["route"])
    assert route[0]["provider"] == "slow" and "no answer within 1s" in route[0]["error"]
    assert "Hello from the fake provider" in "".join(
        e.text for e in events_of(r.content) if isinstance(e, canonical.TextDelta))


# ---------------------------------------------------------------- same format, passthrough


def test_anthropic_provider_gets_the_bytes_with_its_own_key(proxy, client, fake_anthropic):
    r = post(client, dict(capture("text"), model="to-anthropic"))
    assert r.status_code == 200
    sent = fake_anthropic.requests[-1]
    assert sent.headers["x-api-key"] == VENDOR_KEY
    assert sent.json["model"] == "claude-fake-sonnet"
    assert sent.json["messages"] == capture("text")["messages"]
    assert "Hello from the fake Anthropic vendor" in "".join(
        e.text for e in events_of(r.content) if isinstance(e, canonical.TextDelta))


@pytest.mark.parametrize("stream", [False, True])
def test_observe_mode_forwards_untouched_and_records_usage(proxy, client, fake_anthropic, stream):
    fake_anthropic.keys.add(CLIENT_KEY)  # in observe mode the client's own key is the one used
    body = dict(capture("text"), model="claude-haiku-4-5", stream=stream)
    raw = json.dumps(body).encode()
    r = client.post(URL, content=raw, headers=dict(HEADERS, **{"content-type": "application/json"}))
    assert r.status_code == 200
    sent = fake_anthropic.requests[-1]
    assert sent.body == raw  # byte for byte
    assert sent.headers["x-api-key"] == CLIENT_KEY  # the client's own vendor call
    assert sent.path == "/v1/messages?beta=true"
    row = proxy.row_of(r)
    assert row["provider"] == "api.anthropic.com" and row["account"] == "client"
    if stream:
        usage = [e for e in events_of(r.content) if isinstance(e, canonical.MessageDelta)][0].usage
    else:
        usage = anthropic.decode_response(r.json()).usage
    assert row["input_tokens"] == usage.input_tokens > 0
    assert row["output_tokens"] == usage.output_tokens > 0
    assert row["stream"] == int(stream)


def test_other_paths_of_a_vendor_pass_through_and_are_not_counted(proxy, client, fake_anthropic):
    r = client.get("https://api.anthropic.com/api/claude_code/settings", headers=HEADERS)
    assert fake_anthropic.requests[-1].path == "/api/claude_code/settings"
    assert r.status_code == 404  # what the fake vendor answers, passed on
    with pytest.raises(AssertionError, match="0 usage rows"):
        proxy.row_of(r, timeout=1.5)


def test_hosts_detour_does_not_handle_are_tunnelled_not_decrypted(proxy):
    with FakeOpenAI(tls=True) as other:
        # trusting only the other server's own CA works only if mitmproxy did not intercept
        with httpx.Client(proxy=proxy.mitm.url, verify=ssl.create_default_context(cafile=other.ca_pem_path), trust_env=False,
                          timeout=10) as c:
            r = c.get(other.base_url + "/v1/models",
                      headers={"authorization": f"Bearer {PROVIDER_KEY}"})
        assert r.status_code == 200


def test_client_disconnect_mid_stream_cancels_the_provider_call(proxy, fake_openai):
    aborted = fake_openai.aborted_streams
    fake_openai.enqueue(Text(pieces=["x"] * 40, delay=0.1))
    with proxy.client() as c:
        with c.stream("POST", URL, json=capture("text"), headers=HEADERS) as r:
            for chunk in r.iter_raw():
                if b"text_delta" in chunk:
                    break
    assert fake_openai.wait_until(lambda f: f.aborted_streams > aborted, timeout=5)
    row = proxy.row_of(r)
    assert row["error"] and "client-aborted" in row["error"]


def test_parallel_streams_all_complete(proxy, fake_openai):
    results = []

    def one():
        with proxy.client() as c:
            r = post(c, capture("text"))
            results.append((r.status_code, events_of(r.content)[-1]))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 12
    assert all(s == 200 and isinstance(last, canonical.MessageStop) for s, last in results)


# ---------------------------------------------------------------- the reverse direction


@pytest.mark.parametrize("stream", [False, True])
def test_openai_chat_client_answered_by_an_anthropic_provider(proxy, client, fake_anthropic,
                                                              stream):
    """An OpenAI-style client (Chat Completions) routed to an Anthropic account: the same
    hub, the other way round."""
    body = {"model": "to-anthropic", "stream": stream, "max_tokens": 100,
            "messages": [{"role": "system", "content": "be brief"},
                         {"role": "user", "content": "Say hi"}]}
    if stream:
        body["stream_options"] = {"include_usage": True}
    r = client.post("https://api.openai.com/v1/chat/completions", json=body,
                    headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200, r.text
    sent = fake_anthropic.requests[-1]
    assert sent.headers["x-api-key"] == VENDOR_KEY and CLIENT_KEY.encode() not in sent.body
    assert sent.json["system"] in ("be brief", [{"type": "text", "text": "be brief"}])
    if stream:
        chunks = [json.loads(line[6:]) for line in r.text.splitlines()
                  if line.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or ""
                       for c in chunks if c["choices"])
        assert r.text.rstrip().endswith("data: [DONE]")
        assert chunks[-1]["usage"]["completion_tokens"] > 0
    else:
        text = r.json()["choices"][0]["message"]["content"]
        assert r.json()["usage"]["prompt_tokens"] > 0
    assert text == "Hello from the fake Anthropic vendor"


# ---------------------------------------------------------------- what peers get wrong


def test_reasoning_streams_as_thinking_and_is_passed_back(proxy, client, fake_openai):
    """DeepSeek-style reasoning_content becomes a thinking block, and when Claude Code sends
    that block back next turn, the provider gets its reasoning_content again (claude-code-router #1050)."""
    fake_openai.enqueue(Text("the answer", reasoning="step one, step two"))
    events = events_of(post(client, capture("text")).content)
    kinds = [e.kind for e in events if isinstance(e, canonical.BlockStart)]
    assert kinds == ["thinking", "text"]
    thought = "".join(e.text for e in events if isinstance(e, canonical.ThinkingDelta))
    assert thought == "step one, step two"
    follow = capture("text")
    follow["messages"] = follow["messages"][:1] + [
        {"role": "assistant", "content": [
            {"type": "thinking", "thinking": thought, "signature": ""},
            {"type": "text", "text": "the answer"}]},
        {"role": "user", "content": "and then?"}]
    assert post(client, follow).status_code == 200
    sent = fake_openai.requests[-1].json["messages"]
    assistant = next(m for m in sent if m["role"] == "assistant")
    assert assistant["reasoning_content"] == "step one, step two"
    assert assistant["content"] == "the answer"


def test_a_refused_request_does_not_lock_the_account(proxy, client, fake_openai):
    """A 400 is the request's fault: the same account serves the next call (9router PR #3181)."""
    fake_openai.enqueue(Status(400, message="max_tokens too large"))
    r = post(client, dict(capture("text"), model="only-fake", stream=False))
    assert r.status_code == 400 and "max_tokens too large" in r.json()["error"]["message"]
    r = post(client, dict(capture("text"), model="only-fake", stream=False))
    assert r.status_code == 200


def test_config_edits_apply_without_restart(proxy, client, fake_openai, fake_anthropic):
    path = proxy.home / "config.yaml"
    original = path.read_text()
    try:
        path.write_text(original.replace("  claude-opus-4-8: [fake/fake-model]",
                                         "  claude-opus-4-8: [ant/claude-fake-sonnet]"))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            body = post(client, dict(capture("text"), stream=False)).json()
            if body.get("model") == "claude-fake-sonnet":
                break
            time.sleep(0.3)
        assert body["content"][0]["text"] == "Hello from the fake Anthropic vendor"
        # a broken edit is refused and the running configuration stays
        path.write_text(original.replace("routes:", "routez:"))
        deadline = time.monotonic() + 10  # the reload's own verdict, not a fixed sleep
        while "routez: unknown key" not in proxy.mitm.text and time.monotonic() < deadline:
            time.sleep(0.05)
        assert post(client, dict(capture("text"), stream=False)).json()["model"] == \
            "claude-fake-sonnet"
        assert "routez: unknown key" in proxy.mitm.text
    finally:
        path.write_text(original)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if post(client, dict(capture("text"), stream=False)).json().get("model") == "fake-model":
            return
        time.sleep(0.3)
    raise AssertionError("the original configuration did not come back")


def test_the_users_proxy_variables_never_loop_detour_back(confdir, tmp_path, fake_openai):
    """mitmdump runs in the shell whose HTTPS_PROXY points at mitmdump itself (or at anything):
    detour's own calls to providers must ignore it (claude-code-router #602)."""
    env = dict(os.environ, HTTPS_PROXY=f"http://127.0.0.1:{free_port()}",
               HTTP_PROXY=f"http://127.0.0.1:{free_port()}", ALL_PROXY="socks5://127.0.0.1:1")
    home = detour_home(
        tmp_path / "home",
        f'providers: {{fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", '
        f'api_keys: [{PROVIDER_KEY}]}}}}\nroutes: {{"*": [fake/fake-model]}}\n')
    with Mitmdump(confdir, home, env=env) as m:
        with Proxy(m, home).client() as c:
            for stream in (False, True):
                r = post(c, dict(capture("text"), stream=stream))
                assert r.status_code == 200, r.text


def test_saved_flows_hold_no_credentials(confdir, tmp_path, fake_openai, fake_anthropic):
    """mitmdump's own flow file (save_stream_file): the flows are all there, the keys are not."""
    from mitmproxy import io as mitmio
    fake_anthropic.keys.add(CLIENT_KEY)
    home = detour_home(
        tmp_path / "home",
        f'providers: {{fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", '
        f'api_keys: [{PROVIDER_KEY}]}}}}\nroutes: {{claude-opus-4-8: [fake/fake-model], '
        f'"*": [passthrough]}}\nvendors: {{api.anthropic.com: "{fake_anthropic.base_url}"}}\n')
    flows = tmp_path / "flows.mitm"
    with Mitmdump(confdir, home, extra=["--set", f"save_stream_file={flows}"]) as m:
        with Proxy(m, home).client() as c:
            for model in ("claude-opus-4-8", "claude-haiku-4-5"):  # rerouted, passthrough
                for stream in (False, True):
                    assert post(c, dict(capture("text"), model=model, stream=stream)).status_code == 200
            c.get("https://api.anthropic.com/api/claude_code/settings", headers=HEADERS)
    data = flows.read_bytes()
    with flows.open("rb") as f:
        saved = list(mitmio.FlowReader(f).stream())
    assert len(saved) == 5
    assert CLIENT_KEY.encode() not in data and PROVIDER_KEY.encode() not in data
    # the client's key, or (a stream on the direct path: the provider's request) the provider's
    creds = [f.request.headers.get("x-api-key") or f.request.headers.get("authorization")
             for f in saved]
    assert all(c is not None and c.endswith("[redacted]") for c in creds), creds
    assert "error" not in m.text.lower()  # nothing failed on the way (addons, Save)


@pytest.mark.skipif(not shutil.which("curl"), reason="curl drives HTTP/2 multiplexing here")
def test_parallel_streams_of_one_http2_connection_run_concurrently(proxy, fake_openai, tmp_path):
    """mitmproxy opens at most 5 connections per client connection and upstream address; the
    relay listens on several ports so an HTTP/2 client's parallel streams do not queue.
    (curl: httpx offers http/1.1 before h2 in ALPN, so mitmproxy would pick HTTP/1.1.)"""
    n, pace = 8, 0.25
    fake_openai.enqueue(*[Text(pieces=list("abcdefghijkl"), delay=pace) for _ in range(n)])
    body = tmp_path / "body.json"
    body.write_text(json.dumps(capture("text")))
    args = ["curl", "-s", "--http2", "--parallel", "--parallel-max",
            str(n), "-x", proxy.mitm.url, "--cacert", str(proxy.mitm.ca_cert),
            "-w", "%{http_version} %{http_code}\n"]
    for h, v in HEADERS.items():
        args += ["-H", f"{h}: {v}"]
    args += ["-H", "content-type: application/json", "--data-binary", f"@{body}"]
    for i in range(n):
        args += ["-o", str(tmp_path / f"out{i}"), URL]
    with subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as curl:
        # all n streams open at the provider at once (queued ones would wait for the first
        # five to end: each takes ~3 s, so a generous window to see all of them)
        together = fake_openai.wait_until(lambda f: f.open_streams == n, timeout=30)
        out, err = curl.communicate(timeout=60)
    assert together, f"at most {n} streams open at once expected, they queued"
    assert out.split("\n")[:n] == ["2 200"] * n, out + err
    for i in range(n):
        assert isinstance(events_of((tmp_path / f"out{i}").read_bytes())[-1], canonical.MessageStop)


def test_openai_chat_stream_without_include_usage_has_no_usage_chunk(proxy, client):
    """Clients that did not ask for it must not get the `choices: []` chunk (some read
    choices[0] of every chunk)."""
    body = {"model": "to-anthropic", "stream": True, "max_tokens": 100,
            "messages": [{"role": "user", "content": "Say hi"}]}
    r = client.post("https://api.openai.com/v1/chat/completions", json=body,
                    headers={"authorization": f"Bearer {CLIENT_KEY}"})
    chunks = [json.loads(line[6:]) for line in r.text.splitlines() if line.startswith("data: {")]
    assert chunks and all(c["choices"] for c in chunks)
    assert r.text.rstrip().endswith("data: [DONE]")
