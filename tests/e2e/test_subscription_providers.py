"""Stored accounts on every provider kind that takes them, through a real mitmdump: GitHub
Copilot (the GitHub login buys short-lived Copilot tokens, refreshed single-flight; the
editor headers and X-Initiator; the API the token names), Qwen (its access token at the API
its `resource_url` names, refreshed with rotation; Qwen Code's own refresh answered from the
store), iFlow (the API key its user info hands
out, refreshed with its client secret), Codex (a ChatGPT login on the ChatGPT backend, its
account id read from each new token), and API keys on Gemini and OpenAI Responses. A spent
Copilot login is `needs login` in `detour account list` and in the client's error."""

import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from addons.credentials.store import API_KEY, OAUTH, AccountStore
from addons.credentials.vault import Vault
from addons.credentials.vendors import VENDORS
from scripts.cli import cli
from tests.e2e.conftest import start_proxy
from tests.fakes.codex_backend import ACCOUNT_ID, FakeCodexBackend
from tests.fakes.copilot_api import FakeCopilot
from tests.fakes.gemini_provider import FakeGemini
from tests.fakes.oauth_server import AcceptedTokens, FakeOAuth
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.openai_responses_provider import FakeOpenAIResponses

CHAT = "https://api.openai.com/v1/chat/completions"
MESSAGES = "https://api.anthropic.com/v1/messages"
GEMINI_KEY = "stored-gemini-key-not-real-1f2e"
RESPONSES_KEY = "stored-responses-key-not-real-9a8b"
CLIENT = {"authorization": "Bearer client-own-key-not-real"}
IFLOW = VENDORS["iflow"]


