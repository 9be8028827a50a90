"""Where a whole call's CPU goes in the whole mitmdump process, detour vs plain mitmdump: what no
in-process hook profile sees (the provider leg's sockets and TLS, mitmproxy's work around the
hooks, event-loop turns, system time, the garbage collector, other threads).

    .venv/bin/python -m scripts.bench.whole_process [--calls 600] [--rounds 3] [--attribute]
        [--strace] [--perf DIR] [--observe] [--concurrency N] [--against CHECKOUT] [--json F]

One detour (`mitmdump -s addons/router.py`) and one plain mitmdump in the setup of
`claude_code`'s whole-call phase (Claude Code's captured request, CONNECT + TLS on the client
leg, TLS to loopback fakes, keep-alive, the proxies pinned to the last CPU); phases alternate.
Every phase: user and system CPU per call (`/proc/PID/stat`, 10 ms ticks: read over hundreds
of calls), the event loop thread's share and the other threads'.

- `--attribute`: both proxies also run `loop_cpu_addon.py` (exact thread CPU by event-loop
  callback, addon hook and the functions in FUNCS, exclusive: the keys add up to the loop
  thread's CPU); one table of per-call us, detour vs plain, summed over the rounds.
- `--strace`: one more phase per side under `strace -c -f` (it slows the process down; the
  syscalls per call are what it is for).
- `--perf DIR`: one more phase per side under `perf record`; the samples by shared object
  (the interpreter, the kernel, libcrypto, orjson, ...) per call.
"""

import argparse
import json
import os
import signal
import ssl
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from scripts.bench.claude_code import (OBSERVE_MODEL, capture_body, check_whole, detour_config,
                                       request_for)
from scripts.bench.lib import FakeProcess, TunnelClient, pin, run_phase

TICK = os.sysconf("SC_CLK_TCK")
ADDON = Path(__file__).with_name("loop_cpu_addon.py")
# detour's own steps of a whole call, charged apart by --attribute (a function imported by
# name elsewhere is charged where it is looked up through its module)
FUNCS = ",".join([
    "addons.intercept:Interceptor._open_call", "addons.intercept:plan",
    "addons.intercept:Interceptor._finish", "addons.intercept:make_response",
    "orjson:loads", "orjson:dumps",
    "addons.forwarding:Forwarder.build", "addons.forwarding:Forwarder.send",
    "addons.forwarding:Forwarder._check_answer", "addons.forwarding:Forwarder.record",
    "addons.transport:StreamsTransport.handle_async_request",
    "asyncio.sslproto:SSLProtocol._do_write", "asyncio.sslproto:SSLProtocol._do_read",
])


def times_of(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process, all its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) / TICK, int(fields[12]) / TICK


def loop_thread_share(pid: int) -> tuple[float, float]:
    """CPU seconds (user + system) of the event loop's thread and of all the others."""
    loop = others = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # a thread that ended meanwhile
        cpu = (int(fields[11]) + int(fields[12])) / TICK
        if task.name == str(pid):
            loop += cpu
        else:
            others += cpu
    return loop, others


def strace_counts(path: Path) -> Counter:
    """Calls per syscall from `strace -c`'s table."""
    counts: Counter = Counter()
    for line in path.read_text().splitlines():
        parts = line.split()
        if (len(parts) >= 5 and parts[0][0].isdigit() and parts[3].isdigit()
                and parts[-1] != "total"):
            counts[parts[-1]] += int(parts[3])
    return counts


def perf_by_object(path: Path) -> Counter:
    """perf samples by shared object (`perf report --sort dso`)."""
    out = subprocess.run(["perf", "report", "-i", str(path), "--stdio", "-n", "-g", "none",
                          "--sort", "dso"], capture_output=True, text=True, timeout=120).stdout
    counts: Counter = Counter()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].endswith("%") and parts[1].isdigit():
            name = " ".join(parts[2:])
            counts["[JIT] perf trampolines" if name.startswith("[JIT]") else name] += int(parts[1])
    return counts


