"""The first moments of a proxy, and where it listens.

mitmproxy opens the proxy's port before it calls the addons' `running`, and any error logged
until `running` has returned makes mitmdump exit: a streamed call that arrives in that window
must wait for the relay (or get an error in its client's format), never take the proxy down.
"""

import socket
import threading
import time

import httpx
import pytest

from tests.e2e.conftest import PROVIDER_KEY, capture, detour_home, free_port
from tests.harness import Mitmdump

HEADERS = {"x-api-key": "test-client-key-not-real", "anthropic-version": "2023-06-01",
           "host": "api.anthropic.com"}
CALLS_PER_CLIENT = 6


def _config(fake_openai) -> str:
    return f"""
providers:
  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  "*": [fake/fake-model]
"""


def _wait_until_port_accepts(port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.002)
    raise AssertionError(f"port {port} never opened")


def _answer_kind(r: httpx.Response) -> str:
    """'answer' (a real stream), 'error' (an Anthropic error JSON), or what else it was."""
    if r.status_code == 200 and b"event: message_stop" in r.content:
        return "answer"
    if r.status_code == 200 and r.json().get("type") == "message":  # a whole call's answer
        return "answer"
    if r.headers.get("content-type", "").startswith("application/json"):
        body = r.json()
        if body.get("type") == "error" and body["error"].get("message"):
            return "error"
    return f"unexpected {r.status_code}: {r.content[:200]!r}"


@pytest.mark.parametrize("mode", ["reverse", "regular"])
def test_streamed_calls_from_the_moment_the_port_opens(confdir, tmp_path, fake_openai, mode):
    home = detour_home(tmp_path / "home", _config(fake_openai))
    port = free_port()
    # reverse mode: plain HTTP straight to the proxy's port, the client's Host names the vendor
    # (the quickest way in, as the reproduction); regular: an absolute-form request
    extra = ["--listen-port", str(port)]
    if mode == "reverse":
        extra += ["--mode", "reverse:http://api.anthropic.com"]
        url, proxy = f"http://127.0.0.1:{port}/v1/messages", None
    else:
        url, proxy = "http://api.anthropic.com/v1/messages", f"http://127.0.0.1:{port}"
    mitm = Mitmdump(confdir, home, extra=extra)
    results: list[str] = []
    fired = threading.Event()

    def client():
        _wait_until_port_accepts(port, time.monotonic() + 30)
        fired.set()
        with httpx.Client(proxy=proxy, trust_env=False, timeout=20) as c:
            for _ in range(CALLS_PER_CLIENT):
                try:
                    r = c.post(url, headers=HEADERS, json=dict(capture("text"), stream=True))
                    results.append(_answer_kind(r))
                except httpx.HTTPError as e:
                    results.append(f"transport error {type(e).__name__}: {e}")

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()  # before the proxy: they fire the instant its port accepts
    try:
        mitm.start()
        for t in threads:
            t.join(60)
        assert fired.is_set()
        assert mitm.proc.poll() is None, f"the proxy exited:\n{mitm.text}"
    finally:
        mitm.stop()
    assert len(results) == 4 * CALLS_PER_CLIENT
    assert set(results) <= {"answer", "error"}, results
    assert "answer" in results
    assert "logged during startup" not in mitm.text  # mitmproxy: "Error(s) logged ..."


# An addon loaded before detour whose `running` takes a second: mitmproxy has opened the port
# and serves requests while it waits, and calls detour's `running` (which starts the relay) only
# after it. The addon says when a request came in that window, so the test knows it was hit.
SLOW_START_ADDON = """
import asyncio, logging

class SlowStart:
    started = False

    async def running(self):
        await asyncio.sleep(1.0)
        self.started = True

    def request(self, flow):
        if not self.started:
            logging.info("slow-start: a request before every addon was running")

addons = [SlowStart()]
"""


