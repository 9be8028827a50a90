"""Claude OAuth accounts (subscription logins) on the request path of a real mitmdump: the
token goes on as a Bearer with Anthropic's OAuth beta flag (never x-api-key); concurrent calls
on an expired token make one refresh; a token the vendor refuses (401) is refreshed once and
the call retried on the same account; a spent login (invalid_grant) is marked needs_login,
skipped, shown by `detour account list`, and named in the client's error."""

import base64
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from click.testing import CliRunner

from addons.credentials.store import API_KEY, OAUTH, AccountStore
from addons.credentials.vault import Vault
from scripts.cli import cli
from tests.e2e.conftest import start_proxy
from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.oauth_server import AcceptedTokens, FakeOAuth

URL = "https://api.anthropic.com/v1/messages"
SPARE_KEY = "stored-spare-key-not-real-5e7a9c1b"
BODY = {"model": "claude-sub", "max_tokens": 20, "messages": [{"role": "user",
                                                                "content": "hi"}]}
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "client-own-key-not-real",
           "anthropic-beta": "claude-code-20250219"}


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth(prefix="sk-ant-oat01-fake") as a:
        yield a


@pytest.fixture(scope="module")
def vendor(auth):
    with FakeAnthropic() as v:
        v.keys = AcceptedTokens(auth)
        yield v


def env(auth) -> dict:
    out = {k: v for k, v in os.environ.items() if k.lower() not in
           {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}}
    out |= {"DETOUR_KEY_BACKEND": "file",
            "DETOUR_OAUTH_CLAUDE_TOKEN_URL": auth.url("/v1/oauth/token")}
    return out


@pytest.fixture(scope="module")
def setup(confdir, tmp_path_factory, auth, vendor):
    home = tmp_path_factory.mktemp("home")
    store = AccountStore(home / "detour.db", Vault(home, "file"))
    # logged in, the access token already expired: the first calls refresh it
    first_tokens = auth.grant()  # as Claude Code held them when detour adopted the login
    first = store.add("claude", "first", OAUTH, first_tokens, vendor="claude",
                      expires_at=time.time() - 60, email="first@example.com", plan="max")
    second = store.add("claude", "second", OAUTH, auth.grant(), vendor="claude",
                       priority=2, expires_at=time.time() + 3600)
    store.add("claude", "spare-key", API_KEY, {"api_key": SPARE_KEY}, priority=3)
    config = f"""
providers:
  claude: {{kind: anthropic, base_url: "{vendor.base_url}"}}
routes:
  claude-sub: [claude/*]
prices:
  claude-sub: {{input: 3, output: 15}}
"""
    proxy = start_proxy(confdir, home, config, env=env(auth))
    proxy.first_tokens = first_tokens
    yield proxy, store, first, second
    proxy.mitm.stop()


def messages(vendor):
    return [r for r in vendor.requests if r.route.endswith("/messages")]


def test_expired_token_one_refresh_for_concurrent_calls(setup, auth, vendor):
    proxy, store, first, _ = setup
    before = auth.refresh_calls
    with proxy.client() as c, ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: c.post(URL, json=BODY, headers=HEADERS), range(12)))
    assert [r.status_code for r in answers] == [200] * 12, answers[0].text
    assert auth.refresh_calls - before == 1
    token = store.secrets_of(first.id)[0]["access_token"]
    sent = messages(vendor)[-12:]
    for r in sent:
        assert r.headers["authorization"] == f"Bearer {token}"
        assert "x-api-key" not in r.headers
        assert r.headers["anthropic-beta"].split(",") == ["claude-code-20250219",
                                                          "oauth-2025-04-20"]
    rows = [proxy.row_of(r) for r in answers]
    assert {row["account"] for row in rows} == {"db:first"}
    # a subscription login's calls record the API price they would have cost, marked so
    assert {row["cost_basis"] for row in rows} == {"subscription"}
    assert all(row["cost_usd"] > 0 for row in rows)
    assert "client-own-key" not in json.dumps([r.headers for r in sent])


