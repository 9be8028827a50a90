"""Codex logged in with ChatGPT (`chatgpt.com/backend-api/codex/responses`, zstd-compressed
request bodies) routed to any provider, and the `codex` provider kind (the ChatGPT backend,
its account token from config `file:`) serving any Responses client, through a real mitmdump
against loopback fakes (FakeCodexBackend checks the token, the account id and the backend's
own rules: streamed only, never stored, no max_output_tokens)."""

import json

import pytest

from tests.captures import CAPTURES, checked_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, start_proxy
from tests.fakes.codex_backend import ACCOUNT_ID, FakeCodexBackend, chatgpt_token
from tests.fakes.replies import Text
from translators import openai_responses

try:
    from compression import zstd  # Python 3.14
except ImportError:  # mitmproxy depends on the backport before 3.14
    from backports import zstd

BACKEND_URL = "https://chatgpt.com/backend-api/codex/responses"
TOKEN = chatgpt_token()
CLIENT_TOKEN = chatgpt_token("acct-the-clients-own")  # what Codex sends; never reaches a provider


def codex_headers(name: str) -> dict:
    """The captured ChatGPT-mode request's headers, with the client's own token."""
    meta = json.loads((CAPTURES / f"{name}.meta.json").read_text())
    headers = {k: v for k, v in meta["request_headers"]
               if k not in ("content-length", "authorization", "content-encoding")}
    headers.update({"authorization": f"Bearer {CLIENT_TOKEN}", "chatgpt-account-id": "acct-x",
                    "content-encoding": "zstd", "content-type": "application/json",
                    "accept": "text/event-stream"})
    return headers


def captured(name: str) -> dict:
    return json.loads((CAPTURES / f"{name}.request.json").read_text())


@pytest.fixture(scope="module")
def backend():
    with FakeCodexBackend() as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, backend):
    home = tmp_path_factory.mktemp("home")
    token_file = home / "chatgpt-token"
    token_file.write_text(TOKEN + "\n")
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  chatgpt: {{kind: codex, base_url: "{backend.base_url}/backend-api/codex",
             api_keys: ["file:{token_file}"]}}
clients:
  codex: {{match: "codex_*", routes: {{to-chatgpt: [chatgpt/gpt-6.1-sol], "*": [chat/fake-model]}}}}
routes:
  gpt-6.1-sol: [chat/fake-model]
  to-chatgpt: [chatgpt/gpt-6.1-sol]
  "*": [passthrough]
vendors:
  chatgpt.com: "{backend.base_url}"
"""
    p = start_proxy(confdir, home, config)
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_openai, backend):
    for fake in (fake_openai, backend):
        fake.clear()
    yield


def test_codex_in_chatgpt_mode_routed_to_a_chat_provider(http, proxy, fake_openai, backend):
    name = "codex-chatgpt-login.responses.text"
    body = captured(name)
    r = http.post(BACKEND_URL, content=zstd.compress(json.dumps(body).encode()),
                  headers=codex_headers(name))
    assert r.status_code == 200, r.text
    events = checked_events(openai_responses, r.content)
    assert "".join(e.text for e in events if hasattr(e, "text")) == fake_openai.default_text
    (sent,) = fake_openai.requests
    assert sent.json["model"] == "fake-model" and "Say hi" in json.dumps(sent.json["messages"])
    assert sent.headers["authorization"] == f"Bearer {PROVIDER_KEY}"
    assert CLIENT_TOKEN not in json.dumps(sent.headers)
    assert backend.requests == []
    row = proxy.row_of(r)
    assert (row["client_format"], row["provider"], row["status"], row["stream"]) == (
        "openai-responses", "chat", 200, 1)


def test_the_chatgpt_backend_websocket_is_refused_and_other_paths_pass(http, backend):
    r = http.get(BACKEND_URL, headers={"authorization": f"Bearer {CLIENT_TOKEN}",
                                       "upgrade": "websocket", "connection": "Upgrade",
                                       "sec-websocket-version": "13",
                                       "sec-websocket-key": "dGhlIHNhbXBsZSBub25jZQ=="})
    assert r.status_code == 426 and backend.requests == []
    check = http.get("https://chatgpt.com/backend-api/wham/accounts/check",
                     headers={"authorization": f"Bearer {CLIENT_TOKEN}"})
    assert check.status_code == 200 and check.json()["accounts"][0]["id"] == ACCOUNT_ID
    # passed through with the client's own token
    assert [q.headers["authorization"] for q in backend.requests] == [f"Bearer {CLIENT_TOKEN}"]


def test_a_whole_responses_call_served_by_the_chatgpt_backend(http, proxy, backend):
    backend.enqueue(Text("answered by ChatGPT"))
    r = http.post("https://api.openai.com/v1/responses",
                  json={"model": "to-chatgpt", "input": "hi", "max_output_tokens": 50},
                  headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["object"] == "response" and out["status"] == "completed"
    assert out["output"][-1]["content"][0]["text"] == "answered by ChatGPT"
    (sent,) = backend.requests
    # the backend's rules: streamed (folded back for this whole call), never stored
    assert sent.json["stream"] is True and sent.json["store"] is False
    assert "max_output_tokens" not in sent.json and sent.json["model"] == "gpt-6.1-sol"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["chatgpt-account-id"] == ACCOUNT_ID
    assert sent.headers["originator"] == "codex_cli_rs"
    row = proxy.row_of(r)
    assert (row["provider"], row["status"], row["stream"]) == ("chatgpt", 200, 0)
    assert TOKEN not in json.dumps(row)


def test_codex_routed_to_the_chatgpt_backend_keeps_its_bytes(http, proxy, backend):
    name = "codex-chatgpt-login.responses.tool-result"
    body = dict(captured(name), model="to-chatgpt")
    r = http.post(BACKEND_URL, content=zstd.compress(json.dumps(body).encode()),
                  headers=codex_headers(name))
    assert r.status_code == 200, r.text
    assert checked_events(openai_responses, r.content)
    (sent,) = backend.requests
    assert sent.json == dict(body, model="gpt-6.1-sol")  # only the model changed
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["chatgpt-account-id"] == ACCOUNT_ID
    # Codex's own headers go on with its call (the backend knows its client by them)
    for header in ("originator", "session-id", "x-codex-beta-features", "x-codex-turn-metadata"):
        assert sent.headers[header] == codex_headers(name)[header], header


def test_codex_rerouted_gets_its_account_check_and_catalogue_from_detour(http, backend):
    """Codex's models all rerouted: chatgpt.com is not needed (nor asked) for the account
    check Codex makes before its first prompt, nor for its catalogue."""
    headers = {"authorization": f"Bearer {CLIENT_TOKEN}", "user-agent": "codex_exec/0.169.0"}
    check = http.get("https://chatgpt.com/backend-api/wham/accounts/check", headers=headers)
    assert check.status_code == 200
    assert check.json()["accounts"][0]["id"] == "acct-the-clients-own"
    models = http.get("https://chatgpt.com/backend-api/codex/models?client_version=0.169.0",
                      headers=headers)
    assert models.status_code == 200 and models.json() == {"models": []}
    assert backend.requests == []
