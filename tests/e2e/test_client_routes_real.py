"""Per-client routes with the real Claude Code and an SDK-style client through one mitmdump:
Claude Code (User-Agent `claude-cli/...`) has routes of its own (its small model to a cheap
provider, everything else to its own), the real OpenAI Python SDK (User-Agent `OpenAI/Python`)
asking for the very same model gets the global route."""

import sqlite3
import ssl

import httpx
import openai
import pytest
import yaml

from tests.e2e.test_real_claude_code import CLIENT_KEY, Stack, run_claude
from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.openai_provider import FakeOpenAI
from tests.harness import Mitmdump

pytestmark = pytest.mark.slow

KEY = "sk-fake-provider-key"  # every fake's default key
SONNET = "claude-sonnet-4-5-20250929"
HAIKU = "claude-haiku-4-5-20251001"


def chats(fake: FakeOpenAI) -> list[dict]:
    return [r.json for r in fake.requests if r.route.endswith("/chat/completions")]


def test_claude_code_and_an_sdk_get_their_own_routes(tmp_path):
    own = FakeOpenAI(default_text="Hello from Claude Code's own provider").start()
    cheap = FakeOpenAI(default_text="Hello from the cheap provider").start()
    shared = FakeOpenAI(default_text="Hello from the global route").start()
    vendor = FakeAnthropic().start()
    home = tmp_path / "detour-home"
    home.mkdir(mode=0o700)
    provider = lambda fake: {"kind": "openai", "base_url": fake.base_url + "/v1",  # noqa: E731
                             "api_keys": [KEY]}
    (home / "config.yaml").write_text(yaml.safe_dump({
        "providers": {"own": provider(own), "cheap": provider(cheap), "shared": provider(shared)},
        "routes": {"*": ["shared/shared-model"]},
        "clients": {"claude-code": {"match": "claude-cli/*", "routes": {
            "claude-haiku-*": ["cheap/cheap-model"], "*": ["own/own-model"]}}},
        "vendors": {"api.anthropic.com": vendor.base_url},
    }))
    (tmp_path / "mitmproxy").mkdir()
    (tmp_path / "client-home").mkdir()
    (tmp_path / "work").mkdir()
    proxy = Mitmdump(tmp_path / "mitmproxy", home)
    stack = Stack(own, vendor, proxy, home, tmp_path / "client-home", tmp_path / "work")
    try:
        proxy.start()
        main = run_claude(stack, "-p", "Say hi", "--model", SONNET)
        assert main.returncode == 0, main.stderr
        assert "Hello from Claude Code's own provider" in main.stdout
        small = run_claude(stack, "-p", "Say hi", "--model", HAIKU)
        assert small.returncode == 0, small.stderr
        assert "Hello from the cheap provider" in small.stdout

        trust = ssl.create_default_context(cafile=str(proxy.ca_cert))
        with (httpx.Client(proxy=proxy.url, verify=trust, trust_env=False, timeout=30) as http,
              openai.OpenAI(api_key=CLIENT_KEY, http_client=http, max_retries=0) as sdk):
            answer = sdk.chat.completions.create(
                model=SONNET, messages=[{"role": "user", "content": "hi"}])
        assert answer.choices[0].message.content == "Hello from the global route"

        assert [c["model"] for c in chats(own)] == ["own-model"]
        assert [c["model"] for c in chats(cheap)] == ["cheap-model"]
        assert [c["model"] for c in chats(shared)] == ["shared-model"]
        proxy.stop()  # a clean stop flushes the usage rows
        db = sqlite3.connect(home / "detour.db")
        try:
            rows = db.execute("SELECT client, model_requested, provider, status FROM usage "
                              "ORDER BY id").fetchall()
        finally:
            db.close()
        assert [(client.split("/")[0], model, provider, status)
                for client, model, provider, status in rows] == [
            ("claude-cli", SONNET, "own", 200), ("claude-cli", HAIKU, "cheap", 200),
            ("OpenAI", SONNET, "shared", 200)], rows
    finally:
        proxy.stop()
        for fake in (own, cheap, shared, vendor):
            fake.stop()
        print("===== mitmdump output =====")
        print(proxy.text)
