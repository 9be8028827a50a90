"""Rate-limit headers steer calls away from an account at zero before it ever answers 429, and
the operator sees it: through a real mitmdump, and mitmweb's REST API for `detour.accounts`
and `detour.routes`. Each account is a key of one loopback FakeOpenAI (or FakeAnthropic, for
Anthropic's own headers), told on cue which rate-limit headers to send
(`fake.response_headers`); an account low on a window goes behind the others."""

import json
import time

import httpx
import pytest

from tests.e2e.conftest import free_port, start_proxy
from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Status

OPENAI_URL = "https://api.openai.com/v1/chat/completions"
SDK = {"user-agent": "OpenAI/Python 1.109.1", "authorization": "Bearer client-key"}
KEY_A, KEY_B = "sk-account-a-0001", "sk-account-b-0002"
PASSWORD = "detour-test-quota"
AT_ZERO = {"x-ratelimit-limit-requests": "3", "x-ratelimit-remaining-requests": "0",
           "x-ratelimit-reset-requests": "1m0s", "x-ratelimit-limit-tokens": "40000",
           "x-ratelimit-remaining-tokens": "39000", "x-ratelimit-reset-tokens": "90ms"}


def config(fake: FakeOpenAI) -> str:
    return (f"providers:\n"
            f"  p: {{kind: openai, base_url: '{fake.base_url}/v1', api_keys: [{KEY_A}, {KEY_B}]}}\n"
            f"routes: {{'*': [p/up-model]}}\n"
            f"clients:\n"
            f"  codex: {{match: 'codex_cli_rs/*', routes: {{'*': [p/codex-model, passthrough]}}}}\n")


def ask(client: httpx.Client, **headers) -> httpx.Response:
    return client.post(OPENAI_URL, json={"model": "gpt-4o", "messages": [
        {"role": "user", "content": "hi"}]}, headers=SDK | headers)


def keys_used(fake: FakeOpenAI) -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in fake.requests]


@pytest.fixture
def fake():
    with FakeOpenAI(keys={KEY_A, KEY_B}) as fake:
        yield fake


def test_an_account_at_zero_rests_until_its_reset_without_a_429(confdir, tmp_path, fake):
    proxy = start_proxy(confdir, tmp_path / "home", config(fake))
    try:
        with proxy.client() as c:
            fake.response_headers.update(AT_ZERO)  # account A's answer says: no requests left
            first = ask(c)
            fake.response_headers.clear()
            after = [ask(c) for _ in range(3)]
            assert [r.status_code for r in [first, *after]] == [200] * 4
            # A answered once, then rested: the vendor never had to refuse anyone
            assert keys_used(fake) == [KEY_A, KEY_B, KEY_B, KEY_B]
            # A at zero went behind B (and rests): B is asked first, alone
            route = json.loads(proxy.row_of(after[0])["route"])
            assert [(a["account"], a["status"]) for a in route] == [(route[0]["account"], 200)]
            assert route[0]["account"].startswith("key2:")
            # a 429 carries the headers too: B's tokens are out for 5 minutes, longer than its
            # Retry-After; with A resting as well, the client is told to come back when A wakes
            fake.enqueue(Status(429, headers={"retry-after": "1",
                                              "x-ratelimit-remaining-tokens": "0",
                                              "x-ratelimit-reset-tokens": "5m0s"}))
            refused = ask(c)
            assert refused.status_code == 429, refused.text
            assert 1 < int(refused.headers["retry-after"]) <= 60
            message = refused.json()["error"]["message"]
            assert "cooling down" in message and "rate-limit headers: requests at 0" in message
            assert keys_used(fake) == [KEY_A, KEY_B, KEY_B, KEY_B, KEY_B]
            assert ask(c).status_code == 429  # B's rest is its 5 minutes, not 1 s
            assert len(fake.requests) == 5
    finally:
        proxy.mitm.stop()


