"""Scenario `workers`: requests/s and CPU per request of `detour up --workers N` against one
process (`detour up`), in the same run.

    .venv/bin/python -m scripts.bench.workers [--workers 1 2 4] [--requests 600]
                                              [--clients 8] [--rounds 2]

A fake OpenAI-compatible provider in a process of its own (scripts/bench/fake.py); for each
setup, `detour up` on a fresh port with the same DETOUR_HOME (a route to the fake), then
`--requests` whole Chat calls from `--clients` client processes (each its own keep-alive
connection, so the kernel spreads them over the workers), and the figures: calls per second
(wall clock) and CPU milliseconds per call (user + system of every detour process: the
workers and their supervisor). Setups alternate, their order rotating every round; the report
gives each setup's median over the rounds. Everything is on 127.0.0.1; every process the
bench starts is stopped by its PID.
"""

import argparse
import json
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import httpx

from scripts.bench.lib import FakeProcess, ready_dirs
from tests.harness import cpu_of_pid, free_port, stop_process

URL = "https://api.openai.com/v1/chat/completions"
DETOUR = Path(sys.executable).parent / "detour"


def client_calls(port: int, ca: str, count: int) -> int:
    """One client process: `count` calls on one keep-alive connection; returns the 200s."""
    ok = 0
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", trust_env=False, timeout=60,
                      verify=ssl.create_default_context(cafile=ca)) as c:
        for _ in range(count):
            r = c.post(URL, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]})
            ok += r.status_code == 200
    return ok


def detour_pids(proc: subprocess.Popen) -> list[int]:
    """The detour process and its children (the workers), from /proc (Linux)."""
    pids = [proc.pid]
    try:
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
    except OSError:
        children = []
    return pids + [int(pid) for pid in children]


def run_setup(workers: int, home: Path, confdir: Path, args, pool) -> dict:
    port = free_port()
    argv = [str(DETOUR), "--home", str(home), "--confdir", str(confdir), "up", "--quiet",
            "--port", str(port)] + (["--workers", str(workers)] if workers else [])
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()
    reader = threading.Thread(target=lambda: [out.extend(line) for line in
                                              iter(proc.stdout.readline, b"")], daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 90
        while _serving(proc, port, workers) < max(1, workers):  # every worker serves it
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"detour up did not start:\n{out.decode()}")
            time.sleep(0.1)
        ca = str(confdir / "mitmproxy-ca-cert.pem")
        per_client = args.requests // args.clients
        pool.submit(client_calls, port, ca, 1).result()  # warm: the CA, the first handshake
        pids = detour_pids(proc)
        cpu0 = sum(cpu_of_pid(pid) for pid in pids)
        t0 = time.perf_counter()
        ok = sum(pool.map(client_calls, [port] * args.clients, [ca] * args.clients,
                          [per_client] * args.clients))
        elapsed = time.perf_counter() - t0
        cpu = sum(cpu_of_pid(pid) for pid in pids) - cpu0
    finally:
        stop_process(proc, signal.SIGINT, reader)
    calls = per_client * args.clients
    return {"ok": ok, "calls": calls, "calls_per_s": calls / elapsed,
            "cpu_ms_per_call": cpu * 1000 / calls, "processes": len(pids)}


def _serving(proc: subprocess.Popen, port: int, workers: int) -> int:
    """Processes serving 127.0.0.1:`port`, from /proc (Linux): `detour up` itself, or the
    workers of `--workers N` whose proxy serves the socket the supervisor made (listening
    from the start) and handed over: a worker holds it twice then."""
    local = f"0100007F:{port:04X}"
    lines = Path("/proc/net/tcp").read_text().splitlines()[1:]
    listening = {f"socket:[{f[9]}]" for f in map(str.split, lines)
                 if f[1] == local and f[3] == "0A"}

    def held(pid: int) -> int:
        try:
            fds = list(Path(f"/proc/{pid}/fd").iterdir())
        except OSError:
            return 0
        return sum(1 for fd in fds if _link(fd) in listening)

    if not workers:
        return 1 if held(proc.pid) else 0
    return sum(1 for pid in detour_pids(proc)[1:] if held(pid) >= 2)


def _link(path: Path) -> str:
    try:
        return str(path.readlink())
    except OSError:
        return ""


def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="detour-bench-workers-"))
    fake = FakeProcess("openai", "--any-key").launch().wait_ready()
    try:
        confdir, home = ready_dirs(tmp, [fake])
        (home / "config.yaml").write_text(
            f'providers:\n  f: {{kind: openai, base_url: "{fake.base_url}/v1", '
            f'api_keys: [sk-bench]}}\nroutes:\n  "*": [f/m]\n')
        setups = [0, *args.workers]  # 0: one process, `detour up` as it is
        results: dict[int, list[dict]] = {s: [] for s in setups}
        with ProcessPoolExecutor(args.clients) as pool:
            for round_ in range(args.rounds):
                order = setups[round_ % len(setups):] + setups[:round_ % len(setups)]
                for setup in order:
                    results[setup].append(run_setup(setup, home, confdir, args, pool))
    finally:
        fake.stop()
    report = {}
    for setup, runs in results.items():
        name = "one process" if setup == 0 else f"{setup} workers"
        report[name] = {
            "calls_per_s": round(statistics.median(r["calls_per_s"] for r in runs), 1),
            "cpu_ms_per_call": round(statistics.median(r["cpu_ms_per_call"] for r in runs), 2),
            "ok": sum(r["ok"] for r in runs), "calls": sum(r["calls"] for r in runs)}
    return {"clients": args.clients, "requests": args.requests, "rounds": args.rounds,
            "setups": report}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--requests", type=int, default=600)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
