"""OpenAI Responses through a real mitmdump: a Responses client (the real openai SDK's
`client.responses.create`, and httpx) routed to a Chat provider, an Anthropic provider, a
Responses provider (same format) and passthrough; Claude Code answered by a Responses provider;
fallback from a failing Responses provider to a Chat one."""

import json
import time

import openai
import pytest

from tests.captures import anthropic_events, checked_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, capture, start_proxy
from tests.fakes.openai_responses_provider import FakeOpenAIResponses
from tests.fakes.replies import CutAfter, Status, StreamError, Text, ToolCall, Usage
from translators import canonical, openai_responses

RESPONSES_URL = "https://api.openai.com/v1/responses"
CLAUDE_URL = "https://api.anthropic.com/v1/messages?beta=true"
CLAUDE_HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
                  "anthropic-beta": "claude-code-20250219",
                  "user-agent": "claude-cli/2.1.197 (test)"}
WEATHER_TOOL = {"type": "function", "name": "get_weather", "description": "The weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                               "required": ["city"]}}


@pytest.fixture(scope="module")
def fake_responses():
    with FakeOpenAIResponses() as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic, fake_responses):
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  ant: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
  resp: {{kind: openai-responses, base_url: "{fake_responses.base_url}/v1",
          api_keys: [{PROVIDER_KEY}]}}
  resp-wrong-key: {{kind: openai-responses, base_url: "{fake_responses.base_url}/v1",
                    api_keys: [sk-not-accepted]}}
  resp-500: {{kind: openai-responses, base_url: "{fake_responses.base_url}/v1",
              api_keys: [{PROVIDER_KEY}]}}
  resp-stream-error: {{kind: openai-responses, base_url: "{fake_responses.base_url}/v1",
                       api_keys: [{PROVIDER_KEY}]}}
routes:
  to-chat: [chat/fake-model]
  to-ant: [ant/claude-fake-sonnet]
  to-resp: [resp/gpt-fake-upstream]
  to-wrong-key: [resp-wrong-key/gpt-fake-upstream]
  claude-opus-4-8: [resp/gpt-fake-upstream]
  # one failing provider per test: a failure rests its account
  resp-500-then-chat: [resp-500/gpt-fake-upstream, chat/fake-model]
  resp-stream-error-then-chat: [resp-stream-error/gpt-fake-upstream, chat/fake-model]
  "*": [passthrough]
vendors:
  api.openai.com: "{fake_responses.base_url}"
cooldown_seconds: 1
prices:
  fake-model: {{input: 3, output: 15, cache_read: 0.3}}
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_openai, fake_anthropic, fake_responses):
    for fake in (fake_openai, fake_anthropic, fake_responses):
        fake.clear()
    yield


@pytest.fixture
def http(proxy):
    with proxy.client() as c:
        yield c


@pytest.fixture
def sdk(http):
    """The real OpenAI SDK, through the proxy (its own retries off: detour does those)."""
    with openai.OpenAI(api_key=CLIENT_KEY, http_client=http, max_retries=0) as client:
        yield client


def responses_events(data: bytes) -> list:
    return checked_events(openai_responses, data)


def text_of(events) -> str:
    return "".join(e.text for e in events if isinstance(e, canonical.TextDelta))


USAGE = Usage(prompt=1000, completion=50, cached=600, reasoning=10)


# ---------------------------------------------------------------- a Responses client, routed


@pytest.mark.parametrize("route", ["to-chat", "to-ant"])
def test_sdk_text_streamed(proxy, sdk, fake_openai, fake_anthropic, route):
    fake = fake_openai if route == "to-chat" else fake_anthropic
    fake.enqueue(Text("streamed from the provider", pieces=3, usage=USAGE))
    raw = sdk.responses.with_raw_response.create(model=route, input="Say hi", stream=True,
                                                 instructions="Be brief.")
    events = list(raw.parse())
    types = [e.type for e in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == \
        "streamed from the provider"
    usage = events[-1].response.usage
    assert (usage.input_tokens, usage.input_tokens_details.cached_tokens,
            usage.output_tokens) == (1000, 600, 50)
    sent = fake.requests[-1].json
    if route == "to-chat":
        assert sent["model"] == "fake-model"
        assert sent["messages"][0] == {"role": "system", "content": "Be brief."}
    else:
        assert sent["model"] == "claude-fake-sonnet"
        assert "Be brief." in json.dumps(sent["system"])
    row = proxy.row_of(raw)
    assert row["client_format"] == "openai-responses" and row["stream"] == 1
    assert row["model_requested"] == route and row["status"] == 200
    assert row["provider"] == ("chat" if route == "to-chat" else "ant")
    reasoning = 10 if route == "to-chat" else 0  # Anthropic reports none
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"],
            row["reasoning_tokens"]) == (400, 600, 50, reasoning)


