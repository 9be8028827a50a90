"""Scenario `quota`: what reading rate-limit headers costs, and requests per second through the
router with three accounts vs plain mitmdump.

    cd /work/main && .venv/bin/python -m scripts.bench.quota [--rounds 3] [--requests 100]

1. In process (no network): µs per successful call for what the request path does with the
   answer's headers (`QuotaBook.observe` on OpenAI's headers, on Anthropic's, on an answer
   without any), the rest check after it (`exhausted`), and the headroom order of a route with
   three accounts (`plan` with and without the QuotaBook).
2. Whole Claude Code requests (`"stream": false`) at `--concurrency` keep-alive connections:
   `mitmdump -s addons/router.py` with one provider of three accounts (a TLS fake sending
   OpenAI's rate-limit headers on every answer) vs plain `mitmdump` to a fake Anthropic API;
   rounds alternate. Requests per second (wall) and the proxy's CPU ms per call, their ratios
   (detour / plain), and how the calls spread over the three accounts (round-robin: from the
   usage rows, read after a clean stop).
3. The headers' share of the request path: `observe` of OpenAI's answer against detour's CPU
   per call of the same run.
"""

import argparse
import collections
import os
import sqlite3
import platform
import ssl
import sys
import tempfile
import time
import timeit
from pathlib import Path

from scripts.bench.claude_code import capture_body, check_whole, request_for
from scripts.bench.failover import revision
from scripts.bench.fake import RATE_LIMIT_HEADERS
from scripts.bench.lib import FakeProcess, TunnelClient, median, ready_dirs, run_phase

COMMON = [(b"date", b"Mon, 26 May 2025 05:00:04 GMT"), (b"content-type", b"application/json"),
          (b"transfer-encoding", b"chunked"), (b"connection", b"keep-alive"),
          (b"openai-processing-ms", b"312"), (b"openai-version", b"2020-10-01"),
          (b"x-request-id", b"req_0123456789abcdef"), (b"strict-transport-security",
                                                       b"max-age=31536000"),
          (b"cf-cache-status", b"DYNAMIC"), (b"server", b"cloudflare")]
OPENAI = COMMON + [(k.encode(), v.encode()) for k, v in RATE_LIMIT_HEADERS.items()]
ANTHROPIC = COMMON + [
    (f"anthropic-ratelimit-{w}-{f}".encode(), v.encode())
    for w in ("requests", "tokens", "input-tokens", "output-tokens")
    for f, v in (("limit", "80000"), ("remaining", "79000"), ("reset", "2026-01-01T00:00:30Z"))]
KEYS = ("sk-bench-a", "sk-bench-b", "sk-bench-c")


def micro(number: int) -> dict[str, float]:
    """µs per call of each step, best of 5 runs of `number` calls."""
    from addons.config import parse_config
    from addons.quota import QuotaBook
    from addons.routing import build_providers, plan

    book = QuotaBook()
    config = parse_config("providers: {p: {kind: openai, base_url: 'http://p', api_keys: ["
                          + ", ".join(KEYS) + "]}}\nroutes: {'*': [p/m]}\n")
    providers = build_providers(config)
    cands = plan(config, providers, "m")
    for c in cands:
        book.observe(c.key, OPENAI)
    steps = {
        "observe: OpenAI answer (16 headers, 6 rate-limit)": lambda: book.observe("p/a", OPENAI),
        "observe: Anthropic answer (22 headers, 12 rate-limit)":
            lambda: book.observe("p/b", ANTHROPIC),
        "observe: an answer without rate-limit headers": lambda: book.observe("p/c", COMMON),
        "exhausted: the rest check after an answer": lambda: book.exhausted(cands[0].key),
        "plan: 3 accounts, without the QuotaBook": lambda: plan(config, providers, "m"),
        "plan: 3 accounts, headroom order": lambda: plan(config, providers, "m", quotas=book),
    }
    return {name: min(timeit.repeat(step, number=number, repeat=5)) / number * 1e6
            for name, step in steps.items()}


