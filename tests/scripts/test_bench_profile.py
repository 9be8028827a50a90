"""The profiling driver runs a real mitmdump under cProfile and prints its breakdown (tiny
sizes; no figure is checked: performance is never asserted in tests)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_profile_reports_where_the_time_goes(tmp_path):
    saved = tmp_path / "whole.prof"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.cpu_profile", "whole", "--calls", "3", "--top", "400",
         "--save", str(saved)],
        cwd=ROOT, capture_output=True, text=True, timeout=90)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "detour, whole: the event loop thread busy" in out, out
    # the request hook and the translators ran inside the profiled mitmdump
    assert "addons/intercept.py" in out and "translators/" in out, out
    assert "top 400 by cumulative time" in out, out
    assert saved.stat().st_size > 0
