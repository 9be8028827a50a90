"""Three real detour processes, as on three hosts: each its own DETOUR_HOME and detour.db
holding the same Claude login (one credentials key, copied), one real Redis between them
(`state: redis://...`). Each database's own lease cannot see the others, so only the lease in
Redis keeps the login's refresh token from being spent three times: 100 concurrent calls on
the expired token, spread over the three, make exactly one refresh at the OAuth server, and
every process stores and uses the rotated tokens without a refresh of its own; a refresh made
by one process reaches the others' databases with no call to them."""

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from addons.credentials.store import OAUTH, AccountStore
from addons.credentials.vault import KEY_FILE, Vault
from tests.e2e.conftest import start_proxy
from tests.e2e.test_oauth_accounts import auth, env, vendor  # noqa: F401 - fixtures
from tests.e2e.test_shared_state import redis_server  # noqa: F401 - fixture

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"anthropic-version": "2023-06-01", "x-api-key": "client-own-key-not-real"}
PROCESSES = 3
CALLS = 100


def body(model: str) -> dict:
    return {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def hosts(confdir, tmp_path_factory, auth, vendor, redis_server):
    """The processes, each with its store holding both logins (valid for an hour)."""
    logins = {"claude": auth.grant(), "other": auth.grant()}
    config = f"""
providers:
  claude: {{kind: anthropic, base_url: "{vendor.base_url}"}}
  other: {{kind: anthropic, base_url: "{vendor.base_url}"}}
routes:
  claude-sub: [claude/*]
  claude-other: [other/*]
state: "{redis_server.url}"
"""
    homes = [tmp_path_factory.mktemp(f"host{i}") for i in range(PROCESSES)]
    stores = []
    for home in homes:
        if stores:  # one key for every process sharing `state:`
            shutil.copy(homes[0] / KEY_FILE, home / KEY_FILE)
        store = AccountStore(home / "detour.db", Vault(home, "file"))
        for provider, tokens in logins.items():
            store.add(provider, "team", OAUTH, tokens, vendor="claude",
                      expires_at=time.time() + 3600)
        stores.append(store)
    procs = []
    try:
        for home in homes:
            procs.append(start_proxy(confdir, home, config, env=env(auth)))
        deadline = time.monotonic() + 30
        while not all("shared state redis://127.0.0.1" in p.mitm.text and "joined"
                      in p.mitm.text for p in procs):
            assert time.monotonic() < deadline, "a process did not join the shared state"
            time.sleep(0.05)
        yield procs, stores, logins
    finally:
        for proxy in procs:
            proxy.mitm.stop()


def tokens_of(store: AccountStore, provider: str) -> dict:
    return store.secrets_of(store.get(provider, "team").id)[0]


def expire(procs, stores, provider: str) -> None:
    """The login's access token expired in every database, and every process knows it."""
    seen = [p.mitm.text.count("accounts reloaded") for p in procs]
    for store in stores:
        store._update(provider, "team", expires_at=time.time() - 60)
    deadline = time.monotonic() + 15
    while any(p.mitm.text.count("accounts reloaded") == n for p, n in zip(procs, seen)):
        assert time.monotonic() < deadline, "a process did not reload its accounts"
        time.sleep(0.05)


def spread_calls(procs, model: str) -> list:
    """CALLS concurrent calls for `model`, in turn through each process."""
    clients = [p.client() for p in procs]
    try:
        with ThreadPoolExecutor(20) as pool:
            return list(pool.map(
                lambda i: clients[i % len(procs)].post(URL, json=body(model), headers=HEADERS),
                range(CALLS)))
    finally:
        for c in clients:
            c.close()


def test_one_refresh_for_100_concurrent_calls_over_three_processes(hosts, auth, vendor):
    procs, stores, logins = hosts
    before = auth.refresh_calls
    expire(procs, stores, "claude")
    answers = spread_calls(procs, "claude-sub")
    assert [r.status_code for r in answers] == [200] * CALLS, answers[0].text
    assert auth.refresh_calls - before == 1
    new = auth.issued_refresh[-1]
    assert new != logins["claude"]["refresh_token"]
    # every process stored the rotated tokens (the next refresh anywhere spends the new link)
    access = {tokens_of(s, "claude")["access_token"] for s in stores}
    assert [tokens_of(s, "claude")["refresh_token"] for s in stores] == [new] * PROCESSES
    assert len(access) == 1
    sent = {r.headers["authorization"] for r in vendor.requests[-CALLS:]}
    assert sent == {f"Bearer {access.pop()}"}
    # the processes that did not refresh adopted, they did not refresh again on the side
    assert auth.refresh_calls - before == 1


def test_a_refresh_reaches_the_other_processes_without_a_call(hosts, auth):
    procs, stores, logins = hosts
    before = auth.refresh_calls
    expire(procs, stores, "other")
    with procs[0].client() as c:
        assert c.post(URL, json=body("claude-other"), headers=HEADERS).status_code == 200
    assert auth.refresh_calls - before == 1
    new = auth.issued_refresh[-1]
    deadline = time.monotonic() + 15
    while [tokens_of(s, "other")["refresh_token"] for s in stores] != [new] * PROCESSES:
        assert time.monotonic() < deadline, "the rotated tokens did not reach every process"
        time.sleep(0.05)
    with procs[2].client() as c:
        assert c.post(URL, json=body("claude-other"), headers=HEADERS).status_code == 200
    assert auth.refresh_calls - before == 1