def command(web_port: int, name: str) -> dict:
    # mitmweb's API wants its XSRF cookie echoed in a header (any matching value will do)
    r = httpx.post(f"http://127.0.0.1:{web_port}/commands/{name}", json={"arguments": []},
                   headers={"Authorization": f"Bearer {PASSWORD}", "X-XSRFToken": "q1",
                            "Cookie": "_mitmproxy_xsrf=q1"}, trust_env=False, timeout=10)
    r.raise_for_status()
    return json.loads(r.json()["value"])


def test_accounts_and_routes_through_mitmweb(confdir, tmp_path, fake):
    web_port = free_port()
    proxy = start_proxy(confdir, tmp_path / "home", config(fake), web=(web_port, PASSWORD))
    web_port = proxy.mitm.web_port  # another, if that one was taken
    try:
        before = command(web_port, "detour.accounts")["accounts"]
        assert [(a["provider"], a["account"], a["state"]) for a in before] == [
            ("p", "account 1", "ready"), ("p", "account 2", "ready")]
        assert before[0]["label"].startswith("key1:") and before[0]["rate_limits"] is None
        with proxy.client() as c:
            fake.response_headers.update(AT_ZERO)
            assert ask(c).status_code == 200  # A, now at zero
            fake.response_headers.clear()
            fake.enqueue(Status(500, message="upstream exploded"))
            assert ask(c).status_code == 502  # B failed, A rests
        accounts = command(web_port, "detour.accounts")["accounts"]
        a, b = accounts
        assert a["state"] == "resting" and a["rest"]["reason"] == "rate-limit"
        assert a["rest"]["cause"] == "rate-limit headers: requests at 0"
        assert 50 < a["rest"]["seconds_left"] <= 60
        requests = a["rate_limits"]["windows"]["requests"]
        assert (requests["remaining"], requests["limit"]) == (0, 3)
        assert 50 < requests["resets_in"] <= 60 and requests["resets_at"].endswith("+00:00")
        assert a["recent_errors"] == []
        # B's transient rest is 1 s: on a busy machine it can be over before it is read
        assert (b["state"], b["rest"]["reason"]) == ("resting", "transient") if b["rest"] \
            else b["state"] == "ready"
        assert [e["error"] for e in b["recent_errors"]] == ["HTTP 500, upstream exploded"]
        assert b["rate_limits"] is None
        # no key anywhere in what the operator sees
        shown = json.dumps(accounts)
        assert KEY_A not in shown and KEY_B not in shown

        routes = command(web_port, "detour.routes")["routes"]
        assert [(r["client"], r["configured"]) for r in routes] == [
            ("codex", "clients.codex.routes.*"), (None, "routes.*")]
        codex, default = routes
        assert codex["match"] == ["codex_cli_rs/*"]
        # in the order they would be asked now: A, at zero, behind B; both rest for up-model
        # only (vendors limit rates per model), so for codex-model they are ready
        assert [(c["provider"], c.get("account"), c["model"], c["state"])
                for c in codex["candidates"]] == [
            ("p", "account 2", "codex-model", "ready"),
            ("p", "account 1", "codex-model", "ready"),
            ("passthrough", None, "*", "ready")]
        assert set(a["model_rests"]) == {"up-model"} and set(b["model_rests"]) == {"up-model"}
        # A rests for minutes; B (as above) may be over its 1 s already
        assert sorted(c["state"] for c in default["candidates"]) in (
            ["resting", "resting"], ["ready", "resting"])
        assert KEY_A not in json.dumps(routes)
    finally:
        proxy.mitm.stop()


LOW = {"x-ratelimit-limit-requests": "100", "x-ratelimit-remaining-requests": "5",
       "x-ratelimit-reset-requests": "1m0s"}


