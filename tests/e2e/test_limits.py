"""Through a real mitmdump: a client's compressed bomb or oversized body is a 413 in its own
format, and what orjson refused (an integer beyond 64 bits or nesting 255-1023 deep in an
OpenAI history, a provider's tool input 300 deep) reaches the route's provider (or the client)
instead of leaking to the vendor."""

import gzip
import json

import pytest

from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, start_proxy
from tests.fakes.replies import ToolCall

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic):
    config = f"""
providers:
  ant: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  "*": [fake/fake-model]
  to-ant: [ant/claude-fake-sonnet]
vendors:
  api.openai.com: "{fake_openai.base_url}"
  api.anthropic.com: "{fake_anthropic.base_url}"
limits: {{request_body: 1048576, decompressed: 4194304}}
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


def body(**extra) -> dict:
    return dict({"model": "m", "max_tokens": 16,
                 "messages": [{"role": "user", "content": "hi"}]}, **extra)


def test_a_gzip_bomb_is_a_413_in_the_clients_format(proxy, fake_openai):
    fake_openai.clear()
    raw = json.dumps(body(pad="x" * (64 << 20))).encode()  # 64 MiB once decompressed
    packed = gzip.compress(raw)
    with proxy.client() as c:
        r = c.post(ANTHROPIC_URL, content=packed,
                   headers=dict(HEADERS, **{"content-encoding": "gzip",
                                            "content-type": "application/json"}))
    assert r.status_code == 413, r.text
    assert r.json()["type"] == "error"
    assert "limits.decompressed" in r.json()["error"]["message"]
    assert proxy.row_of(r)["status"] == 413
    assert not fake_openai.requests


def test_a_body_over_the_limit_is_a_413(proxy, fake_openai):
    fake_openai.clear()
    with proxy.client() as c:
        r = c.post(OPENAI_URL, json=body(pad="x" * (2 << 20)),
                   headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 413, r.text
    assert "limits.request_body" in r.json()["error"]["message"]
    assert proxy.row_of(r)["status"] == 413
    assert not fake_openai.requests


@pytest.mark.parametrize("stream", [False, True])
def test_what_orjson_refuses_goes_to_the_route_not_the_vendor(
        proxy, fake_openai, fake_anthropic, stream):
    """An OpenAI history whose tool arguments hold an integer beyond 64 bits, routed to an
    Anthropic provider: detour used to fail to write it and mitmproxy sent the prompt to
    api.openai.com instead."""
    fake_openai.clear()
    fake_anthropic.clear()
    big = 2**70
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "f", "arguments": '{"n": %d, "s": "\\ud800"}' % big}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "ok"}]
    with proxy.client() as c:
        r = c.post(OPENAI_URL, json={"model": "to-ant", "messages": messages, "stream": stream},
                   headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200, r.text
    assert not fake_openai.requests, "the prompt went to the vendor"
    sent = fake_anthropic.requests[-1].json
    tool_use = sent["messages"][1]["content"][0]
    assert tool_use["input"] == {"n": big, "s": "\ud800"}
    assert proxy.row_of(r)["provider"] == "ant"


def nested(depth: int):
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


@pytest.mark.parametrize("depth", [255, 1023])
@pytest.mark.parametrize("stream", [False, True])
def test_a_client_body_nested_deep_never_goes_to_the_vendor(
        proxy, fake_openai, fake_anthropic, depth, stream):
    """An OpenAI client's tool arguments and tool schema nested 255-1023 deep (orjson refuses
    to write either), routed to an Anthropic provider: answered by the route or refused in the
    client's format, recorded, never forwarded to api.openai.com."""
    fake_openai.clear()
    fake_anthropic.clear()
    deep = nested(depth)
    messages = [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "f", "arguments": json.dumps({"x": deep})}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "ok"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {
        "type": "object", "properties": {"x": {"type": "object", "default": deep}}}}}]
    data = json.dumps({"model": "to-ant", "messages": messages, "tools": tools,
                       "stream": stream})
    with proxy.client() as c:
        r = c.post(OPENAI_URL, content=data, headers={"authorization": f"Bearer {CLIENT_KEY}",
                                                      "content-type": "application/json"})
    assert not fake_openai.requests, "the prompt went to the vendor"
    assert r.status_code in (200, 400), r.text
    if r.status_code == 400:
        assert "error" in r.json()
    else:
        assert fake_anthropic.requests[-1].json["messages"][1]["content"][0]["input"] == {
            "x": deep}
    assert proxy.row_of(r)["status"] == r.status_code


@pytest.mark.parametrize("stream", [False, True])
def test_a_provider_tool_input_nested_300_deep_reaches_the_client(
        proxy, fake_openai, fake_anthropic, stream):
    """An Anthropic provider's answer with a tool input 300 deep, translated for an OpenAI
    client: orjson refuses to write the arguments, the json module writes them."""
    fake_openai.clear()
    fake_anthropic.clear()
    deep = nested(300)
    fake_anthropic.enqueue(ToolCall("f", {"x": deep}))
    with proxy.client() as c:
        r = c.post(OPENAI_URL, json={"model": "to-ant", "stream": stream,
                                     "messages": [{"role": "user", "content": "hi"}]},
                   headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200, r.text
    if stream:
        arguments = "".join(
            call["function"].get("arguments") or ""
            for line in r.text.splitlines() if line.startswith("data: {")
            for choice in json.loads(line[6:])["choices"]
            for call in choice["delta"].get("tool_calls") or [])
    else:
        arguments = r.json()["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
    assert json.loads(arguments) == {"x": deep}
    assert not fake_openai.requests
    assert proxy.row_of(r)["provider"] == "ant"
