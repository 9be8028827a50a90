"""The direct path through a real mitmdump (`detour_direct`, on by default): a streamed call with
one usable candidate goes out on mitmproxy's own connection to the provider, translated there
and back. A stream's answer, a provider's error, a client leaving mid-stream, a first_byte
timeout and a stream cut midway (told in the client's format: error_reply.py), the usage row
exact, the credential never in a saved flow; a route with a fallback still goes through the
relay. Whole calls go to the forwarder (the direct path takes none): their tests here check
that the client gets the same answers either way."""

import json
import time

import pytest
from mitmproxy import io as mitm_io

from tests.captures import anthropic_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, capture, start_proxy
from tests.fakes.replies import CutAfter, Linger, Stall, Status, Text, Usage
from translators import anthropic, canonical

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai):
    base = fake_openai.base_url
    home = tmp_path_factory.mktemp("home")
    config = f"""
providers:
  fake: {{kind: openai, base_url: "{base}/v1", api_keys: [{PROVIDER_KEY}],
          timeouts: {{first_byte: 1, total: 1.5}}}}
  stall1: {{kind: openai, base_url: "{base}/v1", api_keys: [{PROVIDER_KEY}],
            timeouts: {{first_byte: 1}}}}
  stall2: {{kind: openai, base_url: "{base}/v1", api_keys: [{PROVIDER_KEY}],
            timeouts: {{total: 1.5}}}}
  spare: {{kind: openai, base_url: "{base}/v1", api_keys: [{PROVIDER_KEY}]}}
  # the first of a route with a fallback: default timeouts, so that a loaded machine cannot
  # turn its 500 into a timeout (the 500 would then be left for the spare to answer)
  first: {{kind: openai, base_url: "{base}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  two: [first/m, spare/m]
  claude-stall: [stall1/m]
  claude-total: [stall2/m]
  "*": [fake/m]
prices:
  m: {{input: 1, output: 2}}
"""
    p = start_proxy(confdir, home, config, extra=[
        "--set", "detour_direct=true", "--set", "flow_detail=1",
        "--set", f"save_stream_file={home / 'flows.mitm'}"])
    yield p
    p.mitm.stop()


def post(proxy, client, model="claude-x", stream=False, **kw):
    return client.post(URL, json=dict(capture("text"), model=model, stream=stream),
                       headers=HEADERS, **kw)


