"""A ChatGPT plan's usage limit (the Codex backend's 429 `usage_limit_reached`, with
`resets_in_seconds` or `resets_at`) is the login's, for every model, until the reset it names:
a gateway that rested it per model kept choosing the exhausted login for the other models
(CLIProxyAPI #5286), and one that ignored the reset retried it every few minutes (9router
PR #2879)."""

import json
import time

import httpx
import pytest

from addons.failure_policy import MAX_REST, ErrorBody, Scope, vendor_wait, verdict
from addons.routing import Rest
from tests.addons.test_forwarding import CHAT_OK, Upstreams, setup

LIMIT = {"error": {"type": "usage_limit_reached", "message": "The usage limit has been reached",
                   "plan_type": "plus", "resets_in_seconds": 7200}}


def test_the_limit_is_the_whole_logins_quota():
    body = ErrorBody.read(LIMIT)
    v = verdict(429, message=LIMIT["error"]["message"], body=body)
    assert (v.rest, v.scope) == (Rest.QUOTA, Scope.ACCOUNT)


@pytest.mark.parametrize("reset, wait", [
    ({"resets_in_seconds": 7200}, 7200),
    ({"resets_at": "in"}, None),  # not a time: no wait read
    ({"resets_in_seconds": -5}, 0),
])
def test_the_reset_it_names_is_the_vendors_wait(reset, wait):
    error = {"type": "usage_limit_reached", "message": "m", **reset}
    assert vendor_wait({}, ErrorBody.read({"error": error})) == wait


def test_an_epoch_reset_is_a_wait_from_now():
    error = {"type": "usage_limit_reached", "message": "m", "resets_at": int(time.time()) + 3600}
    assert 3590 <= vendor_wait({}, ErrorBody.read({"error": error})) <= 3600
    # a header still wins
    assert vendor_wait({"retry-after": "5"}, ErrorBody.read({"error": error})) == 5


CONFIG = """
providers:
  chatgpt: {kind: openai, base_url: "http://chatgpt.test/v1", api_keys: [login-a, login-b]}
routes:
  model-one: [chatgpt/gpt-one]
  model-two: [chatgpt/gpt-two]
cooldown_seconds: 30
"""


async def test_an_exhausted_login_is_not_asked_for_another_model_until_its_reset():
    up = Upstreams(**{"chatgpt.test": [httpx.Response(429, json=LIMIT),
                                       httpx.Response(200, json=CHAT_OK),
                                       httpx.Response(200, json=CHAT_OK)]})
    fwd, job = setup(up, "model-one", config=CONFIG)
    status, _, _ = await fwd.complete(job)
    assert status == 200
    first = job.candidates[0]
    assert 7000 < fwd.cooldowns.remaining(first.key, first.model) <= min(7200, MAX_REST)
    # the other model's call goes to the other login at once, not to the exhausted one
    fwd2, job2 = setup(up, "model-two", config=CONFIG)
    fwd2.cooldowns = fwd.cooldowns
    status, _, _ = await fwd2.complete(job2)
    assert status == 200
    assert [r.headers["authorization"] for r in up.seen] == [
        "Bearer login-a", "Bearer login-b", "Bearer login-b"]
    assert json.loads(up.seen[-1].content)["model"] == "gpt-two"
