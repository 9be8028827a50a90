"""The Code Assist fake answers as Code Assist does: Bearer tokens of its FakeOAuth only, a new
user onboarded through a long-running operation (polled by GET, or by POSTing onboardUser
again as older Gemini CLIs do), model calls only in the user's own project, answers in the
`{"response": ...}` envelope."""

import json

import httpx
import pytest

from tests.fakes.code_assist import FakeCodeAssist
from tests.fakes.oauth_server import FakeOAuth
from tests.fakes.replies import Text

META = {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED", "pluginType": "GEMINI"}
CONTENTS = [{"role": "user", "parts": [{"text": "hi"}]}]


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth() as a:
        yield a


@pytest.fixture(scope="module")
def fake(auth):
    with FakeCodeAssist(auth) as f:
        yield f


def call(fake, token, method, body=None, verb="POST"):
    return httpx.request(verb, fake.url(f"/v1internal{method}"), json=body, trust_env=False,
                         headers={"authorization": f"Bearer {token}"} if token else {})


def test_only_its_oauth_servers_live_tokens_are_taken(auth, fake):
    assert call(fake, None, ":loadCodeAssist", {}).status_code == 401
    r = call(fake, "ya29.made-up-not-real", ":loadCodeAssist", {})
    assert r.status_code == 401 and r.json()["error"]["status"] == "UNAUTHENTICATED"
    token = auth.grant()["access_token"]
    assert call(fake, token, ":loadCodeAssist", {}).status_code == 200
    auth.revoke_access(token)
    assert call(fake, token, ":loadCodeAssist", {}).status_code == 401


@pytest.mark.parametrize("poll", ["get", "post-again"])
def test_a_new_user_is_onboarded_by_a_long_running_operation(auth, fake, poll):
    token = auth.grant()["access_token"]
    load = call(fake, token, ":loadCodeAssist", {"metadata": META}).json()
    assert "currentTier" not in load and load["allowedTiers"][0]["isDefault"] is True
    refused = call(fake, token, ":onboardUser", {"tierId": "standard-tier", "metadata": META})
    assert refused.status_code == 400
    request = {"tierId": "free-tier", "metadata": META}
    op = call(fake, token, ":onboardUser", request).json()
    assert op["done"] is False and op["name"].startswith("operations/")
    done = (call(fake, token, "/" + op["name"], verb="GET") if poll == "get"
            else call(fake, token, ":onboardUser", request)).json()
    project = done["response"]["cloudaicompanionProject"]["id"]
    assert done["done"] is True and project == fake.projects[auth.login_of(token)]
    load = call(fake, token, ":loadCodeAssist", {"metadata": META}).json()
    assert (load["currentTier"]["id"], load["cloudaicompanionProject"]) == ("free-tier", project)
    # a refreshed token is the same user, with the same project
    refreshed = httpx.post(auth.url("/token"), trust_env=False, data={
        "grant_type": "refresh_token",
        "refresh_token": auth.issued_refresh[auth.issued_access.index(token)]}).json()
    assert call(fake, refreshed["access_token"], ":loadCodeAssist", {}).json()[
        "cloudaicompanionProject"] == project


def test_model_calls_in_the_users_project_answered_in_the_envelope(auth, fake):
    token = auth.grant()["access_token"]
    project = fake.onboard(token)
    other = fake.onboard(auth.grant()["access_token"])
    body = {"model": "gemini-2.5-pro", "project": project, "request": {"contents": CONTENTS}}
    assert call(fake, token, ":generateContent", dict(body, project=other)).status_code == 403
    assert call(fake, token, ":generateContent", dict(body, extra=1)).status_code == 400
    fake.enqueue(Text("whole"), Text("streamed"))
    whole = call(fake, token, ":generateContent", body).json()
    assert set(whole) == {"response", "traceId"}
    assert whole["response"]["candidates"][0]["content"]["parts"] == [{"text": "whole"}]
    assert whole["response"]["modelVersion"] == "gemini-2.5-pro"
    stream = call(fake, token, ":streamGenerateContent?alt=sse", body)
    events = [json.loads(line[6:]) for line in stream.text.splitlines()
              if line.startswith("data: ")]
    assert events and all(set(e) == {"response", "traceId"} for e in events)
    assert "usageMetadata" in events[-1]["response"]
