"""The Codex benchmark runs and reports its rows (tiny sizes; no figure is checked: performance
is never asserted in tests). Its translator part always; one Codex turn per side, slow, when
the real Codex is installed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent.parent
CODEX = ROOT / "clients" / "node_modules" / ".bin" / "codex"


def test_codex_bench_translators_run_and_report():
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.codex", "--translators-only", "--number", "5",
         "--events", "20"], cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for row in ("Responses -> canonical", "canonical -> Anthropic", "same format, model",
                "stream: canonical -> Responses, per event", "Anthropic -> Responses"):
        assert row in proc.stdout, proc.stdout


@pytest.mark.slow
@pytest.mark.skipif(not os.access(CODEX, os.X_OK), reason="the real Codex is not installed")
def test_codex_bench_runs_codex_on_each_side(tmp_path):
    out = tmp_path / "figures.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.codex", "--runs", "1", "--number", "2",
         "--events", "5", "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = json.loads(out.read_text())["codex"]
    assert set(figures) == {"plain", "detour", "detour -> Chat"}
    # each side's Codex printed its provider's answer, and its upgrade was answered
    assert figures["plain"]["text"] == figures["detour"]["text"] == \
        "STUB-OK: hello from the stub vendor"
    assert figures["detour -> Chat"]["text"] == "Hi"
    assert all(len(f["ttft_ms"]) == 1 and f["upgrade_answered_ms"] for f in figures.values())
