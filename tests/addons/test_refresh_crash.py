"""A process killed (SIGKILL) in the middle of a token refresh never loses the login: right
after the token endpoint answered, either the rotated tokens are stored or the stored old
refresh token still works at the server (its successor was never used); once the new access
token has been used, the rotated tokens are stored (they are committed before any use)."""

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from addons.credentials.store import OAUTH, AccountStore
from tests.fakes.oauth_server import FakeOAuth

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth() as a:
        yield a


def run_until_killed(home, account_id, auth, hook: str) -> tuple[int, str]:
    env = {**os.environ, "DETOUR_KEY_BACKEND": "file",
           "DETOUR_OAUTH_CLAUDE_TOKEN_URL": auth.url("/v1/oauth/token")}
    env.pop("HTTPS_PROXY", None)
    env.pop("https_proxy", None)
    proc = subprocess.Popen([sys.executable, "-m", "tests.addons.refresh_then_use", str(home),
                             str(account_id), auth.url("/userinfo")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    killed = threading.Event()

    def kill():
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)  # our own child, by its PID
        killed.set()
    setattr(auth, hook, kill)
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        setattr(auth, hook, None)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert killed.is_set(), err.decode()[-2000:]
    return proc.returncode, out.decode()


@pytest.mark.parametrize("round_", range(3))
def test_killed_right_after_the_token_answer(tmp_path, auth, monkeypatch, round_):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    store = AccountStore(tmp_path / "detour.db")
    old = auth.grant()
    acct = store.add("claude", "main", OAUTH, old, vendor="claude", expires_at=time.time() - 5)
    code, out = run_until_killed(tmp_path, acct.id, auth, "after_token")
    assert code == -signal.SIGKILL and "used" not in out
    stored = AccountStore(tmp_path / "detour.db").secrets_of(acct.id)[0]
    if stored["refresh_token"] == old["refresh_token"]:
        assert auth.refresh_valid(old["refresh_token"]), "the old token is spent and lost"
    else:
        assert auth.refresh_valid(stored["refresh_token"])
        assert auth.accepts(stored["access_token"])


def test_killed_after_the_new_token_was_used(tmp_path, auth, monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    store = AccountStore(tmp_path / "detour.db")
    old = auth.grant()
    acct = store.add("claude", "main", OAUTH, old, vendor="claude", expires_at=time.time() - 5)
    code, _ = run_until_killed(tmp_path, acct.id, auth, "after_use")
    stored = AccountStore(tmp_path / "detour.db").secrets_of(acct.id)[0]
    # the old refresh token is spent now (its successor was used): the new one must be stored
    assert not auth.refresh_valid(old["refresh_token"])
    assert stored["refresh_token"] != old["refresh_token"]
    assert auth.refresh_valid(stored["refresh_token"])
