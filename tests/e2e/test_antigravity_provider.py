"""A `kind: antigravity` provider (Code Assist as Antigravity calls it) served by a stored
Antigravity login, through a real mitmdump: an Anthropic-style client streamed and whole (text,
usage exact), a Claude model's tool call, and Gemini CLI's own envelope (same format) sent on
as Antigravity's. The login is stored as `detour account login antigravity` leaves it (its
Code Assist project found at login), its access token expired: the first call refreshes it.
The fake Code Assist, in its Antigravity mode, refuses an envelope without Antigravity's fields
(userAgent, requestType, requestId, request.sessionId), with Gemini CLI's, or a user agent
that is not Antigravity's; it takes only tokens the fake OAuth server issued and only the
login's own project."""

import json
import re
import time

import httpx
import pytest

from addons.credentials.store import OAUTH, AccountStore
from addons.credentials.vault import Vault
from tests.captures import checked_events
from tests.e2e.conftest import CLIENT_KEY, start_proxy
# the gemini-cli provider's test: its OAuth fake and fixtures, its record of a stored login
from tests.e2e.test_code_assist_provider import (  # noqa: F401
    Setup, auth, env, fresh_fake, generated)
from tests.fakes.code_assist import FakeCodeAssist
from tests.fakes.replies import Text, ToolCall, ToolCalls, Usage
from translators import anthropic, canonical, gemini_code_assist

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
CODE_ASSIST = "https://cloudcode-pa.googleapis.com/v1internal"
UPSTREAM = "gemini-3-pro-high"
CLAUDE_UPSTREAM = "claude-sonnet-4-5"
USAGE = Usage(prompt=1000, completion=50, cached=600, reasoning=10)
ANTHROPIC_HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
GEMINI_CLI_HEADERS = {"authorization": "Bearer ya29.the-clis-own-token-not-real",
                      "user-agent": "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64)"}


@pytest.fixture(scope="module")
def fake(auth):
    with FakeCodeAssist(auth, antigravity=True) as f:
        yield f


@pytest.fixture(scope="module")
def setup(confdir, tmp_path_factory, auth, fake):
    home = tmp_path_factory.mktemp("home")
    store = AccountStore(home / "detour.db", Vault(home, "file"))
    tokens = auth.grant()
    project = fake.onboard(tokens["access_token"])
    account = store.add("antigravity", "main", OAUTH, tokens, vendor="antigravity",
                        expires_at=time.time() - 60, email="user@example.com",
                        project_id=project, plan="free-tier")
    proxy_env = env(auth) | {"DETOUR_OAUTH_ANTIGRAVITY_TOKEN_URL": auth.url("/token")}
    config = f"""
providers:
  antigravity: {{kind: antigravity, base_url: "{fake.base_url}"}}
routes:
  via-ag: [antigravity/{UPSTREAM}]
  via-ag-claude: [antigravity/{CLAUDE_UPSTREAM}]
"""
    s = Setup(start_proxy(confdir, home, config, env=proxy_env), store, account, project)
    yield s
    s.proxy.mitm.stop()


def assert_sent_as_antigravity(setup, sent, stream: bool, model: str = UPSTREAM) -> None:
    assert sent.route == "/v1internal:" + ("streamGenerateContent" if stream
                                           else "generateContent")
    assert sent.path.endswith("?alt=sse") == stream
    assert sent.headers["authorization"] == f"Bearer {setup.token()}"
    assert re.fullmatch(r"antigravity/[\d.]+ \w+/\w+", sent.headers["user-agent"])
    body = sent.json
    assert set(body) == {"model", "project", "userAgent", "requestType", "requestId",
                         "request"}
    assert (body["model"], body["project"], body["userAgent"], body["requestType"]) == (
        model, setup.project, "antigravity", "agent")
    assert CLIENT_KEY not in json.dumps(sent.headers) and "the-clis-own" not in json.dumps(
        sent.headers)


def assert_usage_exact(setup, r, model: str = UPSTREAM) -> dict:
    row = setup.proxy.row_of(r)
    assert (row["provider"], row["account"], row["model_upstream"], row["status"]) == (
        "antigravity", "db:main", model, 200)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"],
            row["reasoning_tokens"]) == (400, 600, 50, 10)
    if model == CLAUDE_UPSTREAM:  # a name the price table knows (not Antigravity's -high)
        assert row["cost_basis"] == "subscription" and row["cost_usd"] > 0
    return row


