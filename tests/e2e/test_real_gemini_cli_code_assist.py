"""The real Gemini CLI logged in with Google (a fake credentials file), unmodified, through a
real mitmdump, routed to a `kind: gemini-cli` provider served by a stored Google login:

    gemini -p ... --HTTPS_PROXY--> mitmdump -s addons/router.py --> FakeCodeAssist (+ FakeOAuth)

The CLI's own setup calls are answered by detour (its login is not the one used); its model
calls go out in the Code Assist envelope with the stored login's token and project. The login
is stored as an import leaves it (token expired, no project): the first call refreshes it and
finds its project, once. The CLI prints the fake's text and completes a shell-tool round trip
(`--yolo`). Skipped only when the gemini binary is missing (`bash scripts/install-clients.sh`).
"""

import json
import os
import time

import pytest

from addons.credentials.store import OAUTH, AccountStore
from addons.credentials.vault import Vault
from tests.e2e.conftest import start_proxy
from tests.fakes import gemini_provider
from tests.fakes.code_assist import FakeCodeAssist
from tests.fakes.oauth_server import FakeOAuth
from tests.fakes.replies import Text
from tests.harness import ROOT, ClientRun, new_rows, run_client, show_on_failure

pytestmark = pytest.mark.slow

GEMINI = ROOT / "clients" / "node_modules" / ".bin" / "gemini"
GOOGLE_TOKEN = "the-clis-own-google-token"  # never reaches the provider
TIMEOUT = 55.0
CLASSIFIER = {"complexity_reasoning": "a fake provider's rating", "complexity_score": 1}

if not os.access(GEMINI, os.X_OK):
    pytest.skip(f"the real Gemini CLI is not installed at {GEMINI}; run "
                "`bash scripts/install-clients.sh` (CI does, in .ci/run)", allow_module_level=True)


def agent(received):
    """The fake's scripted agent on the envelope's Gemini body; the router classifier (a JSON
    answer asked for) gets the rating its schema wants."""
    inner = (received.json or {}).get("request") or {}
    if (inner.get("generationConfig") or {}).get("responseMimeType") == "application/json":
        return Text(json.dumps(CLASSIFIER))
    return gemini_provider.agent_reply(
        type(received)(received.method, received.path, received.headers, received.body, inner))


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth(prefix="ya29.fake") as a:
        yield a


@pytest.fixture(scope="module")
def fake(auth):
    with FakeCodeAssist(auth, default_reply=agent) as f:
        yield f


@pytest.fixture(scope="module")
def setup(confdir, tmp_path_factory, auth, fake):
    home = tmp_path_factory.mktemp("home")
    store = AccountStore(home / "detour.db", Vault(home, "file"))
    tokens = auth.grant()
    project = fake.onboard(tokens["access_token"])
    account = store.add("gemini", "main", OAUTH, tokens, vendor="gemini",
                        expires_at=time.time() - 60)
    config = f"""
providers:
  gemini: {{kind: gemini-cli, base_url: "{fake.base_url}"}}
routes:
  "*": [gemini/gemini-2.5-pro]
"""
    env = {k: v for k, v in os.environ.items() if k.lower() not in
           {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}}
    env |= {"DETOUR_KEY_BACKEND": "file", "DETOUR_OAUTH_GEMINI_TOKEN_URL": auth.url("/token")}
    proxy = start_proxy(confdir, home, config, env=env)
    yield proxy, store, account, project
    proxy.mitm.stop()


def run_gemini(proxy, tmp_path, *args: str) -> ClientRun:
    client_home = tmp_path / "client-home"
    gemini_dir = client_home / ".gemini"
    gemini_dir.mkdir(parents=True, exist_ok=True)
    (gemini_dir / "settings.json").write_text(json.dumps({
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        "telemetry": {"enabled": False}}))
    # logged in with Google, as far as the CLI can tell: a cached, fresh login
    (gemini_dir / "oauth_creds.json").write_text(json.dumps({
        "access_token": GOOGLE_TOKEN, "refresh_token": "1//the-clis-own-refresh-not-real",
        "scope": "https://www.googleapis.com/auth/cloud-platform", "token_type": "Bearer",
        "expiry_date": int(time.time() * 1000) + 3_600_000}))
    work = tmp_path / "work"
    work.mkdir(exist_ok=True)
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
           "HOME": str(client_home), "GEMINI_CLI_TRUST_WORKSPACE": "true",
           "GOOGLE_GENAI_USE_GCA": "true", "HTTPS_PROXY": proxy.mitm.url,
           "NODE_EXTRA_CA_CERTS": str(proxy.mitm.ca_cert)}
    run = run_client([GEMINI, *args], env, work, TIMEOUT)
    if run.returncode is None:
        pytest.fail(f"gemini {' '.join(args)} did not finish within {TIMEOUT:.0f} s")
    return run


def test_google_login_routed_to_a_stored_google_account(setup, auth, fake, tmp_path):
    proxy, store, account, project = setup
    refreshes, loads = auth.refresh_calls, fake.load_calls
    with show_on_failure(proxy.mitm, fake):
        run = run_gemini(proxy, tmp_path, "-p", "Say hi")
        assert run.returncode == 0, run.stderr
        assert fake.default_text in run.stdout
        tool = run_gemini(proxy, tmp_path, "--yolo", "-p", "RUN: echo detour-gca-ok")
        assert tool.returncode == 0, tool.stderr
        assert "FAKE-TOOL-RESULT" in tool.stdout and "detour-gca-ok" in tool.stdout
    calls = [r for r in fake.requests if "enerateContent" in r.route]
    assert len(calls) == 5, [r.path for r in calls]  # classifier + answer, classifier + 2
    token = store.secrets_of(account.id)[0]["access_token"]
    for sent in calls:
        assert sent.headers["authorization"] == f"Bearer {token}"
        assert sent.json["project"] == project
        assert GOOGLE_TOKEN not in json.dumps(sent.headers)
    # the CLI's setup calls were answered by detour: only model calls reached Code Assist,
    # and detour's own project lookup, once
    assert auth.refresh_calls - refreshes == 1 and fake.load_calls - loads == 1
    assert {r.route for r in fake.requests} <= {
        "/v1internal:loadCodeAssist", "/v1internal:generateContent",
        "/v1internal:streamGenerateContent"}
    assert "detour-gca-ok" in json.dumps(calls[-1].json)
    rows = new_rows(proxy.home, 0, 5)
    assert len(rows) == 5
    for row in rows:
        assert (row["client_format"], row["provider"], row["account"], row["status"]) == (
            "gemini-cli", "gemini", "db:main", 200)
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
