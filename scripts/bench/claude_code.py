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
from scripts.bench.lib import (ROOT, FakeProcess, Phase, Reply, TunnelClient, median,
                               percentile, run_phase)

CAPTURE = ROOT / "tests" / "data" / "captures" / "claude-code.messages.text.request.json"
CAPTURE_META = CAPTURE.with_name("claude-code.messages.text.meta.json")
VENDOR_KEY = "sk-ant-fake-vendor-key"  # what the Anthropic fake accepts; detour drops it
PROVIDER_KEY = "sk-fake-provider-key"
PACED_MODEL = "claude-bench-paced"
TARGET_CPU_WHOLE = 1.8
TARGET_STREAM = 1.6
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
    name: str
    mitm: object  # tests.harness.Mitmdump
    host: str
    port: int
    clients: list[TunnelClient] = dataclasses.field(default_factory=list)

    @property
    def authority(self) -> str:
        return self.host if self.port == 443 else f"{self.host}:{self.port}"


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


def paced_check(side: Side, ctx: ssl.SSLContext, fake: FakeProcess, body: bytes,
                streams: int) -> dict:
    client = TunnelClient(side.mitm.port, side.host, side.port, ctx)
    try:
        # a whole call first (paced once, not per event) opens the upstream connection that
        # the stream then reuses: no TLS handshake in the figures below
        whole = capture_body(False, json.loads(body)["model"])
        problem = check_whole(client.send(request_for(side.authority, whole), whole))
        if problem:
            raise RuntimeError(f"paced warm-up through {side.name}: {problem}")
        cpu0 = side.mitm.cpu_seconds()
        for _ in range(streams):
            while not fake.lines.empty():
                fake.lines.get_nowait()
            reply = client.send(request_for(side.authority, body), body, MARKER)
            problem = check_stream(reply)
            if problem:
                raise RuntimeError(f"paced stream through {side.name}: {problem}")
            line = ""
            while not line.startswith("stream "):  # the fake's stamp (skip anything else)
                line = fake.lines.get(timeout=10)
        cpu_ms = (side.mitm.cpu_seconds() - cpu0) * 1000 / streams
        _, first, last, n = line.split()
        first, last = float(first), float(last)
        return {
            # every event is a read of its own here, as with a real model's tokens: the
            # per-event cost without the coalescing an unpaced burst allows
            "cpu_ms_per_stream": cpu_ms,
            "cpu_us_per_event": cpu_ms * 1000 / int(n),
            "first_event_ms": (reply.t_mark - reply.t0) * 1000,
            "provider_first_ms": (first - reply.t0) * 1000,
            "provider_last_ms": (last - reply.t0) * 1000,
            "client_end_ms": (reply.t_end - reply.t0) * 1000,
            "provider_events": int(n),
            "before_provider_last": reply.t_mark < last,
        }
    finally:
        client.close()