def answer_of(r, stream: bool) -> canonical.Response:
    assert r.status_code == 200, r.text
    return canonical.collect_response(checked_events(anthropic, r.content)) if stream \
        else anthropic.decode_response(r.json())


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_anthropic_client_text(setup, auth, fake, stream):
    fake.enqueue(Text("hi from Antigravity", usage=USAGE), Text("again", usage=USAGE))
    body = {"model": "via-ag", "max_tokens": 50, "stream": stream,
            "messages": [{"role": "user", "content": "hello there"}]}
    with setup.proxy.client() as c:
        first = c.post(ANTHROPIC_URL, json=body, headers=ANTHROPIC_HEADERS)
        again = c.post(ANTHROPIC_URL, json=body, headers=ANTHROPIC_HEADERS)
    assert [p.text for p in answer_of(first, stream).parts if type(p) is canonical.Text] == [
        "hi from Antigravity"]
    assert [p.text for p in answer_of(again, stream).parts if type(p) is canonical.Text] == [
        "again"]
    sent = generated(fake)
    assert len(sent) == 2
    for s in sent:
        assert_sent_as_antigravity(setup, s, stream)
    # the login's project was found when it was made: never asked for on a call
    assert fake.load_calls == 0
    # one conversation, one session; each call its own request id
    assert sent[0].json["request"]["sessionId"] == sent[1].json["request"]["sessionId"]
    assert sent[0].json["requestId"] != sent[1].json["requestId"]
    assert sent[0].json["request"]["contents"] == [
        {"role": "user", "parts": [{"text": "hello there"}]}]
    for r in (first, again):
        assert_usage_exact(setup, r)
    assert auth.refresh_calls >= 1  # the stored token was expired


def test_a_claude_model_calls_tools_in_validated_mode(setup, fake):
    fake.enqueue(ToolCalls((ToolCall("Bash", {"command": "echo hi"}),), usage=USAGE))
    tools = [{"name": "Bash", "description": "Run a command", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"}},
        "required": ["command"]}}]
    with setup.proxy.client() as c:
        r = c.post(ANTHROPIC_URL, headers=ANTHROPIC_HEADERS, json={
            "model": "via-ag-claude", "max_tokens": 500, "stream": True, "tools": tools,
            "messages": [{"role": "user", "content": "Run echo hi"}]})
    resp = answer_of(r, True)
    call = next(p for p in resp.parts if type(p) is canonical.ToolUse)
    assert (call.name, call.input) == ("Bash", {"command": "echo hi"})
    sent = generated(fake)[-1]
    assert_sent_as_antigravity(setup, sent, True, CLAUDE_UPSTREAM)
    assert sent.json["request"]["toolConfig"]["functionCallingConfig"]["mode"] == "VALIDATED"
    assert_usage_exact(setup, r, CLAUDE_UPSTREAM)


def test_gemini_clis_envelope_goes_out_as_antigravitys(setup, fake):
    """Same format: Gemini CLI's envelope, its own fields and user agent replaced by
    Antigravity's, the answer's envelope back as the provider sent it."""
    fake.enqueue(Text("same format", usage=USAGE))
    body = {"model": "via-ag", "project": "the-clis-own-project", "user_prompt_id": "p-1",
            "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                        "session_id": "s-1"}}
    with setup.proxy.client() as c:
        r = c.post(CODE_ASSIST + ":streamGenerateContent?alt=sse", json=body,
                   headers=GEMINI_CLI_HEADERS)
    assert r.status_code == 200, r.text
    resp = canonical.collect_response(checked_events(gemini_code_assist, r.content))
    assert [p.text for p in resp.parts if type(p) is canonical.Text] == ["same format"]
    sent = generated(fake)[-1]
    assert_sent_as_antigravity(setup, sent, True)
    assert sent.json["request"]["contents"] == body["request"]["contents"]
    assert "session_id" not in sent.json["request"]
    assert assert_usage_exact(setup, r)["client_format"] == "gemini-cli"


def test_an_envelope_without_antigravitys_fields_is_refused_by_the_fake(fake, auth):
    """The fake's Antigravity mode can fail: Gemini CLI's envelope and user agent get a 400."""
    token = auth.grant()["access_token"]
    project = fake.onboard(token)
    with httpx.Client(trust_env=False, verify=False) as c:
        r = c.post(fake.base_url + "/v1internal:generateContent", json={
            "model": UPSTREAM, "project": project,
            "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}},
            headers={"authorization": f"Bearer {token}",
                     "user-agent": "GeminiCLI/0.61.0 (linux; x64)"})
    assert r.status_code == 400 and "Unsupported client" in r.text