def chat(model: str, *messages) -> dict:
    return {"model": model, "messages": list(messages) or [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def auth():
    claims = {"email": "user@example.com", "exp": 4102444800,
              "https://api.openai.com/auth": {"chatgpt_account_id": ACCOUNT_ID}}
    with FakeOAuth(access_claims=claims) as a:
        a.client_secrets[IFLOW.client_id] = IFLOW.client_secret
        yield a


@pytest.fixture(scope="module")
def fakes(auth):
    with FakeCopilot(auth) as copilot, FakeOpenAI() as qwen, \
            FakeOpenAI(keys={auth.iflow_api_key}) as iflow, FakeCodexBackend() as codex, \
            FakeGemini(keys={GEMINI_KEY}) as gemini, \
            FakeOpenAIResponses(keys={RESPONSES_KEY}) as responses:
        qwen.keys = codex.keys = AcceptedTokens(auth)
        auth.copilot_api = copilot.base_url
        auth.resource_url = qwen.base_url  # Qwen's token answers name its API
        yield {"copilot": copilot, "qwen": qwen, "iflow": iflow, "codex": codex,
               "gemini": gemini, "responses": responses}


def proxy_env(auth) -> dict:
    env = {k: v for k, v in os.environ.items() if k.lower() not in
           {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}}
    return env | {
        "DETOUR_KEY_BACKEND": "file",
        "DETOUR_OAUTH_COPILOT_API_KEY_URL": auth.url("/copilot_internal/v2/token"),
        "DETOUR_OAUTH_QWEN_TOKEN_URL": auth.url("/token"),
        "DETOUR_OAUTH_IFLOW_TOKEN_URL": auth.url("/token"),
        "DETOUR_OAUTH_IFLOW_API_KEY_URL": auth.url("/api/oauth/getUserInfo"),
        "DETOUR_OAUTH_CODEX_TOKEN_URL": auth.url("/token")}


@pytest.fixture(scope="module")
def setup(confdir, tmp_path_factory, auth, fakes):
    home = tmp_path_factory.mktemp("home")
    store = AccountStore(home / "detour.db", Vault(home, "file"))
    # every login's access token already expired: the proxy refreshes each once, whether its
    # background loop or a call gets there first
    past = time.time() - 60
    ids = {}
    initial = {}
    # logged in as `detour account login copilot` leaves it: the GitHub token, a Copilot
    # token, and the API its token answer named
    github = auth.grant()["access_token"]
    ids["copilot"] = store.add("copilot", "gh", OAUTH, {
        "github_token": github, "access_token": "spent-copilot-token"}, vendor="copilot",
        expires_at=past, project_id=fakes["copilot"].base_url).id
    store.add("copilot-r", "gh", OAUTH, {
        "github_token": auth.grant()["access_token"], "access_token": "spent-copilot-token"},
        vendor="copilot", expires_at=past, project_id=fakes["copilot"].base_url)
    initial["qwen"] = auth.grant()
    # its API moved since: the refresh answer's resource_url names the fake
    ids["qwen"] = store.add("qwen", "q", OAUTH, initial["qwen"], vendor="qwen",
                            expires_at=past, project_id="127.0.0.1:9").id
    initial["iflow"] = auth.grant()
    ids["iflow"] = store.add("iflow", "i", OAUTH, initial["iflow"] | {
        "api_key": auth.iflow_api_key}, vendor="iflow", expires_at=past).id
    ids["codex"] = store.add("codex", "c", OAUTH, auth.grant(), vendor="codex",
                             expires_at=past).id
    store.add("gem", "k", API_KEY, {"api_key": GEMINI_KEY})
    store.add("resp", "k", API_KEY, {"api_key": RESPONSES_KEY})
    config = f"""
providers:
  copilot: {{kind: copilot}}
  copilot-r: {{kind: copilot-responses}}
  qwen: {{kind: qwen}}
  iflow: {{kind: iflow, base_url: "{fakes['iflow'].base_url}/v1"}}
  codex: {{kind: codex, base_url: "{fakes['codex'].base_url}/backend-api/codex"}}
  gem: {{kind: gemini, base_url: "{fakes['gemini'].base_url}"}}
  resp: {{kind: openai-responses, base_url: "{fakes['responses'].base_url}/v1"}}
routes:
  cp-model: [copilot/gpt-4.1]
  cpr-model: [copilot-r/gpt-5-codex]
  qwen-model: [qwen/coder-model]
  iflow-model: [iflow/qwen3-coder-plus]
  codex-model: [codex/gpt-5]
  gem-model: [gem/gemini-fake-flash]
  resp-model: [resp/gpt-fake-1]
"""
    proxy = start_proxy(confdir, home, config, env=proxy_env(auth))
    proxy.github, proxy.initial = github, initial
    yield proxy, store, ids
    proxy.mitm.stop()


def ask(proxy, model: str):
    """One Chat call for `model` through the proxy, answered 200."""
    with proxy.client() as c:
        r = c.post(CHAT, json=chat(model), headers=CLIENT)
    assert r.status_code == 200, r.text
    return r


def model_calls(fake, suffix="/chat/completions"):
    return [r for r in fake.requests if r.route.endswith(suffix)]


def test_copilot_token_bought_once_for_concurrent_calls(setup, auth, fakes):
    proxy, store, ids = setup
    copilot = fakes["copilot"]
    with proxy.client() as c, ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda _: c.post(CHAT, json=chat("cp-model"), headers=CLIENT),
                                range(8)))
    assert [r.status_code for r in answers] == [200] * 8, answers[0].text
    # single-flight: one Copilot token bought for this login, whoever asked first
    assert auth.copilot_asked.count(proxy.github) == 1
    token = store.secrets_of(ids["copilot"])[0]["access_token"]
    assert "-copilot-" in token
    sent = model_calls(copilot)[-8:]
    assert {r.headers["authorization"] for r in sent} == {f"Bearer {token}"}
    assert {r.headers["x-initiator"] for r in sent} == {"user"}
    assert store.by_id(ids["copilot"]).expires_at > time.time() + 600
    assert {proxy.row_of(r)["account"] for r in answers} == {"db:gh"}