def test_calls_while_the_proxy_is_still_starting_wait_for_detour(confdir, tmp_path,
                                                                  fake_openai):
    """Streamed and whole calls whose request hook runs before detour's `running` (the relay
    not started yet) wait for it and are answered; the proxy never exits."""
    script = tmp_path / "slow_start.py"
    script.write_text(SLOW_START_ADDON)
    port = free_port()
    mitm = Mitmdump(confdir, detour_home(tmp_path / "home", _config(fake_openai)),
                    extra=["--listen-port", str(port), "--mode", "reverse:http://api.anthropic.com"])
    router = mitm.args.index("-s")
    mitm.args[router:router] = ["-s", str(script)]  # loaded first: its `running` runs first
    results: list[str] = []

    def client(stream: bool):
        _wait_until_port_accepts(port, time.monotonic() + 30)
        with httpx.Client(trust_env=False, timeout=20) as c:
            r = c.post(f"http://127.0.0.1:{port}/v1/messages", headers=HEADERS,
                       json=dict(capture("text"), stream=stream))
            results.append(_answer_kind(r))

    threads = [threading.Thread(target=client, args=(i % 2 == 0,)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        mitm.start()
        for t in threads:
            t.join(60)
        assert mitm.proc.poll() is None, f"the proxy exited:\n{mitm.text}"
    finally:
        mitm.stop()
    assert "slow-start: a request before every addon was running" in mitm.text, mitm.text
    assert results == ["answer"] * 4, (results, mitm.text)
    assert "logged during startup" not in mitm.text  # mitmproxy: "Error(s) logged ..."


def _without_listen_host(mitm: Mitmdump) -> Mitmdump:
    i = mitm.args.index("--listen-host")
    del mitm.args[i:i + 2]
    return mitm


def test_a_remote_listen_address_is_refused_at_start(confdir, tmp_path, fake_openai):
    mitm = _without_listen_host(
        Mitmdump(confdir, detour_home(tmp_path / "home", _config(fake_openai)),
                 extra=["--listen-host", "0.0.0.0"]))
    try:
        mitm.start()  # may see mitmproxy's listening line: its startup check exits after it
    except RuntimeError:
        pass
    try:
        assert mitm.proc.wait(20) != 0
    finally:
        mitm.stop()
    assert "refusing to listen on 0.0.0.0" in mitm.text
    assert "detour_allow_remote=true" in mitm.text


def test_an_option_that_would_break_detour_is_refused_at_start(confdir, tmp_path, fake_openai):
    """`--set stream_large_bodies=...` ends mitmdump's start with one OptionsError saying why
    (it once looped through configure until Python's recursion limit, thousands of lines)."""
    mitm = Mitmdump(confdir, detour_home(tmp_path / "home", _config(fake_openai)),
                    extra=["--set", "stream_large_bodies=1m"])
    try:
        mitm.start()
    except RuntimeError:
        pass  # it exited before listening: what we want
    try:
        assert mitm.proc.wait(20) != 0
    finally:
        mitm.stop()
    assert "stream_large_bodies cannot be used with detour" in mitm.text
    assert "request hook" in mitm.text  # why
    assert "recursion" not in mitm.text and len(mitm.text.splitlines()) < 50, mitm.text[-3000:]


def test_a_passthrough_call_while_starting_keeps_its_credentials(confdir, tmp_path, fake_openai,
                                                                 fake_anthropic):
    """A call left to its vendor whose request hook runs before detour's `running`: detour
    holds the client's key while mitmweb may show the flow and puts it back as the request
    goes out (an addon added at `running`); the call waits for it, so the vendor gets the key."""
    script = tmp_path / "slow_start.py"
    script.write_text(SLOW_START_ADDON)
    port = free_port()
    fake_anthropic.keys.add(HEADERS["x-api-key"])
    config = _config(fake_openai) + f"""  claude-pass: [passthrough]
vendors:
  api.anthropic.com: "{fake_anthropic.base_url}"
"""
    mitm = Mitmdump(confdir, detour_home(tmp_path / "home", config),
                    extra=["--listen-port", str(port)])
    router = mitm.args.index("-s")
    mitm.args[router:router] = ["-s", str(script)]  # loaded first: its `running` runs first
    results: list[str] = []

    def client():
        _wait_until_port_accepts(port, time.monotonic() + 30)
        with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=20) as c:
            r = c.post("http://api.anthropic.com/v1/messages", headers=HEADERS,
                       json=dict(capture("text"), stream=False, model="claude-pass"))
            results.append(_answer_kind(r))

    thread = threading.Thread(target=client)
    thread.start()
    try:
        mitm.start()
        thread.join(60)
        assert mitm.proc.poll() is None, f"the proxy exited:\n{mitm.text}"
    finally:
        mitm.stop()
    assert "slow-start: a request before every addon was running" in mitm.text, mitm.text
    assert results == ["answer"], (results, mitm.text)
    assert fake_anthropic.requests[-1].headers["x-api-key"] == HEADERS["x-api-key"]
