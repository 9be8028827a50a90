"""Ollama through a real mitmdump: detour as Ollama's endpoint (mitmproxy's reverse mode in
front of an Ollama server, here FakeOllama), an Ollama client (plain httpx, as Ollama's
Python library sends its calls, and that library itself) routed to Anthropic and Chat fakes,
streamed and whole, text and a tool round trip; the model list and the calls around chat;
passthrough to the Ollama server with its usage read; and an Anthropic client answered by the
`ollama` provider kind."""

import json
import re
import time

import httpx
import ollama as ollama_library  # Ollama's official Python client (a dev dependency)
import pytest

from tests.captures import checked_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, Proxy, detour_home
from tests.fakes.gemini_provider import FakeGemini
from tests.fakes.ollama_provider import FakeOllama
from tests.fakes.openai_responses_provider import FakeOpenAIResponses
from tests.fakes.replies import Status, StreamError, Text, ToolCall, Usage
from tests.harness import Mitmdump, free_port
from translators import anthropic, canonical, ollama, ollama_generate

USAGE = Usage(prompt=1000, completion=50, cached=600)
ROUTES = ["to-ant", "to-chat", "to-resp", "to-gem"]
GEMINI_KEY = "AIza-fake-provider-key"
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
# what Ollama's Python library sends (httpx, its own User-Agent, no key for a local server)
OLLAMA_HEADERS = {"content-type": "application/json", "accept": "application/json",
                  "user-agent": "ollama-python/0.5.3 (x86_64 linux) Python/3.12.1"}


@pytest.fixture(scope="module")
def fake_ollama():
    with FakeOllama() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_responses():
    with FakeOpenAIResponses() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_gemini():
    with FakeGemini(keys={GEMINI_KEY}) as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic, fake_ollama, fake_responses,
          fake_gemini):
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  ant: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
  resp: {{kind: openai-responses, base_url: "{fake_responses.base_url}/v1",
          api_keys: [{PROVIDER_KEY}]}}
  gem: {{kind: gemini, base_url: "{fake_gemini.base_url}", api_keys: [{GEMINI_KEY}]}}
  oll: {{kind: ollama, base_url: "{fake_ollama.base_url}"}}
routes:
  to-ant: [ant/claude-fake-sonnet]
  to-chat: [chat/fake-model]
  to-resp: [resp/gpt-fake-upstream]
  to-gem: [gem/gemini-fake-pro]
  to-oll: [oll/qwen3:8b]
  llama3.2*: [passthrough]
  "*": [chat/fake-model]
