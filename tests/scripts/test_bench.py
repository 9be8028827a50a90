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
         "--events", "20", "--streams", "2", "--repeat", "1", "--paced-delay", "0.001", "--paced-streams", "1",
         "--no-progress", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    table = proc.stdout
    for line in ("whole c=1   proxy CPU (ms/request)", "whole c=16  requests/s",
                 "stream c=1  proxy CPU (ms/stream)", "paced stream", "translator alone"):
        assert line in table, table
    saved = json.loads(out.read_text())
    assert saved["scenario"] == "claude_code"
    assert len(saved["rounds"]) == 1
    assert {row["metric"] for row in saved["summary"]} >= {"cpu_ms_per_req", "rps", "median_ms"}
