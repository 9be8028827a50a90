"""Issue-12 hardening through a real mitmdump: what a client, a provider or a configuration
sends never takes detour down, leaks a secret or loses a request's destination."""

import subprocess

import pytest

from tests.e2e.conftest import CLIENT_KEY, capture, start_proxy
from tests.harness import ROOT, Mitmdump

URL = "https://api.anthropic.com/v1/messages?beta=true"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
           "user-agent": "claude-cli/2.1.197 (test)"}


@pytest.mark.parametrize("stream", [False, True])
def test_vendor_override_with_a_path_prefix_keeps_the_prefix_on_passthrough(
        confdir, tmp_path, fake_anthropic, stream):
    """`vendors: {api.anthropic.com: https://gateway/prefix}` on a passthrough-only route sends
    model calls and the vendor's other paths under the prefix."""
    fake_anthropic.clear()
    fake_anthropic.keys.add(CLIENT_KEY)
    p = start_proxy(confdir, tmp_path / "home",
                    f'routes: {{"*": [passthrough]}}\n'
                    f'vendors: {{api.anthropic.com: "{fake_anthropic.base_url}/gw/anthropic/"}}\n')
    try:
        with p.client() as c:
            r = c.post(URL, json=dict(capture("text"), stream=stream), headers=HEADERS)
            assert r.status_code == 200, r.text
            c.get("https://api.anthropic.com/api/claude_code/settings", headers=HEADERS)
    finally:
        p.mitm.stop()
    paths = [rq.path for rq in fake_anthropic.requests]
    assert paths == ["/gw/anthropic/v1/messages?beta=true",
                     "/gw/anthropic/api/claude_code/settings"], paths


@pytest.mark.parametrize("make", ["under-a-file", "not-a-database"])
def test_an_unusable_detour_home_stops_mitmdump_with_its_reason(confdir, tmp_path, make):
    """The mitmproxy way (`mitmdump -s addons/router.py --set detour_home=...`) with a home it
    cannot use exits at start naming the folder and the cause, before serving anything."""
    if make == "under-a-file":
        (tmp_path / "file").write_text("x")
        home, cause = tmp_path / "file" / "home", "Not a directory"
    else:
        home, cause = tmp_path / "home", "file is not a database"
        home.mkdir()
        (home / "detour.db").write_text("not a database")
    m = Mitmdump(confdir, home)
    done = subprocess.run(m.args, env=m.env, cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode != 0
    assert f"detour: {home}: " in done.stdout and cause in done.stdout, done.stdout