"""
    home = detour_home(tmp_path_factory.mktemp("home"), config)
    # one process, two listeners: the HTTPS proxy (Anthropic client) and Ollama's endpoint
    reverse = free_port()
    mitm = Mitmdump(confdir, home, extra=[
        "--mode", "regular", "--mode",
        f"reverse:http://127.0.0.1:{fake_ollama.port}@127.0.0.1:{reverse}"]).start()
    deadline = time.monotonic() + 30
    while not re.search(rb"HTTP\(S\) proxy listening at [\d.]+:(\d+)", mitm.output) or (
            b"reverse proxy to" not in mitm.output):
        assert time.monotonic() < deadline, mitm.text
        time.sleep(0.05)
    mitm.port = int(re.search(rb"HTTP\(S\) proxy listening at [\d.]+:(\d+)", mitm.output)[1])
    p = Proxy(mitm, home)
    p.ollama_url = f"http://127.0.0.1:{reverse}"
    yield p
    mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_openai, fake_anthropic, fake_ollama, fake_responses, fake_gemini):
    for fake in (fake_openai, fake_anthropic, fake_ollama, fake_responses, fake_gemini):
        fake.clear()
    yield


@pytest.fixture
def client(proxy):
    """An Ollama client pointed at detour (OLLAMA_HOST=127.0.0.1:<reverse port>)."""
    with httpx.Client(base_url=proxy.ollama_url, trust_env=False, timeout=20,
                      headers=OLLAMA_HEADERS) as c:
        yield c


@pytest.fixture
def fake_of(fake_openai, fake_anthropic, fake_responses, fake_gemini):
    return {"to-chat": fake_openai, "to-ant": fake_anthropic, "to-resp": fake_responses,
            "to-gem": fake_gemini}.get


def chat(client, model: str, messages: list, stream: bool, **extra) -> httpx.Response:
    body = {"model": model, "messages": messages, **extra}
    if not stream:
        body["stream"] = False  # Ollama streams unless told not to: a streamed call says nothing
    return client.post("/api/chat", json=body)


def answer_of(r: httpx.Response, stream: bool, module=ollama) -> canonical.Response:
    assert r.status_code == 200, r.text
    if stream:
        assert r.headers["content-type"] == "application/x-ndjson"
        return canonical.collect_response(checked_events(module, r.content))
    assert r.headers["content-type"].startswith("application/json")
    return module.decode_response(r.json())


# ---------------------------------------------------------------- an Ollama client, routed


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("route", ROUTES)
def test_ollama_client_text(proxy, client, fake_of, route, stream):
    fake = fake_of(route)
    fake.enqueue(Text("answer from the provider", usage=USAGE))
    r = chat(client, route, [{"role": "system", "content": "Be brief."},
                             {"role": "user", "content": "Say hi"}], stream,
             options={"temperature": 0.2, "num_predict": 300, "num_ctx": 8192})
    resp = answer_of(r, stream)
    assert [p.text for p in resp.parts if type(p) is canonical.Text] == [
        "answer from the provider"]
    last = json.loads(r.content.splitlines()[-1]) if stream else r.json()
    assert last["done"] is True and last["done_reason"] == "stop"
    # Ollama's counts: every prompt token, cached or not
    assert (last["prompt_eval_count"], last["eval_count"]) == (1000, 50)
    sent = fake.requests[-1].json
    assert "Be brief." in json.dumps(sent)
    # the output cap and temperature where each format takes them
    cap = {"to-ant": sent.get("max_tokens"), "to-chat": sent.get("max_tokens"),
           "to-resp": sent.get("max_output_tokens"),
           "to-gem": sent.get("generationConfig", {}).get("maxOutputTokens")}[route]
    temperature = sent.get("generationConfig", {}).get("temperature") if route == "to-gem" \
        else sent.get("temperature")
    assert (cap, temperature) == (300, 0.2)
    if route != "to-gem":  # Gemini's stream flag is its URL
        assert sent.get("stream", False) is stream
    row = proxy.row_of(r)
    assert (row["client_format"], row["model_requested"], row["stream"], row["status"]) == (
        "ollama", route, int(stream), 200)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        400, 600, 50)
    assert "num_ctx" in row["route"]  # Ollama's own option: named as not sent


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("route", ROUTES)
def test_ollama_client_tool_round_trip(proxy, client, fake_of, route, stream):
    fake = fake_of(route)
    fake.enqueue(ToolCall("get_weather", {"city": "Paris"}), Text("Sunny in Paris"))
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    r1 = chat(client, route, messages, stream, tools=[WEATHER])
    resp = answer_of(r1, stream)
    assert resp.stop_reason == "tool_use"
    line = next(json.loads(x) for x in r1.content.splitlines()
                if "tool_calls" in json.loads(x).get("message", {})) if stream else r1.json()
    calls = line["message"]["tool_calls"]
    assert [(c["function"]["name"], c["function"]["arguments"]) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
    assert "get_weather" in json.dumps(fake.requests[-1].json.get("tools"))
    # the follow-up as an older Ollama client sends it: the call as received, the result
    # named by the tool only
    follow = messages + [{"role": "assistant", "content": "", "tool_calls": calls},
                         {"role": "tool", "tool_name": "get_weather", "content": "sunny, 24C"}]
    r2 = chat(client, route, follow, stream, tools=[WEATHER])
    answer = answer_of(r2, stream)
    assert [p.text for p in answer.parts if type(p) is canonical.Text] == ["Sunny in Paris"]
    sent = json.dumps(fake.requests[-1].json)
    assert "sunny, 24C" in sent and calls[0]["id"] in sent  # matched to its call's id
    assert [proxy.row_of(r)["status"] for r in (r1, r2)] == [200, 200]


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_generate_is_served_too(proxy, client, fake_anthropic, stream):
    fake_anthropic.enqueue(Text("def gcd(a, b):", usage=Usage(prompt=30, completion=7)))
    body = {"model": "to-ant", "prompt": "Write gcd", "system": "Python only.",
            "suffix": "    return r"}
    if not stream:
        body["stream"] = False
    r = client.post("/api/generate", json=body)
    resp = answer_of(r, stream, ollama_generate)
    assert [p.text for p in resp.parts] == ["def gcd(a, b):"]
    first = json.loads(r.content.splitlines()[0])
    assert "response" in first and "message" not in first
    sent = fake_anthropic.requests[-1].json
    assert "Python only." in json.dumps(sent["system"])
    row = proxy.row_of(r)
    assert (row["client_format"], row["input_tokens"], row["output_tokens"]) == (
        "ollama-generate", 30, 7)
    assert "suffix" in row["route"]


def test_a_stream_error_reaches_the_client_as_an_error_line(proxy, client, fake_openai):
    fake_openai.enqueue(StreamError(after=3))
    r = chat(client, "to-chat", [{"role": "user", "content": "hi"}], True)
    assert r.status_code == 200
    events = checked_events(ollama, r.content)
    assert type(events[-1]) is canonical.StreamError
    assert "error" in json.loads(r.content.splitlines()[-1])


def test_a_provider_failure_is_an_ollama_error(proxy, client, fake_openai):
    fake_openai.enqueue(Status(500), Status(500), Status(500))
    r = chat(client, "to-chat", [{"role": "user", "content": "hi"}], False)
    assert r.status_code >= 500
    assert set(r.json()) == {"error"} and "chat/" in r.json()["error"]


# ---------------------------------------------------------------- calls around chat


def test_model_list_and_show_name_the_routed_models(proxy, client, fake_ollama):
    tags = client.get("/api/tags")
    assert tags.status_code == 200, tags.text
    assert [m["name"] for m in tags.json()["models"]] == ROUTES + ["to-oll"]
    show = client.post("/api/show", json={"model": "to-ant"})
    assert show.status_code == 200 and "tools" in show.json()["capabilities"]
    assert client.get("/api/version").json()["version"]
    assert not fake_ollama.requests  # answered by detour: the models are routed away


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_passthrough_reaches_the_ollama_server_and_reads_its_usage(proxy, client, fake_ollama,
                                                                   stream):
    fake_ollama.enqueue(Text("from Ollama itself", usage=Usage(prompt=26, completion=282)))
    raw = b'{"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}]' + (
        b', "stream": false}' if not stream else b"}")
    r = client.post("/api/chat", content=raw)
    resp = answer_of(r, stream)
    assert [p.text for p in resp.parts] == ["from Ollama itself"]
    sent = fake_ollama.requests[-1]
    assert sent.body == raw and sent.route == "/api/chat"  # the client's bytes
    row = proxy.row_of(r)
    assert (row["provider"], row["client_format"], row["stream"]) == (
        "127.0.0.1", "ollama", int(stream))
    assert (row["input_tokens"], row["output_tokens"]) == (26, 282)


def test_other_paths_go_to_the_ollama_server_untouched(proxy, client, fake_ollama):
    r = client.get("/api/ps")
    assert r.status_code == 404 and fake_ollama.requests[-1].route == "/api/ps"


# ---------------------------------------------------------------- the ollama provider kind


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_anthropic_client_to_the_ollama_provider(proxy, fake_ollama, stream):
    fake_ollama.enqueue(ToolCall("Bash", {"command": "echo hi"}, id="call_ol1"),
                        Text("it said hi", reasoning="the tool ran",
                             usage=Usage(prompt=1200, completion=40)))
    tools = [{"name": "Bash", "description": "Run a command", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"}},
        "required": ["command"]}}]
    headers = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
    messages = [{"role": "user", "content": "Run echo hi"}]
    body = {"model": "to-oll", "max_tokens": 1000, "messages": messages, "tools": tools,
            "stream": stream, "system": "You run commands."}
    url = "https://api.anthropic.com/v1/messages"
    with proxy.client() as http:
        r = http.post(url, json=body, headers=headers)
        resp = (canonical.collect_response(checked_events(anthropic, r.content)) if stream
                else anthropic.decode_response(r.json()))
        assert r.status_code == 200, r.text
        assert resp.stop_reason == "tool_use"
        content = anthropic.encode_response(resp)["content"]
        call = next(b for b in content if b["type"] == "tool_use")
        assert (call["id"], call["name"], call["input"]) == (
            "call_ol1", "Bash", {"command": "echo hi"})
        sent = fake_ollama.requests[-1]
        assert sent.route == "/api/chat" and "authorization" not in sent.headers
        assert sent.json["model"] == "qwen3:8b" and sent.json["stream"] is stream
        assert sent.json["messages"][0] == {"role": "system", "content": "You run commands."}
        assert sent.json["options"] == {"num_predict": 1000}
        assert sent.json["tools"][0]["function"]["name"] == "Bash"
        assert "think" not in sent.json  # a model without thinking would refuse it
        follow = dict(body, messages=messages + [
            {"role": "assistant", "content": content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                          "content": "hi"}]}])
        r2 = http.post(url, json=follow, headers=headers)
        assert r2.status_code == 200, r2.text
        answer = (canonical.collect_response(checked_events(anthropic, r2.content)) if stream
                  else anthropic.decode_response(r2.json()))
    assert [p.text for p in answer.parts if type(p) is canonical.Text] == ["it said hi"]
    assert [p.text for p in answer.parts if type(p) is canonical.Thinking] == ["the tool ran"]
    turns = fake_ollama.requests[-1].json["messages"]
    assert turns[-1] == {"role": "tool", "content": "hi", "tool_call_id": "call_ol1",
                         "tool_name": "Bash"}
    assert turns[-2]["tool_calls"][0]["function"] == {
        "index": 0, "name": "Bash", "arguments": {"command": "echo hi"}}
    row = proxy.row_of(r2)
    assert (row["provider"], row["model_upstream"], row["client_format"]) == (
        "oll", "qwen3:8b", "anthropic")
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        1200, 0, 40)


# ---------------------------------------------------------------- Ollama's own Python library


@pytest.fixture
def library(proxy):
    """Ollama's official Python client pointed at detour, as OLLAMA_HOST would point it."""
    with ollama_library.Client(host=proxy.ollama_url, trust_env=False, timeout=20) as c:
        yield c


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_ollamas_library_does_a_tool_round_trip_through_detour(proxy, library, fake_anthropic,
                                                               stream):
    fake_anthropic.enqueue(ToolCall("get_weather", {"city": "Paris"}),
                           Text("Sunny in Paris", usage=Usage(prompt=90, completion=4)))
    messages = [{"role": "user", "content": "Weather in Paris?"}]

    def ask(messages):
        got = library.chat(model="to-ant", messages=messages, tools=[WEATHER], stream=stream)
        if not stream:
            return got.message, got
        parts = list(got)
        content = "".join(p.message.content or "" for p in parts)
        calls = [c for p in parts for c in p.message.tool_calls or ()]
        return {"role": "assistant", "content": content, "tool_calls": calls}, parts[-1]

    message, last = ask(messages)
    calls = message["tool_calls"] if stream else message.tool_calls
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Paris"})]
    assert last.done and last.done_reason == "stop"
    follow = messages + [message if stream else message.model_dump(exclude_none=True),
                         {"role": "tool", "tool_name": "get_weather", "content": "sunny"}]
    answer, last = ask(follow)
    assert (answer["content"] if stream else answer.content) == "Sunny in Paris"
    assert (last.prompt_eval_count, last.eval_count) == (90, 4)
    result = fake_anthropic.requests[-1].json["messages"][-1]["content"][0]
    assert result["type"] == "tool_result" and result["content"] in ("sunny", [
        {"type": "text", "text": "sunny"}])


