"""`detour account login`: each flow against the loopback OAuth server (tests/fakes/
oauth_server.py) with the vendors' URLs overridden by environment. PKCE is verified by the
server (a wrong verifier fails); the device flow waits through authorization_pending and
slows down on slow_down; Copilot's GitHub token buys a Copilot token; iFlow's code is
exchanged with its client secret (form and HTTP Basic, checked by the fake) and its user info
hands out the API key; a refused or interrupted login stores nothing."""

import asyncio
import json
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from addons.credentials import logins, oauth
from addons.credentials.store import AccountStore
from addons.credentials.vendors import VENDORS
from scripts.cli import cli
from tests.fakes.oauth_server import FakeOAuth

BROWSER = f"{sys.executable} {Path(__file__).resolve().parents[1] / 'fakes' / 'browser.py'} %s"
IFLOW = VENDORS["iflow"]


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth() as a:
        yield a


@pytest.fixture(autouse=True)
def vendor_urls(auth, monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    monkeypatch.setenv("BROWSER", BROWSER)
    for name in VENDORS:
        up = name.upper()
        monkeypatch.setenv(f"DETOUR_OAUTH_{up}_AUTHORIZE_URL", auth.url("/authorize"))
        monkeypatch.setenv(f"DETOUR_OAUTH_{up}_TOKEN_URL", auth.url("/token"))
        monkeypatch.setenv(f"DETOUR_OAUTH_{up}_DEVICE_URL", auth.url("/device/code"))
        monkeypatch.setenv(f"DETOUR_OAUTH_{up}_API_KEY_URL",
                           auth.url("/copilot_internal/v2/token"))
        monkeypatch.setenv(f"DETOUR_OAUTH_{up}_CALLBACK_PORT", "0")
        monkeypatch.setenv(f"DETOUR_OAUTH_{up}_CODE_ASSIST_URL", auth.base_url)
    # iFlow's own authorize page and user info
    monkeypatch.setenv("DETOUR_OAUTH_IFLOW_AUTHORIZE_URL", auth.url("/oauth"))
    monkeypatch.setenv("DETOUR_OAUTH_IFLOW_API_KEY_URL", auth.url("/api/oauth/getUserInfo"))
    auth.client_secrets[IFLOW.client_id] = IFLOW.client_secret
    monkeypatch.setattr(logins, "ONBOARD_POLL_SECONDS", 0.01)
    auth.deny = False


def detour(home, *args, expect=0):
    result = CliRunner().invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code == expect, result.output
    return result.output


@pytest.mark.parametrize("vendor", ["claude", "codex", "gemini", "antigravity"])
def test_pkce_login_through_the_browser(tmp_path, auth, vendor):
    calls = auth.code_calls
    out = detour(tmp_path, "account", "login", vendor, "--name", "work")
    assert f"logged in: {vendor}/work (user@example.com)" in out
    assert auth.code_calls == calls + 1
    stored = AccountStore(tmp_path / "detour.db").get(vendor, "work", secrets=True)
    assert stored.kind == "oauth" and stored.vendor == vendor
    assert stored.secrets["access_token"] in auth.issued_access
    assert stored.secrets["refresh_token"] and stored.expires_at
    if vendor == "codex":
        assert (stored.plan, stored.account_id) == ("plus", "acct-123")
    if vendor in ("gemini", "antigravity"):  # Code Assist: onboarded once, then found
        assert (stored.project_id, stored.plan) == ("fake-project-42", "free-tier")
        assert auth.onboard_calls == 1
    listing = json.loads(detour(tmp_path, "account", "list", "--json"))
    assert listing[0]["state"] == "ready" and stored.secrets["access_token"] not in str(listing)


def test_account_test_with_a_login(tmp_path, auth):
    """`detour account test` on an OAuth login: Bearer + OAuth beta flag at the model list."""
    from tests.fakes.anthropic_vendor import FakeAnthropic
    from tests.fakes.oauth_server import AcceptedTokens
    with FakeAnthropic() as vendor:
        vendor.keys = AcceptedTokens(auth)
        tmp_path.mkdir(exist_ok=True)
        (tmp_path / "config.yaml").write_text(
            f'providers:\n  claude: {{kind: anthropic, base_url: "{vendor.base_url}"}}\n')
        detour(tmp_path, "account", "login", "claude", "--name", "sub")
        assert "ok (HTTP 200" in detour(tmp_path, "account", "test", "claude", "sub")
        seen = vendor.requests[-1].headers
        assert seen["authorization"].startswith("Bearer fake-access-")
        assert "oauth-2025-04-20" in seen["anthropic-beta"] and "x-api-key" not in seen


def test_refused_or_interrupted_login_stores_nothing(tmp_path, auth, monkeypatch):
    auth.deny = True
    out = detour(tmp_path, "account", "login", "claude", expect=2)
    assert "login was refused: access_denied" in out

    async def interrupted(*a, **kw):
        raise KeyboardInterrupt
    monkeypatch.setattr(logins, "login", interrupted)
    out = detour(tmp_path, "account", "login", "qwen", expect=2)
    assert "cancelled; nothing was stored" in out
    assert AccountStore(tmp_path / "detour.db").accounts() == []


async def test_wrong_verifier_fails(auth):
    v = VENDORS["claude"]
    verifier, challenge = oauth.pkce_pair()
    async with httpx.AsyncClient(trust_env=False, follow_redirects=False) as http:
        redirect = "http://localhost:9/callback"
        r = await http.get(oauth.authorize_url(v, redirect, "st", challenge))
        code = httpx.URL(r.headers["location"]).params["code"]
        with pytest.raises(oauth.InvalidGrant, match="PKCE"):
            await oauth.exchange_code(http, v, code, verifier + "x", redirect, "st")


async def test_device_flow_waits_and_slows_down(auth):
    waits = []

    async def sleep(seconds):
        waits.append(seconds)
        await asyncio.sleep(0 if len(waits) <= 2 else 0.6)  # too fast at first: slow_down

    shown = []

    async def notify(dc):
        shown.append(dc.user_code)
    polls = auth.device_polls
    async with httpx.AsyncClient(trust_env=False) as http:
        done = await logins.login_device(VENDORS["qwen"], http, notify, sleep)
    assert shown == ["WDJB-MJHT"]
    assert waits == [1, 1, 6, 6]  # pending, slow_down (+5 s), pending, approved
    assert auth.device_polls - polls == 4
    assert done.secrets["access_token"] in auth.issued_access and done.secrets["refresh_token"]


async def test_copilot_device_then_token_exchange(auth):
    async def notify(dc):
        pass

    async def sleep(seconds):
        await asyncio.sleep(0.6)
    async with httpx.AsyncClient(trust_env=False) as http:
        done = await logins.login_device(VENDORS["copilot"], http, notify, sleep)
        assert done.secrets["github_token"] in auth.issued_access
        assert done.secrets["access_token"].startswith("fake-copilot-")
        assert done.meta == {"project_id": "https://api.githubcopilot.com"}
        # its refresh is another exchange with the GitHub token, which stays
        again = await oauth.refresh(http, VENDORS["copilot"], done.secrets)
        assert again.access_token != done.secrets["access_token"]


def test_iflow_login_stores_the_api_key(tmp_path, auth):
    (tmp_path / "config.yaml").write_text("providers:\n  iflow: {kind: iflow}\n")
    calls = auth.code_calls
    out = detour(tmp_path, "account", "login", "iflow", "--name", "work")
    assert "logged in: iflow/work (user@example.com)" in out
    assert auth.code_calls == calls + 1
    stored = AccountStore(tmp_path / "detour.db").get("iflow", "work", secrets=True)
    assert (stored.kind, stored.vendor) == ("oauth", "iflow")
    assert stored.secrets["api_key"] == auth.iflow_api_key
    assert stored.secrets["access_token"] in auth.issued_access
    assert stored.secrets["refresh_token"] and stored.expires_at
    assert auth.iflow_api_key not in detour(tmp_path, "account", "list")


def test_iflow_login_with_a_wrong_client_secret_stores_nothing(tmp_path, auth):
    auth.client_secrets[IFLOW.client_id] = "not-the-cli-secret"
    out = detour(tmp_path, "account", "login", "iflow", expect=2)
    assert "iflow login failed: invalid_client" in out
    assert AccountStore(tmp_path / "detour.db").accounts() == []


def test_copilot_login_then_a_test_call_at_its_own_api(tmp_path, auth):
    """`login copilot` (device flow, then the Copilot token) keeps the API its token names;
    `account test` asks that API's model list with the Copilot token and editor headers."""
    from tests.fakes.copilot_api import FakeCopilot
    with FakeCopilot(auth) as copilot:
        auth.copilot_api = copilot.base_url
        try:
            (tmp_path / "config.yaml").write_text("providers:\n  copilot: {kind: copilot}\n")
            out = detour(tmp_path, "account", "login", "copilot", "--name", "gh",
                         "--no-browser")
            assert "logged in: copilot/gh" in out and "WDJB-MJHT" in out
            stored = AccountStore(tmp_path / "detour.db").get("copilot", "gh", secrets=True)
            assert stored.project_id == copilot.base_url
            assert stored.secrets["github_token"] in auth.issued_access
            assert "ok (HTTP 200" in detour(tmp_path, "account", "test", "copilot", "gh")
            seen = copilot.requests[-1]
            assert seen.route == "/models"
            assert seen.headers["authorization"] == f"Bearer {stored.secrets['access_token']}"
        finally:
            auth.copilot_api = "https://api.githubcopilot.com"
