"""Scenario `claude_code`: Claude Code's captured request through detour, against plain mitmdump.

    cd /work/main && .venv/bin/python -m scripts.bench.claude_code [--quick] [--json PATH]

The captured request (tests/data/captures/claude-code.messages.text.request.json, with its
captured headers), whole and streamed, goes through
- detour: `mitmdump -s addons/router.py`, route -> a fake OpenAI-compatible provider, the answer
  translated back (whole calls answered in the request hook, streams through the relay);
- plain: `mitmdump` without any script, forwarding the same request to a fake Anthropic
  endpoint (`connection_strategy=lazy`; for streams also `stream_large_bodies=1`, mitmproxy's
  stream mode, so the response is passed on chunk by chunk instead of buffered).
Both in one run, alternating phase by phase (the order flips every round). See README.md.
"""

import argparse
import concurrent.futures
import dataclasses
import json
import math
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import h11
import orjson

from addons.forwarding import dump_json as provider_body  # what Forwarder.build serialises with
from scripts.bench.lib import (ROOT, FakeProcess, FreshClient, Phase, Reply, TunnelClient,
                               median, percentile, pin, run_phase)

CAPTURE = ROOT / "tests" / "data" / "captures" / "claude-code.messages.text.request.json"
CAPTURE_META = CAPTURE.with_name("claude-code.messages.text.meta.json")
VENDOR_KEY = "sk-ant-fake-vendor-key"  # what the Anthropic fake accepts; detour drops it
PROVIDER_KEY = "sk-fake-provider-key"
PACED_MODEL = "claude-bench-paced"  # answered one event every --paced-delay
PACED_UPSTREAM = "paced-model"  # its name at the provider
HOLD_MODEL = "claude-bench-hold"  # streams held open: a few events, far apart
HOLD_UPSTREAM = "hold-model"
HOLD_DELAY, HOLD_EVENTS = 0.5, 240  # open for 2 minutes: longer than opening 200 takes
OBSERVE_MODEL = "claude-bench-observe"  # routed to passthrough: detour's observe mode
# issue 13's targets, detour / plain mitmdump in the same run (memory: KB per open stream)
TARGETS = {"whole_c1": 1.3, "whole_cN": 1.4, "paced": 1.3, "big_c1": 1.4}
TARGET_MEMORY_KB = 100  # in the issue's setting: reverse mode, plain HTTP on both legs
ISSUE_MEMORY_SETTING = "reverse/http"
MARKER = b"text_delta"

DETOUR, PLAIN = "detour", "plain"


# ---------------------------------------------------------------- the request


def compact(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def capture_body(stream: bool, model: str | None = None) -> bytes:
    body = json.loads(CAPTURE.read_text())
    body["stream"] = stream
    if model:
        body["model"] = model
    return compact(body)


def detour_config(openai_url: str, vendor_url: str, model: str) -> str:
    """detour's config.yaml for the benches: `model` (the capture's), the paced and held
    models to the fake OpenAI-compatible provider; the observe model passed through to the
    fake Anthropic API, which stands in for api.anthropic.com. Every model the fakes answer is
    priced here, so no call loads the default price table (a thread's second of CPU) inside a
    timed phase."""
    return f"""
providers:
  fake: {{kind: openai, base_url: "{openai_url}/v1", api_keys: [{PROVIDER_KEY}],
          verify_tls: false}}
routes:
  {model}: [fake/fake-model]
  {PACED_MODEL}: [fake/{PACED_UPSTREAM}]
  {HOLD_MODEL}: [fake/{HOLD_UPSTREAM}]
  {OBSERVE_MODEL}: [passthrough]
vendors:
  api.anthropic.com: "{vendor_url}"
prices:
  fake-model: {{input: 3, output: 15, cache_read: 0.3}}
  {PACED_UPSTREAM}: {{input: 1, output: 2}}
  {HOLD_UPSTREAM}: {{input: 1, output: 2}}
  {OBSERVE_MODEL}: {{input: 1, output: 2}}
"""


def request_for(authority: str, body: bytes) -> h11.Request:
    """Claude Code's captured request head, for `authority`, with a fake key."""
    meta = json.loads(CAPTURE_META.read_text())
    headers = []
    for name, value in meta["request_headers"]:
        low = name.lower()
        if low in ("host", "content-length"):
            continue
        if low == "x-api-key":
            value = VENDOR_KEY
        headers.append((name, value))
    headers = [("Host", authority)] + headers + [("Content-Length", str(len(body)))]
    target = meta["url"].split("://", 1)[1].partition("/")[2]
    return h11.Request(method="POST", target="/" + target, headers=headers)


# ---------------------------------------------------------------- checks


def check_whole(reply: Reply) -> str | None:
    if reply.status != 200:
        return f"HTTP {reply.status}: {reply.tail!r}"
    if reply.size == 0:
        return "empty body"
    return None


def check_stream(reply: Reply) -> str | None:
    if reply.status != 200:
        return f"HTTP {reply.status}: {reply.tail!r}"
    if b"message_stop" not in reply.tail:
        return f"the stream did not end with message_stop: {reply.tail!r}"
    return None


def validate(reply: Reply, stream: bool, events: int) -> None:
    """Decode one full answer: the text must be the provider's `events` pieces."""
    from translators import anthropic, canonical

    problem = (check_stream if stream else check_whole)(reply)
    if problem:
        raise RuntimeError(problem)
    if stream:
        dec = anthropic.StreamDecoder()
        evs = dec.feed(reply.body) + dec.close()
        grammar = canonical.StreamGrammar()
        for ev in evs:
            grammar.check(ev)
        text = "".join(e.text for e in evs if isinstance(e, canonical.TextDelta))
    else:
        msg = json.loads(reply.body)
        text = "".join(b.get("text", "") for b in msg["content"] if b.get("type") == "text")
    if text != "x" * events:
        raise RuntimeError(f"unexpected answer text ({len(text)} chars): {text[:80]!r}")


# ---------------------------------------------------------------- the translator alone


def _per_call_us(fn, repeat: int, budget: float = 0.05) -> float:
    t = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t, 1e-7)
    number = max(1, int(budget / once))
    runs = timeit.repeat(fn, number=number, repeat=repeat)
    return min(runs) / number * 1e6  # the least disturbed run: 2 shared, noisy cores


