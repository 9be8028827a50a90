"""Scenario `usage`: the usage store and `detour usage` at scale.

    cd /work/main && .venv/bin/python -m scripts.bench.usage [--rows 1000000] [--days 30]
        [--rounds 3] [--requests 100] [--concurrency 4] [--home DIR (keep the seeded database)]

0. Whole calls per second through the proxy with usage recording on vs off, in the same run
   (two mitmdumps with the router, rounds alternating).
1. Rows per second the store's writer sustains (`UsageStore.flush` of queued rows, batches of
   its default size, into a database with every index of the current schema).
2. `detour usage` (every table, and `--json`) on a database seeded with `--rows` rows spread
   over `--days` days, run as a user runs it: the seconds it takes, whole process.

`seed()` is also what the tests use to fill a database with known rows.
"""

import argparse
import os
import random
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from addons.usage import ROW_COLUMNS, UsageRow, UsageStore, open_db

TOOLS = [("claude-cli/2.1.197 (external, cli)", "claude-code", "2.1.197"),
         ("codex_exec/0.169.0 (Debian 12.0.0; x86_64)", "codex", "0.169.0"),
         ("GeminiCLI/0.61.0/gemini-2.5-pro (linux; x64)", "gemini-cli", "0.61.0"),
         ("QwenCode/0.15.10 (linux; x64)", "qwen-code", "0.15.10"),
         ("curl/8.5.0", "curl", "8.5.0")]
ROUTES = [("anthropic", "env:ANTHROPIC_A", "claude-sonnet-4-5", 3.0, 15.0),
          ("anthropic", "env:ANTHROPIC_B", "claude-opus-4-1", 15.0, 75.0),
          ("deepseek", "env:DEEPSEEK", "deepseek-chat", 0.27, 1.10),
          ("openai", "file:~/openai-key", "gpt-5", 1.25, 10.0),
          ("local", "none", "llama-3-70b", None, None)]


USERS = ("alice", "bob", "carol", "")  # "": a call made without users (no gateway)


def seeded_rows(count: int, days: int, seed: int = 1, end: datetime | None = None):
    """`count` rows as the store writes them, spread over the `days` before `end`, from a
    fixed random seed (the same rows every time)."""
    rng = random.Random(seed)
    end = end or datetime.now(UTC)
    span = days * 86400
    for i in range(count):
        ua, tool, version = TOOLS[rng.randrange(len(TOOLS))]
        provider, account, model, pin, pout = ROUTES[rng.randrange(len(ROUTES))]
        inp, out = rng.randrange(10, 5000), rng.randrange(1, 2000)
        cread, cwrite = rng.randrange(0, 50000), rng.randrange(0, 3000)
        status = 200 if rng.random() > 0.03 else rng.choice((429, 502, 0))
        attempts = 1 if rng.random() > 0.05 else 2
        cost = (None if pin is None else
                round((inp * pin + out * pout + cread * pin * 0.1 + cwrite * pin * 1.25) / 1e6, 8))
        ts = end - timedelta(seconds=span * (i + rng.random()) / count)
        yield UsageRow(
            ts.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts.microsecond // 1000:03d}Z",
            f"seed{seed}-{i}", ua, "anthropic-messages", model, rng.random() < 0.8,
            provider=provider, account=account, model_upstream=model, status=status,
            attempts=attempts, input_tokens=inp, output_tokens=out, cache_read_tokens=cread,
            cache_write_tokens=cwrite, reasoning_tokens=0, cost_usd=cost,
            latency_ms=rng.uniform(200, 30000), ttfb_ms=rng.uniform(100, 3000),
            error=None if status == 200 else f"status {status}", client_tool=tool,
            client_version=version, cost_basis=None if cost is None else "api",
            price_source=None if cost is None else "config", user=USERS[i % len(USERS)])


def seed(path: Path, count: int, days: int = 30, seed: int = 1,
         end: datetime | None = None) -> None:
    """A database at `path` with the seeded rows (one transaction)."""
    db = open_db(path)
    sql = (f"INSERT INTO usage ({', '.join(ROW_COLUMNS)}) "
           f"VALUES ({', '.join('?' * len(ROW_COLUMNS))})")
    with db.conn:
        db.conn.executemany(sql, (tuple(rec[c] for c in ROW_COLUMNS) for rec in (
            row.as_record() for row in seeded_rows(count, days, seed, end))))
    db.close()


def writer_rate(folder: Path, rows: int, batch: int = 200) -> float:
    """Rows per second the store writes, in flushes of `batch` rows (under load the flusher
    wakes as soon as a batch is queued)."""
    store = UsageStore(folder / "writer.db")
    made = list(seeded_rows(rows, 1, seed=2))
    written = 0
    t0 = time.perf_counter()
    for start in range(0, rows, batch):
        for row in made[start:start + batch]:
            store.add(row)
        written += store.flush()
    elapsed = time.perf_counter() - t0
    assert written == rows, (written, rows)
    return rows / elapsed


