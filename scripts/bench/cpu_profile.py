"""Where the proxy's CPU goes: one mitmdump under cProfile (`cprofile_addon.py`, the event
loop's thread on its own CPU clock), driven with Claude Code's captured request.

    .venv/bin/python -m scripts.bench.cpu_profile whole|stream|paced|observe [--plain] [--calls N]
                                                  [--concurrency N]

- whole: translated whole calls (Anthropic -> fake OpenAI-compatible provider), c=1;
- stream: translated unpaced 500-event streams, c=1 (through the relay);
- paced: translated streams of 250 events one every 2 ms, 4 at once (one event per read);
- observe: detour's observe mode (the model routed to passthrough), whole calls;
- --plain: the same traffic through plain mitmdump (no detour; streams in stream mode), to
  compare with mitmproxy's own share.

Prints the profiled CPU per call, the self time grouped by where it is spent (a C function's
time goes to the detour module that called it, so orjson.loads in the request hook counts as
the hook's), and the top functions by cumulative time. `--save PATH` keeps the pstats file.
"""

import argparse
import json
import os
import pstats
import ssl
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from scripts.bench.claude_code import (OBSERVE_MODEL, PACED_MODEL, PACED_UPSTREAM, capture_body,
                                       check_stream, check_whole, detour_config, request_for,
                                       MARKER)
from scripts.bench.lib import ROOT, FakeProcess, TunnelClient, pin, run_phase

ADDON = Path(__file__).with_name("cprofile_addon.py")

# (bucket, test on the function's file name); the first that matches wins
FILE_BUCKETS = [
    ("translators/ (translation)", "/translators/"),
    ("addons/relay.py (the relay hop)", "/addons/relay.py"),
    ("addons/transport.py (provider leg, h11)", "/addons/transport.py"),
    ("addons/forwarding.py (candidates, build, stream loop)", "/addons/forwarding.py"),
    ("addons/intercept.py (hooks: parse, decide, passthrough tap)", "/addons/intercept.py"),
    ("addons/ routing, usage, settings, config", "/addons/"),
    ("h11 (both legs of detour's own HTTP)", "/h11/"),
    ("httpx/httpcore", "/httpx/"),
    ("httpx/httpcore", "/httpcore/"),
    ("mitmproxy TLS (pyOpenSSL/cryptography)", "/OpenSSL/"),
    ("mitmproxy TLS (pyOpenSSL/cryptography)", "/cryptography/"),
    ("mitmproxy TLS layer", "/mitmproxy/proxy/layers/tls.py"),
    ("mitmproxy http layers (http1/http2, flows)", "/mitmproxy/proxy/layers/http/"),
    ("mitmproxy proxy core (server, layers, commands)", "/mitmproxy/proxy/"),
    ("mitmproxy addons/hooks machinery", "/mitmproxy/addonmanager.py"),
    ("mitmproxy addons/hooks machinery", "/mitmproxy/addons/"),
    ("mitmproxy other (http model, net, utils)", "/mitmproxy/"),
    ("asyncio (event loop, streams, ssl)", "/asyncio/"),
    ("python ssl module", "/ssl.py"),
]
BUILTIN_BUCKETS = [
    ("mitmproxy TLS (pyOpenSSL/cryptography)", ("_cffi", "OpenSSL", "_openssl")),
    ("python ssl module", ("_ssl.",)),
    ("socket and select syscalls", ("socket", "select", "epoll", "poll", "send", "recv")),
    ("JSON (orjson/json)", ("orjson", "json")),
    ("sqlite", ("sqlite",)),
]
PROJECT = ("/translators/", "/addons/")


def bucket_of(func) -> str:
    filename, _, name = func
    if filename != "~":
        path = filename.replace(os.sep, "/")
        for label, part in FILE_BUCKETS:
            if part in path:
                return label
        return "other python (stdlib, libraries)"
    for label, parts in BUILTIN_BUCKETS:
        if any(p in name for p in parts):
            return label
    return "other C functions"


IDLE = ("<method 'poll' of 'select.epoll' objects>", "<method 'select' of 'select.epoll' objects>")


def breakdown(stats: pstats.Stats) -> tuple[float, float, dict[str, float]]:
    """Busy time, idle time (waiting in epoll), self time per bucket; a C function's time is
    charged to the detour module calling it."""
    total = idle = 0.0
    buckets: dict[str, float] = defaultdict(float)
    for func, (_cc, _nc, tt, _ct, callers) in stats.stats.items():
        if func[0] == "~" and func[2] in IDLE:
            idle += tt
            continue
        total += tt
        if func[0] != "~":
            buckets[bucket_of(func)] += tt
            continue
        charged = 0.0
        for caller, entry in callers.items():
            caller_tt = entry[2] if isinstance(entry, tuple) else 0.0
            if any(p in caller[0].replace(os.sep, "/") for p in PROJECT):
                buckets[bucket_of(caller)] += caller_tt
                charged += caller_tt
        buckets[bucket_of(func)] += tt - charged
    return total, idle, dict(buckets)


