"""The real Claude Code, logged in with an OAuth token of its own (CLAUDE_CODE_OAUTH_TOKEN,
invented), through a real mitmdump whose `claude` provider is a pool of two Claude OAuth
logins detour holds (stored, encrypted): the first is exhausted (429 until its reset), so the
call goes on to the second. Claude Code's own token never reaches the provider; each login's
token goes on as a Bearer with Anthropic's OAuth beta flag; the usage row names the second.

Skipped when the claude binary is missing (`bash scripts/install-clients.sh`)."""

import json
import os
import signal
import sqlite3
import subprocess
import time

import pytest
import yaml

from addons.credentials.store import OAUTH, AccountStore
from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.oauth_server import AcceptedTokens, FakeOAuth
from tests.fakes.replies import Status
from tests.harness import ROOT, Mitmdump

pytestmark = pytest.mark.slow

CLAUDE = ROOT / "clients" / "node_modules" / ".bin" / "claude"
# an OAuth token as Claude Code holds one (its prefix), invented: joined at run time so that no
# committed string looks like a real token
CLIENT_TOKEN = "-".join(("sk-ant-oat01", "client-own-login-not-real"))
CLAUDE_TIMEOUT = 50.0

if not os.access(CLAUDE, os.X_OK):
    pytest.skip(f"the real Claude Code is not installed at {CLAUDE}; run "
                "`bash scripts/install-clients.sh` (CI does, in .ci/run)", allow_module_level=True)


def test_claude_code_on_a_pool_of_two_logins_first_exhausted(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    with FakeOAuth(prefix="sk-ant-oat01-pool") as auth, FakeAnthropic() as model, \
            FakeAnthropic(check_auth=False) as vendor:
        model.keys = AcceptedTokens(auth)
        home = tmp_path / "detour-home"
        home.mkdir(mode=0o700)
        store = AccountStore(home / "detour.db")
        exhausted = auth.grant()
        store.add("claude", "exhausted", OAUTH, exhausted, vendor="claude",
                  expires_at=time.time() + 3600, plan="pro")
        spare = auth.grant()
        store.add("claude", "spare", OAUTH, spare, vendor="claude",
                  expires_at=time.time() + 3600, plan="max")

        def by_login(received):
            token = received.headers.get("authorization", "").removeprefix("Bearer ")
            if token == exhausted["access_token"]:
                return Status(429, headers={"retry-after": "3600"},
                              message="Number of request tokens has exceeded your limit")
            return None  # the default text
        model.default_reply = by_login
        (home / "config.yaml").write_text(yaml.safe_dump({
            "providers": {"claude": {"kind": "anthropic", "base_url": model.base_url}},
            "routes": {"*": ["claude/*"]},
            "vendors": {"api.anthropic.com": vendor.base_url}}))
        confdir = tmp_path / "mitmproxy"
        confdir.mkdir()
        client_home = tmp_path / "client-home"
        client_home.mkdir()
        env = {k: v for k, v in os.environ.items() if k.lower() not in
               {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}}
        env |= {"DETOUR_KEY_BACKEND": "file",
                "DETOUR_OAUTH_CLAUDE_TOKEN_URL": auth.url("/v1/oauth/token")}
        with Mitmdump(confdir, home, env=env) as proxy:
            claude_env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(client_home),
                "CLAUDE_CODE_OAUTH_TOKEN": CLIENT_TOKEN, "HTTPS_PROXY": proxy.url,
                "NODE_EXTRA_CA_CERTS": str(proxy.ca_cert),
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1", "DISABLE_TELEMETRY": "1",
                "DISABLE_ERROR_REPORTING": "1", "DISABLE_AUTOUPDATER": "1"}
            proc = subprocess.Popen([str(CLAUDE), "-p", "Say hi"], env=claude_env,
                                    cwd=tmp_path, stdin=subprocess.DEVNULL,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
            try:
                out, err = proc.communicate(timeout=CLAUDE_TIMEOUT)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)  # the group this test started
                out, err = proc.communicate()
                pytest.fail(f"claude did not finish in {CLAUDE_TIMEOUT:.0f}s: {err[-2000:]!r}")
            print(out.decode(errors="replace"), err.decode(errors="replace"), proxy.text)
        assert proc.returncode == 0, err.decode(errors="replace")[-2000:]
        assert FakeAnthropic.default_text.split()[0] in out.decode()
        calls = [r for r in model.requests if r.route.endswith("/messages")]
        assert calls, "no model call reached the pool"
        tokens = [r.headers["authorization"].removeprefix("Bearer ") for r in calls]
        # the exhausted login was asked once, then rested; every answer came from the spare
        assert tokens.count(exhausted["access_token"]) == 1
        assert tokens[0] == exhausted["access_token"]
        assert set(tokens[1:]) == {spare["access_token"]}
        for r in calls:
            assert "x-api-key" not in r.headers
            assert "oauth-2025-04-20" in r.headers["anthropic-beta"].split(",")
            assert CLIENT_TOKEN not in json.dumps(r.headers) and CLIENT_TOKEN.encode() not in r.body
        db = sqlite3.connect(home / "detour.db")
        try:
            accounts = [a for (a,) in db.execute("SELECT account FROM usage WHERE status = 200")]
        finally:
            db.close()
        assert accounts and set(accounts) == {"db:spare"}