@pytest.mark.parametrize("host", ["platform.claude.com", "console.anthropic.com"])
def test_the_clis_own_refresh_is_answered_from_the_store(setup, auth, host):
    """One owner per login: Claude Code refreshing the login detour adopted gets detour's
    current access token and its own refresh token back; nothing is spent at the vendor."""
    proxy, store, first, _ = setup
    kept = proxy.first_tokens["refresh_token"]
    calls = auth.refresh_calls
    with proxy.client() as c:
        r = c.post(f"https://{host}/v1/oauth/token", json={
            "grant_type": "refresh_token", "refresh_token": kept,
            "client_id": "9d1c250a-e61b-44d9-88ed-5944d1962f5e"})
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["access_token"] == store.secrets_of(first.id)[0]["access_token"]
    assert answer["refresh_token"] == kept and answer["expires_in"] > 3000
    assert auth.refresh_calls == calls
    assert auth.accepts(answer["access_token"])


def test_refused_token_is_refreshed_once_and_retried(setup, auth, vendor):
    proxy, store, first, _ = setup
    auth.revoke_access(store.secrets_of(first.id)[0]["access_token"])
    before = auth.refresh_calls
    with proxy.client() as c:
        r = c.post(URL, json=BODY, headers=HEADERS)
    assert r.status_code == 200, r.text
    assert auth.refresh_calls - before == 1
    row = proxy.row_of(r)
    assert row["account"] == "db:first"
    route = json.loads(row["route"])
    assert len(route) == 1 and route[0]["reauthorized"] is True


def test_spent_login_needs_login_and_is_skipped(setup, auth, vendor):
    proxy, store, first, second = setup
    token = store.secrets_of(first.id)[0]["access_token"]
    second_refresh = store.secrets_of(second.id)[0]["refresh_token"]
    auth.revoke_all()  # logged out elsewhere: every refresh token refused
    auth.revoke_access(token)
    with proxy.client() as c:
        r = c.post(URL, json=BODY, headers=HEADERS)
        assert r.status_code == 200, r.text  # the second account took it
        assert proxy.row_of(r)["account"] == "db:second"
        listed = json.loads(CliRunner().invoke(
            cli, ["--home", str(proxy.home), "account", "list", "--json"],
            env={"DETOUR_KEY_BACKEND": "file"}).output)
        states = {x["name"]: (x["state"], x["last_error"]) for x in listed}
        assert states["first"][0] == "needs_login" and "invalid_grant" in states["first"][1]
        assert states["second"][0] == "ready"
        # the second's login spent too: the client is told which login to renew
        auth.revoke_access(store.secrets_of(second.id)[0]["access_token"])
        r = c.post(URL, json=BODY, headers=HEADERS)
    assert r.status_code in (401, 502), r.text
    message = r.json()["error"]["message"]
    assert "needs login" in message and "detour account login claude --name first" in message
    assert second_refresh not in r.text and token not in r.text


def encodings(secret: str) -> list[bytes]:
    """A secret as it could sit in a file: itself, hex, and base64 (standard and URL-safe) at
    each of the three alignments it can have inside a longer encoded blob."""
    raw = secret.encode()
    out = [raw, raw.hex().encode(), raw.hex().upper().encode()]
    for lead in range(3):
        for enc in (base64.b64encode, base64.urlsafe_b64encode):
            text = enc(b"\0" * lead + raw)
            # the characters that depend on the lead bytes or the padding are left out
            out.append(text[(lead * 4 + 2) // 3 + (1 if lead else 0):-4 or None])
    return [o for o in out if len(o) >= 12]


def test_secrets_are_encrypted_at_rest(setup, auth):
    proxy, *_ = setup
    proxy.rows()  # the usage rows are flushed by now
    secrets = set(auth.issued_access) | set(auth.issued_refresh) | {SPARE_KEY}
    assert len(secrets) >= 6
    files = [p for p in proxy.home.rglob("*") if p.is_file()]
    assert {"detour.db", "credentials.key", "config.yaml"} <= {p.name for p in files}
    for path in files:
        data = path.read_bytes()
        for secret in secrets:
            for form in encodings(secret):
                assert form not in data, f"{path.name} holds a secret ({form[:12]!r}...)"
    for name in ("credentials.key", "detour.db", "detour.db-wal"):
        path = proxy.home / name
        if path.exists():
            assert oct(path.stat().st_mode & 0o777) == "0o600", name
