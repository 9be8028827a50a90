"""The benchmark runs end to end and prints its table (tiny sizes; no figure is checked:
performance is never asserted in tests)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_claude_code_bench_runs_and_reports(tmp_path):
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.claude_code", "--requests", "3", "--rounds", "1",
         "--events", "20", "--streams", "2", "--repeat", "1", "--paced-delay", "0.001",
         "--paced-streams", "2", "--paced-concurrency", "2", "--paced-events", "10",
         "--big-body", "100000", "--big-requests", "1", "--open-streams", "3",
         "--no-progress", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout
    for line in ("whole c=1     proxy CPU (ms/request)", "whole c=16    requests/s",
                 "stream c=1    proxy CPU (us/event)", "paced c=2     proxy CPU (us/event)",
                 "0.1MB c=1     proxy CPU (ms/request)", "observe c=1   proxy CPU",
                 "3 open        RSS per open stream (KB)",
                 "3 open http   RSS per open stream (KB)", "paced stream alone",
                 "translator alone"):
        assert line in table, table
    saved = json.loads(out.read_text())
    assert saved["scenario"] == "claude_code"
    assert len(saved["rounds"]) == 1
    assert {row["metric"] for row in saved["summary"]} >= {"cpu_ms_per_req", "rps", "median_ms",
                                                           "cpu_us_per_event", "kb_per_stream"}


def test_memory_bench_runs_and_reports(tmp_path):
    out = tmp_path / "memory.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.memory", "--upstream", "http", "--streams", "3",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "reverse mode, plain HTTP client leg (issue 13's setting), http upstream:" \
        in proc.stdout, proc.stdout
    saved = json.loads(out.read_text())["results"]
    assert set(saved) == {"reverse"} and set(saved["reverse"]) == {"detour", "plain"}
    assert all(run["streams"] == 3 for runs in saved["reverse"].values() for run in runs)
