"""Flows stay inspectable: mitmweb (its own REST API, what its UI shows) lists each rerouted
call marked, with its route story in the comment."""

import json
import ssl
import time

import httpx

from tests.e2e.conftest import PROVIDER_KEY, capture, free_port, start_proxy

PASSWORD = "detour-test-web"


def test_mitmweb_shows_route_and_attempts(confdir, tmp_path, fake_openai):
    dead = free_port()
    web_port = free_port()
    m = start_proxy(
        confdir, tmp_path / "home",
        f'providers:\n'
        f'  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}\n'
        f'  dead: {{kind: openai, base_url: "http://127.0.0.1:{dead}/v1", api_keys: [x]}}\n'
        f'routes: {{"*": [dead/m, fake/fake-model]}}\n', web=(web_port, PASSWORD)).mitm
    web_port = m.web_port  # another, if that one was taken
    with m:  # stops it
        ctx = ssl.create_default_context(cafile=str(m.ca_cert))
        with httpx.Client(proxy=m.url, verify=ctx, trust_env=False, timeout=20) as c:
            for stream in (False, True):
                r = c.post("https://api.anthropic.com/v1/messages",
                           json=dict(capture("text"), stream=stream), headers={"x-api-key": "k"})
                assert r.status_code == 200
        with httpx.Client(trust_env=False, timeout=10) as web:
            deadline = time.monotonic() + 5
            while True:
                flows = web.get(f"http://127.0.0.1:{web_port}/flows",
                                headers={"Authorization": f"Bearer {PASSWORD}"}).json()
                if len(flows) == 2 and all("fake/" in f["comment"] for f in flows):
                    break
                assert time.monotonic() < deadline, json.dumps(flows)[:2000]
                time.sleep(0.1)
    for f in flows:
        assert f["marked"] == "🔀"
        assert "-> fake (fake-model) 200" in f["comment"]
        assert "dead/key1:" in f["comment"] and "fake/key1:" in f["comment"]
        # the streamed one went through the relay, but shows what the client called
        assert (f["request"]["host"], f["request"]["path"]) == ("api.anthropic.com",
                                                                "/v1/messages")
