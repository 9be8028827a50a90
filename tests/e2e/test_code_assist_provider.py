"""A `kind: gemini-cli` provider (Code Assist with a Google login) served by a stored Google
account, through a real mitmdump: Claude-style (Anthropic), OpenAI Chat and Gemini CLI (its own
envelope) clients, streamed and whole, text and a tool round trip, usage exact. The login is
stored as `detour account import gemini` leaves it: its access token expired and no Code
Assist project yet. The first calls refresh the token once and find the project once (kept in
the account's row: a restarted proxy does not ask again); a token Code Assist refuses is
refreshed once and the call asked again. The fake Code Assist takes only tokens the fake OAuth
server issued, and only the login's own project."""

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from addons.credentials.store import OAUTH, AccountStore
from addons.credentials.vault import Vault
from tests.captures import checked_events
from tests.e2e.conftest import CLIENT_KEY, start_proxy
from tests.fakes.code_assist import FakeCodeAssist
from tests.fakes.oauth_server import FakeOAuth
from tests.fakes.replies import Text, ToolCall, Usage
from translators import anthropic, canonical, gemini, gemini_code_assist, openai_chat

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
CHAT_URL = "https://api.openai.com/v1/chat/completions"
CODE_ASSIST = "https://cloudcode-pa.googleapis.com/v1internal"
UPSTREAM = "gemini-2.5-pro"
USAGE = Usage(prompt=1000, completion=50, cached=600, reasoning=10)
ANTHROPIC_HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
CHAT_HEADERS = {"authorization": f"Bearer {CLIENT_KEY}"}
GEMINI_CLI_HEADERS = {"authorization": "Bearer ya29.the-clis-own-token-not-real",
                      "user-agent": "GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64)"}


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth(prefix="ya29.fake") as a:
        yield a


@pytest.fixture(scope="module")
def fake(auth):
    with FakeCodeAssist(auth) as f:
        yield f


def env(auth) -> dict:
    out = {k: v for k, v in os.environ.items() if k.lower() not in
           {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}}
    return out | {"DETOUR_KEY_BACKEND": "file",
                  "DETOUR_OAUTH_GEMINI_TOKEN_URL": auth.url("/token")}


def config(fake) -> str:
    return f"""
providers:
  gemini: {{kind: gemini-cli, base_url: "{fake.base_url}"}}
routes:
  via-gca: [gemini/{UPSTREAM}]
"""


class Setup:
    def __init__(self, proxy, store, account, project):
        self.proxy, self.store, self.account, self.project = proxy, store, account, project

    def token(self) -> str:
        return self.store.secrets_of(self.account.id)[0]["access_token"]


@pytest.fixture(scope="module")
def setup(confdir, tmp_path_factory, auth, fake):
    home = tmp_path_factory.mktemp("home")
    store = AccountStore(home / "detour.db", Vault(home, "file"))
    tokens = auth.grant()
    project = fake.onboard(tokens["access_token"])  # a Gemini CLI user, onboarded already
    account = store.add("gemini", "main", OAUTH, tokens, vendor="gemini",
                        expires_at=time.time() - 60, email="user@example.com")
    s = Setup(start_proxy(confdir, home, config(fake), env=env(auth)), store, account, project)
    yield s
    s.proxy.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fake(fake):
    fake.clear()
    yield


def generated(fake) -> list:
    return [r for r in fake.requests if "enerateContent" in r.route]


def assert_sent_as_the_account(setup, sent, stream: bool) -> None:
    assert sent.route == "/v1internal:" + ("streamGenerateContent" if stream
                                           else "generateContent")
    assert sent.path.endswith("?alt=sse") == stream
    assert sent.headers["authorization"] == f"Bearer {setup.token()}"
    assert sent.headers["user-agent"].startswith("GeminiCLI/")
    assert sent.json["project"] == setup.project and sent.json["model"] == UPSTREAM
    assert set(sent.json) <= {"model", "project", "user_prompt_id", "request"}
    assert CLIENT_KEY not in json.dumps(sent.headers) and "the-clis-own" not in json.dumps(
        sent.headers)


def assert_usage_exact(setup, r) -> dict:
    row = setup.proxy.row_of(r)
    assert (row["provider"], row["account"], row["model_upstream"], row["status"]) == (
        "gemini", "db:main", UPSTREAM, 200)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"],
            row["reasoning_tokens"]) == (400, 600, 50, 10)
    assert row["cost_basis"] == "subscription"
    return row


