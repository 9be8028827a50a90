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


def test_a_model_list_names_what_detour_routes_for_the_client(http, vendor):
    r = http.get("https://api.openai.com/v1/models", headers=CODEX_HEADERS)
    assert r.status_code == 200, r.text
    # Codex's routes (its name, then the model its catch-all asks), then the global ones;
    # no passthrough in Codex's catch-all: the vendor is not asked
    assert [m["id"] for m in r.json()["data"]] == ["gpt-6.1-sol", "fake-model", "sdk-model"]
    assert {m["object"] for m in r.json()["data"]} == {"model"} and r.json()["object"] == "list"
    assert vendor.requests == []


def test_with_passthrough_a_candidate_the_vendors_models_are_listed_too(http, vendor):
    r = http.get("https://api.openai.com/v1/models",
                 headers={"authorization": f"Bearer {PROVIDER_KEY}",
                          "user-agent": "OpenAI/Python 1.109.1"})
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["data"]] == ["sdk-model", "gpt-fake-1", "gpt-fake-mini"]
    # the vendor got the client's own credential
    assert [q.headers["authorization"] for q in vendor.requests] == [f"Bearer {PROVIDER_KEY}"]


COMPACT_BODY = {
    "model": "gpt-6.1-sol", "instructions": "You are Codex.",
    "input": [
        {"type": "message", "role": "user",
         "content": [{"type": "input_text", "text": "<environment_context>cwd</environment_context>"}]},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Fix the bug"}]},
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "I looked at main.py"}]},
        {"type": "reasoning", "id": "rs_1", "summary": [], "encrypted_content": "gAAAA-opaque"},
    ],
}


def test_compaction_is_a_summary_asked_of_the_routed_provider(http, proxy, fake_anthropic, vendor):
    r = http.post("https://api.openai.com/v1/responses/compact", json=COMPACT_BODY,
                  headers=CODEX_HEADERS)
    assert r.status_code == 200, r.text
    output = r.json()["output"]
    texts = [p["text"] for item in output for p in item["content"]]
    assert all(item["role"] == "user" and item["type"] == "message" for item in output)
    # the user's own words stay (not the injected context), then the provider's summary
    assert texts[0] == "Fix the bug"
    assert texts[1].endswith("Hello from the fake Anthropic vendor")
    assert len(texts) == 2
    (sent,) = fake_anthropic.requests
    assert sent.json["model"] == "claude-fake" and sent.json["system"]
    last = sent.json["messages"][-1]
    assert last["role"] == "user" and "CONTEXT CHECKPOINT COMPACTION" in json.dumps(last)
    assert "gAAAA-opaque" not in sent.body.decode()  # OpenAI's encrypted reasoning: dropped
    assert vendor.requests == []
    row = proxy.row_of(r)
    assert (row["client_format"], row["provider"], row["status"], row["error"]) == (
        "openai-responses", "ant", 200, None)
    assert row["output_tokens"] > 0


def test_compaction_routed_to_passthrough_goes_to_the_vendor_untouched(http, vendor):
    body = dict(COMPACT_BODY, model="gpt-vendor-only")
    r = http.post("https://api.openai.com/v1/responses/compact", json=body,
                  headers={"authorization": f"Bearer {CLIENT_KEY}", "user-agent": "OpenAI/Python"})
    assert r.status_code == 404  # the vendor fake has no compaction: its answer, as it is
    (sent,) = vendor.requests
    assert sent.path == "/v1/responses/compact" and sent.json == body
