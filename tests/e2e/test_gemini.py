"""The Gemini API through a real mitmdump: a Gemini client (Gemini CLI's calls, as httpx sends
them) routed to Chat, Anthropic, Responses and Gemini fakes, streamed and not, text and a tool
round trip; Anthropic and Chat clients answered by the Gemini fake; token counts and model
lists."""

import json

import pytest

from tests.captures import checked_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, start_proxy
from tests.fakes.gemini_provider import FakeGemini
from tests.fakes.openai_responses_provider import FakeOpenAIResponses
from tests.fakes.replies import StreamError, Text, ToolCall, Usage
from translators import anthropic, canonical, gemini, gemini_code_assist, openai_chat

GEMINI_KEY = "AIza-fake-provider-key"
BASE = "https://generativelanguage.googleapis.com/v1beta/models"
GEMINI_HEADERS = {"x-goog-api-key": CLIENT_KEY, "content-type": "application/json",
                  "user-agent": "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64)"}
SHELL_TOOL = {"functionDeclarations": [{
    "name": "run_shell_command", "description": "Runs a shell command",
    "parametersJsonSchema": {
        "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
        "additionalProperties": False,
        "properties": {"command": {"type": "string", "description": "the command"},
                       "timeout": {"type": "integer", "exclusiveMinimum": 0}},
        "required": ["command"]}}]}
USAGE = Usage(prompt=1000, completion=50, cached=600, reasoning=10)
ROUTES = ["to-chat", "to-ant", "to-resp", "to-gem"]


@pytest.fixture(scope="module")
def fake_responses():
    with FakeOpenAIResponses() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_gemini():
    with FakeGemini(keys={GEMINI_KEY}) as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic, fake_responses, fake_gemini):
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  ant: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
  resp: {{kind: openai-responses, base_url: "{fake_responses.base_url}/v1",
          api_keys: [{PROVIDER_KEY}]}}
  gem: {{kind: gemini, base_url: "{fake_gemini.base_url}", api_keys: [{GEMINI_KEY}]}}
routes:
  to-chat: [chat/fake-model]
  to-ant: [ant/claude-fake-sonnet]
  to-resp: [resp/gpt-fake-upstream]
  to-gem: [gem/gemini-fake-pro]
  gemini-own: [passthrough]
  "*": [chat/fake-model]
vendors:
  generativelanguage.googleapis.com: "{fake_gemini.base_url}"
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_openai, fake_anthropic, fake_responses, fake_gemini):
    for fake in (fake_openai, fake_anthropic, fake_responses, fake_gemini):
        fake.clear()
    yield


@pytest.fixture
def http(proxy):
    with proxy.client() as c:
        yield c


def fake_of(route, fake_openai, fake_anthropic, fake_responses, fake_gemini):
    return {"to-chat": fake_openai, "to-ant": fake_anthropic, "to-resp": fake_responses,
            "to-gem": fake_gemini}[route]


def generate(http, route: str, body: dict, stream: bool):
    url = f"{BASE}/{route}:" + ("streamGenerateContent?alt=sse" if stream else "generateContent")
    return http.post(url, json=body, headers=GEMINI_HEADERS)


def answer_of(r, stream: bool) -> canonical.Response:
    assert r.status_code == 200, r.text
    if stream:
        assert r.headers["content-type"].startswith("text/event-stream")
        return canonical.collect_response(checked_events(gemini, r.content))
    return gemini.decode_response(r.json())


def user(text: str) -> dict:
    return {"role": "user", "parts": [{"text": text}]}