def test_first_calls_refresh_once_and_find_the_project_once(setup, auth, fake):
    refreshes, loads = auth.refresh_calls, fake.load_calls
    fake.enqueue(*[Text("hi from Code Assist", usage=USAGE)] * 6)
    body = {"model": "via-gca", "max_tokens": 50, "messages": [{"role": "user",
                                                                "content": "hi"}]}
    with setup.proxy.client() as c, ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: c.post(ANTHROPIC_URL, json=body,
                                                 headers=ANTHROPIC_HEADERS), range(6)))
    assert [r.status_code for r in answers] == [200] * 6, answers[0].text
    assert auth.refresh_calls - refreshes == 1
    assert fake.load_calls - loads == 1 and fake.onboard_calls == 0
    stored = setup.store.by_id(setup.account.id)
    assert (stored.project_id, stored.plan) == (setup.project, "free-tier")
    assert len(generated(fake)) == 6
    for sent in generated(fake):
        assert_sent_as_the_account(setup, sent, False)
    assert_usage_exact(setup, answers[0])


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_anthropic_client_tool_round_trip(setup, fake, stream):
    fake.enqueue(ToolCall("Bash", {"command": "echo hi"}), Text("it said hi", usage=USAGE))
    tools = [{"name": "Bash", "description": "Run a command", "input_schema": {
        "type": "object", "properties": {"command": {"type": "string"}},
        "required": ["command"], "additionalProperties": False}}]
    messages = [{"role": "user", "content": "Run echo hi"}]
    body = {"model": "via-gca", "max_tokens": 1000, "messages": messages, "tools": tools,
            "stream": stream}
    with setup.proxy.client() as c:
        r = c.post(ANTHROPIC_URL, json=body, headers=ANTHROPIC_HEADERS)
        assert r.status_code == 200, r.text
        resp = canonical.collect_response(checked_events(anthropic, r.content)) if stream \
            else anthropic.decode_response(r.json())
        assert resp.stop_reason == "tool_use"
        content = anthropic.encode_response(resp)["content"]
        call = next(b for b in content if b["type"] == "tool_use")
        assert (call["name"], call["input"]) == ("Bash", {"command": "echo hi"})
        follow = dict(body, messages=messages + [
            {"role": "assistant", "content": content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": call["id"],
                                          "content": "hi"}]}])
        r2 = c.post(ANTHROPIC_URL, json=follow, headers=ANTHROPIC_HEADERS)
    assert r2.status_code == 200, r2.text
    answer = canonical.collect_response(checked_events(anthropic, r2.content)) if stream \
        else anthropic.decode_response(r2.json())
    assert [p.text for p in answer.parts if type(p) is canonical.Text] == ["it said hi"]
    first, second = generated(fake)
    for sent in (first, second):
        assert_sent_as_the_account(setup, sent, stream)
    assert "additionalProperties" not in json.dumps(first.json["request"]["tools"])
    # the result went back by name, after the call with its signature (Gemini 3's rule)
    turns = second.json["request"]["contents"]
    assert turns[-1]["parts"][0]["functionResponse"]["name"] == "Bash"
    assert turns[-2]["parts"][0]["thoughtSignature"].startswith("fake-signature-")
    assert_usage_exact(setup, r2)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_chat_client_text_and_tool_round_trip(setup, fake, stream):
    fake.enqueue(Text("Hello there", usage=USAGE), ToolCall("get_weather", {"city": "Paris"}),
                 Text("Sunny", usage=USAGE))
    tools = [{"type": "function", "function": {
        "name": "get_weather", "parameters": {
            "type": "object", "properties": {"city": {"type": "string"}}}}}]
    extra = {"stream_options": {"include_usage": True}} if stream else {}

    def answer(r) -> canonical.Response:
        assert r.status_code == 200, r.text
        return canonical.collect_response(checked_events(openai_chat, r.content)) if stream \
            else openai_chat.decode_response(r.json())

    with setup.proxy.client() as c:
        hello = c.post(CHAT_URL, headers=CHAT_HEADERS, json={
            "model": "via-gca", "messages": [{"role": "user", "content": "hi"}],
            "stream": stream, **extra})
        assert [p.text for p in answer(hello).parts if type(p) is canonical.Text] == [
            "Hello there"]
        messages = [{"role": "user", "content": "Weather in Paris?"}]
        body = {"model": "via-gca", "messages": messages, "tools": tools, "stream": stream,
                **extra}
        resp = answer(c.post(CHAT_URL, json=body, headers=CHAT_HEADERS))
        call = next(p for p in resp.parts if type(p) is canonical.ToolUse)
        assert (call.name, call.input) == ("get_weather", {"city": "Paris"})
        follow = dict(body, messages=messages + [
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": call.id, "type": "function",
                 "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}]},
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 24C"}])
        r3 = c.post(CHAT_URL, json=follow, headers=CHAT_HEADERS)
    assert [p.text for p in answer(r3).parts if type(p) is canonical.Text] == ["Sunny"]
    for sent in generated(fake):
        assert_sent_as_the_account(setup, sent, stream)
    assert generated(fake)[-1].json["request"]["contents"][-1]["parts"][0][
        "functionResponse"]["response"] == {"output": "sunny, 24C"}
    for r in (hello, r3):
        assert setup.proxy.row_of(r)["client_format"] == "openai-chat"
        assert_usage_exact(setup, r)


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_gemini_cli_envelope_goes_out_as_the_account(setup, fake, stream):
    """Same format: Gemini CLI's own envelope, its project and token replaced by the
    account's, the answer's envelope back as the provider sent it."""
    fake.enqueue(Text("same format", usage=USAGE))
    body = {"model": "via-gca", "project": "the-clis-own-project", "user_prompt_id": "p-1",
            "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                        "session_id": "s-1"}}
    url = CODE_ASSIST + (":streamGenerateContent?alt=sse" if stream else ":generateContent")
    with setup.proxy.client() as c:
        r = c.post(url, json=body, headers=GEMINI_CLI_HEADERS)
    assert r.status_code == 200, r.text
    if stream:
        resp = canonical.collect_response(checked_events(gemini_code_assist, r.content))
        assert all(set(json.loads(line[6:])) == {"response", "traceId"}
                   for line in r.text.splitlines() if line.startswith("data: "))
    else:
        assert set(r.json()) == {"response", "traceId"}
        resp = gemini_code_assist.decode_response(r.json())
    assert [p.text for p in resp.parts if type(p) is canonical.Text] == ["same format"]
    sent = generated(fake)[-1]
    assert_sent_as_the_account(setup, sent, stream)
    assert (sent.json["user_prompt_id"], sent.json["request"]) == ("p-1", body["request"])
    assert sent.headers["user-agent"] == GEMINI_CLI_HEADERS["user-agent"]
    row = assert_usage_exact(setup, r)
    assert row["client_format"] == "gemini-cli"


def test_a_token_code_assist_refuses_is_refreshed_once_and_asked_again(setup, auth, fake):
    auth.revoke_access(setup.token())
    refreshes = auth.refresh_calls
    fake.enqueue(Text("after a refresh", usage=USAGE))
    body = {"model": "via-gca", "max_tokens": 50, "messages": [{"role": "user",
                                                                "content": "hi"}]}
    with setup.proxy.client() as c:
        r = c.post(ANTHROPIC_URL, json=body, headers=ANTHROPIC_HEADERS)
    assert r.status_code == 200, r.text
    assert auth.refresh_calls - refreshes == 1
    refused, answered = generated(fake)
    assert refused.headers["authorization"] != answered.headers["authorization"]
    assert_sent_as_the_account(setup, answered, False)
    route = json.loads(assert_usage_exact(setup, r)["route"])
    assert len(route) == 1 and route[0]["reauthorized"] is True


def test_a_gemini_request_body_never_carries_the_envelope_inside(setup, fake):
    """The envelope is Code Assist's: the Gemini body inside it is a plain Gemini request."""
    fake.enqueue(Text("ok"))
    with setup.proxy.client() as c:
        r = c.post(ANTHROPIC_URL, headers=ANTHROPIC_HEADERS, json={
            "model": "via-gca", "max_tokens": 50, "system": "Be brief.",
            "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 200, r.text
    inner = generated(fake)[-1].json["request"]
    assert gemini.sniff_request(inner) and "project" not in inner and "model" not in inner
    assert inner["systemInstruction"]["parts"] == [{"text": "Be brief."}]


def test_the_project_outlives_a_restart(setup, confdir, auth, fake):
    setup.proxy.mitm.stop()
    loads = fake.load_calls
    proxy = start_proxy(confdir, setup.proxy.home, config(fake), env=env(auth))
    try:
        fake.enqueue(Text("after a restart", usage=USAGE))
        with proxy.client() as c:
            r = c.post(CODE_ASSIST + ":generateContent", headers=GEMINI_CLI_HEADERS, json={
                "model": "via-gca", "project": "p",
                "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}]}})
        assert r.status_code == 200, r.text
        assert fake.load_calls == loads
        assert generated(fake)[-1].json["project"] == setup.project
    finally:
        proxy.mitm.stop()
