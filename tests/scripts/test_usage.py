"""`detour usage` on a seeded database, in each format, checked against plain SQL."""

import csv
import io
import json
import sqlite3
from datetime import UTC, datetime

import pytest

from scripts.bench.usage import seed
from scripts.usage_report import WhenError, parse_when

END = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
WINDOW = ["--since", "2026-11-22", "--until", "2026-11-29"]  # the 22nd to the 29th included
WHERE = "ts >= '2026-11-22' AND ts < '2026-11-30'"


@pytest.fixture
def seeded(home):
    home.mkdir(parents=True)
    seed(home / "detour.db", 3000, days=12, end=END)
    return home / "detour.db"


def sql(db, query):
    conn = sqlite3.connect(db)
    try:
        return conn.execute(query).fetchall()
    finally:
        conn.close()


def test_json_totals_and_groups_match_the_rows(seeded, detour):
    out = json.loads(detour("usage", *WINDOW, "--json").output)
    assert out["since"] == "2026-11-22T00:00:00.000Z"
    assert out["until"] == "2026-11-30T00:00:00.000Z"
    [(calls, cost, unpriced, fallbacks, errors, cread)] = sql(seeded, f"""
        SELECT count(*), total(cost_usd), sum(cost_usd IS NULL), sum(attempts > 1),
               sum(status >= 400 OR status = 0), sum(cache_read_tokens)
        FROM usage WHERE {WHERE}""")
    totals = out["totals"]
    assert 1000 < calls < 3000  # the window is part of the seeded span
    assert (totals["calls"], totals["unpriced"], totals["fallbacks"], totals["errors"],
            totals["cache_read_tokens"]) == (calls, unpriced, fallbacks, errors, cread)
    assert totals["cost_usd"] == pytest.approx(cost, abs=1e-5)
    assert unpriced > 0 and errors > 0 and fallbacks > 0

    by_model = {g["model"]: g for g in out["by"]["model"]}
    for model, n, model_cost in sql(seeded, f"SELECT model_upstream, count(*), total(cost_usd) "
                                            f"FROM usage WHERE {WHERE} GROUP BY 1"):
        assert by_model[model]["calls"] == n
        assert by_model[model]["cost_usd"] == pytest.approx(model_cost, abs=1e-5)
    assert by_model["llama-3-70b"]["cost_usd"] == 0 and \
        by_model["llama-3-70b"]["unpriced"] == by_model["llama-3-70b"]["calls"]
    assert [g["day"] for g in out["by"]["day"]] == [f"2026-11-{d}" for d in range(22, 30)]
    tools = {g["tool"]: g["calls"] for g in out["by"]["tool"]}
    assert tools == dict(sql(seeded, f"SELECT client_tool, count(*) FROM usage "
                                     f"WHERE {WHERE} GROUP BY 1"))
    for dim in ("provider", "account", "tool", "day"):
        assert sum(g["calls"] for g in out["by"][dim]) == calls


def test_csv_has_a_line_per_group_and_the_totals(seeded, detour):
    lines = list(csv.DictReader(io.StringIO(detour("usage", *WINDOW, "--csv", "--by", "provider",
                                                   "--by", "tool").output)))
    assert {line["by"] for line in lines} == {"provider", "tool", "total"}
    providers = {line["key"]: int(line["calls"]) for line in lines if line["by"] == "provider"}
    assert providers == dict(sql(seeded, f"SELECT provider, count(*) FROM usage WHERE {WHERE} "
                                         "GROUP BY 1"))
    [total] = [line for line in lines if line["by"] == "total"]
    assert int(total["calls"]) == sum(providers.values())


def test_the_tables_and_the_chart(seeded, detour):
    out = detour("usage", *WINDOW, env={"COLUMNS": "200"}).output
    assert "Usage from 2026-11-22 00:00 to 2026-11-30 00:00 UTC" in out
    for title in ("per day", "by day", "by model", "by provider", "by account", "by tool"):
        assert title in out
    [(calls,)] = sql(seeded, f"SELECT count(*) FROM usage WHERE {WHERE}")
    assert f"{calls:,} calls" in out
    chart = out.split("per day")[1].split("by day")[0]
    assert chart.count("2026-11-") == 8 and "█" in chart
    for tool in ("claude-code", "codex", "gemini-cli", "qwen-code", "curl"):
        assert tool in out.split("by tool")[1]


def test_an_empty_window_and_bad_times(seeded, detour):
    assert "no calls in this window" in detour("usage", "--since", "2020-01-01", "--until",
                                               "2020-01-02").output
    bad = detour("usage", "--since", "last tuesday", expect=2)
    assert "is not a time" in bad.output
    assert "--since must be before --until" in detour(
        "usage", "--since", "2026-11-29", "--until", "2026-11-01", expect=2).output


def test_no_database_yet(home, detour):
    assert "no usage recorded yet" in detour("usage", expect=2).output


def test_when():
    now = datetime(2026, 12, 1, 15, 30, tzinfo=UTC)
    assert parse_when("7d", now) == datetime(2026, 11, 24, 15, 30, tzinfo=UTC)
    assert parse_when("24h", now) == datetime(2026, 11, 30, 15, 30, tzinfo=UTC)
    assert parse_when("2w", now) == datetime(2026, 11, 17, 15, 30, tzinfo=UTC)
    assert parse_when("today", now) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_when("yesterday", now, end_of_day=True) == datetime(2026, 12, 1, tzinfo=UTC)
    assert parse_when("2026-11-05", now, end_of_day=True) == datetime(2026, 11, 6, tzinfo=UTC)
    assert parse_when("2026-11-05T10:00:00+01:00", now) == datetime(2026, 11, 5, 9, tzinfo=UTC)
    assert parse_when("all", now) is None
    with pytest.raises(WhenError):
        parse_when("soon", now)


@pytest.mark.parametrize("since, until", [
    ("2026-11-22T06:30:00Z", "2026-11-29T18:15:00Z"),  # partial first and last days
    ("2026-11-25T01:00:00Z", "2026-11-25T23:00:00Z"),  # inside one day
    ("all", "2026-11-26T12:00:00Z"),  # from the first row
])
def test_partial_days_are_read_from_the_rows(seeded, detour, since, until):
    out = json.loads(detour("usage", "--since", since, "--until", until, "--json").output)
    where = f"ts < '{out['until']}'" + (f" AND ts >= '{out['since']}'" if out["since"] else "")
    [(calls, cost, tokens)] = sql(seeded, f"SELECT count(*), total(cost_usd), "
                                          f"sum(input_tokens + output_tokens + cache_read_tokens"
                                          f" + cache_write_tokens) FROM usage WHERE {where}")
    assert (out["totals"]["calls"], out["totals"]["tokens"]) == (calls, tokens)
    assert out["totals"]["cost_usd"] == pytest.approx(cost, abs=1e-5)
    days = dict(sql(seeded, f"SELECT substr(ts, 1, 10), count(*) FROM usage WHERE {where} "
                            "GROUP BY 1"))
    assert {g["day"]: g["calls"] for g in out["by"]["day"]} == days


def test_the_daily_sums_follow_deleted_rows(seeded, detour):
    conn = sqlite3.connect(seeded)
    with conn:
        conn.execute("DELETE FROM usage WHERE provider = 'deepseek'")
    conn.close()
    out = json.loads(detour("usage", *WINDOW, "--json", "--by", "provider").output)
    assert "deepseek" not in {g["provider"] for g in out["by"]["provider"]}
    [(calls,)] = sql(seeded, f"SELECT count(*) FROM usage WHERE {WHERE}")
    assert out["totals"]["calls"] == calls
