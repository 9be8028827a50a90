"""The interceptor in mitmproxy's test context (taddons, tflow), provider calls scripted with
httpx.MockTransport through the Forwarder's `transport` seam: each model call writes exactly one
usage row, through its Call, however it ends."""

import asyncio
import json

import httpx
import orjson
import pytest
import sqlite_utils
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

from addons.intercept import Interceptor
from addons.settings import DetourSettings
from tests.harness import running

PROVIDER_KEY = "sk-test-provider-key-0123456789"
CLIENT_KEY = "sk-ant-client-key-abcdefghijklmnop"
CONFIG = f"""\
providers:
  p: {{kind: openai, base_url: "http://p.test/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  to-vendor: [passthrough]
  "*": [p/pm]
"""
CHAT_OK = {"id": "c1", "object": "chat.completion", "model": "pm",
           "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                        "finish_reason": "stop"}],
           "usage": {"prompt_tokens": 100, "completion_tokens": 5}}
MESSAGE_OK = {"id": "msg_1", "type": "message", "role": "assistant", "model": "to-vendor",
              "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
              "stop_sequence": None, "usage": {"input_tokens": 11, "output_tokens": 7}}


class Upstream:
    """The provider side: a handler per call, and what it was sent."""

    def __init__(self, handler):
        self.handler = handler
        self.seen: list[httpx.Request] = []

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        return await self.handler(request)