def went_direct(proxy, fake_openai, flow_id: str) -> bool:
    """mitmdump's flow line names the provider's URL (a relayed flow shows the client's). It is
    written as the flow ends, which can be just after the client had the whole answer."""
    deadline = time.monotonic() + 10
    while f"{fake_openai.base_url}/v1/chat/completions" not in proxy.mitm.text:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def row_of_model(proxy, model: str, timeout: float = 20.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        rows = [x for x in proxy.rows() if x["model_requested"] == model]
        if rows or time.monotonic() > deadline:
            assert len(rows) == 1, rows
            return rows[0]
        time.sleep(0.05)


def test_streamed_call_is_translated_and_its_row_exact(proxy, fake_openai):
    fake_openai.enqueue(Text("one two three", pieces=3,
                             usage=Usage(prompt=1000, completion=30, cached=400)))
    with proxy.client() as c:
        r = post(proxy, c, stream=True)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-detour-route"] == "fake/account 1"
    assert "content-length" not in r.headers
    dec = anthropic.StreamDecoder()
    events = dec.feed(r.content) + dec.close()
    assert canonical.collect_response(events).parts[0].text == "one two three"
    assert went_direct(proxy, fake_openai, r.headers["x-detour-id"])
    sent = fake_openai.requests[-1]
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert CLIENT_KEY not in json.dumps(sent.headers)
    row = proxy.row_of(r)
    assert (row["status"], row["provider"], row["attempts"], row["stream"]) == (200, "fake", 1, 1)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (600, 400, 30)
    # no cache_read price: cached tokens at the input price
    assert row["cost_usd"] == pytest.approx((1000 * 1 + 30 * 2) / 1e6)
    assert row["error"] is None and row["ttfb_ms"] is not None


def test_whole_call_is_translated(proxy, fake_openai):
    fake_openai.enqueue(Text("whole answer", usage=Usage(prompt=100, completion=7)))
    with proxy.client() as c:
        r = post(proxy, c)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "message" and body["content"][0]["text"] == "whole answer"
    assert body["model"] == "m"  # the model that answered, as the relay tells it
    row = proxy.row_of(r)
    assert (row["status"], row["input_tokens"], row["output_tokens"]) == (200, 100, 7)


@pytest.mark.parametrize("stream", [False, True])
def test_provider_error_is_the_clients_format_and_rests_nothing_wrong(proxy, fake_openai, stream):
    fake_openai.enqueue(Status(429, headers={"retry-after": "1"}))
    with proxy.client() as c:
        r = post(proxy, c, model="claude-429", stream=stream)
        assert r.status_code == 429, r.text
        assert r.json()["type"] == "error", r.text
        message = r.json()["error"]["message"]
        assert "fake/account 1" in message and "HTTP 429" in message
        assert r.headers["retry-after"] == "1"
        row = proxy.row_of(r)
        assert row["status"] == 429 and "HTTP 429" in row["error"]
        time.sleep(1.1)  # the account's rest (Retry-After) ends: the next call is answered


def test_client_leaving_mid_stream_is_recorded_once(proxy, fake_openai):
    fake_openai.enqueue(Text("slow " * 40, pieces=40, delay=0.05))
    before = len(proxy.rows())
    with proxy.client() as c:
        with c.stream("POST", URL, json=dict(capture("text"), model="claude-left", stream=True),
                      headers=HEADERS) as r:
            assert r.status_code == 200
            flow_id = r.headers["x-detour-id"]
            next(r.iter_raw())
    rows = proxy.rows(expect=before + 1)
    row = next(x for x in rows if x["flow_id"] == flow_id)
    assert row["error"].startswith("client-aborted")
    assert sum(x["flow_id"] == flow_id for x in rows) == 1


def test_a_client_leaving_at_the_final_event_had_a_success(proxy, fake_openai):
    """The client has message_stop and goes (as the SDKs do) while the provider has not ended
    its stream yet: a successful call, not client-aborted."""
    fake_openai.enqueue(Linger(5, Text("all of it", pieces=3)))
    provider_url = f"{fake_openai.base_url}/v1/chat/completions"
    direct_before = proxy.mitm.text.count(provider_url)
    with proxy.client() as c:
        with c.stream("POST", URL, json=dict(capture("text"), model="claude-done", stream=True),
                      headers=HEADERS) as r:
            assert r.status_code == 200
            lines = []
            for line in r.iter_lines():
                lines.append(line)
                if line.startswith("data:") and '"message_stop"' in line:
                    break
    events = anthropic_events(("\n".join(lines) + "\n\n").encode())
    text = "".join(e.text for e in events if isinstance(e, canonical.TextDelta))
    assert text == "all of it"
    row = proxy.row_of(r, timeout=10)
    assert row["status"] == 200 and row["error"] is None and row["output_tokens"] > 0
    assert fake_openai.wait_until(lambda f: f.aborted_streams >= 1)  # it was still open
    # mitmdump's line for this flow names the provider (it went direct), once the flow ended
    deadline = time.monotonic() + 10
    while proxy.mitm.text.count(provider_url) == direct_before:
        assert time.monotonic() < deadline, proxy.mitm.text[-2000:]
        time.sleep(0.05)


@pytest.mark.parametrize("model, stream, budget", [
    ("claude-stall", True, "timeouts.first_byte"),  # a stream: until its first content
    ("claude-total", False, "timeouts.total"),  # a whole call: until its end
])
def test_a_timeout_ends_the_call(proxy, fake_openai, model, stream, budget):
    fake_openai.enqueue(Stall(5))
    with proxy.client() as c:
        r = post(proxy, c, model=model, stream=stream)
    # a stream: mitmproxy's connection to the provider was closed under it, and detour
    # answers in the client's format (error_reply.py), not mitmproxy's HTML 502; a whole call:
    # the forwarder's timeout, told the same way
    row = row_of_model(proxy, model)
    assert budget in row["error"] and row["status"] == 504
    assert r.status_code == 504, r.text
    body = r.json()
    assert body["type"] == "error" and budget in body["error"]["message"], body


def test_a_stream_cut_midway_ends_with_an_error_event(proxy, fake_openai):
    """The provider closes its connection mid-stream: the client's stream ends well formed
    (the chunked body's last chunk) with an error event in its format, as the relay's does."""
    fake_openai.enqueue(CutAfter(3))
    with proxy.client() as c:
        r = post(proxy, c, model="claude-cut", stream=True)
    assert r.status_code == 200  # httpx read the whole body: it was not cut
    events = anthropic_events(r.content)
    assert isinstance(events[-1], canonical.StreamError), r.text
    assert events[-1].kind == "api_error" and "broke off the stream" in events[-1].message
    assert any(isinstance(e, canonical.TextDelta) for e in events)
    row = row_of_model(proxy, "claude-cut")
    assert row["status"] == 200 and "broke off the stream" in row["error"]
    assert went_direct(proxy, fake_openai, r.headers["x-detour-id"])


def test_a_whole_answer_cut_midway_is_told_in_the_clients_format(proxy, fake_openai):
    """A whole answer's connection closed after its head and half its body (a whole call: the
    forwarder's): the client gets an error JSON of its format, as a stream cut before its head
    does on the direct path."""
    fake_openai.enqueue(CutAfter(2))
    with proxy.client() as c:
        r = post(proxy, c, model="claude-cut-whole", stream=False)
    assert r.status_code == 502, r.text
    body = r.json()
    assert body["type"] == "error" and "fake/account 1" in body["error"]["message"], body
    row = row_of_model(proxy, "claude-cut-whole")
    assert row["status"] == 502 and row["error"]


def test_a_route_with_a_fallback_goes_through_the_relay(proxy, fake_openai):
    fake_openai.enqueue(Status(500))
    with proxy.client() as c:
        r = post(proxy, c, model="two", stream=True)
    assert r.status_code == 200, r.text
    row = proxy.row_of(r)
    assert (row["provider"], row["attempts"]) == ("spare", 2)


def test_credentials_never_in_saved_flows(proxy, fake_openai):
    with proxy.client() as c:
        for stream in (False, True):
            assert post(proxy, c, model="claude-saved", stream=stream).status_code == 200
    time.sleep(0.5)  # Save writes each flow as it ends
    data = (proxy.home / "flows.mitm").read_bytes()
    assert PROVIDER_KEY.encode() not in data and CLIENT_KEY.encode() not in data
    with open(proxy.home / "flows.mitm", "rb") as f:
        flows = [fl for fl in mitm_io.FlowReader(f).stream() if fl.type == "http"]
    direct = [fl for fl in flows if fl.request.path == "/v1/chat/completions"]
    assert direct and all(fl.request.headers["authorization"] == "[redacted]" for fl in direct)
    assert all(fl.marked and "detour:" in fl.comment for fl in direct)
