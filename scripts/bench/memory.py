"""Memory per open stream: detour vs plain mitmdump (stream mode), each in a fresh proxy, in
both client setups: CONNECT + TLS (what a CLI with HTTPS_PROXY does) and reverse mode with a
plain-HTTP client leg (how issue 13 measured it: 227 KB vs 69 KB).

    .venv/bin/python -m scripts.bench.memory                        # ~1 min
    .venv/bin/python -m scripts.bench.memory --relay --repeat 2     # + the relay, twice
    .venv/bin/python -m scripts.bench.memory --against /tmp/detour-before
    .venv/bin/python -m scripts.bench.memory --only detour --legs reverse --tracemalloc

Each figure: a fresh proxy, 8 streams opened at once and closed (warm-up: the path's code,
pools, and the price tables the first finished call loads), then `--streams` (200) streams of
Claude Code's captured request held open at once (each one's first text event received, the
provider sending the rest 0.5 s apart), RSS read before, with half open and with all open
(`lib.open_streams_rss`), each time once RSS holds still and after a garbage collection and
`malloc_trim(0)` in the proxy (`memory_addon.py`; `--no-trim`: RSS as it is, which an earlier
peak's free heap lowers). `--tracemalloc` also takes tracemalloc snapshots in each proxy and
prints what the held streams allocated, per stream, grouped by the line that allocated it and
the nearest detour (else mitmproxy) frame that led there (tracing inflates RSS: those runs' RSS
figures are not the ones to quote).
"""

import argparse
import contextlib
import dataclasses
import json
import os
import signal
import sys
import tempfile
import time
import tracemalloc
from collections import defaultdict
from pathlib import Path

from scripts.bench.lib import FakeProcess, open_streams_rss, pin, TunnelClient

DETOUR, PLAIN = "detour", "plain"
LEGS = ("connect", "reverse")
HOLD_MODEL = "claude-bench-hold"  # streams held open: a few events, far apart
HOLD_UPSTREAM = "hold-model"
HOLD_DELAY, HOLD_EVENTS = 0.5, 240  # open for 2 minutes: longer than opening 200 takes
MARKER = b"text_delta"
PROVIDER_KEY = "sk-fake-provider-key"
ADDON = Path(__file__).with_name("memory_addon.py")
VENDOR_HOST = "api.anthropic.com"


