"""Scenario `failover`: the time from a first candidate's error to the second one's first byte.

    cd /work/main && .venv/bin/python -m scripts.bench.failover [--rounds 5] [--requests 30]

One real `mitmdump -s addons/router.py`; Claude Code's captured request, streamed, sent to
four routes (`cooldown_seconds: 0`, so the failing account is asked on every call):
- `alone`:              [a2]      a2: a fake OpenAI-compatible provider (TLS), `--events` deltas
- `after 429`:          [a1, a2]  a1: a fake that answers every call with a 429 (no Retry-After)
- `account 1's 429`:    [pair]    one provider, two accounts in priority order on one fake,
                                  which answers account 1's calls with a 429, account 2's well
- `after 500`:          [a1, a2]  a1: a fake that answers every call with a 500
- `after stream error`: [a1, a2]  a1: 200, the role chunk, then an in-stream error event
The figure is the time to first byte the client sees: from the request's first byte written
to the arrival of the first `text_delta` event. Phases alternate, their order rotating every
round; the report gives the medians, the failover's cost (median minus `alone`) and the ratio.
"""

import argparse
import json
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scripts.bench.claude_code import (MARKER, PROVIDER_KEY, capture_body, check_stream,
                                       request_for)
from scripts.bench.lib import (ROOT, FakeProcess, TunnelClient, median, percentile,
                               ready_dirs, run_phase)

ROUTES = {  # name -> (model requested, what the route is)
    "alone": ("bench-alone", "[a2]"),
    "after 429": ("bench-after-429", "[a1 answers 429, a2]"),
    "account 1's 429": ("bench-account-429", "[account 1 answers 429, account 2]"),
    "after 500": ("bench-after-500", "[a1 answers 500, a2]"),
    "after stream error": ("bench-after-stream-error", "[a1 answers 200 + error event, a2]"),
}


FIRST_ACCOUNT = "bench-first-account-key"


def run(args) -> dict:
    from tests.harness import Mitmdump

    fakes: list[FakeProcess] = []
    clients: dict[str, TunnelClient] = {}
    mitm = None
    with tempfile.TemporaryDirectory(prefix="detour-bench-") as tmp:
        tmp = Path(tmp)
        try:
            common = ["--tls", "--events", str(args.events)]
            a2 = FakeProcess("openai", *common).launch()
            a1_429 = FakeProcess("openai", *common, "--fail", "429").launch()
            a1_500 = FakeProcess("openai", *common, "--fail", "500").launch()
            a1_err = FakeProcess("openai", *common, "--fail", "stream-error").launch()
            pair = FakeProcess("openai", *common, "--key", FIRST_ACCOUNT, "--key", PROVIDER_KEY,
                               "--fail", "429", "--fail-key", FIRST_ACCOUNT).launch()
            fakes += [a2, a1_429, a1_500, a1_err, pair]
            confdir, home = ready_dirs(tmp, fakes)

            def provider(fake: FakeProcess) -> str:
                return (f'{{kind: openai, base_url: "{fake.base_url}/v1", '
                        f'api_keys: [{PROVIDER_KEY}], verify_tls: false}}')

            (home / "config.yaml").write_text(f"""
providers:
  a2: {provider(a2)}
  a1-429: {provider(a1_429)}
  a1-500: {provider(a1_500)}
  a1-err: {provider(a1_err)}
  pair: {{kind: openai, base_url: "{pair.base_url}/v1", verify_tls: false, api_keys: [
         {{key: {FIRST_ACCOUNT}, priority: 1}}, {{key: {PROVIDER_KEY}, priority: 2}}]}}
routes:
  {ROUTES["alone"][0]}: [a2/fake-model]
  {ROUTES["after 429"][0]}: [a1-429/fake-model, a2/fake-model]
  {ROUTES["after 500"][0]}: [a1-500/fake-model, a2/fake-model]
  {ROUTES["after stream error"][0]}: [a1-err/fake-model, a2/fake-model]
  {ROUTES["account 1's 429"][0]}: [pair/fake-model]
cooldown_seconds: 0
""")
            mitm = Mitmdump(confdir, home, router=True).start()
            ctx = ssl.create_default_context(cafile=str(mitm.ca_cert))
            bodies, requests = {}, {}
            for name, (model, _) in ROUTES.items():
                clients[name] = TunnelClient(mitm.port, "api.anthropic.com", 443, ctx)
                bodies[name] = capture_body(True, model)
                requests[name] = request_for("api.anthropic.com", bodies[name])
            rounds = []
            names = list(ROUTES)
            for i in range(args.rounds):
                order = names[i % len(names):] + names[:i % len(names)]
                this = {}
                for name in order:
                    ph = run_phase([clients[name]], args.requests, requests[name], bodies[name],
                                   mitm.cpu_seconds, check_stream, marker=MARKER)
                    if ph.errors:
                        raise RuntimeError(f"{name}: {ph.errors[0]}")
                    this[name] = ph.marks_ms()
                rounds.append(this)
                if args.progress:
                    print(f"round {i + 1}/{args.rounds}: " + ", ".join(
                        f"{n} {median(v):.2f} ms" for n, v in this.items()), file=sys.stderr)
        finally:
            for c in clients.values():
                c.close()
            if mitm is not None:
                mitm.stop()
            for f in fakes:
                f.stop()
    return {"rounds": rounds}


def summarize(result: dict) -> dict:
    out = {}
    for name in ROUTES:
        every = [ms for r in result["rounds"] for ms in r[name]]
        out[name] = {"n": len(every), "median_ms": median(every), "p90_ms": percentile(every, 0.9)}
    alone = out["alone"]["median_ms"]
    for name, row in out.items():
        row["extra_ms"] = row["median_ms"] - alone
        row["ratio"] = row["median_ms"] / alone if alone else None
    return out


def revision() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                              capture_output=True, timeout=10).stdout.strip() or "?"
    except OSError:
        return "?"


def report(summary: dict, args, elapsed: float) -> str:
    lines = [f"failover: time to first byte at the client, streamed Claude Code request, "
             f"{args.rounds} rounds x {args.requests} requests per route (alternating)",
             f"{'route':<40} {'median ms':>10} {'p90 ms':>8} {'+ms':>7} {'ratio':>6}"]
    for name, (_, what) in ROUTES.items():
        row = summary[name]
        lines.append(f"{what:<40} {row['median_ms']:>10.2f} {row['p90_ms']:>8.2f} "
                     f"{row['extra_ms']:>7.2f} {row['ratio']:>6.2f}")
    lines.append(f"command: python -m scripts.bench.failover {' '.join(args.argv)}".rstrip())
    lines.append(f"code at {revision()}; python {platform.python_version()}, "
                 f"{platform.machine()}, {os.cpu_count()} cpus; elapsed {elapsed:.0f} s")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m scripts.bench.failover",
                                 description=__doc__.strip().splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5, help="alternating rounds (5)")
    ap.add_argument("--requests", type=int, default=30,
                    help="timed streamed requests per round and route (30)")
    ap.add_argument("--events", type=int, default=20, help="content deltas in a2's answer (20)")
    ap.add_argument("--json", type=Path, help="also save every figure here")
    ap.add_argument("--no-progress", dest="progress", action="store_false",
                    help="no per-round line on stderr")
    args = ap.parse_args(argv)
    args.argv = sys.argv[1:] if argv is None else list(argv)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    result = run(args)
    summary = summarize(result)
    print(report(summary, args, time.monotonic() - t0))
    if args.json:
        args.json.write_text(json.dumps({"scenario": "failover", "summary": summary, **result},
                                        indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