def translator_bench(events: int, repeat: int) -> dict:
    """detour's translation work for one call, in this process, without any I/O."""
    from tests.fakes.openai_provider import FakeOpenAI
    from tests.fakes.replies import Events
    from tests.fakes.server import Received
    from translators import anthropic, openai_chat

    raw = capture_body(False)
    body = json.loads(raw)
    req = anthropic.decode_request(body)

    def translate_request():
        r = anthropic.decode_request(body)
        r = dataclasses.replace(r, model="fake-model", stream=False)
        return provider_body(openai_chat.encode_request(r))

    encoded = openai_chat.encode_request(dataclasses.replace(req, model="fake-model"))
    fake = FakeOpenAI()
    whole = fake.render(Events(events), Received("POST", "/v1/chat/completions", {}, raw,
                                                 encoded), False).body
    streamed_req = dict(encoded, stream=True, stream_options={"include_usage": True})
    chunks = list(fake.render(Events(events), Received("POST", "/v1/chat/completions", {}, raw,
                                                       streamed_req), True).events)
    resp = openai_chat.decode_response(json.loads(whole))

    def translate_response():
        r = openai_chat.decode_response(json.loads(whole))
        return provider_body(anthropic.encode_response(r))

    def decode_stream():
        dec = openai_chat.StreamDecoder()
        out = []
        for chunk in chunks:
            out += dec.feed(chunk)
        return out + dec.close()

    stream_events = decode_stream()

    def encode_stream():
        enc = anthropic.StreamEncoder()
        for ev in stream_events:
            enc.encode(ev)

    def translate_stream():  # the loop of Forwarder.stream, without the I/O
        dec = openai_chat.StreamDecoder()
        enc = anthropic.StreamEncoder()
        for chunk in chunks:
            out = b""
            for ev in dec.feed(chunk):
                out += enc.encode(ev)
        for ev in dec.close():
            enc.encode(ev)

    n = len(chunks)
    us = {
        "request_json_loads": _per_call_us(lambda: orjson.loads(raw), repeat),
        "request_decode": _per_call_us(lambda: anthropic.decode_request(body), repeat),
        "request_encode": _per_call_us(
            lambda: openai_chat.encode_request(dataclasses.replace(req, model="fake-model")),
            repeat),
        "request_dumps": _per_call_us(lambda: provider_body(encoded), repeat),
        "request_total": _per_call_us(translate_request, repeat),
        "response_json_loads": _per_call_us(lambda: json.loads(whole), repeat),
        "response_decode": _per_call_us(lambda: openai_chat.decode_response(json.loads(whole)),
                                        repeat),
        "response_encode": _per_call_us(lambda: anthropic.encode_response(resp), repeat),
        "response_total": _per_call_us(translate_response, repeat),
        "stream_decode": _per_call_us(decode_stream, repeat),
        "stream_encode": _per_call_us(encode_stream, repeat),
        "stream_total": _per_call_us(translate_stream, repeat),
    }
    us["response_decode"] -= us["response_json_loads"]
    return {
        "request_bytes": len(raw), "provider_request_bytes": len(compact(encoded)),
        "response_bytes": len(whole), "stream_chunks": n, "canonical_events": len(stream_events),
        "us": us,
        "stream_us_per_event": {k: us[f"stream_{k}"] / n for k in ("decode", "encode", "total")},
    }


# ---------------------------------------------------------------- the run