# ---------------------------------------------------------------- a Gemini client, routed


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("route", ROUTES)
def test_gemini_client_text(proxy, http, fake_openai, fake_anthropic, fake_responses,
                            fake_gemini, route, stream):
    fake = fake_of(route, fake_openai, fake_anthropic, fake_responses, fake_gemini)
    fake.enqueue(Text("answer from the provider", usage=USAGE))
    body = {"contents": [user("Say hi")],
            "systemInstruction": {"role": "user", "parts": [{"text": "Be brief."}]},
            "generationConfig": {"temperature": 1, "maxOutputTokens": 500}}
    r = generate(http, route, body, stream)
    resp = answer_of(r, stream)
    assert [p.text for p in resp.parts if type(p) is canonical.Text] == [
        "answer from the provider"]
    assert resp.stop_reason == "end_turn"
    sent = fake.requests[-1]
    assert CLIENT_KEY not in json.dumps(dict(sent.headers)) and CLIENT_KEY not in sent.path
    assert "Be brief." in json.dumps(sent.json)
    if route == "to-gem":
        assert sent.route.endswith("/v1beta/models/gemini-fake-pro:" + (
            "streamGenerateContent" if stream else "generateContent"))
        assert sent.headers["x-goog-api-key"] == GEMINI_KEY
        assert sent.json == body  # same format: the client's body as sent
    row = proxy.row_of(r)
    assert row["client_format"] == "gemini" and row["model_requested"] == route
    assert row["stream"] == int(stream) and row["status"] == 200
    # the provider's usage, exact (Anthropic and Gemini keep cached tokens apart)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        400, 600, 50)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("route", ROUTES)
def test_gemini_client_tool_round_trip(proxy, http, fake_openai, fake_anthropic,
                                       fake_responses, fake_gemini, route, stream):
    fake = fake_of(route, fake_openai, fake_anthropic, fake_responses, fake_gemini)
    fake.enqueue(ToolCall("run_shell_command", {"command": "echo hi"}),
                 Text("the command said hi"))
    first = {"contents": [user("Run echo hi")], "tools": [SHELL_TOOL]}
    r1 = generate(http, route, first, stream)
    resp = answer_of(r1, stream)
    calls = [p for p in resp.parts if type(p) is canonical.ToolUse]
    assert [(c.name, c.input) for c in calls] == [("run_shell_command", {"command": "echo hi"})]
    assert resp.stop_reason == "tool_use"
    sent_tools = json.dumps(fake.requests[-1].json.get("tools"))
    assert "run_shell_command" in sent_tools
    if route == "to-gem":  # same format: the client's schema as sent, not ours to clean
        assert "additionalProperties" in sent_tools
    # Gemini CLI's follow-up: the model turn as received (its signature placeholder when
    # none came), then the result, matched by name and id
    raw = gemini.encode_response(resp)
    model_parts = raw["candidates"][0]["content"]["parts"]
    call_part = next(p for p in model_parts if "functionCall" in p)
    call_id = call_part["functionCall"]["id"]
    call_part.setdefault("thoughtSignature", gemini.SKIP_SIGNATURE)
    follow = {"contents": first["contents"] + [
        {"role": "model", "parts": model_parts},
        {"role": "user", "parts": [{"functionResponse": {
            "id": call_id, "name": "run_shell_command",
            "response": {"output": "Output: hi"}}}]}], "tools": [SHELL_TOOL]}
    r2 = generate(http, route, follow, stream)
    answer = answer_of(r2, stream)
    assert [p.text for p in answer.parts if type(p) is canonical.Text] == ["the command said hi"]
    sent = json.dumps(fake.requests[-1].json)
    assert "Output: hi" in sent
    if route != "to-gem":
        assert call_id in sent  # the provider's own call id came back with the result
    assert [proxy.row_of(r)["status"] for r in (r1, r2)] == [200, 200]


def test_gemini_client_stream_error_reaches_it_in_its_format(proxy, http, fake_openai):
    fake_openai.enqueue(StreamError(after=3))
    r = generate(http, "to-chat", {"contents": [user("hi")]}, True)
    assert r.status_code == 200
    events = checked_events(gemini, r.content)
    assert type(events[-1]) is canonical.StreamError


