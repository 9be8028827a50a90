"""The `gemini-cli` provider kind (Code Assist with a Google login) in the forwarder: the
account's project found once per account (loadCodeAssist, or onboarding a new user) and named
in every call's envelope, against the loopback Code Assist and OAuth fakes, with a config
account's access token (`file:`); a token Code Assist refuses is the account's failure."""

import asyncio
import json
import time

import pytest

from addons.call import Call
from addons.config import parse_config
from addons.credentials import logins
from addons.credentials.provider import CredentialProvider
from addons.credentials.store import OAUTH, AccountStore
from addons.forwarding import Forwarder, Job
from addons.routing import CooldownBook, build_providers, plan
from tests.captures import CAPTURES, anthropic_events
from tests.fakes.code_assist import FakeCodeAssist
from tests.fakes.oauth_server import FakeOAuth
from tests.fakes.replies import Text, ToolCall, Usage
from translators import canonical

USAGE = Usage(prompt=1000, completion=50, cached=600, reasoning=10)


# ---------------------------------------------------------------- the forwarder


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth(prefix="ya29.fake") as a:
        yield a


@pytest.fixture(scope="module")
def code_assist(auth):
    with FakeCodeAssist(auth) as fake:
        yield fake


def forwarder(code_assist, token_file=None) -> Forwarder:
    keys = f', api_keys: ["file:{token_file}"]' if token_file else ""
    config = parse_config(f"""
providers:
  gca: {{kind: gemini-cli, base_url: "{code_assist.base_url}"{keys}}}
routes:
  via-gca: [gca/gemini-2.5-pro]
""")
    return Forwarder(config, CooldownBook())


def job_for(fwd: Forwarder, stream: bool, tools: bool = False, stored=()) -> Job:
    name = "tool-call" if tools else "text"
    body = json.loads((CAPTURES / f"claude-code.messages.{name}.request.json").read_text())
    body.update(model="via-gca", stream=stream)
    raw = json.dumps(body).encode()
    call = Call("flow1", "test", "anthropic", lambda row: None)
    call.requested("via-gca", stream)
    return Job("flow1", "anthropic", {"x-api-key": "client-key-not-real"},
               "http://vendor.test/v1/messages", raw, body, "via-gca", stream,
               plan(fwd.config, build_providers(fwd.config, stored), "via-gca"), call)


def generate_calls(fake) -> list:
    return [r for r in fake.requests if "enerateContent" in r.route]


async def test_a_config_accounts_project_is_found_once_and_named_in_every_call(
        auth, code_assist, tmp_path):
    token = auth.grant()["access_token"]
    project = code_assist.onboard(token)
    (tmp_path / "token").write_text(token + "\n")
    fwd = forwarder(code_assist, tmp_path / "token")
    code_assist.clear()
    loads = code_assist.load_calls
    code_assist.enqueue(*[Text("from Code Assist", usage=USAGE)] * 4)
    # four calls at once: one lookup, the others wait for it
    answers = await asyncio.gather(*(fwd.complete(job_for(fwd, False)) for _ in range(4)))
    assert [a[0] for a in answers] == [200] * 4, answers[0][2]
    assert code_assist.load_calls - loads == 1 and fwd.projects.discoveries == 1
    msg = json.loads(answers[0][2])
    assert [b["text"] for b in msg["content"] if b["type"] == "text"] == ["from Code Assist"]
    assert (msg["usage"]["input_tokens"], msg["usage"]["cache_read_input_tokens"],
            msg["usage"]["output_tokens"]) == (400, 600, 50)
    for sent in generate_calls(code_assist):
        assert sent.route == "/v1internal:generateContent"
        assert sent.headers["authorization"] == f"Bearer {token}"
        assert sent.json["project"] == project and sent.json["model"] == "gemini-2.5-pro"
        assert sent.json["request"]["contents"]
        assert "client-key" not in json.dumps(sent.headers)
    # streamed, later: the project is known, no lookup
    code_assist.enqueue(ToolCall("Bash", {"command": "ls"}))
    job = job_for(fwd, True, tools=True)
    opened = await fwd.open(job)
    body = b"".join([chunk async for chunk in fwd.stream(job, opened)])
    answer = canonical.collect_response(anthropic_events(body))
    assert [(p.name, p.input) for p in answer.parts if type(p) is canonical.ToolUse] == [
        ("Bash", {"command": "ls"})]
    assert generate_calls(code_assist)[-1].route == "/v1internal:streamGenerateContent"
    assert generate_calls(code_assist)[-1].path.endswith("?alt=sse")
    assert code_assist.load_calls - loads == 1
    await fwd.aclose()