def test_ollamas_library_generates_and_lists(proxy, library, fake_openai):
    fake_openai.enqueue(Text("def gcd(a, b):"))
    assert "".join(p.response for p in library.generate(
        model="to-chat", prompt="gcd in Python", stream=True)) == "def gcd(a, b):"
    assert [m.model for m in library.list().models] == ROUTES + ["to-oll"]
    assert "tools" in library.show("to-chat").capabilities


@pytest.mark.parametrize("path,body", [
    ("/api/chat", {"model": "to-ant", "messages": []}),
    ("/api/generate", {"model": "to-ant", "keep_alive": 0})], ids=["load", "unload"])
def test_a_load_or_unload_is_answered_without_asking_a_provider(proxy, client, fake_anthropic,
                                                                path, body):
    r = client.post(path, json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["done"] is True and answer["done_reason"] == (
        "unload" if "keep_alive" in body else "load")
    assert not fake_anthropic.requests
    row = proxy.row_of(r)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, 0, 0)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_an_ollama_client_to_the_ollama_provider(proxy, client, fake_ollama, stream):
    # another Ollama server (here the same fake) under another model name: same format
    fake_ollama.enqueue(Text("from the other Ollama", usage=Usage(prompt=33, completion=5)))
    r = chat(client, "to-oll", [{"role": "user", "content": "hi"}], stream,
             options={"num_ctx": 4096})
    resp = answer_of(r, stream)
    assert [p.text for p in resp.parts] == ["from the other Ollama"]
    sent = fake_ollama.requests[-1].json
    assert sent["model"] == "qwen3:8b" and sent["options"] == {"num_ctx": 4096}
    assert sent.get("stream", True) is stream  # the client's body, its model changed
    row = proxy.row_of(r)
    assert (row["provider"], row["input_tokens"], row["output_tokens"]) == ("oll", 33, 5)
