"""Fail closed: whatever goes wrong inside detour's hooks, a flow detour has taken is answered
by detour in the client's format and recorded; mitmproxy never forwards it to the vendor."""

import json

import orjson
import pytest
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow, tutils

import addons.intercept as intercept
from addons.intercept import Interceptor, PassthroughTap
from addons.relay import RelayServer
from addons.settings import DetourSettings
from addons.call import Call
from tests.harness import running

CONFIG = """\
providers:
  p: {kind: openai, base_url: "http://127.0.0.1:9", api_keys: [sk-test-key]}
routes: {"*": [p/m]}
"""


@pytest.fixture
def detour(tmp_path):
    (tmp_path / "config.yaml").write_text(CONFIG)
    settings = DetourSettings()
    with taddons.context(Proxyserver(), settings) as tctx:
        tctx.configure(settings, detour_home=str(tmp_path))
        yield running(Interceptor(settings)), settings.runtime
        settings.runtime.store.close()


def model_call(host: str, path: str, body: dict) -> http.HTTPFlow:
    flow = tflow.tflow()
    flow.request = tutils.treq(host=host, port=443, scheme=b"https", method=b"POST",
                               path=path.encode(), content=orjson.dumps(body),
                               headers=((b"content-type", b"application/json"),
                                        (b"x-api-key", b"sk-ant-client-key-0123456789")))
    return flow


@pytest.mark.parametrize("host,path,fmt", [
    ("api.anthropic.com", "/v1/messages", "anthropic"),
    ("api.openai.com", "/v1/chat/completions", "openai-chat"),
])
@pytest.mark.parametrize("stream", [False, True])
async def test_a_bug_in_the_request_hook_answers_in_the_client_format(
        detour, monkeypatch, host, path, fmt, stream):
    interceptor, rt = detour

    def broken_plan(*a, **kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(intercept, "plan", broken_plan)
    flow = model_call(host, path, {"model": "m", "max_tokens": 5, "stream": stream,
                                   "messages": [{"role": "user", "content": "hi"}]})
    await interceptor.request(flow)  # raises nothing into mitmproxy
    assert flow.response is not None, "left for mitmproxy to forward to the vendor"
    assert flow.response.status_code == 500
    err = json.loads(flow.response.content)
    message = err["error"]["message"]
    assert "detour internal error: RuntimeError" in message
    if fmt == "anthropic":
        assert err["type"] == "error"
    assert flow.response.headers["x-detour-id"] == flow.id
    assert flow.request.pretty_host == host  # not retargeted anywhere
    assert "[redacted]" in flow.request.headers["x-api-key"]
    assert rt.store.stats()["rows_queued"] == 1  # its usage row


async def test_a_bug_after_the_relay_took_the_job_withdraws_it(detour, monkeypatch):
    interceptor, rt = detour
    settings = interceptor.settings
    await settings._start_relay(RelayServer(rt.forwarder, settings.finished, 1))
    flow = model_call("api.anthropic.com", "/v1/messages",
                      {"model": "m", "max_tokens": 5, "stream": True,
                       "messages": [{"role": "user", "content": "hi"}]})

    def broken_server(*a, **kw):
        raise OSError("no such address")

    monkeypatch.setattr(intercept.connection, "Server", broken_server)
    flow.server_conn.via = ("http", ("127.0.0.1", 1))  # as under --mode upstream
    try:
        await interceptor.request(flow)
        assert flow.response.status_code == 500
        assert "detour internal error: OSError" in flow.response.text
        assert not rt.relay._jobs and not interceptor._relay_flows
        assert rt.store.stats()["rows_queued"] == 1
    finally:
        rt.relay.stop()


async def test_a_bug_on_another_path_of_a_vendor_host_is_answered_not_forwarded(
        detour, monkeypatch):
    interceptor, rt = detour

    def broken_retarget(*a, **kw):
        raise ValueError("a bug")

    monkeypatch.setattr(intercept, "_retarget", broken_retarget)
    object.__setattr__(rt.config, "vendors", {"api.anthropic.com": "https://gw.example"})
    flow = tflow.tflow()
    flow.request = tutils.treq(host="api.anthropic.com", port=443, scheme=b"https",
                               method=b"GET", path=b"/api/claude_code/settings")
    await interceptor.request(flow)
    assert flow.response.status_code == 500
    assert "detour internal error: ValueError" in flow.response.text
    assert rt.store.stats()["rows_queued"] == 0  # not a model call: not counted


def test_the_passthrough_tap_never_raises():
    tap = PassthroughTap(Call("f1", "ua", "anthropic", lambda row: None), "anthropic")

    class BrokenDecoder:
        def feed(self, chunk):
            raise RuntimeError("a bug")

    tap.decoder = BrokenDecoder()
    assert tap(b"event: ping\ndata: {}\n\n") == b"event: ping\ndata: {}\n\n"
    assert tap(b"more") == b"more"
    assert tap(b"") == b""
    assert tap.broken == "usage not read: RuntimeError: a bug"
