"""A candidate's request goes straight to its way out's transport (no httpx client on the
per-call path), and is the request that client would have sent: its default headers under
detour's own, the per-request timeouts, no cookie ever kept between calls."""

import httpx

from addons.config import parse_config
from addons.forwarding import Forwarder
from addons.routing import CooldownBook

CONFIG = """
providers:
  p: {kind: openai, base_url: "https://provider.test/v1", api_keys: [key-a]}
routes:
  "*": [p/m]
"""


async def test_the_request_is_the_one_the_client_would_have_sent():
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={}, headers={"set-cookie": "s=1; Path=/"})

    config = parse_config(CONFIG)
    spec = config.providers["p"]
    fwd = Forwarder(config, CooldownBook(), transport=httpx.MockTransport(answer))
    url = "https://provider.test/v1/chat/completions"
    ours = {"content-type": "application/json", "user-agent": "detour/0.1",
            "Accept": "text/event-stream", "authorization": "Bearer key-a"}
    for _ in range(2):
        resp = await fwd.send(spec, url, ours, b'{"a": 1}', spec.timeouts)
        assert resp.status_code == 200 and resp.request is seen[-1]
        await resp.aclose()
    client = fwd.client(spec)
    expected = client.build_request("POST", url, headers=ours, content=b'{"a": 1}')
    for request in seen:
        assert dict(request.headers) == dict(expected.headers)
        assert "cookie" not in request.headers
        assert request.content == b'{"a": 1}' and request.method == "POST"
        assert request.extensions["timeout"] == {
            "connect": spec.timeouts.connect, "read": spec.timeouts.read,
            "write": spec.timeouts.read, "pool": spec.timeouts.connect}
    assert request.headers["accept"] == "text/event-stream"  # ours, not the client's */*
    assert request.headers["user-agent"] == "detour/0.1"
    await fwd.aclose()
