"""What mitmproxy's connection read loops keep while a stream is open, through real mitmdumps:
plain mitmdump keeps the client's last read (its request: ~48 KB for Claude Code's) for the
stream's whole life; detour's loop (addons/read_loop.py) lets it go.

A probe script, loaded after the router, answers `GET http://held-reads.invalid/` with what
every suspended `handle_connection` coroutine holds in its locals (the largest bytes object,
per coroutine), and how many bytes the relay put straight into mitmproxy's reader of each
server connection (read_loop.Feed: the relay's answers reach mitmproxy without the loopback
socket)."""

import json
import os

import httpx
import pytest

from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, capture, proxy_with_script
from tests.fakes.replies import Text
from tests.harness import Mitmdump

PROBE = """
import gc, json, sys, types
from mitmproxy import http

class HeldReads:
    def request(self, flow):
        if flow.request.pretty_host != "held-reads.invalid":
            return
        held = []
        for o in gc.get_objects():
            frame = o.cr_frame if isinstance(o, types.CoroutineType) else None
            if frame is not None and frame.f_code.co_name == "handle_connection":
                sizes = [len(v) for v in frame.f_locals.values()
                         if isinstance(v, (bytes, bytearray, memoryview))]
                held.append([frame.f_code.co_filename, max(sizes, default=0)])
        loop = sys.modules.get("addons.read_loop")  # detour's, when loaded
        fed = [f.delivered for f in loop.feeds.values()] if loop else []
        flow.response = http.Response.make(200, json.dumps({"held": held, "fed": fed}),
                                           {"content-type": "application/json"})

addons = [HeldReads()]
"""
PIECES, DELAY = 40, 0.25  # the answer streams for 10 s: the probe comes after its first event


def held_while_streaming(proxy_url: str, verify, url: str, body: dict, headers: dict) -> dict:
    """Open a streamed call through the proxy, read its first event, then ask the probe."""
    with httpx.Client(proxy=proxy_url, verify=verify, trust_env=False, timeout=20) as c, \
            c.stream("POST", url, json=body, headers=headers) as r:
        assert r.status_code == 200, r.read()
        events = r.iter_raw()  # kept: dropping the iterator would close the stream
        next(events)  # the stream is open: the client's request was read long ago
        with httpx.Client(proxy=proxy_url, trust_env=False, timeout=20) as probe:
            got = probe.get("http://held-reads.invalid/")
        events.close()
        assert got.status_code == 200, got.text
        return got.json()


@pytest.fixture
def probe(tmp_path):
    path = tmp_path / "held_reads.py"
    path.write_text(PROBE)
    return path


def test_plain_mitmdump_keeps_the_request_while_it_streams(confdir, fake_openai, probe):
    """The control: the probe sees what mitmproxy's own loop keeps."""
    # an OpenAI Chat request the size of Claude Code's
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x" * 48000}]}
    size = len(json.dumps(body))
    mitm = Mitmdump(confdir, router=False, extra=["-s", str(probe), "--set", "connection_strategy=lazy",
                                                  "--set", "stream_large_bodies=1"]).start()
    try:
        fake_openai.enqueue(Text("x" * PIECES, pieces=PIECES, delay=DELAY))
        seen = held_while_streaming(mitm.url, False, f"{fake_openai.base_url}/v1/chat/completions",
                                    body, {"authorization": f"Bearer {PROVIDER_KEY}"})
    finally:
        mitm.stop()
    held = seen["held"]
    assert seen["fed"] == []
    assert all(f.endswith("mitmproxy/proxy/server.py") for f, _ in held)
    assert max(n for _, n in held) >= size * 0.8, held  # the body's last read (most of the body)


@pytest.mark.parametrize("direct", [False, True], ids=["relay", "direct"])
def test_detour_keeps_no_request_while_it_streams(confdir, tmp_path, fake_openai, probe, direct):
    proxy = proxy_with_script(confdir, tmp_path / "home", fake_openai, probe, direct,
                              env=dict(os.environ))
    try:
        fake_openai.enqueue(Text("x" * PIECES, pieces=PIECES, delay=DELAY))
        seen = held_while_streaming(
            proxy.mitm.url, proxy.ssl_context, "https://api.anthropic.com/v1/messages",
            dict(capture("text"), model="claude-x", stream=True),
            {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
    finally:
        proxy.mitm.stop()
    held = seen["held"]
    # the relay's answer went into mitmproxy's reader of the relay connection, not its socket;
    # the direct path's provider connection is read from its socket
    assert (max(seen["fed"]) > 0) is not direct, seen
    # the client's connection and the one to the relay or provider, each in detour's loop
    assert len(held) >= 2
    assert all(f.endswith("addons/read_loop.py") for f, _ in held), held
    assert max(n for _, n in held) == 0, held
