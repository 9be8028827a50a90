"""One bad usage figure never stops usage recording, through a real mitmdump: providers (a Chat
provider behind a translated route) and a vendor (observed on passthrough) report a count of
2^63, 2^64 or Infinity, whole and streamed; every call is answered and gets its row, later calls
are recorded as before, the clean stop spills nothing, and mitmproxy never crashes (one such
figure used to fail every later batch: 11 calls answered, 0 rows)."""

import math

import pytest

from tests.captures import anthropic_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, capture, start_proxy
from tests.fakes.replies import Text, Usage

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
FIGURES = [2**63, 2**64, math.inf]


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic):
    fake_anthropic.keys.add(CLIENT_KEY)
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  translated: [chat/m]
  "*": [passthrough]
vendors:
  api.anthropic.com: "{fake_anthropic.base_url}"
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


def test_bad_figures_do_not_stop_recording(proxy, fake_openai, fake_anthropic):
    ids = []
    with proxy.client() as c:
        def call(model: str, stream: bool) -> None:
            r = c.post(URL, json=dict(capture("text"), model=model, stream=stream),
                       headers=HEADERS)
            assert r.status_code in (200, 502), r.text  # the figure may fail the attempt
            if r.status_code == 200 and stream:
                anthropic_events(r.content)  # well formed, an error event at most
            ids.append(r.headers["x-detour-id"])

        for figure in FIGURES:
            for stream in (False, True):
                fake_openai.enqueue(Text("bad figure", usage=Usage(prompt=figure)))
                call("translated", stream)
                fake_anthropic.enqueue(Text("bad figure", usage=Usage(prompt=figure)))
                call("claude-passthrough", stream)
        for stream in (False, True):  # and then calls with sound figures
            call("translated", stream)
            call("claude-passthrough", stream)
    rows = proxy.rows(expect=len(ids))
    assert sorted(r["flow_id"] for r in rows) == sorted(ids)
    assert all(r["input_tokens"] is None or 0 <= r["input_tokens"] < 2**53 for r in rows)
    sound = [r for r in rows if r["flow_id"] in ids[-4:]]
    assert all(r["input_tokens"] and r["output_tokens"] for r in sound), sound
    bad = [r for r in rows if r["flow_id"] in ids[:-4]]
    # each says why its usage is not there (observed ones said nothing before)
    assert all(r["error"] for r in bad), [(r["model_requested"], r["error"]) for r in bad]
    proxy.mitm.stop()
    assert not (proxy.home / "usage-spill.jsonl").exists()
    assert "mitmproxy has crashed" not in proxy.mitm.text
    assert "Traceback" not in proxy.mitm.text, proxy.mitm.text[-3000:]