@pytest.mark.parametrize("route", ["to-chat", "to-ant"])
def test_sdk_text_whole(proxy, sdk, fake_openai, fake_anthropic, route):
    fake = fake_openai if route == "to-chat" else fake_anthropic
    fake.enqueue(Text("whole from the provider", usage=USAGE))
    raw = sdk.responses.with_raw_response.create(model=route, input="Say hi")
    response = raw.parse()
    assert raw.headers["content-type"].startswith("application/json")
    assert response.status == "completed" and response.output_text == "whole from the provider"
    assert (response.usage.input_tokens, response.usage.output_tokens) == (1000, 50)
    assert fake.requests[-1].json.get("stream") in (None, False)
    row = proxy.row_of(raw)
    assert row["client_format"] == "openai-responses" and row["stream"] == 0
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (400, 600, 50)


@pytest.mark.parametrize("stream", [True, False])
@pytest.mark.parametrize("route", ["to-chat", "to-ant"])
def test_function_tool_call_and_its_result(proxy, sdk, http, fake_openai, fake_anthropic, route,
                                           stream):
    fake = fake_openai if route == "to-chat" else fake_anthropic
    fake.enqueue(ToolCall("get_weather", {"city": "Paris"}, id="call_w1", pieces=3),
                 Text("Sunny in Paris"))
    first = [{"role": "user", "content": "Weather in Paris?"}]
    if stream:
        events = list(sdk.responses.create(model=route, input=first, tools=[WEATHER_TOOL],
                                           stream=True))
        calls = [e.item for e in events if e.type == "response.output_item.done"
                 and e.item.type == "function_call"]
        args = "".join(e.delta for e in events
                       if e.type == "response.function_call_arguments.delta")
        assert json.loads(args) == {"city": "Paris"}
    else:
        calls = [i for i in sdk.responses.create(model=route, input=first,
                                                 tools=[WEATHER_TOOL]).output
                 if i.type == "function_call"]
    assert len(calls) == 1
    call = calls[0]
    assert (call.name, call.call_id, json.loads(call.arguments)) == (
        "get_weather", "call_w1", {"city": "Paris"})
    sent_tools = fake.requests[-1].json["tools"]
    assert "get_weather" in json.dumps(sent_tools)
    # the client sends the call and its output back; the provider sees them paired
    follow = first + [{"type": "function_call", "call_id": call.call_id, "name": call.name,
                       "arguments": call.arguments},
                      {"type": "function_call_output", "call_id": call.call_id,
                       "output": "sunny, 24C"}]
    answer = sdk.responses.create(model=route, input=follow, tools=[WEATHER_TOOL])
    assert answer.output_text == "Sunny in Paris"
    sent = json.dumps(fake.requests[-1].json)
    assert "call_w1" in sent and "sunny, 24C" in sent
    rows = proxy.rows()
    assert [r["status"] for r in rows[-2:]] == [200, 200]


def test_passthrough_keeps_the_clients_bytes_and_key(proxy, http, fake_responses):
    fake_responses.keys.add(CLIENT_KEY)
    try:
        body = b'{"model": "gpt-own",  "input": "hi", "store": false, "x_unknown": [1]}'
        r = http.post(RESPONSES_URL, content=body,
                      headers={"authorization": f"Bearer {CLIENT_KEY}",
                               "content-type": "application/json"})
        assert r.status_code == 200, r.text
        assert r.json()["output"][0]["content"][0]["text"] == fake_responses.default_text
        sent = fake_responses.requests[-1]
        assert sent.body == body and sent.route == "/v1/responses"
        assert sent.headers["authorization"] == f"Bearer {CLIENT_KEY}"
        row = proxy.row_of(r)
        assert row["provider"] == "api.openai.com" and row["client_format"] == "openai-responses"
    finally:
        fake_responses.keys.discard(CLIENT_KEY)


