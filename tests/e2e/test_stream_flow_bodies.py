"""What a streamed call's flow still holds once its request has gone out, through a real
mitmdump that shows and saves no flow (the default `flow_detail=0` of the tests, no save file):
neither the relay's flow nor the direct path's keeps the request body for the stream's life.
(Where the flow can be looked at, it keeps it: tests/addons/test_relayed_flow_body.py, and the
saved flows of tests/e2e/test_direct_path.py.)"""

import json
import os

import pytest

from tests.e2e.conftest import CLIENT_KEY, capture, proxy_with_script
from tests.fakes.replies import Text
from translators import anthropic, canonical

# a script after the router: the request body each flow holds when its answer has ended
RECORDER = """
import json, os

class Recorder:
    def response(self, flow):
        with open(os.environ["DETOUR_TEST_BODIES"], "a") as f:
            f.write(json.dumps([flow.request.path, len(flow.request.raw_content or b"")]) + "\\n")

addons = [Recorder()]
"""


@pytest.mark.parametrize("direct", [False, True], ids=["relay", "direct"])
def test_a_streamed_flow_holds_no_request_body(confdir, tmp_path, fake_openai, direct):
    script = tmp_path / "recorder.py"
    script.write_text(RECORDER)
    bodies = tmp_path / "bodies.jsonl"
    proxy = proxy_with_script(confdir, tmp_path / "home", fake_openai, script, direct,
                              env=dict(os.environ, DETOUR_TEST_BODIES=str(bodies)))
    try:
        fake_openai.enqueue(Text("one two three", pieces=3))
        with proxy.client() as c:
            r = c.post("https://api.anthropic.com/v1/messages",
                       json=dict(capture("text"), model="claude-x", stream=True),
                       headers={"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
        assert r.status_code == 200, r.text
        dec = anthropic.StreamDecoder()
        assert canonical.collect_response(dec.feed(r.content) + dec.close()).parts[0].text \
            == "one two three"
        # the provider had the whole translated request
        assert json.loads(fake_openai.requests[-1].body)["messages"]
    finally:
        proxy.mitm.stop()
    [(path, held)] = [json.loads(line) for line in bodies.read_text().splitlines()]
    # the direct path's flow is the provider's call; a relayed one shows what the client called
    assert path.startswith("/v1/chat/completions" if direct else "/v1/messages")
    assert held == 0
