"""`detour usage --serve`: Datasette started for real on a seeded database, its canned queries
fetched over HTTP on loopback."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from scripts.bench.usage import seed
from scripts.usage_datasette import QUERIES
from tests.harness import free_port

ROOT = Path(__file__).resolve().parent.parent.parent


@pytest.fixture(scope="module")
def datasette(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    seed(home / "detour.db", 2000, days=3, end=datetime.now(UTC))
    with serving(home) as (url, _):
        yield url, home / "detour.db"


@contextmanager
def serving(home: Path):
    """`detour usage --serve` of this DETOUR_HOME, up: its URL, and a list that holds its
    output (stdout and stderr) once it stopped (SIGTERM to its PID)."""
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
           "DETOUR_HOME": str(home)}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from scripts.cli import cli; cli(prog_name='detour')",
         "usage", "--serve", "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    output: list[str] = []
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/-/versions.json", trust_env=False, timeout=5).is_success:
                    break
            except httpx.TransportError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError(f"datasette did not start: {proc.communicate(15)[0]!r}")
            time.sleep(0.2)
        yield url, output
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                out = proc.communicate(timeout=15)[0]
            except subprocess.TimeoutExpired:
                proc.kill()
                out = proc.communicate(timeout=15)[0]
            output.append(out.decode(errors="replace"))


def test_cost_per_tool_this_month(datasette):
    url, db = datasette
    r = httpx.get(f"{url}/detour/cost_per_tool_this_month.json?_shape=array", trust_env=False,
                  timeout=30)
    assert r.status_code == 200, r.text
    got = {row["client_tool"]: (row["calls"], row["cost_usd"]) for row in r.json()}
    conn = sqlite3.connect(db)
    want = {tool: (calls, round(cost, 4)) for tool, calls, cost in conn.execute(
        "SELECT client_tool, count(*), total(cost_usd) FROM usage "
        "WHERE ts >= strftime('%Y-%m-01', 'now') GROUP BY 1")}
    conn.close()
    assert got.keys() == want.keys()
    for tool, (calls, cost) in want.items():
        assert got[tool][0] == calls and got[tool][1] == pytest.approx(cost, abs=1e-4)


@pytest.mark.parametrize("query", sorted(QUERIES))
def test_every_canned_query_runs(datasette, query):
    url, _ = datasette
    r = httpx.get(f"{url}/detour/{query}.json?_shape=objects", trust_env=False, timeout=30)
    assert r.status_code == 200, r.text
    assert r.json()["ok"] is True


def test_titles_and_column_descriptions(datasette):
    url, _ = datasette
    page = httpx.get(f"{url}/detour/usage", trust_env=False, timeout=30).text
    assert "Usage: one row per model call" in page
    assert "The client tool, normalised from the User-Agent" in page
    home = httpx.get(f"{url}/detour", trust_env=False, timeout=30).text
    assert "Cost per client tool, this month" in home and "_sqlite_migrations" not in home