@pytest.mark.parametrize("stream", [True, False])
def test_same_format_changes_only_model_and_credential(proxy, http, fake_responses, stream):
    fake_responses.enqueue(Text("same format", usage=USAGE))
    body = {"model": "to-resp", "input": [{"role": "user", "content": "hi"}], "stream": stream,
            "store": False, "include": ["reasoning.encrypted_content"],
            "prompt_cache_key": "conversation-1", "x_unknown": {"kept": True}}
    r = http.post(RESPONSES_URL, json=body, headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200, r.text
    sent = fake_responses.requests[-1]
    assert sent.route == "/v1/responses"
    assert sent.json == dict(body, model="gpt-fake-upstream")
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert CLIENT_KEY.encode() not in sent.body
    if stream:
        assert text_of(responses_events(r.content)) == "same format"
    else:
        assert r.json()["output"][0]["content"][0]["text"] == "same format"
    row = proxy.row_of(r)
    assert row["provider"] == "resp" and row["model_upstream"] == "gpt-fake-upstream"
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"],
            row["reasoning_tokens"]) == (400, 600, 50, 10)


# ---------------------------------------------------------------- Claude Code, a Responses provider


@pytest.mark.parametrize("stream", [True, False])
def test_claude_code_answered_by_a_responses_provider(proxy, http, fake_responses, stream):
    fake_responses.enqueue(Text("from Responses", reasoning="thinking it over", usage=USAGE))
    r = http.post(CLAUDE_URL, json=dict(capture("text"), stream=stream), headers=CLAUDE_HEADERS)
    assert r.status_code == 200, r.text
    sent = fake_responses.requests[-1]
    assert sent.route == "/v1/responses"
    assert sent.json["model"] == "gpt-fake-upstream" and sent.json.get("stream", False) is stream
    assert isinstance(sent.json["instructions"], str) and sent.json["instructions"]
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert "x-api-key" not in sent.headers and CLIENT_KEY.encode() not in sent.body
    if stream:
        events = anthropic_events(r.content)  # grammar-checked
        assert text_of(events) == "from Responses"
        delta = next(e for e in events if isinstance(e, canonical.MessageDelta))
        assert delta.stop_reason == "end_turn"
        assert (delta.usage.input_tokens, delta.usage.cache_read_tokens,
                delta.usage.output_tokens) == (400, 600, 50)
    else:
        body = r.json()
        assert body["type"] == "message" and body["stop_reason"] == "end_turn"
        assert [b["text"] for b in body["content"] if b["type"] == "text"] == ["from Responses"]
        assert (body["usage"]["input_tokens"], body["usage"]["cache_read_input_tokens"],
                body["usage"]["output_tokens"]) == (400, 600, 50)
    row = proxy.row_of(r)
    assert row["client_format"] == "anthropic" and row["provider"] == "resp"
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (400, 600, 50)


def test_claude_code_tool_call_from_a_responses_provider(proxy, http, fake_responses):
    fake_responses.enqueue(ToolCall("Bash", {"command": "echo hi", "description": "Print hi"},
                                    id="call_r1", pieces=4))
    r = http.post(CLAUDE_URL, json=capture("tool-call"), headers=CLAUDE_HEADERS)
    events = anthropic_events(r.content)
    start = next(e for e in events if isinstance(e, canonical.BlockStart))
    assert (start.kind, start.tool_name, start.tool_id) == ("tool_use", "Bash", "call_r1")
    args = "".join(e.partial_json for e in events if isinstance(e, canonical.ToolInputDelta))
    assert json.loads(args) == {"command": "echo hi", "description": "Print hi"}
    tools = fake_responses.requests[-1].json["tools"]
    assert any(t.get("type") == "function" and t.get("name") == "Bash" for t in tools)


# ---------------------------------------------------------------- fallback across formats


@pytest.mark.parametrize("failing, failure", [
    ("resp-500", Status(500)),
    ("resp-stream-error", StreamError(after=0, kind="server_error"))], ids=["500", "stream-error"])
