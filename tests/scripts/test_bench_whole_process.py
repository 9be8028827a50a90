"""The whole-process bench runs end to end, with its loop-thread attribution (tiny sizes; no
figure is checked: performance is never asserted in tests)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent


def test_whole_process_bench_attributes_the_loop_thread(tmp_path):
    out = tmp_path / "whole.json"
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.whole_process", "--calls", "4", "--rounds", "1",
         "--attribute", "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "round 0: us/call detour user" in proc.stdout, proc.stdout
    saved = json.loads(out.read_text())
    detour = saved["attribution_us_per_call"]["detour"]
    plain = saved["attribution_us_per_call"]["plain"]
    # detour's request hook and its provider leg ran, charged apart; plain mitmdump has neither
    # but opens its own upstream connection
    assert detour["hook request Interceptor"] > 0 and "hook request Interceptor" not in plain
    assert detour["fn StreamsTransport.handle_async_request"] > 0
    assert detour["fn Forwarder.build"] > 0
    assert plain["loop: task ConnectionHandler.open_connection"] > 0
    assert saved["rounds"][0]["detour"]["n"] == 4


def test_attribution_is_refused_alongside_strace():
    proc = subprocess.run(
        [sys.executable, "-m", "scripts.bench.whole_process", "--attribute", "--strace"],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "apart from --strace" in proc.stderr