@pytest.fixture
def detour(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    settings = DetourSettings()
    with taddons.context(Proxyserver(), settings) as tctx:
        tctx.configure(settings, detour_home=str(tmp_path))
        yield running(Interceptor(settings)), settings.runtime
        settings.runtime.store.close()


def script(rt, handler) -> Upstream:
    upstream = Upstream(handler)
    rt.forwarder.transport = httpx.MockTransport(upstream)
    return upstream


def rows_of(rt, flow_id: str) -> list[dict]:
    rt.store.flush()
    return list(sqlite_utils.Database(rt.store.path)["usage"].rows_where("flow_id = ?", [flow_id]))


def model_call(body, path="/v1/messages", method=b"POST") -> http.HTTPFlow:
    flow = tflow.tflow()
    content = body if isinstance(body, bytes) else orjson.dumps(body)
    flow.request = tutils.treq(host="api.anthropic.com", port=443, scheme=b"https", method=method,
                               path=path.encode(), content=content,
                               headers=((b"content-type", b"application/json"),
                                        (b"user-agent", b"claude-cli/2.1"),
                                        (b"x-api-key", CLIENT_KEY.encode())))
    return flow


def ask(model="claude-x", stream=False) -> dict:
    return {"model": model, "max_tokens": 50, "stream": stream,
            "messages": [{"role": "user", "content": "hi"}]}


async def hook(interceptor: Interceptor, flow) -> None:
    """What mitmproxy does with a request: its hooks in order."""
    interceptor.requestheaders(flow)
    await interceptor.request(flow)


async def test_a_passthrough_call_is_observed_and_recorded_once(detour):
    interceptor, rt = detour
    flow = model_call(ask("to-vendor"))
    await hook(interceptor, flow)
    assert flow.response is None  # mitmproxy sends it to the vendor
    interceptor.put_back([flow])  # the end of the addon chain: the client's key goes back on
    assert flow.request.headers["x-api-key"] == CLIENT_KEY
    flow.response = tutils.tresp(content=orjson.dumps(MESSAGE_OK),
                                 headers=((b"content-type", b"application/json"),))
    interceptor.responseheaders(flow)
    interceptor.response(flow)
    assert "[redacted]" in flow.request.headers["x-api-key"]  # off the flow once sent
    [row] = rows_of(rt, flow.id)
    assert (row["provider"], row["account"], row["status"], row["input_tokens"],
            row["output_tokens"], row["attempts"]) == ("api.anthropic.com", "client", 200, 11, 7, 1)
    interceptor.error(flow)  # a late error hook finds nothing left to record
    assert len(rows_of(rt, flow.id)) == 1
    assert json.loads(interceptor.status())["open_calls"] == 0


async def test_a_rerouted_whole_call_is_answered_and_recorded(detour):
    interceptor, rt = detour

    async def answer(request):
        return httpx.Response(200, json=CHAT_OK)

    upstream = script(rt, answer)
    flow = model_call(ask())
    await hook(interceptor, flow)
    assert flow.response.status_code == 200
    assert json.loads(flow.response.content)["content"] == [{"type": "text", "text": "hi"}]
    assert flow.response.headers["x-detour-id"] == flow.id
    [sent] = upstream.seen
    assert sent.url.host == "p.test" and sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert CLIENT_KEY not in repr(flow.request.headers)
    [row] = rows_of(rt, flow.id)
    assert (row["provider"], row["model_requested"], row["model_upstream"], row["status"],
            row["input_tokens"], row["output_tokens"], row["attempts"], row["error"]) == \
        ("p", "claude-x", "pm", 200, 100, 5, 1, None)
    assert row["ttfb_ms"] is not None and row["latency_ms"] is not None
    assert flow.comment.startswith("detour: anthropic claude-x -> p (pm) 200")


async def test_a_rejected_call_is_recorded_with_its_cause(detour):
    interceptor, rt = detour
    flow = model_call(b"{not json")
    await hook(interceptor, flow)
    assert flow.response.status_code == 400
    assert json.loads(flow.response.content)["type"] == "error"
    [row] = rows_of(rt, flow.id)
    assert row["status"] == 400 and "not JSON" in row["error"]


async def test_another_path_of_a_vendor_host_is_no_model_call(detour):
    interceptor, rt = detour
    flow = model_call(b"", path="/api/claude_code/settings", method=b"GET")
    await hook(interceptor, flow)
    assert flow.response is None
    interceptor.put_back([flow])
    assert flow.request.headers["x-api-key"] == CLIENT_KEY  # untouched, goes to the vendor
    assert rows_of(rt, flow.id) == []


async def test_a_client_leaving_mid_call_cancels_it_and_records_once(detour):
    interceptor, rt = detour
    asked, never = asyncio.Event(), asyncio.Event()

    async def hang(request):
        asked.set()
        await never.wait()
        return httpx.Response(200, json=CHAT_OK)

    script(rt, hang)
    flow = model_call(ask())
    task = asyncio.ensure_future(hook(interceptor, flow))
    await asyncio.wait_for(asked.wait(), 10)
    interceptor.client_disconnected(flow.client_conn)
    await asyncio.wait_for(task, 10)
    [row] = rows_of(rt, flow.id)
    assert row["error"] == "client-aborted" and row["provider"] == ""
    assert json.loads(interceptor.status())["inline_calls"] == 0


async def test_secrets_a_provider_echoes_reach_neither_row_nor_flow(detour):
    interceptor, rt = detour

    async def echo(request):
        return httpx.Response(401, json={"error": {
            "message": f"Incorrect API key {PROVIDER_KEY}; the client sent {CLIENT_KEY}"}})

    script(rt, echo)
    flow = model_call(ask())
    await hook(interceptor, flow)
    assert flow.response.status_code == 502
    [row] = rows_of(rt, flow.id)
    stored = json.dumps(row)
    for secret in (PROVIDER_KEY, CLIENT_KEY):
        for shown in (stored, flow.comment, flow.response.text, repr(flow.request.headers)):
            assert secret[:12] not in shown and secret[-12:] not in shown
    assert "[redacted]" in row["error"] and json.loads(row["route"])[0]["rest"] == "auth"


async def test_the_proxy_stopping_ends_every_open_call(detour):
    interceptor, rt = detour
    flow = model_call(ask("to-vendor", stream=True))
    await hook(interceptor, flow)  # observed, the vendor's answer never comes
    interceptor.settings.done()  # mitmproxy stopping: the store's last rows are written
    [row] = rows_of(rt, flow.id)
    assert row["error"] == "proxy stopped"
    assert json.loads(interceptor.status())["open_calls"] == 0


async def test_a_vendor_echoing_the_client_key_is_scrubbed_at_the_row(detour):
    interceptor, rt = detour
    flow = model_call(ask("to-vendor"))
    await hook(interceptor, flow)
    interceptor.put_back([flow])
    flow.response = tutils.tresp(status_code=401, content=orjson.dumps(
        {"type": "error", "error": {"type": "authentication_error",
                                    "message": f"invalid x-api-key {CLIENT_KEY}"}}))
    interceptor.responseheaders(flow)
    interceptor.response(flow)
    [row] = rows_of(rt, flow.id)
    assert row["status"] == 401 and "invalid x-api-key [redacted]" in row["error"]
    assert CLIENT_KEY[:12] not in json.dumps(row)
