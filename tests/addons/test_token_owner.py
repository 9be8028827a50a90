"""What owner.py tells apart without a proxy: a refresh call's parameters (JSON or form), and
which token endpoints it takes (only those of vendors whose login detour holds)."""

import time

import pytest
from mitmproxy.test import tutils

from addons.credentials.owner import TokenOwner, _params
from addons.credentials.provider import CredentialProvider
from addons.credentials.store import OAUTH, AccountStore


def test_params_json_and_form():
    req = tutils.treq(content=b'{"grant_type":"refresh_token","refresh_token":"r1"}')
    req.headers["content-type"] = "application/json"
    assert _params(req) == {"grant_type": "refresh_token", "refresh_token": "r1"}
    req = tutils.treq(content=b"grant_type=refresh_token&refresh_token=r%2F2&client_id=x")
    req.headers["content-type"] = "application/x-www-form-urlencoded"
    assert _params(req)["refresh_token"] == "r/2"
    req = tutils.treq(content=b"\xff\xfe not text")
    assert _params(req).get("refresh_token") is None


class _Settings:
    def __init__(self, creds):
        self.credentials = creds


def test_only_held_vendors_endpoints(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    store = AccountStore(tmp_path / "detour.db")
    creds = CredentialProvider(store)
    owner = TokenOwner(_Settings(creds))
    creds.load()
    assert owner._endpoints() == {}
    store.add("codex", "a", OAUTH, {"access_token": "a" * 20, "refresh_token": "r" * 20},
              vendor="codex", expires_at=time.time() + 3600)
    creds.load()
    assert owner._endpoints() == {("auth.openai.com", "/oauth/token"): "codex"}
    assert store.holding("codex", "r" * 20).name == "a"
    assert store.holding("claude", "r" * 20) is None


@pytest.mark.parametrize("bad", ["", "x" * 20])
def test_holding_unknown(tmp_path, monkeypatch, bad):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    assert AccountStore(tmp_path / "detour.db").holding("codex", bad) is None