def comparison(title: str, detour: dict, other: dict, unit: str, limit: int = 40,
               floor: float = 0.05) -> str:
    lines = [f"\n{title}", f"  {'':62} {'detour':>9} {'plain':>9} {'diff':>9}  ({unit})"]
    keys = sorted(set(detour) | set(other), key=lambda k: -abs(detour.get(k, 0) - other.get(k, 0)))
    for key in keys[:limit]:
        d, o = detour.get(key, 0.0), other.get(key, 0.0)
        if max(d, o) >= floor:
            lines.append(f"  {key[:62]:62} {d:9.1f} {o:9.1f} {d - o:9.1f}")
    lines.append(f"  {'total':62} {sum(detour.values()):9.1f} {sum(other.values()):9.1f} "
                 f"{sum(detour.values()) - sum(other.values()):9.1f}")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=600, help="whole calls per phase")
    ap.add_argument("--concurrency", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--attribute", action="store_true",
                    help="charge the loop thread's CPU by callback, hook and function")
    ap.add_argument("--strace", action="store_true", help="syscalls per call (strace -c -f)")
    ap.add_argument("--perf", type=Path, default=None, help="perf samples by shared object")
    ap.add_argument("--observe", action="store_true", help="detour in observe mode (passthrough)")
    ap.add_argument("--against", type=Path, default=None,
                    help="a checkout of detour as the other side instead of plain mitmdump")
    ap.add_argument("--detour-script", type=Path, action="append", default=[],
                    help="one more addon script in the detour proxy only (an experiment; "
                         "with --against, against the same detour without it)")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.attribute and (args.strace or args.perf):
        ap.error("--attribute reads the thread's clock twice per frame (system calls, CPU): "
                 "run it apart from --strace and --perf")
    return args