def test_a_provider_failure_is_a_gemini_error(proxy, http, fake_gemini):
    fake_gemini.keys.discard(GEMINI_KEY)
    try:
        r = generate(http, "to-gem", {"contents": [user("hi")]}, False)
    finally:
        fake_gemini.keys.add(GEMINI_KEY)
    assert r.status_code >= 400
    err = r.json()["error"]
    assert err["code"] == r.status_code and isinstance(err["status"], str)
    assert "gem/" in err["message"]


# ---------------------------------------------------------------- other clients, to Gemini


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_anthropic_client_to_gemini_with_a_tool_round_trip(proxy, http, fake_gemini, stream):
    fake_gemini.enqueue(ToolCall("Bash", {"command": "echo hi"}), Text("it said hi",
                                                                       usage=USAGE))
    tools = [{"name": "Bash", "description": "Run a command", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"}},
        "required": ["command"], "additionalProperties": False,
        "$schema": "http://json-schema.org/draft-07/schema#"}}]
    headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    messages = [{"role": "user", "content": "Run echo hi"}]
    body = {"model": "to-gem", "max_tokens": 1000, "messages": messages, "tools": tools,
            "stream": stream}
    r = http.post("https://api.anthropic.com/v1/messages", json=body, headers=headers)
    assert r.status_code == 200, r.text
    if stream:
        resp = canonical.collect_response(checked_events(anthropic, r.content))
    else:
        resp = anthropic.decode_response(r.json())
    assert resp.stop_reason == "tool_use"
    content = anthropic.encode_response(resp)["content"]
    call = next(b for b in content if b["type"] == "tool_use")
    assert (call["name"], call["input"]) == ("Bash", {"command": "echo hi"})
    # the Gemini signature reached the client as a thinking block, to come back with the call
    assert any(b["type"] == "thinking" and b["signature"].startswith("fake-signature-")
               for b in content)
    sent = fake_gemini.requests[-1]
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY
    assert "additionalProperties" not in json.dumps(sent.json["tools"])  # cleaned for Gemini
    follow = dict(body, messages=messages + [
        {"role": "assistant", "content": content},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                      "content": "hi"}]}])
    r2 = http.post("https://api.anthropic.com/v1/messages", json=follow, headers=headers)
    assert r2.status_code == 200, r2.text
    answer = canonical.collect_response(checked_events(anthropic, r2.content)) if stream \
        else anthropic.decode_response(r2.json())
    assert [p.text for p in answer.parts if type(p) is canonical.Text] == ["it said hi"]
    # the fake (Gemini 3 rules) checked the signature came back on the call, the result's name
    turns = fake_gemini.requests[-1].json["contents"]
    assert turns[-1]["parts"][0]["functionResponse"]["name"] == "Bash"
    assert turns[-2]["parts"][0]["thoughtSignature"].startswith("fake-signature-")
    row = proxy.row_of(r2)
    assert (row["provider"], row["model_upstream"]) == ("gem", "gemini-fake-pro")
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"],
            row["reasoning_tokens"]) == (400, 600, 50, 10)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_chat_client_to_gemini(proxy, http, fake_gemini, stream):
    fake_gemini.enqueue(ToolCall("get_weather", {"city": "Paris"}), Text("Sunny"))
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}},
            "additionalProperties": False}}}]
    headers = {"authorization": f"Bearer {CLIENT_KEY}"}
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    body = {"model": "to-gem", "messages": messages, "tools": tools, "stream": stream}
    r = http.post("https://api.openai.com/v1/chat/completions", json=body, headers=headers)
    assert r.status_code == 200, r.text
    if stream:
        resp = canonical.collect_response(checked_events(openai_chat, r.content))
    else:
        resp = openai_chat.decode_response(r.json())
    call = next(p for p in resp.parts if type(p) is canonical.ToolUse)
    assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
    # a Chat client has nowhere to keep Gemini's signature: detour sends Gemini's own
    # placeholder for a call it did not sign, which Gemini 3 accepts
    follow = dict(body, messages=messages + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
        {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24C"}])
    r2 = http.post("https://api.openai.com/v1/chat/completions", json=follow, headers=headers)
    assert r2.status_code == 200, r2.text
    answer = canonical.collect_response(checked_events(openai_chat, r2.content)) if stream \
        else openai_chat.decode_response(r2.json())
    assert [p.text for p in answer.parts if type(p) is canonical.Text] == ["Sunny"]
    turns = fake_gemini.requests[-1].json["contents"]
    assert turns[-1]["parts"][0]["functionResponse"] == {
        "id": call.id, "name": "get_weather", "response": {"output": "sunny, 24C"}}


# ---------------------------------------------------------------- calls about models


def test_count_tokens_by_a_gemini_provider(proxy, http, fake_gemini):
    body = {"contents": [user("count me")]}
    r = http.post(f"{BASE}/to-gem:countTokens", json=body, headers=GEMINI_HEADERS)
    assert r.status_code == 200, r.text
    assert "x-detour-estimate" not in r.headers
    # the fake's own count (a quarter of the body it was sent): not detour's estimate
    assert r.json() == {"totalTokens": len(fake_gemini.requests[-1].body) // 4}
    sent = fake_gemini.requests[-1]
    assert sent.route.endswith("/models/gemini-fake-pro:countTokens")
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY


def test_count_tokens_elsewhere_is_a_marked_estimate(proxy, http, fake_openai):
    r = http.post(f"{BASE}/to-chat:countTokens", json={"contents": [user("x" * 400)]},
                  headers=GEMINI_HEADERS)
    assert r.status_code == 200, r.text
    assert r.headers["x-detour-estimate"]
    assert 100 <= r.json()["totalTokens"] <= 120
    assert not fake_openai.requests


def test_model_list_names_the_routed_models(proxy, http):
    r = http.get(BASE, headers=GEMINI_HEADERS)
    assert r.status_code == 200, r.text
    names = [m["name"] for m in r.json()["models"]]
    assert names == [f"models/{n}" for n in ROUTES + ["gemini-own"]]


# ---------------------------------------------------------------- Gemini CLI's Code Assist

CODE_ASSIST = "https://cloudcode-pa.googleapis.com/v1internal"
GOOGLE_HEADERS = {"authorization": "Bearer ya29.client-token-not-real",
                  "content-type": "application/json"}


def envelope(route: str, body: dict) -> dict:
    return {"model": route, "project": "proj-1", "user_prompt_id": "p-1",
            "request": dict(body, session_id="s-1")}


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("route", ["to-chat", "to-gem"])
def test_code_assist_client(proxy, http, fake_openai, fake_gemini, route, stream):
    fake = fake_openai if route == "to-chat" else fake_gemini
    fake.enqueue(ToolCall("run_shell_command", {"command": "echo hi"}), Text("done", usage=USAGE))
    first = {"contents": [user("Run echo hi")], "tools": [SHELL_TOOL]}
    url = CODE_ASSIST + (":streamGenerateContent?alt=sse" if stream else ":generateContent")
    r = http.post(url, json=envelope(route, first), headers=GOOGLE_HEADERS)
    assert r.status_code == 200, r.text
    if stream:
        resp = canonical.collect_response(checked_events(gemini_code_assist, r.content))
        assert all(json.loads(line[6:]).keys() == {"response", "traceId"}
                   for line in r.text.splitlines() if line.startswith("data: "))
    else:
        assert set(r.json()) == {"response", "traceId"}
        resp = gemini_code_assist.decode_response(r.json())
    call = next(p for p in resp.parts if type(p) is canonical.ToolUse)
    sent = fake.requests[-1]
    assert "ya29" not in json.dumps(dict(sent.headers))
    if route == "to-gem":  # the envelope is Code Assist's own: the Gemini API gets the body
        assert "session_id" not in sent.json and "project" not in sent.json
        assert sent.json["contents"] == first["contents"]
    model_turn = gemini.encode_response(resp)["candidates"][0]["content"]
    follow = dict(first, contents=first["contents"] + [model_turn, {"role": "user", "parts": [
        {"functionResponse": {"id": call.id, "name": call.name,
                              "response": {"output": "hi"}}}]}])
    r2 = http.post(url, json=envelope(route, follow), headers=GOOGLE_HEADERS)
    assert r2.status_code == 200, r2.text
    answer = canonical.collect_response(checked_events(gemini_code_assist, r2.content)) if \
        stream else gemini_code_assist.decode_response(r2.json())
    assert [p.text for p in answer.parts if type(p) is canonical.Text] == ["done"]
    row = proxy.row_of(r2)
    assert (row["client_format"], row["model_requested"], row["status"]) == (
        "gemini-cli", route, 200)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        400, 600, 50)


def test_code_assist_setup_calls_are_answered_when_routed_away(proxy, http, fake_openai):
    r = http.post(CODE_ASSIST + ":loadCodeAssist", json={"metadata": {}},
                  headers=GOOGLE_HEADERS)
    assert r.status_code == 200, r.text
    assert r.json()["cloudaicompanionProject"] == gemini_code_assist.LOCAL_PROJECT
    assert http.post(CODE_ASSIST + ":recordCodeAssistMetrics", json={},
                     headers=GOOGLE_HEADERS).json() == {}
    token = http.post("https://oauth2.googleapis.com/tokeninfo", headers=GOOGLE_HEADERS)
    assert token.status_code == 200 and token.json()["expires_in"] > 0
    count = http.post(CODE_ASSIST + ":countTokens", headers=GOOGLE_HEADERS, json={
        "request": {"model": "models/to-chat", "contents": [user("y" * 400)]}})
    assert count.status_code == 200 and count.headers["x-detour-estimate"]
    assert 100 <= count.json()["totalTokens"] <= 120
    assert not fake_openai.requests


def test_a_key_in_the_url_never_reaches_flows_or_the_provider(proxy, http, fake_gemini):
    headers = {k: v for k, v in GEMINI_HEADERS.items() if k != "x-goog-api-key"}
    r = http.post(f"{BASE}/to-gem:generateContent?key={CLIENT_KEY}",
                  json={"contents": [user("hi")]}, headers=headers)
    assert r.status_code == 200, r.text
    sent = fake_gemini.requests[-1]
    assert CLIENT_KEY not in sent.path and sent.headers["x-goog-api-key"] == GEMINI_KEY
    assert CLIENT_KEY not in json.dumps(proxy.row_of(r))


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_passthrough_keeps_the_clients_bytes_and_key_and_reads_usage(proxy, http, fake_gemini,
                                                                     stream):
    fake_gemini.keys.add(CLIENT_KEY)
    try:
        fake_gemini.enqueue(Text("from the vendor itself", usage=USAGE))
        body = b'{"contents": [{"role": "user", "parts": [{"text": "hi"}]}],  "x": 1}'
        url = f"{BASE}/gemini-own:" + ("streamGenerateContent?alt=sse" if stream
                                       else "generateContent")
        r = http.post(url, content=body, headers=GEMINI_HEADERS)
    finally:
        fake_gemini.keys.discard(CLIENT_KEY)
    assert r.status_code == 200, r.text
    sent = fake_gemini.requests[-1]
    assert sent.body == body and sent.headers["x-goog-api-key"] == CLIENT_KEY
    assert sent.route == "/v1beta/models/gemini-own:" + (
        "streamGenerateContent" if stream else "generateContent")
    row = proxy.row_of(r)
    assert (row["provider"], row["client_format"], row["stream"]) == (
        "generativelanguage.googleapis.com", "gemini", int(stream))
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        400, 600, 50)
