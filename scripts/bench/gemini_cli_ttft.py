"""Gemini CLI's time to first token through detour vs plain mitmdump.

    .venv/bin/python -m scripts.bench.gemini_cli_ttft [--rounds N]

The real Gemini CLI (clients/node_modules/.bin/gemini, API-key mode, `-m` given so no router
classifier call) runs `-p "Say hi" -o stream-json`; its time to first token is the time between
the `user` message and the first `assistant` delta it prints (its own timestamps: CLI start-up
is left out). Setups, alternated round by round, all against loopback fakes over TLS:

| setup | proxy | upstream |
|---|---|---|
| plain | `mitmdump` (no script), `GOOGLE_GEMINI_BASE_URL` at the fake | FakeGemini |
| detour-gemini | `mitmdump -s addons/router.py`, route `*` -> a `gemini` provider | FakeGemini (same format: bytes pass) |
| detour-chat | the same, route `*` -> an `openai` provider | FakeOpenAI (translated both ways) |

Everything runs on 127.0.0.1; the processes it starts are stopped by their PID. A measurement,
never asserted.
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
from datetime import datetime
from pathlib import Path

import yaml

from tests.fakes.gemini_provider import FakeGemini
from tests.fakes.openai_provider import FakeOpenAI
from tests.harness import ROOT, Mitmdump, run_client

GEMINI = ROOT / "clients" / "node_modules" / ".bin" / "gemini"
CLIENT_KEY = "AIza-bench-client-key"
MODEL = "gemini-fake-pro"


def ttft_ms(stdout: str) -> float | None:
    """From stream-json: first assistant delta's timestamp minus the user message's."""
    user = first = None
    for line in stdout.splitlines():
        try:
            ev = json.loads(line)
        except ValueError:
            continue
        if ev.get("type") != "message":
            continue
        ts = datetime.fromisoformat(ev["timestamp"].replace("Z", "+00:00"))
        if ev.get("role") == "user" and user is None:
            user = ts
        elif ev.get("role") == "assistant" and first is None:
            first = ts
    if user is None or first is None:
        return None
    return (first - user).total_seconds() * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args(argv)
    if not os.access(GEMINI, os.X_OK):
        print(f"no Gemini CLI at {GEMINI}: bash scripts/install-clients.sh")
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="detour-ttft-"))
    gem = FakeGemini(tls=True, keys={CLIENT_KEY, "AIza-fake-provider-key"}).start()
    chat = FakeOpenAI(tls=True).start()
    confdir = tmp / "mitmproxy"
    confdir.mkdir()
    home = tmp / "home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({
        "providers": {
            "gem": {"kind": "gemini", "base_url": gem.base_url, "verify": False,
                    "api_keys": ["AIza-fake-provider-key"]},
            "chat": {"kind": "openai", "base_url": chat.base_url + "/v1", "verify": False,
                     "api_keys": ["sk-fake-provider-key"]}},
        "routes": {MODEL: ["gem/" + MODEL], "to-chat": ["chat/fake-model"],
                   "*": ["passthrough"]}}))
    proxies = {"plain": Mitmdump(confdir, router=False, extra=[
                   "--set", "ssl_insecure=true", "--set", "connection_strategy=lazy"]),
               "detour": Mitmdump(confdir, home)}
    settings = {"privacy": {"usageStatisticsEnabled": False},
                "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
                "telemetry": {"enabled": False},
                # the API-key auth type said outright: with GOOGLE_GEMINI_BASE_URL alone it
                # would pick its "gateway" type
                "security": {"auth": {"selectedType": "gemini-api-key"}}}
    client_home = tmp / "client"
    (client_home / ".gemini").mkdir(parents=True)
    (client_home / ".gemini" / "settings.json").write_text(json.dumps(settings))
    setups = {"plain": ("plain", MODEL, {"GOOGLE_GEMINI_BASE_URL": gem.base_url}),
              "detour-gemini": ("detour", MODEL, {}),
              "detour-chat": ("detour", "to-chat", {})}
    figures: dict[str, list[float]] = {name: [] for name in setups}
    try:
        for p in proxies.values():
            p.start()
        for _ in range(args.rounds):
            for name, (proxy_name, model, extra) in setups.items():
                proxy = proxies[proxy_name]
                env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(client_home),
                       "GEMINI_API_KEY": CLIENT_KEY, "GEMINI_CLI_TRUST_WORKSPACE": "true",
                       "HTTPS_PROXY": proxy.url, "NODE_EXTRA_CA_CERTS": str(proxy.ca_cert),
                       **extra}
                run = run_client([GEMINI, "-p", "Say hi", "-m", model, "-o", "stream-json"],
                                 env, tmp, 60, show=os.environ.get("SHOW") == "1")
                ms = ttft_ms(run.stdout)
                if ms is not None:
                    figures[name].append(ms)
    finally:
        for p in proxies.values():
            p.stop()
        gem.stop()
        chat.stop()
    print(f"\nGemini CLI time to first token (ms), {args.rounds} rounds, alternated")
    print(f"{'setup':15} {'median':>8} {'min':>8} {'max':>8}  runs")
    for name, values in figures.items():
        if values:
            print(f"{name:15} {statistics.median(values):8.1f} {min(values):8.1f} "
                  f"{max(values):8.1f}  {len(values)}")
        else:
            print(f"{name:15} no answer")
    return 0


if __name__ == "__main__":
    sys.exit(main())
