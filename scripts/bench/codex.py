"""Scenario `codex`: what detour costs Codex, in process and with the real Codex CLI.

    cd /work/main && .venv/bin/python -m scripts.bench.codex [--runs 10] [--number 200]
    .venv/bin/python -m scripts.bench.codex --translators-only     # no Codex, ~20 s
    .venv/bin/python -m scripts.bench.codex --upgrade-404          # + one turn answered 404

1. Translators, in process (no network), CPU time, best of 5 runs of `--number` calls:
   - requests: Codex's captured request (tests/data/captures, code mode 68 KB and
     `-m gpt-5.5` 39 KB) decoded (Responses -> canonical) and encoded for Anthropic and Chat;
     the other way, Claude Code's 48 KB request encoded as Responses; the same-format rewrite
     (model changed) a Responses provider gets;
   - streams, per event: a Responses stream of `--events` text deltas decoded; canonical
     events encoded as Responses (what Codex gets from any other provider); Anthropic and
     Chat streams translated to Responses, and Responses to Anthropic (decode + encode).
2. The real Codex (`clients/node_modules/.bin/codex`, API-key mode, `codex exec --json
   "Say hi"`), `--runs` turns per side, alternating, each with a fresh CODEX_HOME:
   - plain: `mitmdump` answering Codex itself with the canned Responses stream of the
     capture (and 426 to its WebSocket upgrade), as the recipe's stub did;
   - detour: `mitmdump -s addons/router.py` routing to a loopback Responses provider that
     sends the same canned bytes (same format: passed through);
   - detour -> Chat: the same, routed to a loopback Chat provider (translated both ways).
   Figures: Codex's time to first token (from its `turn.started` event to the agent message,
   the answer being one short message), the whole `codex exec` wall time, and the WebSocket
   fallback's cost on each Codex turn, on the proxy's clock: how long the upgrade took to be
   answered, and the upgrade's arrival to the POST's (Codex opens the socket while it starts
   its session, so this gap holds some of its own start-up too), median and p90 over the
   runs. `--upgrade-404`: one more turn against the stub answering 404, as a user would see
   without the 426.
Everything runs on 127.0.0.1; the processes the bench starts are stopped by their PID.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import timeit
from pathlib import Path

import yaml

from scripts.bench.lib import median, percentile
from tests.captures import CAPTURES
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.openai_responses_provider import FakeOpenAIResponses
from tests.fakes.replies import Raw
from tests.harness import ROOT, Mitmdump

CODEX = ROOT / "clients" / "node_modules" / ".bin" / "codex"
ADDONS = Path(__file__).resolve().parent / "codex_addons.py"
CANNED = CAPTURES / "codex.responses.text.response.txt"
CODEX_CONFIG = ('check_for_update_on_startup = false\n[analytics]\nenabled = false\n'
                '[otel]\nmetrics_exporter = "none"\n[features]\nplugins = false\n'
                'api_key_model_discovery = false\n')
KEY = "sk-bench-provider-key"


# ---------------------------------------------------------------- 1. translators


def _best_us(fn, number: int) -> float:
    """CPU µs per call (this process's CPU clock: time another process took while this one
    waited for a core is not counted, as the wall clock would on a busy machine)."""
    timer = timeit.Timer(fn, timer=time.process_time)
    return min(timer.repeat(number=number, repeat=5)) / number * 1e6


def translator_figures(number: int, events: int) -> list[tuple[str, float]]:
    from translators import anthropic, openai_chat
    from translators import canonical as c
    from translators import openai_responses as r

    rows = []
    for name in ("codex.responses.text", "codex-gpt-5.5.responses.text"):
        raw = (CAPTURES / f"{name}.request.json").read_bytes()
        body = json.loads(raw)
        req = r.decode_request(body)
        size = f"{len(raw) // 1024} KB"
        rows += [
            (f"request {name} ({size}): Responses -> canonical", _best_us(
                lambda: r.decode_request(body), number)),
            (f"request {name}: canonical -> Anthropic", _best_us(
                lambda: anthropic.encode_request(req), number)),
            (f"request {name}: canonical -> Chat", _best_us(
                lambda: openai_chat.encode_request(req, openai_chat.COMPATIBLE), number)),
            (f"request {name}: same format, model rewritten", _best_us(
                lambda: r.rewrite_request(body, model="gpt-up"), number)),
        ]
    claude = json.loads((CAPTURES / "claude-code.messages.text.request.json").read_bytes())
    creq = anthropic.decode_request(claude)
    rows += [("request claude-code (48 KB): Anthropic -> canonical -> Responses", _best_us(
        lambda: r.encode_request(anthropic.decode_request(claude)), number)),
        ("request claude-code: canonical -> Responses", _best_us(
            lambda: r.encode_request(creq), number))]

    # streams of `events` text deltas, each side made by its own encoder
    canon = ([c.MessageStart("msg_1", "m"), c.BlockStart(0, "text")]
             + [c.TextDelta(0, "word ") for _ in range(events)]
             + [c.BlockStop(0), c.MessageDelta("end_turn", c.Usage(10, events)), c.MessageStop()])

    def encoded(enc) -> bytes:
        return b"".join(enc.encode(e) for e in canon)

    streams = {"Responses": (r, encoded(r.StreamEncoder())),
               "Anthropic": (anthropic, encoded(anthropic.StreamEncoder())),
               "Chat": (openai_chat, encoded(openai_chat.StreamEncoder()))}
    n = len(canon)
    per = max(1, number // 20)

    def decode(mod, data):
        def run():
            dec = mod.StreamDecoder()
            dec.feed(data)
            dec.close()
        return run

    def translate(src, data, dst_encoder):
        def run():
            dec, enc = src.StreamDecoder(), dst_encoder()
            for ev in dec.feed(data) + dec.close():
                enc.encode(ev)
        return run

    rows += [
        (f"stream: Responses -> canonical, per event ({n} events)",
         _best_us(decode(r, streams["Responses"][1]), per) / n),
        ("stream: canonical -> Responses, per event",
         _best_us(lambda: encoded(r.StreamEncoder()), per) / n),
        ("stream: Anthropic -> Responses (decode + encode), per event",
         _best_us(translate(anthropic, streams["Anthropic"][1], r.StreamEncoder), per) / n),
        ("stream: Chat -> Responses (decode + encode), per event",
         _best_us(translate(openai_chat, streams["Chat"][1], r.StreamEncoder), per) / n),
        ("stream: Responses -> Anthropic (decode + encode), per event",
         _best_us(translate(r, streams["Responses"][1], anthropic.StreamEncoder), per) / n),
    ]
    return rows


# ---------------------------------------------------------------- 2. the real Codex


def codex_turn(proxy: Mitmdump, root: Path, n: int) -> dict:
    """One `codex exec --json "Say hi"`: its wall time and its time to the first agent
    message after `turn.started` (stdout read line by line as Codex writes it)."""
    home = root / f"client-{n}"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(CODEX_CONFIG)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home),
           "CODEX_HOME": str(home / ".codex"), "CODEX_API_KEY": "sk-proj-bench-invented",
           "HTTPS_PROXY": proxy.url, "SSL_CERT_FILE": str(proxy.ca_cert)}
    started = time.monotonic()
    proc = subprocess.Popen([str(CODEX), "exec", "--skip-git-repo-check", "--json", "Say hi"],
                            env=env, cwd=home, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    turn = first = None
    text = ""
    try:
        deadline = started + 60
        for line in proc.stdout:
            now = time.monotonic()
            event = json.loads(line)
            if event.get("type") == "turn.started":
                turn = now
            elif event.get("type") == "item.completed" and first is None and event[
                    "item"].get("type") == "agent_message":
                first, text = now, event["item"].get("text", "")
            if now > deadline:
                break
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
    if proc.returncode != 0 or turn is None or first is None:
        raise RuntimeError(f"codex exec failed (exit {proc.returncode}, text {text!r})")
    return {"ttft_ms": (first - turn) * 1000, "wall_ms": (time.monotonic() - started) * 1000,
            "text": text}


def socket_costs(timing: Path) -> tuple[list[float], list[float]]:
    """Per turn, from the proxy's clock: ms to answer the WebSocket upgrade, and ms from the
    (first) upgrade's arrival to the POST's (Codex's fallback, with whatever else it does
    meanwhile)."""
    lines = [json.loads(x) for x in timing.read_text().splitlines()] if timing.exists() else []
    answered, gaps, upgrade, arrived = [], [], None, {}
    for x in lines:
        if "/responses" not in x["path"]:
            continue
        if x["what"] == "request":
            arrived[x["id"]] = x["t"]
            if x["websocket"] and upgrade is None:
                upgrade = x["t"]
            elif x["method"] == "POST" and upgrade is not None:
                gaps.append((x["t"] - upgrade) * 1000)
                upgrade = None
        elif x["websocket"] and x["id"] in arrived:
            answered.append((x["t"] - arrived[x["id"]]) * 1000)
    return answered, gaps


def run_codex_bench(runs: int, tmp: Path) -> dict:
    canned = CANNED.read_bytes()
    resp_fake = FakeOpenAIResponses(keys={KEY}, default_reply=Raw(
        headers={"content-type": "text/event-stream; charset=utf-8"}, body=canned)).start()
    chat_fake = FakeOpenAI(keys={KEY}, default_text="Hi").start()
    sides: dict[str, Mitmdump] = {}
    try:
        for side in ("plain", "detour", "detour -> Chat"):
            d = tmp / side.replace(" ", "").replace(">", "")
            d.mkdir()
            env = {k: v for k, v in os.environ.items()
                   if k.lower() not in ("https_proxy", "http_proxy", "all_proxy", "no_proxy")}
            env["DETOUR_BENCH_TIMING"] = str(d / "timing.jsonl")
            extra = ["-s", str(ADDONS), "--set", "connection_strategy=lazy"]
            if side == "plain":
                env["DETOUR_BENCH_CANNED"] = str(CANNED)
                sides[side] = Mitmdump(d, router=False, extra=extra, env=env).start()
                continue
            provider = ({"kind": "openai-responses", "base_url": resp_fake.base_url + "/v1"}
                        if side == "detour" else
                        {"kind": "openai", "base_url": chat_fake.base_url + "/v1"})
            home = d / "home"
            home.mkdir()
            (home / "config.yaml").write_text(yaml.safe_dump({
                "providers": {"p": {**provider, "api_keys": [KEY]}},
                "routes": {"*": ["p/gpt-6.1-sol"]}}))
            sides[side] = Mitmdump(d, home, extra=extra, env=env).start()
        results: dict[str, list[dict]] = {s: [] for s in sides}
        order = list(sides)
        for n in range(runs + 1):  # the first turn of each side is a warm-up, not counted
            for side in (order if n % 2 == 0 else order[::-1]):
                turn = codex_turn(sides[side], tmp / "clients" / side.replace(" ", ""), n)
                if n:
                    results[side].append(turn)
        out = {}
        for side, turns in results.items():
            answered, gaps = socket_costs(
                tmp / side.replace(" ", "").replace(">", "") / "timing.jsonl")
            out[side] = {"ttft_ms": [t["ttft_ms"] for t in turns],
                         "wall_ms": [t["wall_ms"] for t in turns],
                         "upgrade_answered_ms": answered[1:], "upgrade_to_post_ms": gaps[1:],
                         "text": turns[0]["text"] if turns else ""}
        return out
    finally:
        for m in sides.values():
            m.stop()
        resp_fake.stop()
        chat_fake.stop()


def upgrade_404_turn(tmp_root: Path) -> dict:
    """One turn against the plain stub answering the upgrade 404 instead of 426."""
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in ("https_proxy", "http_proxy", "all_proxy", "no_proxy")}
    env.update(DETOUR_BENCH_CANNED=str(CANNED), DETOUR_BENCH_UPGRADE_STATUS="404")
    proxy = Mitmdump(tmp_root, router=False, env=env,
                     extra=["-s", str(ADDONS), "--set", "connection_strategy=lazy"]).start()
    try:
        return codex_turn(proxy, tmp_root / "clients", 0)
    finally:
        proxy.stop()
        shutil.rmtree(tmp_root, ignore_errors=True)


def _fmt(values) -> str:
    if not values:
        return "-"
    return f"{median(values):7.1f} (p90 {percentile(values, 0.9):7.1f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10, help="Codex turns per side")
    ap.add_argument("--number", type=int, default=200, help="calls per timing (translators)")
    ap.add_argument("--events", type=int, default=500, help="text deltas per stream")
    ap.add_argument("--translators-only", action="store_true")
    ap.add_argument("--upgrade-404", action="store_true",
                    help="one more turn with the upgrade answered 404 (Codex retries, ~7 s)")
    ap.add_argument("--json", type=Path, help="write every figure here")
    args = ap.parse_args(argv)
    print(f"# detour codex bench: {platform.python_implementation()} "
          f"{platform.python_version()}, {os.cpu_count()} CPUs")
    figures: dict = {"translators_us": {}}
    print("\n## translators (CPU µs, best of 5)")
    for name, us in translator_figures(args.number, args.events):
        figures["translators_us"][name] = us
        print(f"{us:10.1f}  {name}")
    if not args.translators_only:
        if not os.access(CODEX, os.X_OK):
            print(f"\n(no Codex at {CODEX}: bash scripts/install-clients.sh)")
        else:
            tmp = Path(tempfile.mkdtemp(prefix="detour-bench-codex-"))
            try:
                figures["codex"] = run_codex_bench(args.runs, tmp)
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
            print(f"\n## codex exec --json 'Say hi', {args.runs} turns per side "
                  "(ms, median and p90)")
            print(f"{'side':16} {'time to first token':>24} {'codex exec wall':>24} "
                  f"{'upgrade answered':>24} {'upgrade -> POST':>24}")
            for side, f in figures["codex"].items():
                print(f"{side:16} {_fmt(f['ttft_ms']):>24} {_fmt(f['wall_ms']):>24} "
                      f"{_fmt(f['upgrade_answered_ms']):>24} {_fmt(f['upgrade_to_post_ms']):>24}")
            if args.upgrade_404:
                f = upgrade_404_turn(tmp_root=Path(tempfile.mkdtemp(prefix="detour-bench-404-")))
                figures["plain, upgrade answered 404"] = f
                print(f"{'plain, 404':16} {_fmt([f['ttft_ms']]):>24} {_fmt([f['wall_ms']]):>24}"
                      "   (one turn: Codex's reconnect loop that 426 avoids)")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