@dataclasses.dataclass
class Side:
    """One proxy as the client reaches it: through `CONNECT host:port` + TLS (`tunnel`), or
    straight (reverse mode); a keep-alive connection per worker or a new one per request."""

    name: str
    mitm: object  # tests.harness.Mitmdump
    host: str
    port: int
    ctx: ssl.SSLContext | None
    tunnel: bool = True
    new_connection: bool = False
    clients: list = dataclasses.field(default_factory=list)

    @property
    def authority(self) -> str:
        return self.host if self.port == 443 else f"{self.host}:{self.port}"

    def connect(self) -> TunnelClient:
        return TunnelClient(self.mitm.port, self.host, self.port, self.ctx, tunnel=self.tunnel)

    def client(self) -> TunnelClient | FreshClient:
        return FreshClient(self.connect) if self.new_connection else self.connect()


def phase_metrics(ph: Phase, events: int | None = None) -> dict:
    lat = ph.latencies_ms()
    out = {"n": ph.n, "wall_s": round(ph.wall, 4), "cpu_s": round(ph.cpu, 3),
           "median_ms": median(lat), "p90_ms": percentile(lat, 0.9),
           "rps": ph.n / ph.wall if ph.wall else None,
           "cpu_ms_per_req": ph.cpu * 1000 / ph.n if ph.n else None}
    if events is not None:
        out["first_event_ms"] = median(ph.marks_ms())
        out["cpu_us_per_event"] = (out["cpu_ms_per_req"] * 1000 / events
                                   if out["cpu_ms_per_req"] is not None else None)
    return out


def ratio(a, b):
    return a / b if a is not None and b else None


def paced_check(side: Side, fake: FakeProcess, body: bytes) -> dict:
    """One paced stream alone: did the client have its first text event before the provider
    wrote its last (relayed as it comes, not buffered)?"""
    client = side.connect()
    try:
        # a whole call first opens the upstream connection the stream then reuses: no TLS
        # handshake in the times below
        whole = capture_body(False)
        problem = check_whole(client.send(request_for(side.authority, whole), whole))
        if problem:
            raise RuntimeError(f"paced warm-up through {side.name}: {problem}")
        while not fake.lines.empty():
            fake.lines.get_nowait()
        reply = client.send(request_for(side.authority, body), body, MARKER)
        problem = check_stream(reply)
        if problem:
            raise RuntimeError(f"paced stream through {side.name}: {problem}")
        line = ""
        while not line.startswith("stream "):  # the fake's stamp (skip anything else)
            line = fake.lines.get(timeout=10)
        _, first, last, n = line.split()
        first, last = float(first), float(last)
        return {
            "first_event_ms": (reply.t_mark - reply.t0) * 1000,
            "provider_first_ms": (first - reply.t0) * 1000,
            "provider_last_ms": (last - reply.t0) * 1000,
            "client_end_ms": (reply.t_end - reply.t0) * 1000,
            "provider_events": int(n),
            "before_provider_last": reply.t_mark < last,
        }
    finally:
        client.close()


def padded_body(size: int) -> bytes:
    """The captured request with one more user turn of text, to `size` bytes in all."""
    body = json.loads(CAPTURE.read_text())
    body["stream"] = False
    base = len(compact(body)) + 64
    body["messages"].append({"role": "assistant", "content": [{"type": "text", "text": "ok"}]})
    body["messages"].append({"role": "user", "content": [
        {"type": "text", "text": "y" * max(0, size - base)}]})
    return compact(body)