def throughput(rounds: int, requests: int, concurrency: int) -> dict[str, list[float]]:
    """Whole Claude Code calls per second through two mitmdumps with the router, the same
    config and fake provider, usage recording on in one, off in the other
    (`detour_usage_record=false`); rounds alternate between them."""
    import ssl

    from scripts.bench.claude_code import capture_body, check_whole, request_for
    from scripts.bench.lib import FakeProcess, TunnelClient, ready_dirs, run_phase
    from tests.harness import Mitmdump

    out: dict[str, list[float]] = {"recording on": [], "recording off": []}
    with tempfile.TemporaryDirectory(prefix="detour-bench-") as tmp:
        tmp = Path(tmp)
        provider = FakeProcess("openai", "--tls", "--events", "200").launch()
        procs = []
        try:
            confdir, home = ready_dirs(tmp, [provider])
            config = (f"providers:\n  p: {{kind: openai, base_url: '{provider.base_url}/v1', "
                      "api_keys: [sk-fake-provider-key], verify: false}\n"
                      "routes: {'*': [p/fake-model]}\n")
            homes = {"recording on": home, "recording off": tmp / "home-off"}
            homes["recording off"].mkdir()
            base = ["--set", "connection_strategy=lazy", "--set", "ssl_insecure=true",
                    "--set", "detour_metrics_port=0"]
            mitms = {}
            for name, folder in homes.items():
                (folder / "config.yaml").write_text(config)
                extra = base + (["--set", "detour_usage_record=false"] if "off" in name else [])
                mitms[name] = Mitmdump(confdir, folder, extra=extra).start()
                procs.append(mitms[name])
            ctx = ssl.create_default_context(cafile=str(mitms["recording on"].ca_cert))
            body = capture_body(False)
            request = request_for("api.anthropic.com", body)
            for i in range(rounds):
                for name in (list(mitms) if i % 2 == 0 else list(reversed(mitms))):
                    clients = [TunnelClient(mitms[name].port, "api.anthropic.com", 443, ctx)
                               for _ in range(concurrency)]
                    try:
                        ph = run_phase(clients, requests, request, body,
                                       mitms[name].cpu_seconds, check_whole)
                    finally:
                        for c in clients:
                            c.close()
                    if ph.errors:
                        raise RuntimeError(f"{name}: {ph.errors[0]}")
                    out[name].append(ph.n / ph.wall)
            rows = sqlite_utils_count(home / "detour.db")
            print(f"rows recorded by the recording side: {rows:,}")
        finally:
            for m in procs:
                m.stop()
            provider.stop()
    return out


def sqlite_utils_count(path: Path) -> int:
    import sqlite3
    conn = sqlite3.connect(path)
    try:
        return conn.execute("SELECT count(*) FROM usage").fetchone()[0]
    finally:
        conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--writer-rows", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3, help="throughput rounds per side")
    parser.add_argument("--requests", type=int, default=100,
                        help="whole calls per connection, round and side")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--no-throughput", dest="throughput", action="store_false",
                        help="skip the proxy throughput phase")
    parser.add_argument("--home", type=Path,
                        help="keep the seeded database in this folder (reused when it exists)")
    args = parser.parse_args()
    from scripts.bench.lib import median
    result = throughput(args.rounds, args.requests, args.concurrency) if args.throughput else {}
    for name, rates in result.items():
        print(f"{name}: {median(rates):,.0f} whole calls/s (median of {len(rates)} rounds, "
              f"c={args.concurrency}; rounds: {', '.join(f'{r:.0f}' for r in rates)})")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        rate = writer_rate(folder, args.writer_rows)
        print(f"writer: {rate:,.0f} rows/s ({args.writer_rows:,} rows, batches of 200)")
        home = args.home or folder / "home"
        home.mkdir(exist_ok=True)
        if not (home / "detour.db").exists():
            t0 = time.perf_counter()
            seed(home / "detour.db", args.rows, args.days)
            print(f"seeded {args.rows:,} rows over {args.days} days in "
                  f"{time.perf_counter() - t0:.1f} s")
        from scripts.usage_report import parse_when, summarise
        now = datetime.now(UTC)
        for window in (f"{args.days + 1}d", "7d", "24h"):
            t0 = time.perf_counter()
            report = summarise(home / "detour.db", parse_when(window, now), now)
            print(f"summarise --since {window}: {time.perf_counter() - t0:.3f} s in process "
                  f"({report.totals.calls:,} calls)")
        env = {**os.environ, "DETOUR_HOME": str(home), "COLUMNS": "150"}
        for extra in ([], ["--json"], ["--since", "all", "--by", "model"]):
            cmd = [sys.executable, "-c", "from scripts.cli import cli; cli(prog_name='detour')",
                   "usage", "--since", f"{args.days + 1}d", *extra]
            t0 = time.perf_counter()
            done = subprocess.run(cmd, env=env, capture_output=True, timeout=600)
            elapsed = time.perf_counter() - t0
            assert done.returncode == 0, done.stderr.decode()
            print(f"detour usage {' '.join(cmd[4:])}: {elapsed:.2f} s "
                  f"(whole process, {len(done.stdout):,} bytes out)")


if __name__ == "__main__":
    main()
