"""The calls around Codex's model calls, through a real mitmdump: the WebSocket upgrade of
/v1/responses (refused 426 so Codex falls back to HTTPS at once), model lists (what detour
routes for the asking client, plus the vendor's own when passthrough is a candidate) and
/v1/responses/compact (a summary asked of the routed provider, in its format); a Responses
provider's prompt_cache_key stable for one conversation whoever the client; a Codex call whose
first candidate (Responses) answers 429 served by a Chat provider, streamed."""

import json

import pytest

from tests.captures import CAPTURES, checked_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, capture, start_proxy
from tests.fakes.openai_responses_provider import FakeOpenAIResponses
from tests.fakes.replies import Status
from translators import openai_responses

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
def responses():
    with FakeOpenAIResponses() as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic, vendor, responses):
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  ant: {{kind: anthropic, base_url: "{fake_anthropic.base_url}", api_keys: [{VENDOR_KEY}]}}
  resp: {{kind: openai-responses, base_url: "{responses.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
clients:
  codex:
    match: "codex_*"
    routes:
      gpt-6.1-sol: [ant/claude-fake]
      resp-429-then-chat: [resp/gpt-up, chat/fake-model]
      "*": [chat/fake-model]
routes:
  sdk-model: [chat/fake-model, passthrough]
  claude-opus-4-8: [resp/gpt-up]
  to-resp: [resp/gpt-up]
  "*": [passthrough]
vendors:
  api.openai.com: "{vendor.base_url}"
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_openai, fake_anthropic, vendor, responses):
    for fake in (fake_openai, fake_anthropic, vendor, responses):
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
    assert [m["id"] for m in r.json()["data"]] == [
        "gpt-6.1-sol", "resp-429-then-chat", "fake-model", "sdk-model", "claude-opus-4-8",
        "to-resp"]
    assert {m["object"] for m in r.json()["data"]} == {"model"} and r.json()["object"] == "list"
    assert vendor.requests == []


def test_with_passthrough_a_candidate_the_vendors_models_are_listed_too(http, vendor):
    r = http.get("https://api.openai.com/v1/models",
                 headers={"authorization": f"Bearer {PROVIDER_KEY}",
                          "user-agent": "OpenAI/Python 1.109.1"})
    assert r.status_code == 200, r.text
    assert [m["id"] for m in r.json()["data"]] == [
        "sdk-model", "claude-opus-4-8", "to-resp", "gpt-fake-1", "gpt-fake-mini"]
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


CLAUDE_HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
                  "user-agent": "claude-cli/2.1.197 (external, sdk-cli)"}


def test_a_responses_provider_gets_one_cache_key_per_conversation(http, responses):
    """Claude Code's tool call and its follow-up (one conversation; the billing header in its
    system prompt differs per call) get the same key; another conversation another; an SDK
    client's growing conversation keeps its key too."""
    for name in ("tool-call", "tool-result", "text"):
        r = http.post("https://api.anthropic.com/v1/messages", json=capture(name),
                      headers=CLAUDE_HEADERS)
        assert r.status_code == 200, r.text
    keys = [q.json["prompt_cache_key"] for q in responses.requests]
    assert keys[0] == keys[1] != keys[2] and keys[0].startswith("detour-")
    responses.clear()
    turn = [{"role": "user", "content": "What is 2+2?"}]
    for body in ({"model": "to-resp", "instructions": "Be brief.", "input": turn},
                 {"model": "to-resp", "instructions": "Be brief.", "input": turn + [
                     {"role": "assistant", "content": "4"}, {"role": "user", "content": "x2?"}]}):
        assert http.post("https://api.openai.com/v1/responses", json=body,
                         headers={"authorization": f"Bearer {CLIENT_KEY}"}).status_code == 200
    first, second = (q.json["prompt_cache_key"] for q in responses.requests)
    assert first == second


def test_codex_served_by_a_chat_provider_when_the_responses_one_answers_429(
        http, proxy, responses, fake_openai):
    body = json.loads((CAPTURES / "codex.responses.tool-result.request.json").read_text())
    body["model"] = "resp-429-then-chat"
    # an encrypted reasoning item before the tool call, as OpenAI's answers leave them: it goes
    # only to a Responses provider, whole; the Chat provider never sees it
    at = next(i for i, item in enumerate(body["input"]) if item.get("type") == "custom_tool_call")
    body["input"].insert(at, {"type": "reasoning", "id": "rs_1", "summary": [],
                              "encrypted_content": "gAAAA-encrypted-reasoning"})
    responses.enqueue(Status(429, headers={"retry-after": "1"}))
    r = http.post("https://api.openai.com/v1/responses", json=body, headers=CODEX_HEADERS)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    events = checked_events(openai_responses, r.content)
    assert "".join(e.text for e in events if hasattr(e, "text")) == fake_openai.default_text
    (asked,) = responses.requests
    assert asked.json == dict(body, model="gpt-up")  # the Responses provider: Codex's bytes
    (served,) = fake_openai.requests
    assert served.json["stream"] is True
    assert "gAAAA-encrypted-reasoning" in asked.body.decode()
    assert "gAAAA" not in served.body.decode() and "rs_1" not in served.body.decode()
    row = proxy.row_of(r)
    assert (row["provider"], row["status"], row["attempts"], row["stream"]) == ("chat", 200, 2, 1)
    assert json.loads(row["route"])[0]["status"] == 429