def run(args) -> dict:
    from certs.ca import ensure_ca
    from tests.harness import Mitmdump

    events = args.events
    fakes: list[FakeProcess] = []
    mitms: list[Mitmdump] = []
    sides: list[Side] = []
    cpus = sorted(os.sched_getaffinity(0))
    proxy_cpus = others = None
    if args.pin and len(cpus) > 1:
        # the proxies on one core (only one of them is busy at a time), everything else (this
        # client, the fakes) on the others: the proxy's CPU is its own, as on a gateway
        proxy_cpus, others = {cpus[-1]}, set(cpus[:-1])
        os.sched_setaffinity(0, others)
    tls = args.upstream == "https"
    with tempfile.TemporaryDirectory(prefix="detour-bench-") as tmp:
        tmp = Path(tmp)
        try:
            paced = ["--paced", f"{PACED_MODEL}:{args.paced_delay}:{args.paced_events}",
                     "--paced", f"{PACED_UPSTREAM}:{args.paced_delay}:{args.paced_events}",
                     "--paced", f"{HOLD_MODEL}:{HOLD_DELAY}:{HOLD_EVENTS}",
                     "--paced", f"{HOLD_UPSTREAM}:{HOLD_DELAY}:{HOLD_EVENTS}"]
            common = (["--tls"] if tls else []) + ["--events", str(events), "--stamp"] + paced
            openai = FakeProcess("openai", *common).launch()
            vendor = FakeProcess("anthropic", *common).launch()
            fakes += [openai, vendor]
            confdir = tmp / "confdir"
            ensure_ca(confdir)  # before the proxies start, so they share one CA
            for f in fakes:
                f.wait_ready()
                if others:
                    pin(f.proc.pid, others)

            home = tmp / "home"
            home.mkdir()
            model = json.loads(CAPTURE.read_text())["model"]
            config = detour_config(openai.base_url, vendor.base_url, model)
            (home / "config.yaml").write_text(config)
            # plain mitmdump as a user would run it in front of the vendor: no script, lazy
            # upstream connections as detour's; certificates of the fakes not verified
            base = ["--set", "connection_strategy=lazy", "--set", "ssl_insecure=true"]
            stream_mode = ["--set", "stream_large_bodies=1"]
            detour_extra, plain_extra = list(base), list(base)
            if args.leg == "reverse":
                detour_extra += ["--mode", "reverse:https://api.anthropic.com"]
                plain_extra += ["--mode", f"reverse:{vendor.base_url}"]

            def detour_proxy(home_dir: Path) -> Mitmdump:
                # --detour-set: this checkout's options only (an --against checkout may not
                # know them)
                options = [a for opt in args.detour_set for a in ("--set", opt)]
                return Mitmdump(confdir, home_dir, router=True, extra=detour_extra + options)

            def plain_proxy(stream: bool) -> Mitmdump:
                return Mitmdump(confdir, router=False,
                                extra=plain_extra + (stream_mode if stream else []))

            mitms = [detour_proxy(home), plain_proxy(False), plain_proxy(True)]
            if args.against:
                # the other side is detour too, from another checkout: same routes, a home of
                # its own (two proxies writing one SQLite file would contend)
                home_b = tmp / "home-against"
                home_b.mkdir()
                (home_b / "config.yaml").write_text(config)
                against = Mitmdump(confdir, router=False, extra=detour_extra + [
                    "-s", str(args.against / "addons" / "router.py"),
                    "--set", f"detour_home={home_b}"])
                mitms = [mitms[0], against, against]

            def start(ms):
                with concurrent.futures.ThreadPoolExecutor(3) as pool:
                    for fut in [pool.submit(m.start) for m in dict.fromkeys(ms)]:
                        fut.result()
                if proxy_cpus:
                    for m in ms:
                        pin(m.proc.pid, proxy_cpus)

            start(mitms)
            detour_mitm, plain_mitm, stream_mitm = mitms
            ctx = ssl.create_default_context(cafile=str(detour_mitm.ca_cert))
            client_ctx = ctx if args.leg == "connect" else None  # reverse: plain HTTP to it

            def side(name, mitm, host, port) -> Side:
                return Side(name, mitm, host, port, client_ctx, args.leg == "connect",
                            args.new_connection)

            vendor_host = "api.anthropic.com" if args.against else "127.0.0.1"
            vendor_port = 443 if args.against else vendor.port
            detour = side(DETOUR, detour_mitm, "api.anthropic.com", 443)
            plain = side(PLAIN, plain_mitm, vendor_host, vendor_port)
            plain_stream = side(PLAIN, stream_mitm, vendor_host, vendor_port)
            paced_c = args.paced_concurrency
            sides = [detour, plain, plain_stream]
            for s in sides:
                s.clients = [s.client() for _ in range(max(args.concurrency, paced_c))]

            bodies = {
                "whole": capture_body(False), "stream": capture_body(True),
                "paced": capture_body(True, PACED_MODEL),
                "observe": capture_body(False, OBSERVE_MODEL),
                "big": padded_body(args.big_body),
            }
            # one full, decoded answer of each kind first: the setup is right
            for s, kind in ((detour, "whole"), (plain, "whole"), (detour, "stream"),
                            (plain_stream, "stream"), (detour, "observe")):
                stream = kind == "stream"
                reply = s.clients[0].send(request_for(s.authority, bodies[kind]), bodies[kind],
                                          MARKER, keep=True)
                try:
                    validate(reply, stream, events)
                except Exception as e:
                    raise RuntimeError(f"{s.name} ({kind}): {e}"
                                       f"\n--- proxy output ---\n{s.mitm.text[-3000:]}")

            per_c16 = max(1, math.ceil(args.requests_c16 / args.concurrency))
            per_paced = max(1, math.ceil(args.paced_streams / paced_c))
            whole_pair = {DETOUR: detour, PLAIN: plain}
            stream_pair = {DETOUR: detour, PLAIN: plain_stream}
            # (name, sides, body kind, stream?, concurrency, per client, events per answer)
            phases = [
                ("whole_c1", whole_pair, "whole", False, 1, args.requests, None),
                (f"whole_c{args.concurrency}", whole_pair, "whole", False, args.concurrency,
                 per_c16, None),
                ("stream_c1", stream_pair, "stream", True, 1, args.streams, events),
                (f"paced_c{paced_c}", stream_pair, "paced", True, paced_c, per_paced,
                 args.paced_events),
                ("big_c1", whole_pair, "big", False, 1, args.big_requests, None),
                ("observe_c1", whole_pair, "observe", False, 1, args.requests, None),
            ]
            rounds = []
            t_start = time.monotonic()
            for r in range(args.rounds):
                order = [DETOUR, PLAIN] if r % 2 == 0 else [PLAIN, DETOUR]
                this = {}
                for name, pair, kind, stream, conc, per_client, n_events in phases:
                    this[name] = {}
                    for who in order:
                        s = pair[who]
                        # plain mitmdump has no observe mode: its whole call is the baseline
                        body = bodies["whole" if kind == "observe" and who == PLAIN
                                      and not args.against else kind]
                        ph = run_phase(s.clients[:conc], per_client,
                                       request_for(s.authority, body), body,
                                       s.mitm.cpu_seconds,
                                       check_stream if stream else check_whole,
                                       MARKER if stream else None)
                        if ph.errors:
                            raise RuntimeError(
                                f"round {r + 1}, {name}, {who}: {ph.errors[0]}"
                                f"\n--- proxy output ---\n{s.mitm.text[-3000:]}")
                        this[name][who] = phase_metrics(ph, n_events)
                rounds.append(this)
                if args.progress:
                    print(f"  round {r + 1}/{args.rounds} done "
                          f"({time.monotonic() - t_start:.0f} s)", file=sys.stderr, flush=True)

            fake_of = {DETOUR: openai, PLAIN: openai if args.against else vendor}
            paced_result = {who: paced_check(s, fake_of[who], bodies["paced"])
                            for who, s in stream_pair.items()}
            for s in sides:
                for c in s.clients:
                    c.close()
                s.clients = []

            memory = {}
            if args.open_streams:
                # fresh proxies (the heap of one that served the rounds has room to spare),
                # one at a time, in the bench's client setup and the other one (issue 13
                # measured reverse mode with a plain-HTTP client leg); see memory.py
                from scripts.bench.memory import FreshProxies, held_stream_fakes, legs_for

                fresh = FreshProxies(tmp, confdir, config, vendor.base_url, vendor.port,
                                     args.upstream, args.detour_set, args.against, proxy_cpus)
                hold = capture_body(True, HOLD_MODEL)
                for leg in legs_for(args.leg, args.upstream):
                    memory[f"{leg}/{args.upstream}"] = {
                        who: fresh.measure(who, leg, hold, args.open_streams)
                        for who in (DETOUR, PLAIN)}
                if ISSUE_MEMORY_SETTING not in memory:
                    # the setting the memory target is for: plain HTTP on both legs (OpenSSL's
                    # ~130 KB per TLS connection comes on top in the others, plain's alike)
                    with held_stream_fakes("http", others) as (_, http_vendor, http_config):
                        fresh = FreshProxies(tmp, confdir, http_config, http_vendor.base_url,
                                             http_vendor.port, "http", args.detour_set,
                                             args.against, proxy_cpus, homes=fresh.homes)
                        memory[ISSUE_MEMORY_SETTING] = {
                            who: fresh.measure(who, "reverse", hold, args.open_streams)
                            for who in (DETOUR, PLAIN)}
        finally:
            for s in sides:
                for c in s.clients:
                    c.close()
            for m in dict.fromkeys(mitms):
                m.stop()
            for f in fakes:
                f.stop()
        if proxy_cpus:
            os.sched_setaffinity(0, set(cpus))

    translator = translator_bench(events, args.repeat)
    return {"rounds": rounds, "paced": paced_result, "memory": memory, "translator": translator,
            "phases": [p[0] for p in phases], "capture_bytes": len(bodies["whole"]),
            "big_bytes": len(bodies["big"]), "revision": revision(),
            "pinned": {"proxies": sorted(proxy_cpus) if proxy_cpus else None,
                       "others": sorted(others) if others else None},
            "ports": {"openai_fake": openai.base_url, "anthropic_fake": vendor.base_url}}


