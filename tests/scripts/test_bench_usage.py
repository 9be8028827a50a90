"""The usage bench runs and prints its figures (tiny sizes; no figure is checked)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_usage_bench_prints_its_figures():
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.usage", "--rows", "500", "--writer-rows", "400",
         "--days", "3", "--no-throughput"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "writer: " in out and "rows/s" in out
    assert "seeded 500 rows over 3 days" in out
    assert "summarise --since 4d:" in out and "(500 calls)" in out
    assert out.count("detour usage --since 4d") == 3