@dataclasses.dataclass
class FreshProxies:
    """What a fresh proxy of either kind needs: one CA, detour's config, the fakes' URLs."""

    tmp: Path
    confdir: Path
    config: str  # detour's config.yaml
    vendor_url: str  # plain mitmdump's upstream (the fake Anthropic API)
    vendor_port: int
    upstream: str = "https"  # the fakes' scheme
    detour_set: list[str] = dataclasses.field(default_factory=list)  # --set for this checkout
    against: Path | None = None  # 'plain' is detour from this checkout instead
    pin_cpus: set[int] | None = None
    trim: bool = True  # read RSS after a garbage collection and malloc_trim (memory_addon.py)
    homes: int = 0

    def _home(self) -> Path:
        self.homes += 1  # one per proxy: two detours on one home would contend
        home = self.tmp / f"home-memory-{self.homes}"
        home.mkdir()
        (home / "config.yaml").write_text(self.config)
        return home

    def proxy(self, who: str, leg: str, extra: list[str] = (), env: dict | None = None,
              options: list[str] = ()):
        from tests.harness import Mitmdump, PROXY_VARS

        base = ["--set", "connection_strategy=lazy", "--set", "ssl_insecure=true"]
        if env is not None:
            env = {**{k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS},
                   **env}
        if who == DETOUR:
            mode = ["--mode", f"reverse:https://{VENDOR_HOST}"] if leg == "reverse" else []
            sets = [a for opt in [*self.detour_set, *options] for a in ("--set", opt)]
            return Mitmdump(self.confdir, self._home(), router=True,
                            extra=base + mode + sets + list(extra), env=env)
        if self.against:
            mode = ["--mode", f"reverse:https://{VENDOR_HOST}"] if leg == "reverse" else []
            return Mitmdump(self.confdir, router=False, env=env, extra=base + mode + [
                "-s", str(self.against / "addons" / "router.py"),
                "--set", f"detour_home={self._home()}"] + list(extra))
        mode = ["--mode", f"reverse:{self.vendor_url}"] if leg == "reverse" else []
        return Mitmdump(self.confdir, router=False, env=env,
                        extra=base + mode + ["--set", "stream_large_bodies=1"] + list(extra))

    def measure(self, who: str, leg: str, body: bytes, n: int,
                snapshots: Path | None = None, options: list[str] = ()) -> dict:
        """RSS per open stream in a fresh proxy of `who` with this client `leg`; with
        `snapshots`, tracemalloc snapshots before and with the streams open; `options`: more
        --set for detour."""
        from scripts.bench.claude_code import request_for

        probe = self.tmp / f"probe-{self.homes}-{time.monotonic_ns()}"
        extra, env = [], None
        if self.trim or snapshots is not None:
            probe.mkdir(parents=True)
            extra, env = ["-s", str(ADDON)], {"DETOUR_MEMORY_DIR": str(probe)}
            if snapshots is not None:
                env["DETOUR_TRACEMALLOC"] = "1"
                snapshots.mkdir(parents=True, exist_ok=True)
        mitm = self.proxy(who, leg, extra, env, options).start()
        try:
            if self.pin_cpus:
                pin(mitm.proc.pid, self.pin_cpus)
            if who == DETOUR or self.against:
                host, port = VENDOR_HOST, 443
            else:
                host, port = "127.0.0.1", self.vendor_port
            ctx = None
            if leg == "connect":
                import ssl
                ctx = ssl.create_default_context(cafile=str(mitm.ca_cert))

            def connect() -> TunnelClient:
                return TunnelClient(mitm.port, host, port, ctx, tunnel=leg == "connect")

            authority = host if port == 443 else f"{host}:{port}"
            taken: list[Path] = []
            signals = [0]

            def at(stage: str) -> None:
                """A collection and trim in the proxy (and a snapshot when tracing, at the
                first and last reading), finished before RSS is read."""
                snap = snapshots is not None and stage != "half"
                if not (self.trim or snap):
                    return
                signals[0] += 1
                name = f"snapshot-{signals[0]}.snap" if snap else f"trimmed-{signals[0]}"
                os.kill(mitm.proc.pid, signal.SIGUSR1 if snap else signal.SIGUSR2)
                deadline = time.monotonic() + 120
                while not (probe / name).exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the proxy wrote no {name}")
                    time.sleep(0.05)
                if snap:
                    kept = snapshots / f"{stage}.snap"
                    os.replace(probe / name, kept)
                    taken.append(kept)

            out = open_streams_rss(mitm.proc.pid, connect, request_for(authority, body), body,
                                   MARKER, n, at=at)
            out["snapshots"] = [str(p) for p in taken]
            return out
        finally:
            mitm.stop()


@contextlib.contextmanager
def held_stream_fakes(upstream: str, pin_cpus: set[int] | None = None):
    """The fake OpenAI-compatible provider and the fake Anthropic API, each holding the
    `HOLD_MODEL` streams open, over TLS or plain HTTP (`upstream`); yields them and detour's
    config routing `HOLD_MODEL` to the first. Stopped by their PID at the end."""
    paced = ["--paced", f"{HOLD_MODEL}:{HOLD_DELAY}:{HOLD_EVENTS}",
             "--paced", f"{HOLD_UPSTREAM}:{HOLD_DELAY}:{HOLD_EVENTS}"]
    tls = ["--tls"] if upstream == "https" else []
    fakes: list[FakeProcess] = []
    try:
        fakes.append(FakeProcess("openai", *tls, *paced).launch())
        fakes.append(FakeProcess("anthropic", *tls, *paced).launch())
        for f in fakes:
            f.wait_ready()
            if pin_cpus:
                pin(f.proc.pid, pin_cpus)
        openai, vendor = fakes
        config = (f'providers:\n  fake: {{kind: openai, base_url: "{openai.base_url}/v1", '
                  f'api_keys: [{PROVIDER_KEY}], verify_tls: false}}\n'
                  f'routes:\n  {HOLD_MODEL}: [fake/{HOLD_UPSTREAM}]\n')
        yield openai, vendor, config
    finally:
        for f in fakes:
            f.stop()