# ---------------------------------------------------------------- the report

ROWS = [  # (phase alias, metric, label, unit format, target key)
    ("whole_c1", "median_ms", "median latency (ms)", "{:.2f}", None),
    ("whole_c1", "rps", "requests/s", "{:.0f}", None),
    ("whole_c1", "cpu_ms_per_req", "proxy CPU (ms/request)", "{:.2f}", "whole_c1"),
    ("whole_cN", "median_ms", "median latency (ms)", "{:.2f}", None),
    ("whole_cN", "rps", "requests/s", "{:.0f}", None),
    ("whole_cN", "cpu_ms_per_req", "proxy CPU (ms/request)", "{:.2f}", "whole_cN"),
    ("stream_c1", "median_ms", "median total time (ms)", "{:.1f}", None),
    ("stream_c1", "first_event_ms", "median first text event (ms)", "{:.2f}", None),
    ("stream_c1", "cpu_us_per_event", "proxy CPU (us/event)", "{:.1f}", None),
    ("paced", "cpu_us_per_event", "proxy CPU (us/event)", "{:.1f}", "paced"),
    ("paced", "cpu_ms_per_req", "proxy CPU (ms/stream)", "{:.1f}", None),
    ("big_c1", "median_ms", "median latency (ms)", "{:.2f}", None),
    ("big_c1", "cpu_ms_per_req", "proxy CPU (ms/request)", "{:.2f}", "big_c1"),
    ("observe_c1", "cpu_ms_per_req", "proxy CPU (ms/request)", "{:.2f}", None),
]