def drive(args, tmp: Path) -> Path:
    from certs.ca import ensure_ca
    from tests.harness import Mitmdump

    out = tmp / "detour.prof"
    paced = ["--paced", f"{PACED_MODEL}:0.002:250", "--paced", f"{PACED_UPSTREAM}:0.002:250"]
    fakes = [FakeProcess("openai", "--tls", "--events", "500", *paced).launch(),
             FakeProcess("anthropic", "--tls", "--events", "500", *paced).launch()]
    cpus = sorted(os.sched_getaffinity(0))
    mitm = None
    try:
        confdir = tmp / "confdir"
        ensure_ca(confdir)
        openai, vendor = (f.wait_ready() for f in fakes)
        home = tmp / "home"
        home.mkdir()
        model = json.loads(capture_body(False))["model"]
        (home / "config.yaml").write_text(detour_config(openai.base_url, vendor.base_url, model))
        extra = ["--set", "connection_strategy=lazy", "--set", "ssl_insecure=true",
                 "-s", str(ADDON)]
        if args.plain and args.kind in ("stream", "paced"):
            extra += ["--set", "stream_large_bodies=1"]
        env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        env["DETOUR_PROFILE"] = str(out)
        mitm = Mitmdump(confdir, home if not args.plain else None, router=not args.plain,
                        extra=extra, env=env).start()
        if len(cpus) > 1:
            pin(mitm.proc.pid, {cpus[-1]})
            for f in fakes:
                pin(f.proc.pid, set(cpus[:-1]))
            os.sched_setaffinity(0, set(cpus[:-1]))
        ctx = ssl.create_default_context(cafile=str(mitm.ca_cert))
        host, port = ("127.0.0.1", vendor.port) if args.plain else ("api.anthropic.com", 443)
        authority = host if port == 443 else f"{host}:{port}"
        stream = args.kind in ("stream", "paced")
        body = {"whole": capture_body(False), "stream": capture_body(True),
                "paced": capture_body(True, PACED_MODEL),
                "observe": capture_body(False, OBSERVE_MODEL)}[args.kind]
        if args.plain and args.kind == "observe":
            body = capture_body(False)
        conc = args.concurrency or (4 if args.kind == "paced" else 1)
        try:
            clients = [TunnelClient(mitm.port, host, port, ctx) for _ in range(conc)]
        except OSError as e:
            raise RuntimeError(f"{e}\n--- proxy output ---\n{mitm.text[-3000:]}") from e
        calls = args.calls or {"whole": 400, "stream": 40, "paced": 8, "observe": 400}[args.kind]
        ph = run_phase(clients, max(1, calls // conc), request_for(authority, body), body,
                       mitm.cpu_seconds, check_stream if stream else check_whole,
                       MARKER if stream else None, warm=2)
        for c in clients:
            c.close()
        if ph.errors:
            raise RuntimeError(f"{ph.errors[0]}\n{mitm.text[-3000:]}")
        print(f"{ph.n} calls, proxy CPU (/proc) {ph.cpu * 1000 / ph.n:.2f} ms/call "
              f"(under the profiler)")
        args.calls_done = ph.n + 2 * conc  # the warm-up calls are profiled too
    finally:
        if mitm is not None:
            mitm.stop()
        for f in fakes:
            f.stop()
        os.sched_setaffinity(0, set(cpus))
    if not out.exists():
        raise RuntimeError("mitmdump wrote no profile (did it stop cleanly?)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench.cpu_profile",
                                 description=__doc__.strip().splitlines()[0])
    ap.add_argument("kind", choices=("whole", "stream", "paced", "observe"))
    ap.add_argument("--plain", action="store_true", help="plain mitmdump instead of detour")
    ap.add_argument("--calls", type=int, help="calls to profile (whole/observe 400, stream 40, "
                                              "paced 8)")
    ap.add_argument("--concurrency", type=int, help="clients at once (whole/observe/stream 1, "
                                                    "paced 4), each on its own connection")
    ap.add_argument("--top", type=int, default=25, help="functions listed by cumulative time")
    ap.add_argument("--save", type=Path, help="keep the pstats file here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="detour-profile-") as tmp:
        prof = drive(args, Path(tmp))
        if args.save:
            args.save.write_bytes(prof.read_bytes())
        stats = pstats.Stats(str(prof))
    total, idle, buckets = breakdown(stats)
    n = args.calls_done
    who = "plain mitmdump" if args.plain else "detour"
    print(f"{who}, {args.kind}: the event loop thread busy {total * 1000 / n:.2f} ms/call over "
          f"{n} calls (idle in epoll: {idle * 1000 / n:.2f} ms/call, left out; cProfile's own "
          f"overhead inflates the figures: read the shares)")
    for label, t in sorted(buckets.items(), key=lambda kv: -kv[1]):
        if t / total >= 0.005:
            print(f"  {t / total * 100:5.1f}%  {t * 1000 / n:7.3f} ms/call  {label}")
    print(f"\ntop {args.top} by cumulative time (ms/call):")
    rows = sorted(stats.stats.items(), key=lambda kv: -kv[1][3])
    shown = 0
    for (filename, line, name), (_cc, nc, _tt, ct, _callers) in rows:
        if name in IDLE or ct > total:  # the loop itself, which holds the idle time
            continue
        path = filename.replace(str(ROOT) + os.sep, "")
        if "site-packages/" in path:
            path = path.split("site-packages/", 1)[1]
        print(f"  {ct * 1000 / n:7.3f}  {ct / total * 100:5.1f}%  {nc / n:6.1f}x  "
              f"{path}:{line}({name})")
        shown += 1
        if shown >= args.top:
            break
    return 0


if __name__ == "__main__":
    sys.exit(main())