def throughput(args) -> tuple[dict[str, list[tuple[float, float]]], dict[str, int]]:
    """Per round and side: (requests per second, proxy CPU ms per call); and the calls each
    account answered (usage rows)."""
    from tests.harness import Mitmdump

    out: dict[str, list[tuple[float, float]]] = {"detour, 3 accounts": [], "plain mitmdump": []}
    fakes: list[FakeProcess] = []
    clients: list[TunnelClient] = []
    procs: list[Mitmdump] = []
    with tempfile.TemporaryDirectory(prefix="detour-bench-") as tmp:
        tmp = Path(tmp)
        try:
            keys = [a for k in KEYS for a in ("--key", k)]
            common = ["--tls", "--events", str(args.events)]
            provider = FakeProcess("openai", *common, *keys, "--rate-limits").launch()
            vendor = FakeProcess("anthropic", *common).launch()
            fakes += [provider, vendor]
            confdir, home = ready_dirs(tmp, fakes)
            (home / "config.yaml").write_text(
                f"providers:\n  p: {{kind: openai, base_url: '{provider.base_url}/v1', "
                f"api_keys: [{', '.join(KEYS)}], verify: false}}\nroutes: {{'*': [p/fake-model]}}\n")
            base = ["--set", "connection_strategy=lazy", "--set", "ssl_insecure=true"]
            detour = Mitmdump(confdir, home, router=True, extra=base).start()
            plain = Mitmdump(confdir, router=False, extra=base).start()
            procs += [detour, plain]
            ctx = ssl.create_default_context(cafile=str(detour.ca_cert))
            body = capture_body(False)
            sides = {
                "detour, 3 accounts": (detour, "api.anthropic.com", 443,
                                       request_for("api.anthropic.com", body)),
                "plain mitmdump": (plain, "127.0.0.1", vendor.port,
                                   request_for(f"127.0.0.1:{vendor.port}", body)),
            }
            for i in range(args.rounds):
                order = list(sides) if i % 2 == 0 else list(reversed(sides))
                for name in order:
                    mitm, host, port, request = sides[name]
                    side_clients = [TunnelClient(mitm.port, host, port, ctx)
                                    for _ in range(args.concurrency)]
                    clients += side_clients
                    ph = run_phase(side_clients, args.requests, request, body,
                                   mitm.cpu_seconds, check_whole)
                    for c in side_clients:
                        c.close()
                    if ph.errors:
                        raise RuntimeError(f"{name}: {ph.errors[0]}")
                    out[name].append((ph.n / ph.wall, ph.cpu * 1000 / ph.n))
                    if args.progress:
                        print(f"round {i + 1}: {name}: {ph.n / ph.wall:.0f} req/s",
                              file=sys.stderr)
            detour.stop()  # a clean stop writes every usage row
            with sqlite3.connect(home / "detour.db") as db:
                spread = collections.Counter(dict(db.execute(
                    "SELECT account, count(*) FROM usage WHERE status = 200 GROUP BY 1")))
        finally:
            for c in clients:
                c.close()
            for m in procs:
                m.stop()
            for f in fakes:
                f.stop()
    return out, dict(spread)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench.quota",
                                 description=__doc__.strip().splitlines()[0])
    ap.add_argument("--number", type=int, default=20000, help="calls per micro timing (20000)")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds (3)")
    ap.add_argument("--requests", type=int, default=100,
                    help="whole calls per connection, round and side (100)")
    ap.add_argument("--concurrency", type=int, default=4, help="keep-alive connections (4)")
    ap.add_argument("--events", type=int, default=500, help="characters of each answer (500)")
    ap.add_argument("--no-progress", dest="progress", action="store_false")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    lines = ["quota: in process, µs per call (best of 5)"]
    micros = micro(args.number)
    for name, us in micros.items():
        lines.append(f"  {name:<58} {us:8.2f}")
    result, spread = throughput(args)
    lines.append(f"whole Claude Code requests, c={args.concurrency}, {args.rounds} rounds x "
                 f"{args.requests * args.concurrency} calls per side (medians)")
    for name, rounds in result.items():
        lines.append(f"  {name:<22} {median([r for r, _ in rounds]):8.0f} req/s "
                     f"{median([c for _, c in rounds]):8.2f} ms CPU per call")
    detour, plain = result["detour, 3 accounts"], result["plain mitmdump"]
    rps = [d[0] / p[0] for d, p in zip(detour, plain)]  # per round: the two sides alternate
    # a short round can use less CPU than /proc's 10 ms tick: no ratio for it
    cpu = [d[1] / p[1] for d, p in zip(detour, plain) if p[1] > 0]
    cpu_text = (f"{median(cpu):.2f}x CPU per call (rounds {min(cpu):.2f}-{max(cpu):.2f})"
                if cpu else "CPU per call under the 10 ms tick: no ratio (more --requests)")
    lines.append(f"  ratio detour / plain: {median(rps):.2f}x req/s (rounds {min(rps):.2f}-"
                 f"{max(rps):.2f}), {cpu_text}")
    lines.append("  calls per account (round-robin): " + ", ".join(
        f"{k} {n}" for k, n in sorted(spread.items())))
    observe = next(us for name, us in micros.items() if name.startswith("observe: OpenAI"))
    cpu_ms = median([c for _, c in detour])
    lines.append(f"  reading OpenAI's rate-limit headers: {observe:.2f} µs of detour's "
                 f"{cpu_ms * 1000:.0f} µs CPU per call ({observe / (cpu_ms * 10):.2f}%)")
    argv_text = " ".join(sys.argv[1:] if argv is None else argv)
    lines.append(f"command: python -m scripts.bench.quota {argv_text}".rstrip())
    lines.append(f"code at {revision()}; python {platform.python_version()}, "
                 f"{platform.machine()}, {os.cpu_count()} cpus; elapsed "
                 f"{time.monotonic() - t0:.0f} s")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