def test_copilot_translated_call_is_agent_initiated_after_a_tool_turn(setup, fakes):
    """Claude Code's Messages, translated to Copilot's Chat: a conversation that carries the
    model's own turn is agent-initiated (not a premium request)."""
    proxy, *_ = setup
    body = {"model": "cp-model", "max_tokens": 50, "messages": [
        {"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "again"}]}
    with proxy.client() as c:
        r = c.post(MESSAGES, json=body, headers={"x-api-key": "client-own-key-not-real",
                                                 "anthropic-version": "2023-06-01"})
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == "Hello from the fake Copilot"
    assert fakes["copilot"].initiators[-1] == "agent"


def test_copilot_responses_for_codex_models(setup, fakes):
    proxy, *_ = setup
    r = ask(proxy, "cpr-model")
    sent = model_calls(fakes["copilot"], "/responses")
    assert sent and sent[-1].json["model"] == "gpt-5-codex"
    assert r.json()["choices"][0]["message"]["content"] == "Hello from the fake Copilot"


def test_qwen_login_at_its_resource_url_refreshed_with_rotation(setup, auth, fakes):
    proxy, store, ids = setup
    old = proxy.initial["qwen"]
    ask(proxy, "qwen-model")
    new = store.secrets_of(ids["qwen"])[0]
    assert new["refresh_token"] != old["refresh_token"]  # rotated, committed
    assert not auth.refresh_valid(old["refresh_token"])  # the spent one is gone at the vendor
    # the refresh answer's resource_url moved the account to the fake's API
    assert store.by_id(ids["qwen"]).project_id == fakes["qwen"].base_url
    sent = model_calls(fakes["qwen"])[-1]
    assert sent.route == "/v1/chat/completions"
    assert sent.headers["authorization"] == f"Bearer {new['access_token']}"
    assert sent.headers["x-dashscope-authtype"] == "qwen-oauth"


def test_qwen_codes_own_refresh_is_answered_from_the_store(setup, auth, fakes):
    """One owner per login: Qwen Code refreshing the login detour holds gets detour's current
    access token, its own refresh token back, and the resource_url its API lives at."""
    proxy, store, ids = setup
    kept = proxy.initial["qwen"]["refresh_token"]
    calls = auth.refresh_calls
    with proxy.client() as c:
        r = c.post("https://chat.qwen.ai/api/v1/oauth2/token", data={
            "grant_type": "refresh_token", "refresh_token": kept,
            "client_id": VENDORS["qwen"].client_id})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["access_token"] == store.secrets_of(ids["qwen"])[0]["access_token"]
    assert answer["refresh_token"] == kept
    assert answer["resource_url"] == fakes["qwen"].base_url
    assert auth.refresh_calls == calls


def test_iflow_api_key_from_user_info_after_refresh(setup, auth, fakes):
    proxy, store, ids = setup
    old = proxy.initial["iflow"]
    ask(proxy, "iflow-model")
    new = store.secrets_of(ids["iflow"])[0]
    assert new["refresh_token"] != old["refresh_token"]  # refreshed with the client secret
    assert auth.user_info_calls >= 1  # the new access token bought the key again
    sent = model_calls(fakes["iflow"])[-1]
    assert sent.headers["authorization"] == f"Bearer {auth.iflow_api_key}"
    assert sent.headers["user-agent"] == "iFlow-Cli"
    assert new["access_token"] not in str(sent.headers)  # the access token only buys the key


def test_codex_login_on_the_chatgpt_backend(setup, auth, fakes):
    proxy, store, ids = setup
    r = ask(proxy, "codex-model")
    token = store.secrets_of(ids["codex"])[0]["access_token"]
    sent = model_calls(fakes["codex"], "/codex/responses")[-1]
    assert sent.headers["authorization"] == f"Bearer {token}"
    assert sent.headers["chatgpt-account-id"] == ACCOUNT_ID
    assert proxy.row_of(r)["account"] == "db:c"


@pytest.mark.parametrize("model, fake, key, header", [
    ("gem-model", "gemini", GEMINI_KEY, "x-goog-api-key"),
    ("resp-model", "responses", RESPONSES_KEY, "authorization")])
def test_stored_api_keys_on_gemini_and_responses(setup, fakes, model, fake, key, header):
    proxy, *_ = setup
    r = ask(proxy, model)
    sent = fakes[fake].requests[-1]
    assert sent.headers[header].removeprefix("Bearer ") == key
    assert "client-own-key" not in str(sent.headers)
    assert proxy.row_of(r)["account"] == "db:k"


def test_spent_copilot_login_needs_login(setup, auth, fakes):
    proxy, store, ids = setup
    secrets = store.secrets_of(ids["copilot"])[0]
    auth.revoke_access(secrets["github_token"])  # the GitHub authorization revoked
    auth.revoke_access(secrets["access_token"])  # and its Copilot token with it
    with proxy.client() as c:
        first = c.post(CHAT, json=chat("cp-model"), headers=CLIENT)
        assert first.status_code >= 400
        again = c.post(CHAT, json=chat("cp-model"), headers=CLIENT)
    assert again.status_code >= 400
    message = again.json()["error"]["message"]
    assert "needs login" in message and "detour account login copilot --name gh" in message
    listing = CliRunner().invoke(cli, ["--home", str(proxy.home), "account", "list"],
                                 env={"DETOUR_KEY_BACKEND": "file"})
    row = next(line for line in listing.output.splitlines() if line.startswith("copilot "))
    assert "needs login" in row
    assert secrets["github_token"] not in listing.output