def run(args) -> dict:
    from certs.ca import ensure_ca
    from tests.harness import Mitmdump

    events = args.events
    fakes: list[FakeProcess] = []
    mitms: list[Mitmdump] = []
    sides: list[Side] = []
    with tempfile.TemporaryDirectory(prefix="detour-bench-") as tmp:
        tmp = Path(tmp)
        try:
            common = ["--tls", "--events", str(events)]
            openai = FakeProcess("openai", *common).launch()
            vendor = FakeProcess("anthropic", *common).launch()
            paced = ["--tls", "--events", str(events), "--delay", str(args.paced_delay),
                     "--stamp"]
            openai_paced = FakeProcess("openai", *paced).launch()
            vendor_paced = FakeProcess("anthropic", *paced).launch()
            fakes += [openai, vendor, openai_paced, vendor_paced]
            confdir = tmp / "confdir"
            ensure_ca(confdir)  # before the three proxies start, so they share one CA
            for f in fakes:
                f.wait_ready()

            home = tmp / "home"
            home.mkdir()
            model = json.loads(CAPTURE.read_text())["model"]
            (home / "config.yaml").write_text(f"""
providers:
  fake: {{kind: openai, base_url: "{openai.base_url}/v1", api_keys: [{PROVIDER_KEY}],
          verify_tls: false}}
  paced: {{kind: openai, base_url: "{openai_paced.base_url}/v1", api_keys: [{PROVIDER_KEY}],
           verify_tls: false}}
routes:
  {model}: [fake/fake-model]
  {PACED_MODEL}: [paced/fake-model]
prices:
  fake-model: {{input: 3, output: 15, cache_read: 0.3}}
""")
            lazy = ["--set", "connection_strategy=lazy", "--set", "ssl_insecure=true"]
            mitms = [Mitmdump(confdir, home, router=True),
                     Mitmdump(confdir, router=False, extra=lazy),
                     Mitmdump(confdir, router=False, extra=lazy + ["--set",
                                                                   "stream_large_bodies=1"])]
            if args.against:
                # the other side is detour too, from another checkout: same routes, a home of
                # its own (two proxies writing one SQLite file would contend)
                home_b = tmp / "home-against"
                home_b.mkdir()
                (home_b / "config.yaml").write_text((home / "config.yaml").read_text())
                against = Mitmdump(confdir, router=False, extra=[
                    "-s", str(args.against / "addons" / "router.py"),
                    "--set", f"detour_home={home_b}"])
                mitms = [mitms[0], against, against]
            with concurrent.futures.ThreadPoolExecutor(3) as pool:
                for fut in [pool.submit(m.start) for m in dict.fromkeys(mitms)]:
                    fut.result()
            detour_mitm, plain_mitm, stream_mitm = mitms
            ctx = ssl.create_default_context(cafile=str(detour_mitm.ca_cert))
            detour = Side(DETOUR, detour_mitm, "api.anthropic.com", 443)
            plain = Side(PLAIN, plain_mitm, "127.0.0.1", vendor.port)
            plain_stream = Side(PLAIN, stream_mitm, "127.0.0.1", vendor.port)
            if args.against:
                plain = plain_stream = Side(PLAIN, plain_mitm, "api.anthropic.com", 443)
            sides = [detour, plain] if args.against else [detour, plain, plain_stream]
            for side in sides:
                side.clients = [TunnelClient(side.mitm.port, side.host, side.port, ctx)
                                for _ in range(args.concurrency)]

            bodies = {s: capture_body(s) for s in (False, True)}
            reqs = {(id(side), s): request_for(side.authority, bodies[s])
                    for side in sides for s in (False, True)}
            # one full, decoded answer of each kind first: the setup is right
            for side, stream in ((detour, False), (plain, False), (detour, True),
                                 (plain_stream, True)):
                reply = side.clients[0].send(reqs[id(side), stream], bodies[stream], MARKER,
                                             keep=True)
                try:
                    validate(reply, stream, events)
                except Exception as e:
                    raise RuntimeError(f"{side.name} ({'stream' if stream else 'whole'}): {e}"
                                       f"\n--- proxy output ---\n{side.mitm.text[-3000:]}")

            per_c16 = max(1, math.ceil(args.requests_c16 / args.concurrency))
            phases = [
                ("whole_c1", {DETOUR: detour, PLAIN: plain}, False, 1, args.requests),
                (f"whole_c{args.concurrency}", {DETOUR: detour, PLAIN: plain}, False,
                 args.concurrency, per_c16),
                ("stream_c1", {DETOUR: detour, PLAIN: plain_stream}, True, 1, args.streams),
            ]
            rounds = []
            t_start = time.monotonic()
            for r in range(args.rounds):
                order = [DETOUR, PLAIN] if r % 2 == 0 else [PLAIN, DETOUR]
                this = {}
                for name, pair, stream, conc, per_client in phases:
                    this[name] = {}
                    for who in order:
                        side = pair[who]
                        ph = run_phase(side.clients[:conc], per_client, reqs[id(side), stream],
                                       bodies[stream], side.mitm.cpu_seconds,
                                       check_stream if stream else check_whole,
                                       MARKER if stream else None)
                        if ph.errors:
                            raise RuntimeError(
                                f"round {r + 1}, {name}, {who}: {ph.errors[0]}"
                                f"\n--- proxy output ---\n{side.mitm.text[-3000:]}")
                        this[name][who] = phase_metrics(ph, events if stream else None)
                rounds.append(this)
                if args.progress:
                    print(f"  round {r + 1}/{args.rounds} done "
                          f"({time.monotonic() - t_start:.0f} s)", file=sys.stderr, flush=True)

            paced_body = {DETOUR: capture_body(True, PACED_MODEL), PLAIN: bodies[True]}
            paced_plain = (Side(PLAIN, stream_mitm, "127.0.0.1", vendor_paced.port), vendor_paced)
            if args.against:
                paced_body[PLAIN] = paced_body[DETOUR]
                paced_plain = (plain, openai_paced)
            paced_result = {
                DETOUR: paced_check(detour, ctx, openai_paced, paced_body[DETOUR],
                                    args.paced_streams),
                PLAIN: paced_check(paced_plain[0], ctx, paced_plain[1], paced_body[PLAIN],
                                   args.paced_streams),
            }
        finally:
            for side in sides:
                for c in side.clients:
                    c.close()
            for m in dict.fromkeys(mitms):
                m.stop()
            for f in fakes:
                f.stop()

    translator = translator_bench(events, args.repeat)
    return {"rounds": rounds, "paced": paced_result, "translator": translator,
            "phases": [p[0] for p in phases], "capture_bytes": len(bodies[False]),
            "revision": revision(),
            "ports": {"openai_fake": openai.base_url, "anthropic_fake": vendor.base_url}}


