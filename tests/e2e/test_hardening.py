"""Issue-12 hardening through a real mitmdump: what a client, a provider or a configuration
sends never takes detour down, leaks a secret or loses a request's destination."""

import pytest

from tests.e2e.conftest import CLIENT_KEY, capture, start_proxy

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
