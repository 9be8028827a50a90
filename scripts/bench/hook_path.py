"""detour's hooks alone, in process: the CPU of what the proxy adds per whole call, without
mitmproxy's I/O and without noise from the machine's other work.

    .venv/bin/python -m scripts.bench.hook_path [--calls N] [--repeat R] [--profile]

Claude Code's captured request (48 KB, its captured headers) goes through the interceptor's
hooks as mitmproxy would run them for a whole call (`requestheaders`, `request`, `response`,
with mitmproxy's `update` after each), in mitmproxy's test context (taddons, tflow), the
provider answered by an `httpx.MockTransport` with the fake OpenAI-compatible provider's
answer. Two routes: translated (to an OpenAI-compatible provider) and observe mode (the model
routed to `passthrough`: the vendor's answer is set on the flow as mitmproxy would). Prints
the best of `--repeat` runs of `--calls` calls, in microseconds per call; `--profile` adds
cProfile's top functions by cumulative time. Usage rows go to a temporary store, flushed as
the proxy's writer thread would, inside the timing.
"""

import argparse
import asyncio
import cProfile
import gc
import json
import pstats
import sys
import tempfile
import time
from pathlib import Path

import httpx
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons, tflow

from addons.intercept import CredentialsPutBack, Interceptor
from addons.settings import DetourSettings
from scripts.bench.claude_code import OBSERVE_MODEL, capture_body, request_for

PROFILE_SORT = "cumulative"
PROVIDER_KEY = "sk-bench-provider-key-0123456789"


def chat_answer(text_chars: int = 500) -> bytes:
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 0, "model": "fake-model",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": "x" * text_chars}}],
        "usage": {"prompt_tokens": 12000, "completion_tokens": 500, "total_tokens": 12500},
    }).encode()


def anthropic_answer(text_chars: int = 500) -> bytes:
    return json.dumps({
        "id": "msg_bench", "type": "message", "role": "assistant", "model": OBSERVE_MODEL,
        "content": [{"type": "text", "text": "x" * text_chars}], "stop_reason": "end_turn",
        "stop_sequence": None, "usage": {"input_tokens": 12000, "output_tokens": 500},
    }).encode()


def make_flow(body: bytes) -> http.HTTPFlow:
    head = request_for("api.anthropic.com", body)
    flow = tflow.tflow()
    flow.request = http.Request.make(
        "POST", "https://api.anthropic.com/" + head.target.decode().lstrip("/"), body,
        [(bytes(k), bytes(v)) for k, v in head.headers])
    flow.response = None
    return flow


async def one_call(icp: Interceptor, putback: CredentialsPutBack, flow: http.HTTPFlow,
                   vendor_answer: http.Response | None) -> None:
    icp.requestheaders(flow)
    putback.update([flow])
    await icp.request(flow)
    putback.update([flow])
    if flow.response is None:  # observe mode: mitmproxy gets the vendor's answer
        flow.response = vendor_answer
        icp.responseheaders(flow)
        putback.update([flow])
    icp.response(flow)
    putback.update([flow])
    assert flow.response.status_code == 200, flow.response.content[:300]


def run(calls: int, repeat: int, profile: bool) -> dict[str, float]:
    whole = capture_body(False)
    observe = capture_body(False, OBSERVE_MODEL)
    model = json.loads(whole)["model"]
    answer = chat_answer()
    results = {}
    with tempfile.TemporaryDirectory(prefix="detour-hooks-") as tmp:
        (Path(tmp) / "config.yaml").write_text(f"""
providers:
  fake: {{kind: openai, base_url: "https://fake.test/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  {model}: [fake/fake-model]
  {OBSERVE_MODEL}: [passthrough]
prices:
  fake-model: {{input: 1, output: 2}}
  {OBSERVE_MODEL}: {{input: 1, output: 2}}
""")
        settings = DetourSettings()
        with taddons.context(Proxyserver(), settings) as tctx:
            tctx.configure(settings, detour_home=tmp)
            rt = settings.runtime
            rt.forwarder.transport = httpx.MockTransport(
                lambda request: httpx.Response(200, content=answer,
                                               headers={"content-type": "application/json"}))
            icp = Interceptor(settings)
            icp.running()  # as mitmproxy's `running` would: a call does not wait for it
            putback = CredentialsPutBack(icp)
            loop = asyncio.new_event_loop()
            for name, body, vendor in (("translated", whole, None),
                                       ("observe", observe, anthropic_answer())):
                # the flows (and the vendor's answers) are made before the timing: mitmproxy
                # makes them whether detour runs or not
                def prepared(n: int) -> list:
                    return [(make_flow(body), None if vendor is None else http.Response.make(
                        200, vendor, {"content-type": "application/json"})) for _ in range(n)]

                async def many(flows: list) -> None:
                    for flow, answer in flows:
                        await one_call(icp, putback, flow, answer)
                    rt.store.flush()

                loop.run_until_complete(many(prepared(20)))  # warm: caches
                best = float("inf")
                for _ in range(repeat):
                    flows = prepared(calls)
                    gc.collect()
                    t0 = time.process_time()
                    loop.run_until_complete(many(flows))
                    best = min(best, time.process_time() - t0)
                results[name] = best / calls * 1e6
                if profile:
                    flows = prepared(calls)
                    prof = cProfile.Profile()
                    prof.enable()
                    loop.run_until_complete(many(flows))
                    prof.disable()
                    print(f"--- {name}: top by cumulative time")
                    pstats.Stats(prof).sort_stats(PROFILE_SORT).print_stats(40)
            loop.close()
            rt.store.close()
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scripts.bench.hook_path",
                                 description=__doc__.strip().splitlines()[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--profile", action="store_true")
    args = ap.parse_args(argv)
    for name, us in run(args.calls, args.repeat, args.profile).items():
        print(f"  {name:12s} {us:8.1f} us per whole call (detour's hooks, best of {args.repeat})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
