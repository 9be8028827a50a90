"""The calls around Codex's model calls, through a real mitmdump: the WebSocket upgrade of
/v1/responses (refused 426 so Codex falls back to HTTPS at once), model lists (what detour
routes for the asking client, plus the vendor's own when passthrough is a candidate) and
/v1/responses/compact (a summary asked of the routed provider, in its format)."""

import json

import pytest

from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, start_proxy
from tests.fakes.openai_responses_provider import FakeOpenAIResponses

CODEX_UA = "codex_exec/0.169.0 (Debian 12.0.0; x86_64) dumb (codex_exec; 0.169.0)"
CODEX_HEADERS = {"authorization": f"Bearer {CLIENT_KEY}", "user-agent": CODEX_UA}
UPGRADE = {"connection": "Upgrade", "upgrade": "websocket", "sec-websocket-version": "13",
           "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ==",
           "openai-beta": "responses_websockets=2026-02-06"}


@pytest.fixture(scope="module")
def vendor():
    with FakeOpenAIResponses() as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic, vendor):
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  ant: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
clients:
  codex: {{match: "codex_*", routes: {{gpt-6.1-sol: [ant/claude-fake], "*": [chat/fake-model]}}}}
routes:
  sdk-model: [chat/fake-model, passthrough]
  "*": [passthrough]
vendors:
  api.openai.com: "{vendor.base_url}"
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_openai, fake_anthropic, vendor):
    for fake in (fake_openai, fake_anthropic, vendor):
        fake.clear()
    yield


@pytest.fixture
def http(proxy):
    with proxy.client() as c:
        yield c


def test_the_websocket_upgrade_is_refused_so_the_client_falls_back_to_https(http, vendor):
    r = http.get("https://api.openai.com/v1/responses", headers=CODEX_HEADERS | UPGRADE)
    assert r.status_code == 426
    assert r.json()["error"]["message"].startswith("detour: the WebSocket mode")
    assert r.headers["x-detour-id"]
    assert vendor.requests == []  # answered by detour, whatever the route
    # the same path without an upgrade is not detour's: it goes to the vendor untouched
    plain = http.get("https://api.openai.com/v1/responses", headers=CODEX_HEADERS)
    assert plain.status_code == 404 and [q.method for q in vendor.requests] == ["GET"]
    assert json.loads(plain.text)["error"]["message"].startswith("Invalid URL")
