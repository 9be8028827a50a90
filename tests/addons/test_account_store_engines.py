"""The account store's contract on both engines (detour.db and a real Postgres): no secret in
clear in any column, a wrong key told at once, the revision moved by every write and seen by
another process, the compare-and-swap of refreshed tokens, one refresh lease among many
processes at once, the chain of refresh tokens recognised, the key rotated. Then Postgres
only: a home's detour.db accounts imported once (never over an account already there, once
when several processes start together), and Postgres away: StoreUnavailable, then served
again when it is back; `detour account` says it in one line."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
from click.testing import CliRunner
from cryptography.fernet import Fernet

from addons.credentials.store import (API_KEY, OAUTH, AccountError, AccountStore,
                                      StoreUnavailable, open_account_store)
from addons.credentials.store_postgres import PostgresAccountStore
from addons.credentials.vault import KEY_FILE, Vault, VaultError
from scripts.cli import cli
from tests.account_stores import (PostgresLink, account_store, another,  # noqa: F401
                                  fresh_database)
from tests.e2e.test_postgres_usage import postgres  # noqa: F401 - fixture

API_SECRET = "sk-contract-api-key-0123456789"
TOKENS = {"access_token": "access-contract-0001", "refresh_token": "refresh-contract-0001"}


def raw_rows(store) -> list[tuple]:
    """Every column of every account row, as the engine stores it."""
    if isinstance(store, PostgresAccountStore):
        with psycopg.connect(store.url) as conn:
            return conn.execute("SELECT * FROM accounts").fetchall()
    import sqlite3
    with sqlite3.connect(store.path) as conn:
        return conn.execute("SELECT * FROM accounts").fetchall()


def test_no_secret_in_clear_and_a_wrong_key_told_at_once(account_store, tmp_path):  # noqa: F811
    store = account_store
    store.add("deepseek", "work", API_KEY, {"api_key": API_SECRET})
    store.add("claude", "team", OAUTH, TOKENS, vendor="claude", expires_at=time.time() + 60)
    text = repr(raw_rows(store))
    for secret in (API_SECRET, *TOKENS.values()):
        assert secret not in text
    reader = another(store)
    assert {a.name: a.secrets for a in reader.accounts(secrets=True)} == {
        "work": {"api_key": API_SECRET}, "team": TOKENS}
    reader.close()
    # another home's key: told before any secret is tried, with what to do
    other_home = tmp_path / "elsewhere"
    other_home.mkdir()
    (other_home / KEY_FILE).write_bytes(Fernet.generate_key())
    stranger = another(store)
    stranger.vault = Vault(other_home, "file")
    with pytest.raises(VaultError, match="does not decrypt") as told:
        stranger.accounts(secrets=True)
    if isinstance(store, PostgresAccountStore):
        assert "every detour process sharing" in str(told.value)
    stranger.close()


def test_every_write_moves_the_revision_another_process_sees(account_store):  # noqa: F811
    store, watcher = account_store, another(account_store)
    seen = [watcher.revision()]
    acct = store.add("deepseek", None, API_KEY, {"api_key": API_SECRET})
    seen.append(watcher.revision())
    store.set_priority("deepseek", acct.name, 3)
    seen.append(watcher.revision())
    store.mark(acct.id, last_error="429 seen")
    seen.append(watcher.revision())
    assert seen == sorted(set(seen)), seen  # each write moved it, never back
    if isinstance(store, AccountStore):  # other tables' writes (usage rows) do not move it
        import sqlite3
        with sqlite3.connect(store.path) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS other (x)")
            conn.execute("INSERT INTO other VALUES (1)")
        assert watcher.revision() == seen[-1]
    store.remove("deepseek", acct.name)
    assert watcher.revision() > seen[-1]
    watcher.close()


def test_refreshed_tokens_commit_only_over_the_generation_read(account_store):  # noqa: F811
    store = account_store
    acct = store.add("claude", "team", OAUTH, TOKENS, vendor="claude")
    new = {"access_token": "access-contract-0002", "refresh_token": "refresh-contract-0002"}
    assert store.commit_tokens(acct.id, 0, new, time.time() + 3600) == 1
    late = another(store)
    with pytest.raises(AccountError, match="changed meanwhile"):
        late.commit_tokens(acct.id, 0, {**new, "access_token": "lost"}, None)
    late.close()
    assert store.secrets_of(acct.id) == (new, 1)
    # every link of the chain is recognised (a CLI still holding an earlier one)
    assert store.holding("claude", TOKENS["refresh_token"]).id == acct.id
    assert store.holding("claude", new["refresh_token"]).id == acct.id
    assert store.holding("codex", new["refresh_token"]) is None
    assert store.vendors_held() == {"claude"}


def test_one_lease_among_many_processes(account_store):  # noqa: F811
    store = account_store
    acct = store.add("claude", "team", OAUTH, TOKENS, vendor="claude")
    processes = [another(store) for _ in range(6)]
    for i, p in enumerate(processes):
        p.owner = f"process-{i}"
    start = threading.Barrier(len(processes))

    def take(p):
        start.wait()
        return p.take_lease(acct.id, 30)
    with ThreadPoolExecutor(len(processes)) as pool:
        won = list(pool.map(take, processes))
    assert won.count(True) == 1
    holder = processes[won.index(True)]
    other = processes[won.index(False)]
    assert holder.take_lease(acct.id, 30)  # its own lease, extended
    assert not other.take_lease(acct.id, 30)
    holder.drop_lease(acct.id)
    assert other.take_lease(acct.id, 0.2)
    time.sleep(0.3)  # that lease ran out: a process that died holding it does not block
    assert holder.take_lease(acct.id, 30)
    for p in processes:
        p.close()


def test_rotate_key_re_encrypts_every_secret(account_store):  # noqa: F811
    store = account_store
    store.add("deepseek", "work", API_KEY, {"api_key": API_SECRET})
    old_key = store.vault.key_path.read_bytes()
    assert store.rotate_key() == 1
    assert store.vault.key_path.read_bytes() != old_key
    fresh = another(store)
    fresh.vault = Vault(store.vault.home, "file")
    assert fresh.accounts(secrets=True)[0].secrets == {"api_key": API_SECRET}
    fresh.close()


# ------------------------------------------------------------ Postgres only


def local_home(path, monkeypatch, accounts: dict[str, str]):
    """A home whose detour.db holds these API keys (provider/name -> key)."""
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    local = AccountStore(path / "detour.db")
    for where, key in accounts.items():
        provider, name = where.split("/")
        local.add(provider, name, API_KEY, {"api_key": key})
    return path


def test_a_homes_accounts_are_imported_once(tmp_path, monkeypatch, postgres):  # noqa: F811
    url = fresh_database(postgres)
    home = local_home(tmp_path / "a", monkeypatch,
                      {"deepseek/work": "sk-local-work-0001", "claude/spare": "sk-local-0002"})
    said = []
    store = open_account_store(home, url, said.append)
    assert {(a.provider, a.name): a.secrets for a in store.accounts(secrets=True)} == {
        ("deepseek", "work"): {"api_key": "sk-local-work-0001"},
        ("claude", "spare"): {"api_key": "sk-local-0002"}}
    assert len(said) == 1 and "imported 2" in said[0] and "postgresql://postgres@" in said[0]
    store.remove("claude", "spare")  # removed in the shared store: not imported again
    open_account_store(home, url, said.append).close()
    assert len(said) == 1 and [a.name for a in store.accounts()] == ["work"]
    # another host's home: what is not there yet comes in, a name already there is kept
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / KEY_FILE).write_bytes((home / KEY_FILE).read_bytes())
    other = local_home(tmp_path / "b", monkeypatch,
                       {"deepseek/work": "sk-other-host-0003", "openai/b": "sk-other-0004"})
    open_account_store(other, url, said.append).close()
    assert "imported 1" in said[1] and "kept the ones of the same name" in said[1]
    assert {a.name: a.secrets["api_key"] for a in store.accounts(secrets=True)} == {
        "work": "sk-local-work-0001", "b": "sk-other-0004"}
    store.close()


def test_processes_starting_together_import_once(tmp_path, monkeypatch, postgres):  # noqa: F811
    url = fresh_database(postgres)
    home = local_home(tmp_path, monkeypatch, {f"p/k{i}": f"sk-key-{i:04d}" for i in range(5)})
    said = []
    start = threading.Barrier(4)

    def open_one(_):
        start.wait()
        return open_account_store(home, url, said.append)
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(open_one, range(4)))
    assert len(stores[0].accounts()) == 5
    assert len(said) == 1 and "imported 5" in said[0]
    for s in stores:
        s.close()


def test_postgres_away_then_back(tmp_path, monkeypatch, postgres):  # noqa: F811
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    link = PostgresLink(postgres)
    try:
        url = link.url(fresh_database(postgres))
        store = PostgresAccountStore(url, tmp_path)
        store.add("deepseek", "work", API_KEY, {"api_key": API_SECRET})
        seen = store.revision()
        link.cut()
        with pytest.raises(StoreUnavailable, match=r"127\.0\.0\.1.* unreachable"):
            store.revision()
        with pytest.raises(StoreUnavailable):
            store.take_lease(1, 30)
        # a command: one line, not a traceback
        (tmp_path / "config.yaml").write_text(f'database: "{url}"\n')
        out = CliRunner().invoke(cli, ["--home", str(tmp_path), "account", "list"])
        assert out.exit_code == 2 and out.exception.__class__ is SystemExit
        assert "unreachable" in out.output and len(out.output.strip().splitlines()) == 1
        link.restore()
        assert store.revision() == seen  # connects again by itself
        assert [a.name for a in store.accounts()] == ["work"]
        store.close()
    finally:
        link.close()


def test_status_without_a_proxy_lists_the_accounts_in_postgres(tmp_path, monkeypatch,
                                                              postgres):  # noqa: F811
    import json
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    url = fresh_database(postgres)
    store = PostgresAccountStore(url, tmp_path)
    store.add("deepseek", "shared", API_KEY, {"api_key": API_SECRET})
    store.close()
    config = ('providers:\n  deepseek: {kind: openai, base_url: "https://api.deepseek.com/v1"}\n'
              f'database: "{url}"\n')
    (tmp_path / "config.yaml").write_text(config)
    out = CliRunner().invoke(cli, ["--home", str(tmp_path), "status", "--json"])
    assert out.exit_code == 0, out.output
    labels = [a["label"] for a in json.loads(out.stdout)["accounts"]]
    assert "db:shared" in labels


def test_a_connection_idle_long_is_opened_anew(tmp_path, monkeypatch, postgres):  # noqa: F811
    """A command that waited minutes (a browser login) does not write on a connection a
    firewall may have dropped meanwhile."""
    import addons.credentials.store_postgres as module
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    store = PostgresAccountStore(fresh_database(postgres), tmp_path)
    store.revision()
    kept = store._conn
    store.revision()
    assert store._conn is kept
    monkeypatch.setattr(module, "IDLE_SECONDS", 0.0)
    store.add("deepseek", "work", API_KEY, {"api_key": API_SECRET})
    assert store._conn is not kept and kept.closed
    store.close()