def test_failing_responses_provider_falls_back_to_chat(proxy, http, fake_responses, fake_openai,
                                                       failing, failure):
    fake_responses.enqueue(failure)
    fake_openai.enqueue(Text("served by Chat"))
    r = http.post(RESPONSES_URL, json={"model": f"{failing}-then-chat", "input": "hi",
                                       "stream": True},
                  headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200, r.text
    events = responses_events(r.content)
    assert text_of(events) == "served by Chat"
    assert not any(isinstance(e, canonical.StreamError) for e in events)
    assert len(fake_responses.requests) == 1 and len(fake_openai.requests) == 1
    row = proxy.row_of(r)
    assert row["attempts"] == 2 and row["provider"] == "chat" and row["error"] is None
    first = json.loads(row["route"])[0]
    assert first["provider"] == failing


# ---------------------------------------------------------------- failures, in the client's format


def test_no_candidate_left_is_an_openai_error_the_sdk_reads(proxy, sdk, fake_responses):
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.responses.create(model="to-wrong-key", input="hi", stream=True)
    error = caught.value
    assert error.status_code >= 400
    assert isinstance(error.body, dict) and error.body.get("message")  # the SDK found `error`
    whole = error.response.json()
    assert set(whole) == {"error"} and {"message", "type", "code"} <= set(whole["error"])
    assert "sk-not-accepted" not in str(error.body)
    assert len(fake_responses.requests) == 1


def test_a_stream_cut_after_the_first_byte_ends_with_a_responses_error(proxy, http, fake_openai):
    fake_openai.enqueue(CutAfter(3, Text("one two three four five", pieces=5)))
    r = http.post(RESPONSES_URL, json={"model": "to-chat", "input": "hi", "stream": True},
                  headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200
    events = responses_events(r.content)
    assert text_of(events) and isinstance(events[-1], canonical.StreamError)
    last = r.content.decode().strip().split("\n\n")[-1]
    assert last.startswith(("event: error", "event: response.failed")), last
    assert "broke off the stream" in proxy.row_of(r)["error"]


# ---------------------------------------------------------------- the direct path


@pytest.fixture(scope="module")
def direct_proxy(confdir, tmp_path_factory, fake_openai, fake_responses):
    """detour_direct=true: a call with one candidate goes out on mitmproxy's own connection."""
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  resp: {{kind: openai-responses, base_url: "{fake_responses.base_url}/v1",
          api_keys: [{PROVIDER_KEY}]}}
routes:
  to-chat: [chat/fake-model]
  "*": [resp/gpt-fake-upstream]
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config,
                    extra=["--set", "detour_direct=true", "--set", "flow_detail=1"])
    yield p
    p.mitm.stop()


@pytest.mark.parametrize("stream", [True, False])
def test_direct_path_both_ways(direct_proxy, fake_openai, fake_responses, stream):
    fake_openai.enqueue(Text("chat, direct", usage=USAGE))
    fake_responses.enqueue(Text("responses, direct", usage=USAGE))
    with direct_proxy.client() as http:
        r1 = http.post(RESPONSES_URL, json={"model": "to-chat", "input": "hi", "stream": stream},
                       headers={"authorization": f"Bearer {CLIENT_KEY}"})
        r2 = http.post(CLAUDE_URL, json=dict(capture("text"), stream=stream),
                       headers=CLAUDE_HEADERS)
    assert r1.status_code == r2.status_code == 200, (r1.text, r2.text)
    if stream:
        assert text_of(responses_events(r1.content)) == "chat, direct"
        assert text_of(anthropic_events(r2.content)) == "responses, direct"
    else:
        assert r1.json()["output"][0]["content"][0]["text"] == "chat, direct"
        assert r2.json()["content"] == [{"type": "text", "text": "responses, direct"}]
    assert fake_responses.requests[-1].headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    for r, fmt, provider in ((r1, "openai-responses", "chat"), (r2, "anthropic", "resp")):
        row = direct_proxy.row_of(r)
        assert (row["client_format"], row["provider"], row["stream"]) == (fmt, provider, stream)
        assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
            400, 600, 50)
    # mitmdump's flow lines name the providers' URLs: both went out on mitmproxy's connection
    wanted = (f"{fake_openai.base_url}/v1/chat/completions",
              f"{fake_responses.base_url}/v1/responses")
    deadline = time.monotonic() + 5
    while not all(u in direct_proxy.mitm.text for u in wanted) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert all(u in direct_proxy.mitm.text for u in wanted)