def main(argv=None) -> int:
    from certs.ca import ensure_ca
    from tests.harness import Mitmdump

    args = parse_args(argv)
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus, others = ({cpus[-1]}, set(cpus[:-1])) if len(cpus) > 1 else (None, None)
    if others:
        os.sched_setaffinity(0, others)
    fakes = [FakeProcess("openai", "--tls", "--events", "500").launch(),
             FakeProcess("anthropic", "--tls", "--events", "500").launch()]
    mitms: list = []
    result: dict = {"args": {k: str(v) for k, v in vars(args).items()}, "rounds": []}
    with tempfile.TemporaryDirectory(prefix="detour-whole-") as tmp:
        tmp = Path(tmp)
        try:
            confdir = tmp / "confdir"
            ensure_ca(confdir)
            openai, vendor = (f.wait_ready() for f in fakes)
            for f in fakes:
                if others:
                    pin(f.proc.pid, others)
            model = json.loads(capture_body(False))["model"]
            config = detour_config(openai.base_url, vendor.base_url, model)
            homes = [tmp / "home", tmp / "home-against"]
            for home in homes:
                home.mkdir()
                (home / "config.yaml").write_text(config)
            base = ["--set", "connection_strategy=lazy", "--set", "ssl_insecure=true"]
            env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
            phases_dir = tmp / "phases"
            if args.attribute:
                phases_dir.mkdir()
                base += ["-s", str(ADDON)]
                # more functions to charge apart: LOOP_CPU_FUNCS in the environment, appended
                extra_funcs = os.environ.get("LOOP_CPU_FUNCS", "")
                env.update(LOOP_CPU_OUT=str(phases_dir),
                           LOOP_CPU_FUNCS=",".join(filter(None, [FUNCS, extra_funcs])))
            if args.perf:
                env["PYTHONPERFSUPPORT"] = "1"  # Python frames named in perf's samples
            detour = Mitmdump(confdir, homes[0], router=True, env=env,
                              extra=base + [a for p in args.detour_script for a in ("-s", str(p))])
            if args.against:
                other = Mitmdump(confdir, router=False, env=env, extra=base + [
                    "-s", str(args.against / "addons" / "router.py"),
                    "--set", f"detour_home={homes[1]}", "--set", "detour_metrics_port=0"])
            else:
                other = Mitmdump(confdir, router=False, extra=base, env=env)
            mitms = [detour, other]
            for m in mitms:
                m.start()
                if proxy_cpus:
                    pin(m.proc.pid, proxy_cpus)
            ctx = ssl.create_default_context(cafile=str(detour.ca_cert))
            body_detour = capture_body(False, OBSERVE_MODEL if args.observe else None)
            vendor_side = ("127.0.0.1", vendor.port), capture_body(False)
            sides = {"detour": (detour, ("api.anthropic.com", 443), body_detour),
                     "plain": (other, *((("api.anthropic.com", 443), body_detour)
                                        if args.against else vendor_side))}

            def phase(name: str, calls: int, tracer_of=None) -> dict:
                mitm, (host, port), body = sides[name]
                pid = mitm.proc.pid
                authority = host if port == 443 else f"{host}:{port}"
                clients = [TunnelClient(mitm.port, host, port, ctx)
                           for _ in range(args.concurrency)]
                tracer = tracer_of(pid) if tracer_of else None
                if tracer is not None:
                    time.sleep(1.0)  # attached to every thread before the calls
                marks = iter([signal.SIGUSR1, signal.SIGUSR2])
                before = times_of(pid), loop_thread_share(pid)

                def cpu() -> float:  # read as the timed calls start and after they end
                    if args.attribute:
                        os.kill(pid, next(marks))
                    return mitm.cpu_seconds()
                try:
                    ph = run_phase(clients, max(1, calls // args.concurrency),
                                   request_for(authority, body), body, cpu, check_whole,
                                   None, warm=2)
                finally:
                    if tracer is not None:
                        tracer.send_signal(signal.SIGINT)
                        tracer.wait(60)
                    for c in clients:
                        c.close()
                (u0, s0), (l0, o0) = before
                (u1, s1), (l1, o1) = times_of(pid), loop_thread_share(pid)
                if ph.errors:
                    raise RuntimeError(f"{name}: {ph.errors[0]}\n{mitm.text[-3000:]}")
                n = ph.n
                return {"n": n, "user_us": (u1 - u0) * 1e6 / n, "sys_us": (s1 - s0) * 1e6 / n,
                        "loop_thread_us": (l1 - l0) * 1e6 / n,
                        "other_threads_us": (o1 - o0) * 1e6 / n, "wall_s": ph.wall}

            phases_of: Counter = Counter()

            def attributed(pid: int) -> dict:
                """The phase the addon just wrote (its Nth of this proxy)."""
                phases_of[pid] += 1
                path = phases_dir / f"{pid}-{phases_of[pid]}.json"
                deadline = time.monotonic() + 10
                while not path.exists():
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"proxy {pid} did not write {path.name}")
                    time.sleep(0.05)
                return json.loads(path.read_text())

            attribution: dict[str, Counter] = {"detour": Counter(), "plain": Counter()}
            calls_of: Counter = Counter()
            for r in range(args.rounds):
                row = {}
                for name in (["detour", "plain"] if r % 2 == 0 else ["plain", "detour"]):
                    row[name] = ph = phase(name, args.calls)
                    if args.attribute:
                        written = attributed(sides[name][0].proc.pid)
                        attribution[name].update({k: v * 1e6 for k, v in written["cpu"].items()})
                        calls_of[name] += ph["n"]
                result["rounds"].append(row)
                d, p = row["detour"], row["plain"]
                total = [x["user_us"] + x["sys_us"] for x in (d, p)]
                print(f"round {r}: us/call detour user {d['user_us']:.0f} sys {d['sys_us']:.0f} "
                      f"(loop thread {d['loop_thread_us']:.0f}, others "
                      f"{d['other_threads_us']:.0f}); plain user {p['user_us']:.0f} sys "
                      f"{p['sys_us']:.0f} (loop thread {p['loop_thread_us']:.0f}, others "
                      f"{p['other_threads_us']:.0f}); ratio {total[0] / max(total[1], 1e-9):.2f}",
                      flush=True)
            if args.attribute:
                per_call = {name: {k: v / calls_of[name] for k, v in attribution[name].items()}
                            for name in attribution}
                result["attribution_us_per_call"] = per_call
                print(comparison("loop thread CPU per call by what ran it (exclusive; "
                                 "loop_cpu_addon.py, all rounds)",
                                 per_call["detour"], per_call["plain"], "us/call"))

            if args.strace:
                result["strace"] = {}
                for name in ("detour", "plain"):
                    out = tmp / f"strace-{name}.txt"
                    ph = phase(name, args.calls // 2, lambda pid, out=out: subprocess.Popen(
                        ["strace", "-c", "-f", "-p", str(pid), "-o", str(out)],
                        stderr=subprocess.DEVNULL))
                    result["strace"][name] = {k: v / ph["n"]
                                              for k, v in strace_counts(out).items()}
                print(comparison("syscalls per call (strace -c -f, all threads)",
                                 result["strace"]["detour"], result["strace"]["plain"],
                                 "calls/call", floor=0.02))

            if args.perf:
                args.perf.mkdir(parents=True, exist_ok=True)
                result["perf"] = {}
                for name in ("detour", "plain"):
                    out = args.perf / f"{name}.data"
                    ph = phase(name, args.calls, lambda pid, out=out: subprocess.Popen(
                        ["perf", "record", "-F", "1999", "-p", str(pid), "-o", str(out)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
                    result["perf"][name] = {k: v / ph["n"]
                                            for k, v in perf_by_object(out).items()}
                print(comparison("perf samples per call by shared object (1999 Hz: one "
                                 "sample ~0.5 ms)", result["perf"]["detour"],
                                 result["perf"]["plain"], "samples/call", floor=0.01))
        finally:
            for m in mitms:
                m.stop()
            for f in fakes:
                f.stop()
            os.sched_setaffinity(0, set(cpus))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
