"""The failover benchmark runs end to end and reports its routes (tiny sizes; no figure
is checked: performance is never asserted in tests)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_failover_bench_runs_and_reports(tmp_path):
    out = tmp_path / "failover.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.failover", "--rounds", "1", "--requests", "2",
         "--events", "5", "--no-progress", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for route in ("[a2]", "[a1 answers 429, a2]", "[account 1 answers 429, account 2]",
                  "[a1 answers 500, a2]", "[a1 answers 200 + error event, a2]"):
        assert route in proc.stdout, proc.stdout
    saved = json.loads(out.read_text())
    assert saved["scenario"] == "failover"
    assert {row["n"] for row in saved["summary"].values()} == {2}  # every stream got content
