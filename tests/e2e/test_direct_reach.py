"""The direct path (`detour_direct=true`) and a provider it cannot reach: mitmproxy would answer a
failed connect with its own HTML 502; error_reply.py sends detour's answer instead, so a
refused connection or a failed TLS handshake is told in the client's format, its usage row
exact. detour does not connect first: the fake sees one connection for several calls."""

import pytest

from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, capture, free_port, start_proxy
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Text

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}


@pytest.fixture(scope="module")
def tls_fake():
    with FakeOpenAI(tls=True) as fake:  # its certificate: signed by a CA nobody trusts
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, tls_fake):
    home = tmp_path_factory.mktemp("home")
    config = f"""
providers:
  up: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  down: {{kind: openai, base_url: "http://127.0.0.1:{free_port()}/v1",
          api_keys: [{PROVIDER_KEY}]}}
  untrusted: {{kind: openai, base_url: "{tls_fake.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  claude-down: [down/m]
  claude-untrusted: [untrusted/m]
  "*": [up/m]
cooldown_seconds: 0
"""
    p = start_proxy(confdir, home, config,
                    extra=["--set", "detour_direct=true", "--set", "flow_detail=1"])
    yield p
    p.mitm.stop()


def post(client, model, stream):
    return client.post(URL, json=dict(capture("text"), model=model, stream=stream),
                       headers=HEADERS)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("model, cause", [
    ("claude-down", "connection refused"),
    ("claude-untrusted", "certificate verify failed"),
])
def test_a_provider_not_reached_is_answered_in_the_clients_format(proxy, model, cause, stream):
    with proxy.client() as c:
        r = post(c, model, stream)
    assert r.status_code == 502, r.text
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["type"] == "error", body
    # (a whole call: detour's own client, which tells the same failures in the same format)
    message = body["error"]["message"]
    assert cause in message.lower() and "account 1" in message
    assert r.headers["x-should-retry"] == "false"  # nothing could be reached at all
    row = proxy.row_of(r)
    assert (row["status"], row["attempts"], row["stream"]) == (502, 1, int(stream))
    assert cause in row["error"].lower() and not row["provider"]


def test_a_reachable_provider_is_asked_on_mitmproxys_connection(proxy, fake_openai):
    """Streamed calls (the direct path takes no whole call)."""
    before = fake_openai.connections
    with proxy.client() as c:
        for _ in range(3):
            fake_openai.enqueue(Text("fine"))
            r = post(c, "claude-up", True)
            assert r.status_code == 200, r.text
    # mitmproxy's own connection, every call on it (detour does not connect first: a failure
    # to connect is told by error_reply.py)
    assert fake_openai.connections - before == 1
