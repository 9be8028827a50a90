"""A bounded soak: a few hundred calls of every kind (whole, streamed, failing, abandoned by
the client) through mitmweb, then detour's own `detour.status` command must show nothing left
behind (peers.md #8: gateways whose memory grows for days)."""

import json
import ssl
import threading
import time

import httpx
import pytest

from tests.captures import anthropic_events
from tests.e2e.conftest import PROVIDER_KEY, capture, free_port, start_proxy
from tests.fakes.replies import CutAfter, Status, Text

PASSWORD = "detour-test-soak"
URL = "https://api.anthropic.com/v1/messages"


def status(web_port: int) -> dict:
    # mitmweb's API wants its XSRF cookie echoed in a header (any matching value will do)
    r = httpx.post(f"http://127.0.0.1:{web_port}/commands/detour.status", json={"arguments": []},
                   headers={"Authorization": f"Bearer {PASSWORD}", "X-XSRFToken": "d0e1f2",
                            "Cookie": "_mitmproxy_xsrf=d0e1f2"}, trust_env=False, timeout=10)
    return json.loads(r.json()["value"])


@pytest.mark.slow
def test_nothing_is_left_behind(confdir, tmp_path, fake_openai):
    web_port = free_port()
    proxy = start_proxy(
        confdir, tmp_path / "home",
        f'providers:\n  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", '
        f'api_keys: [{PROVIDER_KEY}]}}\n'
        f'routes: {{"*": [fake/fake-model]}}\ncooldown_seconds: 0\n', web=(web_port, PASSWORD))
    m = proxy.mitm
    body = capture("text")
    ok = 0
    with m:  # stops it
        ctx = ssl.create_default_context(cafile=str(m.ca_cert))

        def worker(n: int):
            nonlocal ok
            with httpx.Client(proxy=m.url, verify=ctx, trust_env=False, timeout=20) as c:
                for i in range(n):
                    kind = i % 5
                    if kind == 4:  # the client leaves after the first event
                        with c.stream("POST", URL, json=body, headers={"x-api-key": "k"}) as r:
                            next(r.iter_raw())
                        continue
                    r = c.post(URL, json=dict(body, stream=kind != 0), headers={"x-api-key": "k"})
                    if r.status_code == 200 and (kind == 0 or anthropic_events(r.content)):
                        ok += 1

        # the command sees a call in flight (so an all-zero answer below means something)
        fake_openai.enqueue(Text(pieces=["x"] * 20, delay=0.1))
        with httpx.Client(proxy=m.url, verify=ctx, trust_env=False, timeout=20) as c:
            with c.stream("POST", URL, json=body, headers={"x-api-key": "k"}) as r:
                chunks = r.iter_raw()  # kept: a dropped iterator closes the response
                next(chunks)
                busy = status(web_port)
                assert busy["relayed_flows"] == 1 and busy["relay_jobs_running"] == 1, busy
                b"".join(chunks)

        fake_openai.enqueue(*[Status(500), CutAfter(2), Text(pieces=["a"] * 30, delay=0.01)] * 20)
        threads = [threading.Thread(target=worker, args=(60,)) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert ok > 100
        deadline = time.monotonic() + 10
        while True:
            state = status(web_port)
            busy = {k: v for k, v in state.items() if k != "cooling_down" and v}
            if not busy:
                break
            assert time.monotonic() < deadline, f"left behind: {busy}"
            time.sleep(0.2)
