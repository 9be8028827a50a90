"""Through a real mitmdump: a client's compressed bomb or oversized body is a 413 in its own
format, and what orjson refused (an integer beyond 64 bits in an OpenAI history) reaches the
route's provider instead of leaking to the vendor."""

import gzip
import json

import pytest

from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, start_proxy

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
