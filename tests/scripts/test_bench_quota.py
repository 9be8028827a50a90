"""The quota benchmark runs end to end and reports its rows (tiny sizes; no figure is checked:
performance is never asserted in tests)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_quota_bench_runs_and_reports():
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.quota", "--number", "50", "--rounds", "1",
         "--requests", "2", "--concurrency", "2", "--events", "5", "--no-progress"],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("observe: OpenAI answer", "observe: Anthropic answer", "headroom order",
                "detour, 3 accounts", "plain mitmdump", "req/s", "ratio detour / plain",
                "reading OpenAI's rate-limit headers"):
        assert row in proc.stdout, proc.stdout
    # every account of the round-robin provider answered some
    [spread] = [line for line in proc.stdout.splitlines() if "calls per account" in line]
    assert spread.count("key") == 3, spread