async def test_a_new_user_is_onboarded_then_its_project_named(auth, code_assist, tmp_path,
                                                             monkeypatch):
    monkeypatch.setattr(logins, "ONBOARD_POLL_SECONDS", 0.0)
    token = auth.grant()["access_token"]
    (tmp_path / "token").write_text(token)
    fwd = forwarder(code_assist, tmp_path / "token")
    onboards, polls = code_assist.onboard_calls, code_assist.polls
    code_assist.enqueue(Text("hello, new user"))
    status, _, body = await fwd.complete(job_for(fwd, False))
    assert status == 200, body
    assert (code_assist.onboard_calls - onboards, code_assist.polls - polls) == (1, 1)
    project = code_assist.projects[auth.login_of(token)]
    assert generate_calls(code_assist)[-1].json["project"] == project
    await fwd.aclose()


async def test_a_token_code_assist_refuses_is_the_accounts_failure(auth, code_assist, tmp_path):
    (tmp_path / "token").write_text("ya29.never-issued-not-real")
    fwd = forwarder(code_assist, tmp_path / "token")
    job = job_for(fwd, False)
    status, _, body = await fwd.complete(job)
    assert status in (401, 502), body
    message = json.loads(body)["error"]["message"]
    assert "Code Assist project" in message and "HTTP 401" in message
    assert "ya29.never-issued" not in message
    assert not generate_calls(code_assist) or all(
        r.headers["authorization"] != "Bearer ya29.never-issued-not-real"
        for r in generate_calls(code_assist))
    await fwd.aclose()


async def test_a_stored_login_refused_while_finding_its_project_is_refreshed_once(
        auth, code_assist, tmp_path, monkeypatch):
    """A 401 on the project lookup is the token's: one refresh, the same account asked again,
    and the project found is kept in the login's row."""
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    monkeypatch.setenv("DETOUR_OAUTH_GEMINI_TOKEN_URL", auth.url("/token"))
    store = AccountStore(tmp_path / "detour.db")
    tokens = auth.grant()
    project = code_assist.onboard(tokens["access_token"])
    acct = store.add("gca", "main", OAUTH, tokens, vendor="gemini",
                     expires_at=time.time() + 3600)
    auth.revoke_access(tokens["access_token"])  # not expired, yet refused
    fwd = forwarder(code_assist)
    fwd.credentials = creds = CredentialProvider(store)
    refreshes = auth.refresh_calls
    code_assist.clear()
    code_assist.enqueue(Text("found it"))
    job = job_for(fwd, False, stored=creds.load())
    status, _, body = await fwd.complete(job)
    assert status == 200, body
    assert auth.refresh_calls - refreshes == 1
    lookups = [r for r in code_assist.requests if r.route.endswith(":loadCodeAssist")]
    assert [r.headers["authorization"] for r in lookups] == [
        f"Bearer {tokens['access_token']}", f"Bearer {creds.token(job.candidates[0].account)}"]
    assert store.by_id(acct.id).project_id == project
    assert job.row.route[-1]["reauthorized"] is True
    sent = generate_calls(code_assist)[-1]
    assert sent.json["project"] == project
    assert sent.headers["authorization"] == f"Bearer {creds.token(job.candidates[0].account)}"
    await fwd.aclose()
    await creds.aclose()
