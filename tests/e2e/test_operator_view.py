"""The operator's view through a real mitmdump, as `detour status` shows it: accounts from
config.yaml and from detour's store, a spent login (needs_login) shown with why and left out of
the round-robin (the others still get 10/10/10), a disabled key shown as such, a rest for one
model, and the routes in the order they would be asked. While the proxy runs `detour status`
asks its `detour.accounts` and `detour.routes` on the loopback metrics port proxy.json names;
once it is stopped, it reads the same states from detour.db."""

import collections
import json
import os
import time

import pytest
from click.testing import CliRunner

from addons.credentials.store import API_KEY, NEEDS_LOGIN, OAUTH, AccountStore
from addons.credentials.vault import Vault
from scripts.cli import cli
from tests.e2e.conftest import free_port, start_proxy
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Status

URL = "https://api.openai.com/v1/chat/completions"
HEADERS = {"authorization": "Bearer client-key-not-real"}
KEY_A, KEY_B, KEY_OFF, KEY_STORED = ("acct-a-not-real", "acct-b-not-real", "acct-off-not-real",
                                     "stored-key-not-real")
SPENT_ACCESS, SPENT_REFRESH = "spent-access-not-real", "spent-refresh-not-real"
WHY = "refresh refused: invalid_grant"


def status(home, *args) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), "status", *args],
                                env={"DETOUR_KEY_BACKEND": "file"})
    assert result.exit_code == 0, result.output
    return result.output


@pytest.fixture
def fake():
    with FakeOpenAI(keys={KEY_A, KEY_B, KEY_STORED}) as f:
        yield f


def test_status_shows_the_proxys_view_and_a_spent_login_is_skipped(confdir, tmp_path, fake):
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    store = AccountStore(home / "detour.db", Vault(home, "file"))
    spent = store.add("p", "spent", OAUTH, {"access_token": SPENT_ACCESS,
                                            "refresh_token": SPENT_REFRESH},
                      vendor="claude", expires_at=time.time() + 3600)
    store.add("p", "spare", API_KEY, {"api_key": KEY_STORED})
    store.mark(spent.id, NEEDS_LOGIN, WHY)
    config = (f"providers:\n  p: {{kind: openai, base_url: '{fake.base_url}/v1', api_keys: "
              f"[{KEY_A}, {KEY_B}, {{key: {KEY_OFF}, disabled: true}}]}}\n"
              f"routes: {{'*': [p/up-model]}}\n")
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}}
    proxy = start_proxy(confdir, home, config, env=env | {"DETOUR_KEY_BACKEND": "file"},
                        extra=["--set", f"detour_metrics_port={free_port()}"])
    try:
        with proxy.client() as c:
            answers = [c.post(URL, json={"model": "m", "messages": [
                {"role": "user", "content": "hi"}]}, headers=HEADERS) for _ in range(30)]
            assert [r.status_code for r in answers] == [200] * 30, answers[0].text
            # the spent login takes no turn: the three usable accounts share evenly
            used = collections.Counter(r.headers["authorization"].removeprefix("Bearer ")
                                       for r in fake.requests)
            assert used == {KEY_A: 10, KEY_B: 10, KEY_STORED: 10}
            # account 1 is next in turn: a 429 rests it for up-model only
            fake.enqueue(Status(429, headers={"retry-after": "600"}))
            r = c.post(URL, json={"model": "m", "messages": [
                {"role": "user", "content": "hi"}]}, headers=HEADERS)
            assert r.status_code == 200

        record = json.loads(status(home, "--json"))
        assert record["accounts_from"] == "proxy"
        accounts = {a["label"].split(":")[0] if a["label"].startswith("key") else a["label"]: a
                    for a in record["accounts"]}
        assert [(a["account"], a["state"]) for a in record["accounts"]] == [
            ("account 1", "resting"), ("account 2", "ready"), ("account 3", "disabled"),
            ("account 4", "needs_login"), ("account 5", "ready")]
        login = accounts["db:spent"]
        assert "detour account login claude --name spent" in login["why"]
        assert WHY in login["why"]
        assert accounts["key3"]["why"] == "disabled in config.yaml"
        [rest] = accounts["key1"]["rests"]
        assert (rest["model"], rest["reason"]) == ("up-model", "rate-limit")
        assert 500 < rest["seconds_left"] <= 600
        assert accounts["key1"]["recent_errors"][0]["error"].startswith("HTTP 429")
        [route] = record["routes"]
        # in the order the next call is asked (turn 31 of the two ready ones), the resting
        # account and the spent login last; looking takes no turn
        assert [(c["account"], c["state"]) for c in route["candidates"]] == [
            ("account 5", "ready"), ("account 2", "ready"), ("account 1", "resting"),
            ("account 4", "needs_login")]
        again = json.loads(status(home, "--json"))["routes"][0]["candidates"]
        assert [c["account"] for c in again] == [c["account"] for c in route["candidates"]]
        with proxy.client() as c:
            assert c.post(URL, json={"model": "m", "messages": [
                {"role": "user", "content": "hi"}]}, headers=HEADERS).status_code == 200
        assert fake.requests[-1].headers["authorization"] == f"Bearer {KEY_STORED}"
        shown = json.dumps(record)
        for secret in (KEY_A, KEY_B, KEY_OFF, KEY_STORED, SPENT_ACCESS, SPENT_REFRESH):
            assert secret not in shown
        text = status(home)
        assert "needs login: run `detour account login claude --name spent`" in text
        assert "resting for up-model" in text and "disabled in config.yaml" in text
        assert "routes.*" in text and "p/account 4 (needs_login)" in text
    finally:
        proxy.mitm.stop()

    # no proxy: the same states from detour.db (the rest was kept at the stop)
    record = json.loads(status(home, "--json"))
    assert record["accounts_from"] == "files" and record["routes"] is None
    assert [(a["account"], a["label"].split(":")[0], a["state"]) for a in record["accounts"]] == [
        ("account 1", "key1", "resting"), ("account 2", "key2", "ready"),
        ("account 3", "key3", "disabled"), ("account 4", "db", "needs_login"),
        ("account 5", "db", "ready")]
    assert WHY in record["accounts"][3]["why"]