def titles_of(result: dict, args) -> dict:
    names = result["phases"]
    return {names[0]: "whole c=1", names[1]: f"whole c={args.concurrency}",
            names[2]: "stream c=1", names[3]: f"paced c={args.paced_concurrency}",
            names[4]: f"{result['big_bytes'] / 1e6:.1f}MB c=1", names[5]: "observe c=1"}


def summarize(result: dict, args) -> dict:
    phases = result["phases"]
    alias = dict(zip(("whole_c1", "whole_cN", "stream_c1", "paced", "big_c1", "observe_c1"),
                     phases))
    summary = []
    for phase, metric, label, fmt, target_key in ROWS:
        name = alias[phase]
        target = TARGETS.get(target_key)
        per_round = [r[name] for r in result["rounds"]]
        d = median(r[DETOUR][metric] for r in per_round)
        p = median(r[PLAIN][metric] for r in per_round)
        ratios = [ratio(r[DETOUR][metric], r[PLAIN][metric]) for r in per_round]
        rr = median(ratios)
        verdict = None
        if target is not None and rr is not None:
            verdict = "met" if rr <= target else "MISSED"
        summary.append({"phase": name, "metric": metric, "label": label, "detour": d,
                        "plain": p, "ratio": rr, "round_ratios": ratios, "target": target,
                        "verdict": verdict, "fmt": fmt})
    for setting, mem in result["memory"].items():
        d, p = mem[DETOUR]["kb_per_stream"], mem[PLAIN]["kb_per_stream"]
        marginal = mem[DETOUR]["kb_marginal"]
        target = TARGET_MEMORY_KB if setting == ISSUE_MEMORY_SETTING else None
        summary.append({"phase": f"open_streams_{setting}", "metric": "kb_per_stream",
                        "label": "RSS per open stream (KB)", "detour": d, "plain": p,
                        "ratio": ratio(d, p), "round_ratios": [], "target": None,
                        "target_kb": target, "setting": setting,
                        # both figures: the average rests on the heap's room before as well
                        "verdict": None if target is None else
                        "met" if max(d, marginal) <= target else "MISSED", "fmt": "{:.0f}"})
    return {"rows": summary}


def revision() -> str:
    """The commit the measured code is at (`-dirty`: with uncommitted changes)."""
    try:
        out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=ROOT,
                             capture_output=True, text=True, timeout=10)
    except OSError:
        return "?"
    return out.stdout.strip() or "?"


def fmt(value, spec: str) -> str:
    return "-" if value is None else spec.format(value)