# ---------------------------------------------------------------- the report

ROWS = [  # (phase, metric, label, unit format, target)
    ("whole_c1", "median_ms", "median latency (ms)", "{:.2f}", None),
    ("whole_c1", "p90_ms", "p90 latency (ms)", "{:.2f}", None),
    ("whole_c1", "rps", "requests/s", "{:.0f}", None),
    ("whole_c1", "cpu_ms_per_req", "proxy CPU (ms/request)", "{:.2f}", TARGET_CPU_WHOLE),
    ("whole_cN", "median_ms", "median latency (ms)", "{:.2f}", None),
    ("whole_cN", "rps", "requests/s", "{:.0f}", None),
    ("whole_cN", "cpu_ms_per_req", "proxy CPU (ms/request)", "{:.2f}", TARGET_CPU_WHOLE),
    ("stream_c1", "median_ms", "median total time (ms)", "{:.1f}", TARGET_STREAM),
    ("stream_c1", "first_event_ms", "median first text event (ms)", "{:.2f}", None),
    ("stream_c1", "cpu_ms_per_req", "proxy CPU (ms/stream)", "{:.1f}", TARGET_STREAM),
    ("stream_c1", "cpu_us_per_event", "proxy CPU (us/event)", "{:.1f}", None),
]


def summarize(result: dict, args) -> dict:
    phases = result["phases"]
    alias = {"whole_c1": phases[0], "whole_cN": phases[1], "stream_c1": phases[2]}
    summary = []
    for phase, metric, label, fmt, target in ROWS:
        name = alias[phase]
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
    w("  proxies : detour = mitmdump -s addons/router.py; plain = mitmdump, no script, "
      "connection_strategy=lazy (whole: buffered; streams: + stream_large_bodies=1)")
    if args.against:
        w(f"  AGAINST : 'plain' below is NOT plain mitmdump but detour from {args.against} "
          f"(--against), same routes and fakes")
    w("  client  : this process, h11 over TLS through CONNECT (trusting the mitmproxy CA); one "
      "keep-alive connection per worker,")
    w("            opened and warmed before timing and reused for every timed request")
    w("  upstream: TLS on both sides, loopback, fakes in processes of their own: detour -> fake "
      "OpenAI-compatible provider")
    w("            (https, verify_tls: false); plain -> fake Anthropic API (https, "
      "ssl_insecure=true)")
    w(f"  runs    : {args.rounds} rounds, detour and plain alternating phase by phase (order "
      f"flips each round); per round and side:")
    w(f"            {args.requests} whole at c=1, "
      f"{math.ceil(args.requests_c16 / args.concurrency) * args.concurrency} whole at "
      f"c={args.concurrency}, {args.streams} streams at c=1")
    w("  figures : medians over rounds; ratio = median of the per-round detour/plain ratios; CPU "
      "= the proxy process (/proc, 10 ms ticks)")
    w("")
    head = f"{'':<34}{'detour':>10}{'plain':>10}{'ratio':>9}{'target':>9}  verdict"
    w(head)
    w("-" * len(head))
    titles = {result["phases"][0]: "whole c=1", result["phases"][1]:
              f"whole c={args.concurrency}", result["phases"][2]: "stream c=1"}
    for row in summary["rows"]:
        target = f"<={row['target']}x" if row["target"] else ""
        verdict = row["verdict"] or ""
        if row["phase"] == result["phases"][2] and row["target"]:
            verdict += ("  (primary: the CPU ratio)" if row["metric"] == "cpu_ms_per_req"
                        else "  (time, shown too)")
        label = f"{titles[row['phase']]:<12}{row['label']}"
        w(f"{label:<34}{fmt(row['detour'], row['fmt']):>10}{fmt(row['plain'], row['fmt']):>10}"
          f"{fmt(row['ratio'], '{:.2f}x'):>9}{target:>9}  {verdict}")
    w("")
    w("per-round ratios detour/plain:")
    for row in summary["rows"]:
        if row["metric"] in ("cpu_ms_per_req", "rps") or row["target"]:
            label = f"{titles[row['phase']]} {row['label']}"
            w(f"  {label:<42}" + " ".join(fmt(x, "{:.2f}") for x in row["round_ratios"]))
    w("")
    p = result["paced"]
    w(f"paced stream ({args.events} events, one every {args.paced_delay * 1000:g} ms from the "
      f"provider; times from the start of the request):")
    for who in (DETOUR, PLAIN):
        x = p[who]
        ok = "met" if x["before_provider_last"] else "MISSED"
        w(f"  {who:<7} provider wrote its first event at {x['provider_first_ms']:6.1f} ms, its "
          f"last at {x['provider_last_ms']:7.1f} ms; the client had the first text event at "
          f"{x['first_event_ms']:6.1f} ms, all at {x['client_end_ms']:7.1f} ms")
        w(f"          -> first event before the provider's last: {ok}")
        w(f"          proxy CPU {x['cpu_ms_per_stream']:.1f} ms/stream, "
          f"{x['cpu_us_per_event']:.0f} us/event")
    pr = ratio(p[DETOUR]["cpu_ms_per_stream"], p[PLAIN]["cpu_ms_per_stream"])
    if pr is not None:
        w(f"  paced CPU ratio detour/plain: {pr:.2f}x (<=1.6x: {'met' if pr <= 1.6 else 'MISSED'};"
          f" {args.paced_streams} streams per side, 10 ms CPU ticks)")
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
    ap.add_argument("--paced-streams", type=int, default=3, dest="paced_streams",
                    help="paced streams per side for the paced CPU figure (3)")
    ap.add_argument("--paced-delay", type=float, default=0.002, dest="paced_delay",
                    help="seconds between events of the paced check stream (0.002)")
    ap.add_argument("--repeat", type=int,
                    help="timings per translator figure, the best is kept (7, quick 3)")
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
