"""`detour usage --by user`: the daily sums carry the gateway's user, and a database whose
sums were made before they did gets them (migration 0004) with its rows untouched."""

import json
import sqlite3
from datetime import UTC, datetime

import pytest

from addons.usage import open_db
from scripts.bench.usage import USERS, seed

END = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
# usage_daily and its triggers as migration 0003 made them, before the user
OLD_DAILY = """
CREATE TABLE usage_daily (day TEXT NOT NULL, model TEXT NOT NULL, provider TEXT NOT NULL,
  account TEXT NOT NULL, client_tool TEXT NOT NULL, calls NUMERIC NOT NULL DEFAULT 0,
  input_tokens NUMERIC NOT NULL DEFAULT 0, output_tokens NUMERIC NOT NULL DEFAULT 0,
  cache_read_tokens NUMERIC NOT NULL DEFAULT 0, cache_write_tokens NUMERIC NOT NULL DEFAULT 0,
  reasoning_tokens NUMERIC NOT NULL DEFAULT 0, cost_usd NUMERIC NOT NULL DEFAULT 0,
  subscription_usd NUMERIC NOT NULL DEFAULT 0, unpriced NUMERIC NOT NULL DEFAULT 0,
  fallbacks NUMERIC NOT NULL DEFAULT 0, errors NUMERIC NOT NULL DEFAULT 0,
  latency_ms NUMERIC NOT NULL DEFAULT 0, latency_count NUMERIC NOT NULL DEFAULT 0,
  ttfb_ms NUMERIC NOT NULL DEFAULT 0, ttfb_count NUMERIC NOT NULL DEFAULT 0,
  PRIMARY KEY (day, model, provider, account, client_tool)) WITHOUT ROWID;
CREATE TRIGGER usage_daily_insert AFTER INSERT ON usage BEGIN
  INSERT INTO usage_daily (day, model, provider, account, client_tool, calls)
  VALUES (substr(NEW.ts, 1, 10), coalesce(NEW.model_upstream, ''), coalesce(NEW.provider, ''),
          coalesce(NEW.account, ''), coalesce(NEW.client_tool, ''), 1)
  ON CONFLICT (day, model, provider, account, client_tool) DO UPDATE SET calls = calls + 1;
END;
INSERT INTO usage_daily (day, model, provider, account, client_tool, calls)
  SELECT substr(ts, 1, 10), coalesce(model_upstream, ''), coalesce(provider, ''),
         coalesce(account, ''), coalesce(client_tool, ''), count(*) FROM usage
  GROUP BY 1, 2, 3, 4, 5;
DELETE FROM _sqlite_migrations WHERE name = '0004_usage_daily_user';
"""


@pytest.fixture
def seeded(home):
    home.mkdir(parents=True)
    seed(home / "detour.db", 2000, days=10, end=END)
    return home / "detour.db"


def per_user(db) -> dict:
    conn = sqlite3.connect(db)
    try:
        return {user: (calls, round(cost, 6)) for user, calls, cost in conn.execute(
            'SELECT coalesce("user", \'\'), count(*), total(cost_usd) FROM usage GROUP BY 1')}
    finally:
        conn.close()


def test_by_user_matches_the_rows(seeded, detour):
    out = json.loads(detour("usage", "--since", "all", "--json", "--by", "user").output)
    assert list(out["by"]) == ["user"]
    got = {g["user"]: (g["calls"], round(g["cost_usd"], 6)) for g in out["by"]["user"]}
    assert got == per_user(seeded)
    assert set(got) == set(USERS)
    table = detour("usage", "--since", "all", "--by", "user", env={"COLUMNS": "200"}).output
    assert "by user" in table and "alice" in table and "carol" in table


def test_older_daily_sums_get_the_user_and_keep_every_row(seeded, detour):
    conn = sqlite3.connect(seeded)
    with conn:
        conn.execute("DROP TRIGGER usage_daily_insert")
        conn.execute("DROP TRIGGER usage_daily_delete")
        conn.execute("DROP TABLE usage_daily")
        conn.executescript(OLD_DAILY)
    [(rows,)] = conn.execute("SELECT count(*) FROM usage").fetchall()
    conn.close()
    open_db(seeded).close()  # what the proxy and `detour usage` do at start
    conn = sqlite3.connect(seeded)
    try:
        assert "user" in [c[1] for c in conn.execute("PRAGMA table_info(usage_daily)")]
        assert conn.execute("SELECT count(*) FROM usage").fetchone()[0] == rows
        sums = {u: (int(n), round(c, 6)) for u, n, c in conn.execute(
            'SELECT "user", sum(calls), sum(cost_usd) FROM usage_daily GROUP BY 1')}
    finally:
        conn.close()
    assert sums == per_user(seeded)
    # the new trigger sums a new row under its user
    with sqlite3.connect(seeded) as conn:
        conn.execute("INSERT INTO usage (ts, flow_id, \"user\", cost_usd) VALUES "
                     "('2026-11-30T01:00:00.000Z', 'late', 'dana', 0.5)")
    conn.close()
    out = json.loads(detour("usage", "--since", "all", "--json", "--by", "user").output)
    assert {g["user"]: g["calls"] for g in out["by"]["user"]}["dana"] == 1