def legs_for(leg: str, upstream: str) -> list[str]:
    """The bench's own leg first, then the other (CONNECT needs a TLS upstream)."""
    other = "reverse" if leg == "connect" else "connect"
    return [leg] + ([other] if upstream == "https" or other == "reverse" else [])


# ---------------------------------------------------------------- tracemalloc


def _short(filename: str) -> str:
    for marker in ("/site-packages/", "/lib/python3"):
        if marker in filename:
            return filename.split(marker, 1)[1].removeprefix("/").split("/", 1)[-1] \
                if marker == "/lib/python3" else filename.split(marker, 1)[1]
    for part in ("/addons/", "/translators/", "/scripts/"):
        if part in filename:
            return part.strip("/") + "/" + filename.split(part, 1)[1]
    return filename


def _owner(tb: tracemalloc.Traceback) -> str:
    """The nearest frame (innermost first) in detour's code, else in mitmproxy, else asyncio:
    who kept this memory."""
    frames = list(reversed(tb))  # innermost first (snapshots store the most recent last)
    for parts in (("/addons/", "/translators/"), ("/mitmproxy/",), ("/asyncio/", "/h11/")):
        for frame in frames[1:]:
            if any(p in frame.filename for p in parts) and "/scripts/bench/" not in frame.filename:
                return f"{_short(frame.filename)}:{frame.lineno}"
    return "-"


