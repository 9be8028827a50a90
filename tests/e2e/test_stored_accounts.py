"""Accounts added with `detour account ...` while a real mitmdump runs: they serve calls
within about a second (the proxy polls the store's revision), disabling one takes it out,
removing one forgets it; the client never sees the key, the usage row names the account by
its stored name."""

import time

import pytest
from click.testing import CliRunner

from scripts.cli import cli
from tests.e2e.conftest import start_proxy
from tests.fakes.openai_provider import FakeOpenAI

URL = "https://api.openai.com/v1/chat/completions"
FIRST, SECOND = "sk-stored-first-0123456789", "sk-stored-second-0123456789"
BODY = {"model": "stored", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(keys=[FIRST, SECOND]) as f:
        yield f


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake):
    home = tmp_path_factory.mktemp("home")
    config = f"""
providers:
  fakeoa: {{kind: openai, base_url: "{fake.base_url}/v1"}}
routes:
  stored: [fakeoa/up-model]
"""
    p = start_proxy(confdir, home, config, env=_env())
    yield p
    p.mitm.stop()


def _env() -> dict:
    import os
    env = {k: v for k, v in os.environ.items() if k.lower() not in
           {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}}
    env["DETOUR_KEY_BACKEND"] = "file"
    return env


def detour(home, *args, input=None):
    result = CliRunner().invoke(cli, ["--home", str(home), *args], input=input,
                                env={"DETOUR_KEY_BACKEND": "file"}, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def keys_seen(fake) -> list[str]:
    return [r.headers.get("authorization", "").removeprefix("Bearer ") for r in fake.requests
            if r.route.endswith("/chat/completions")]


def call_until(proxy, predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    with proxy.client() as c:
        while True:
            r = c.post(URL, json=BODY, headers={"authorization": "Bearer client-own-key"})
            if predicate(r) or time.monotonic() > deadline:
                return r
            time.sleep(0.2)


def test_added_while_running_serves_then_disabled_then_removed(proxy, fake):
    # no account yet: the provider is asked without a key and refuses
    with proxy.client() as c:
        r = c.post(URL, json=BODY, headers={"authorization": "Bearer client-own-key"})
    assert r.status_code >= 400

    out = detour(proxy.home, "account", "add", "fakeoa", "--api-key", input=FIRST + "\n")
    assert "added fakeoa/key-1" in out and FIRST not in out
    r = call_until(proxy, lambda r: r.status_code == 200)
    assert r.status_code == 200, r.text
    assert keys_seen(fake)[-1] == FIRST
    assert "client-own-key" not in keys_seen(fake)
    assert proxy.row_of(r)["account"] == "db:key-1"

    detour(proxy.home, "account", "add", "fakeoa", "--api-key", "--name", "spare",
           input=SECOND + "\n")
    detour(proxy.home, "account", "disable", "fakeoa", "key-1")
    fake.clear()
    r = call_until(proxy, lambda r: keys_seen(fake)[-1:] == [SECOND])
    assert r.status_code == 200 and proxy.row_of(r)["account"] == "db:spare"
    fake.clear()
    for _ in range(4):  # the disabled one is never asked
        with proxy.client() as c:
            assert c.post(URL, json=BODY).status_code == 200
    assert set(keys_seen(fake)) == {SECOND}

    listing = detour(proxy.home, "account", "list", "--json")
    assert '"name": "key-1"' in listing and '"state": "disabled"' in listing
    assert FIRST not in listing and SECOND not in listing

    detour(proxy.home, "account", "remove", "fakeoa", "spare", "--yes")
    detour(proxy.home, "account", "enable", "fakeoa", "key-1")
    fake.clear()
    r = call_until(proxy, lambda r: keys_seen(fake)[-1:] == [FIRST])
    assert r.status_code == 200