def report(result: dict, summary: dict, args, elapsed: float) -> str:
    tr = result["translator"]
    lines = []
    w = lines.append
    w(f"detour bench `claude_code`: the captured Claude Code request "
      f"({result['capture_bytes']:,} B body), {args.events}-event streams")
    w("  proxies : detour = mitmdump -s addons/router.py; plain = mitmdump, no script "
      "(whole: buffered; streams: stream_large_bodies=1);")
    w("            both connection_strategy=lazy, ssl_insecure=true"
      + (", --mode reverse" if args.leg == "reverse" else ""))
    if args.against:
        w(f"  AGAINST : 'plain' below is NOT plain mitmdump but detour from {args.against} "
          f"(--against), same routes and fakes")
    if args.leg == "connect":
        w("  client  : this process, CONNECT api.anthropic.com:443 (plain: the fake vendor's "
          "address) + TLS through the proxy, trusting its CA;")
    else:
        w("  client  : this process, plain HTTP straight to the proxy in reverse mode (no "
          "CONNECT, no TLS on the client leg);")
    w("            " + ("a new connection for every request (CONNECT + TLS handshake included)"
                       if args.new_connection else
                       "one keep-alive connection per worker, opened before timing"))
    w(f"  upstream: {args.upstream} on both sides, loopback fakes in processes of their own: "
      f"detour -> fake OpenAI-compatible provider, plain -> fake Anthropic API")
    pinned = result["pinned"]
    w("  cpus    : " + (f"proxies pinned to cpu {pinned['proxies']}, client and fakes to "
                         f"{pinned['others']}" if pinned["proxies"] else "not pinned"))
    w(f"  runs    : {args.rounds} rounds, detour and plain alternating phase by phase (order "
      f"flips each round); per round and side:")
    w(f"            {args.requests} whole at c=1, "
      f"{math.ceil(args.requests_c16 / args.concurrency) * args.concurrency} whole at "
      f"c={args.concurrency}, {args.streams} unpaced streams, "
      f"{math.ceil(args.paced_streams / args.paced_concurrency) * args.paced_concurrency} "
      f"paced streams ({args.paced_events} events, one every {args.paced_delay * 1000:g} ms) "
      f"at c={args.paced_concurrency},")
    w(f"            {args.big_requests} whole with a {result['big_bytes']:,} B body, "
      f"{args.requests} observe-mode (passthrough) whole calls (plain: its whole call)")
    w("  figures : medians over rounds; ratio = median of the per-round detour/plain ratios; CPU "
      "= the proxy process (its CPU-time clock)")
    w("")
    head = f"{'':<42}{'detour':>10}{'plain':>10}{'ratio':>9}{'target':>9}  verdict"
    w(head)
    w("-" * len(head))
    titles = titles_of(result, args)
    for setting in result["memory"]:  # the bench's own setup first, the others marked
        leg, upstream = setting.split("/")
        titles[f"open_streams_{setting}"] = f"{args.open_streams} open" + (
            "" if leg == args.leg and upstream == args.upstream else
            " http" if setting == ISSUE_MEMORY_SETTING else
            " rev" if leg == "reverse" else " TLS")
    for row in summary["rows"]:
        if row.get("target_kb"):
            target = f"<={row['target_kb']}KB"
        else:
            target = f"<={row['target']}x" if row["target"] else ""
        label = f"{titles[row['phase']]:<14}{row['label']}"
        w(f"{label:<42}{fmt(row['detour'], row['fmt']):>10}{fmt(row['plain'], row['fmt']):>10}"
          f"{fmt(row['ratio'], '{:.2f}x'):>9}{target:>9}  {row['verdict'] or ''}")
    w("")
    w("per-round ratios detour/plain:")
    for row in summary["rows"]:
        if row["round_ratios"] and (row["metric"] in ("cpu_ms_per_req", "rps")
                                    or row["target"]):
            label = f"{titles[row['phase']]} {row['label']}"
            w(f"  {label:<42}" + " ".join(fmt(x, "{:.2f}") for x in row["round_ratios"]))
    for setting, mem in result["memory"].items():
        w("")
        leg, upstream = setting.split("/")
        setup = ("CONNECT + TLS client leg" if leg == "connect" else
                 "reverse mode, plain HTTP client leg")
        if setting == ISSUE_MEMORY_SETTING:
            setup += " (issue 13's setting, the one its target is for)"
        w(f"memory, {setup}, {upstream} upstream: {args.open_streams} streams open at once "
          f"through a fresh proxy (each one's first text event received, the provider holding "
          f"the rest; marginal: what the second half added, per stream):")
        for who in (DETOUR, PLAIN):
            x = mem[who]
            w(f"  {who:<7} RSS {x['rss_before'] / 2**20:.1f} MB -> {x['rss_open'] / 2**20:.1f} MB"
              f" = {x['kb_per_stream']:.0f} KB per open stream (marginal "
              f"{x['kb_marginal']:.0f})")
    w("")
    p = result["paced"]
    w(f"paced stream alone ({args.paced_events} events, one every "
      f"{args.paced_delay * 1000:g} ms from the provider; times from the start of the request):")
    for who in (DETOUR, PLAIN):
        x = p[who]
        ok = "met" if x["before_provider_last"] else "MISSED"
        w(f"  {who:<7} provider wrote its first event at {x['provider_first_ms']:6.1f} ms, its "
          f"last at {x['provider_last_ms']:7.1f} ms; the client had the first text event at "
          f"{x['first_event_ms']:6.1f} ms, all at {x['client_end_ms']:7.1f} ms")
        w(f"          -> first event before the provider's last (relayed as it comes): {ok}")
    w("")
    us = tr["us"]
    per = tr["stream_us_per_event"]
    w(f"translator alone (in-process, no I/O; best of {args.repeat} timings):")
    w(f"  request  Anthropic -> Chat ({tr['request_bytes']:,} B -> "
      f"{tr['provider_request_bytes']:,} B): anthropic.decode_request "
      f"{us['request_decode']:.0f} us + openai_chat.encode_request {us['request_encode']:.0f} us"
      f" + dumps (orjson) {us['request_dumps']:.0f} us = {us['request_total']:.0f} us/request")
    w(f"           (the client body's orjson.loads, done by the request hook before translating: "
      f"{us['request_json_loads']:.0f} us)")
    w(f"  response Chat -> Anthropic, whole ({tr['response_bytes']:,} B): json.loads "
      f"{us['response_json_loads']:.0f} us + openai_chat.decode_response "
      f"{us['response_decode']:.0f} us + anthropic.encode_response "
      f"{us['response_encode']:.0f} us + dumps = {us['response_total']:.0f} us/request")
    w(f"  stream   Chat -> Anthropic ({tr['stream_chunks']} provider events, one per chunk): "
      f"openai_chat.StreamDecoder.feed {per['decode']:.1f} us/event + "
      f"anthropic.StreamEncoder.encode {per['encode']:.1f} us/event")
    w(f"           = {per['total']:.1f} us/event together, "
      f"{us['stream_total'] / 1000:.2f} ms per {args.events}-event stream")
    w("")
    w(f"code at {result['revision']}; python {platform.python_version()}, {platform.machine()}, "
      f"{os.cpu_count()} cpus; elapsed {elapsed:.0f} s")
    return "\n".join(lines)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(prog="python -m scripts.bench.claude_code",
                                 description=__doc__.strip().splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="fewer rounds and requests (under ~45 s)")
    ap.add_argument("--rounds", type=int, help="alternating rounds (default 5, quick 3)")
    ap.add_argument("--requests", type=int,
                    help="timed whole requests per round and side at c=1 (default 100, quick 30)")
    ap.add_argument("--requests-c16", type=int, dest="requests_c16",
                    help="timed whole requests per round and side at the high concurrency, "
                         "spread over the workers (default 3 x --requests)")
    ap.add_argument("--concurrency", type=int, default=16, help="the high concurrency (16)")
    ap.add_argument("--streams", type=int,
                    help="timed streams per round and side (default 20, quick 8)")
    ap.add_argument("--events", type=int, default=500,
                    help="content deltas per answer (500); whole answers carry as many chars")
    ap.add_argument("--paced-streams", type=int, dest="paced_streams",
                    help="paced streams per round and side, spread over --paced-concurrency "
                         "workers (default 8, quick 4)")
    ap.add_argument("--paced-concurrency", type=int, default=4, dest="paced_concurrency",
                    help="paced streams at once (4)")
    ap.add_argument("--paced-events", type=int, default=250, dest="paced_events",
                    help="content deltas per paced stream (250)")
    ap.add_argument("--paced-delay", type=float, default=0.002, dest="paced_delay",
                    help="seconds between events of a paced stream (0.002)")
    ap.add_argument("--big-body", type=int, default=1_000_000, dest="big_body",
                    help="size of the large request body, bytes (1000000)")
    ap.add_argument("--big-requests", type=int, dest="big_requests",
                    help="whole calls with the large body per round and side (default 10, "
                         "quick 4)")
    ap.add_argument("--open-streams", type=int, default=200, dest="open_streams",
                    help="streams held open at once for the memory figure (200; 0: skip)")
    ap.add_argument("--leg", choices=("connect", "reverse"), default="connect",
                    help="connect: the client does CONNECT + TLS through the proxy, as a user's "
                         "CLI does (default); reverse: mitmproxy in reverse mode, plain HTTP "
                         "from the client (how issue 13's first measurement ran)")
    ap.add_argument("--upstream", choices=("https", "http"), default="https",
                    help="the fakes' scheme (https; http needs --leg reverse: after a CONNECT "
                         "with TLS mitmproxy speaks TLS upstream)")
    ap.add_argument("--new-connection", action="store_true", dest="new_connection",
                    help="a new client connection per request (default: keep-alive)")
    ap.add_argument("--no-pin", dest="pin", action="store_false",
                    help="do not pin the proxies to one cpu (and the rest to the others)")
    ap.add_argument("--repeat", type=int,
                    help="timings per translator figure, the best is kept (7, quick 3)")
    ap.add_argument("--detour-set", action="append", default=[], dest="detour_set",
                    metavar="OPTION=VALUE",
                    help="a mitmproxy option for this checkout's detour (repeatable), e.g. "
                         "detour_direct=false")
    ap.add_argument("--json", type=Path, help="also save every figure here")
    ap.add_argument("--against", type=Path, metavar="CHECKOUT",
                    help="compare with detour from another checkout (e.g. the previous commit)"
                         " instead of plain mitmdump: 'plain' in the table is that detour")
    ap.add_argument("--no-progress", dest="progress", action="store_false",
                    help="no per-round line on stderr")
    args = ap.parse_args(argv)
    quick = args.quick
    args.rounds = args.rounds or (3 if quick else 5)
    args.requests = args.requests or (30 if quick else 100)
    args.requests_c16 = args.requests_c16 or 3 * args.requests
    args.streams = args.streams or (8 if quick else 20)
    args.repeat = args.repeat or (3 if quick else 7)
    args.paced_streams = args.paced_streams or (4 if quick else 8)
    args.big_requests = args.big_requests or (4 if quick else 10)
    if args.upstream == "http" and args.leg == "connect":
        ap.error("--upstream http needs --leg reverse")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    t0 = time.monotonic()
    result = run(args)
    summary = summarize(result, args)
    elapsed = time.monotonic() - t0
    print(report(result, summary, args, elapsed))
    if args.json:
        out = {"scenario": "claude_code", "args": {k: str(v) if isinstance(v, Path) else v
                                                   for k, v in vars(args).items()},
               "elapsed_s": elapsed, "summary": summary["rows"], **result}
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