def diff_report(before: Path, after: Path, n: int, top: int = 40) -> str:
    """What the held streams allocated, per stream: grouped by (allocating line, owner)."""
    old = tracemalloc.Snapshot.load(str(before))
    new = tracemalloc.Snapshot.load(str(after))
    ignore = [tracemalloc.Filter(False, tracemalloc.__file__),
              tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
              tracemalloc.Filter(False, "*/linecache.py")]
    old, new = old.filter_traces(ignore), new.filter_traces(ignore)
    groups: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    for stat in new.compare_to(old, "traceback"):
        if not stat.size_diff:
            continue
        frame = stat.traceback[-1] if stat.traceback else None  # the allocating line
        where = f"{_short(frame.filename)}:{frame.lineno}" if frame else "?"
        g = groups[(where, _owner(stat.traceback))]
        g[0] += stat.size_diff
        g[1] += stat.count_diff
    total = sum(g[0] for g in groups.values())
    by_owner: dict[str, int] = defaultdict(int)
    for (_, owner), (size, _) in groups.items():
        by_owner[owner] += size
    lines = [f"tracemalloc: {total / n / 1024:.1f} KB per open stream held by Python objects "
             f"({n} streams)", "", "by owner (nearest detour frame, else mitmproxy, else "
             "asyncio/h11), KB per stream:"]
    for owner, size in sorted(by_owner.items(), key=lambda kv: -kv[1])[:top]:
        lines.append(f"  {size / n / 1024:8.2f}  {owner}")
    lines += ["", "by allocating line <- owner, KB and blocks per stream:"]
    for (where, owner), (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[:top]:
        lines.append(f"  {size / n / 1024:8.2f} {count / n:7.1f}  {where}  <-  {owner}")
    return "\n".join(lines)


# ---------------------------------------------------------------- the CLI


def main(argv=None) -> int:
    from certs.ca import ensure_ca
    from scripts.bench.claude_code import capture_body

    ap = argparse.ArgumentParser(prog="python -m scripts.bench.memory",
                                 description=__doc__.strip().splitlines()[0])
    ap.add_argument("--streams", type=int, default=200, help="streams held open at once (200)")
    ap.add_argument("--legs", nargs="+", choices=LEGS, default=list(LEGS),
                    help="client setups (both)")
    ap.add_argument("--upstream", choices=("https", "http"), default="https",
                    help="the fakes' scheme (https; http: reverse mode only, as after a "
                         "CONNECT with TLS mitmproxy speaks TLS upstream)")
    ap.add_argument("--only", choices=(DETOUR, PLAIN), help="measure one side only")
    ap.add_argument("--relay", action="store_true",
                    help="also detour with every stream through the relay (detour_direct=false; "
                         "the default 'detour' takes the direct path where it can)")
    ap.add_argument("--repeat", type=int, default=1, help="fresh proxies per figure (1)")
    ap.add_argument("--detour-set", action="append", default=[], dest="detour_set",
                    metavar="OPTION=VALUE", help="a mitmproxy option for this detour")
    ap.add_argument("--against", type=Path, metavar="CHECKOUT",
                    help="'plain' is detour from another checkout instead of plain mitmdump")
    ap.add_argument("--tracemalloc", action="store_true",
                    help="snapshots in each proxy, and what the open streams hold, by line")
    ap.add_argument("--snapshots", type=Path, metavar="DIR",
                    help="with --tracemalloc: keep the snapshot files here (for a closer look: "
                         "tracemalloc.Snapshot.load)")
    ap.add_argument("--no-trim", dest="trim", action="store_false",
                    help="read RSS as it is (default: after a garbage collection and "
                         "malloc_trim in the proxy, memory_addon.py)")
    ap.add_argument("--no-pin", dest="pin", action="store_false")
    ap.add_argument("--json", type=Path, help="also save every figure here")
    args = ap.parse_args(argv)
    if args.upstream == "http" and "connect" in args.legs:
        args.legs = ["reverse"]

    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus = others = None
    if args.pin and len(cpus) > 1:
        proxy_cpus, others = {cpus[-1]}, set(cpus[:-1])
        os.sched_setaffinity(0, others)
    sides = []
    if args.only != PLAIN:
        sides.append((DETOUR, []))
        if args.relay:
            sides.append(("detour relay", ["detour_direct=false"]))
    if args.only != DETOUR:
        sides.append((PLAIN, []))
    results: dict = {}
    reports: list[str] = []
    with tempfile.TemporaryDirectory(prefix="detour-memory-") as tmp, \
            held_stream_fakes(args.upstream, others) as (openai, vendor, config):
        tmp = Path(tmp)
        confdir = tmp / "confdir"
        ensure_ca(confdir)
        body = capture_body(True, HOLD_MODEL)
        fresh = FreshProxies(tmp, confdir, config, vendor.base_url, vendor.port,
                             args.upstream, args.detour_set, args.against, proxy_cpus,
                             args.trim)
        for r in range(args.repeat):
            for leg in args.legs:
                for name, options in (sides if r % 2 == 0 else sides[::-1]):
                    who = PLAIN if name == PLAIN else DETOUR
                    snaps = ((args.snapshots or tmp) / f"snaps-{r}-{leg}-"
                             f"{name.replace(' ', '-')}" if args.tracemalloc else None)
                    x = fresh.measure(who, leg, body, args.streams, snaps, options)
                    results.setdefault(leg, {}).setdefault(name, []).append(x)
                    print(f"  {leg:<8} {name:<14} RSS {x['rss_before'] / 2**20:6.1f} MB -> "
                          f"{x['rss_open'] / 2**20:6.1f} MB: {x['kb_per_stream']:6.1f} KB "
                          f"per open stream (marginal {x['kb_marginal']:.1f})",
                          file=sys.stderr, flush=True)
                    if snaps is not None:
                        reports.append(f"== {leg}, {name}, run {r + 1}\n" + diff_report(
                            Path(x["snapshots"][0]), Path(x["snapshots"][1]),
                            args.streams))
    if proxy_cpus:
        os.sched_setaffinity(0, set(cpus))

    plain_name = "detour --against" if args.against else "plain mitmdump (stream mode)"
    print(f"memory per open stream, {args.streams} streams held open at once, a fresh proxy "
          f"each ('{PLAIN}' = {plain_name}); KB, each run (marginal: the second half's)")
    for leg in args.legs:
        setup = ("CONNECT + TLS client leg" if leg == "connect"
                 else "reverse mode, plain HTTP client leg (issue 13's setting)")
        setup += f", {args.upstream} upstream"
        print(f"  {setup}:")
        for name, runs in results.get(leg, {}).items():
            figs = ", ".join(f"{x['kb_per_stream']:.0f} ({x['kb_marginal']:.0f})" for x in runs)
            print(f"    {name:<14} {figs}")
    for text in reports:
        print()
        print(text)
    if args.json:
        args.json.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()},
                                         "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