def test_an_account_low_on_a_window_goes_behind_the_others(confdir, tmp_path, fake):
    proxy = start_proxy(confdir, tmp_path / "home", config(fake))
    try:
        with proxy.client() as c:
            fake.response_headers.update(LOW)  # A's answer: 5 of 100 requests left
            assert ask(c).status_code == 200
            fake.response_headers.clear()
            assert [ask(c).status_code for _ in range(4)] == [200] * 4
            # round-robin alone would give A every other call: low on a window, it goes
            # behind B (it does not rest: it has some left)
            assert keys_used(fake) == [KEY_A, KEY_B, KEY_B, KEY_B, KEY_B]
            fake.enqueue(Status(500))
            assert ask(c).status_code == 200  # B failed: A still serves
            assert keys_used(fake)[-2:] == [KEY_B, KEY_A]
    finally:
        proxy.mitm.stop()


def test_anthropic_headers_at_zero_rest_the_account_until_their_reset(confdir, tmp_path):
    with FakeAnthropic(keys={KEY_A, KEY_B}) as vendor:
        proxy = start_proxy(confdir, tmp_path / "home", (
            f"providers:\n  a: {{kind: anthropic, base_url: '{vendor.base_url}', "
            f"api_keys: [{KEY_A}, {KEY_B}]}}\nroutes: {{'*': [a/claude-up]}}\n"))
        reset = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() + 120))
        try:
            with proxy.client() as c:
                def claude():
                    return c.post("https://api.anthropic.com/v1/messages", json={
                        "model": "claude-x", "max_tokens": 10,
                        "messages": [{"role": "user", "content": "hi"}]}, headers={
                        "x-api-key": "client-key", "anthropic-version": "2023-06-01"})
                # A's answer: its input tokens for this minute are spent
                vendor.response_headers.update({
                    "anthropic-ratelimit-input-tokens-limit": "40000",
                    "anthropic-ratelimit-input-tokens-remaining": "0",
                    "anthropic-ratelimit-input-tokens-reset": reset})
                assert claude().status_code == 200
                vendor.response_headers.clear()
                assert [claude().status_code for _ in range(3)] == [200] * 3
            assert [r.headers["x-api-key"] for r in vendor.requests] == [KEY_A] + [KEY_B] * 3
        finally:
            proxy.mitm.stop()


ANTHROPIC_NO_CREDIT = {"type": "error", "error": {
    "type": "invalid_request_error",
    "message": "Your credit balance is too low to access the Anthropic API. Please go to Plans "
               "& Billing to upgrade or purchase credits."}}


def test_an_anthropic_balance_too_low_rests_that_account_for_every_model(confdir, tmp_path):
    """Anthropic says so with a 400 (which otherwise means the request itself was refused, and
    no other account would be asked): an exhausted balance, the next account answers."""
    with FakeAnthropic(keys={KEY_A, KEY_B}) as vendor:
        proxy = start_proxy(confdir, tmp_path / "home", (
            f"providers:\n  a: {{kind: anthropic, base_url: '{vendor.base_url}', "
            f"api_keys: [{{key: {KEY_A}, priority: 1}}, {{key: {KEY_B}, priority: 2}}]}}\n"
            f"routes: {{'*': [a/*]}}\n"))
        try:
            with proxy.client() as c:
                def claude(model: str):
                    return c.post("https://api.anthropic.com/v1/messages", json={
                        "model": model, "max_tokens": 10,
                        "messages": [{"role": "user", "content": "hi"}]}, headers={
                        "x-api-key": "client-key", "anthropic-version": "2023-06-01"})
                vendor.enqueue(Status(400, body=ANTHROPIC_NO_CREDIT))
                first = claude("claude-one")
                assert first.status_code == 200, first.text
                second = claude("claude-two")  # another model: A is not asked either
                assert second.status_code == 200
            assert [r.headers["x-api-key"] for r in vendor.requests] == [KEY_A, KEY_B, KEY_B]
            attempt = json.loads(proxy.row_of(first)["route"])[0]
            assert (attempt["status"], attempt["rest"], attempt["rest_scope"]) == (
                400, "quota", "account")
            assert attempt["rest_s"] == 900  # no reset said: detour's first quota rest
        finally:
            proxy.mitm.stop()
