"""The real Gemini CLI (API-key mode), unmodified, through a real mitmdump running detour,
answered by a loopback Chat provider or a loopback Anthropic provider (their scripted agents).

    gemini -p ... --HTTPS_PROXY--> mitmdump -s addons/router.py --> FakeOpenAI | FakeAnthropic

Gemini CLI first asks a small model to rate the task (its router classifier: JSON with a
`complexity_score`, which a provider following the schema answers), then streams the agent
call. Run as its recipe says: a fresh HOME, an invented API key, the proxy, mitmproxy's CA,
usage statistics off. Nothing leaves 127.0.0.1 (its telemetry host is not intercepted and
cannot be reached). On failure pytest shows the CLI's output, the provider's requests and
mitmdump's log.

Skipped only when the gemini binary is missing (`bash scripts/install-clients.sh`).
"""

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest
import yaml

from tests.fakes import anthropic_vendor, openai_provider
from tests.fakes.replies import Text, ToolCall
from tests.harness import ROOT, ClientRun, Mitmdump, new_rows, run_client, show_on_failure

pytestmark = pytest.mark.slow

GEMINI = ROOT / "clients" / "node_modules" / ".bin" / "gemini"
CLIENT_KEY = "AIza-client-key-not-real"  # what Gemini CLI sends; never reaches a provider
GOOGLE_TOKEN = "ya29.fake-google-access-token-not-real"  # its Google login's token: the same
TIMEOUT = 55.0
CLASSIFIER = {"complexity_reasoning": "a fake provider's rating", "complexity_score": 1}

if not os.access(GEMINI, os.X_OK):
    pytest.skip(f"the real Gemini CLI is not installed at {GEMINI}; run "
                "`bash scripts/install-clients.sh` (CI does, in .ci/run)", allow_module_level=True)


def chat_agent(received):
    """FakeOpenAI's agent; the router classifier (a json_schema response_format) gets the
    JSON its schema asks for, as a provider with structured output answers it."""
    body = received.json or {}
    if (body.get("response_format") or {}).get("type") == "json_schema":
        return Text(json.dumps(CLASSIFIER))
    return openai_provider.agent_reply(received)


def anthropic_agent(received):
    """FakeAnthropic's agent; the classifier's schema comes as a forced tool (Anthropic has no
    response_format): it is called with the JSON."""
    body = received.json or {}
    forced = (body.get("tool_choice") or {}).get("name")
    if forced:
        return ToolCall(forced, CLASSIFIER)
    return anthropic_vendor.agent_reply(received)


PROVIDERS = {
    "chat": (lambda: openai_provider.FakeOpenAI(default_reply=chat_agent),
             lambda base: {"kind": "openai", "base_url": base + "/v1",
                           "api_keys": ["sk-fake-provider-key"]}),
    "anthropic": (lambda: anthropic_vendor.FakeAnthropic(default_reply=anthropic_agent),
                  lambda base: {"kind": "anthropic", "base_url": base,
                                "api_keys": ["sk-ant-fake-vendor-key"]}),
}


@dataclasses.dataclass
class Stack:
    provider: object
    proxy: Mitmdump
    home: Path
    client_home: Path = Path()  # per test
    workdir: Path = Path()
    rows_before: int = 0

    def model_calls(self):
        return [r for r in self.provider.requests if r.method == "POST"]

    def usage_rows(self, expect: int) -> list[dict]:
        """This test's usage rows, once `expect` of them are written (batched: waited for)."""
        return new_rows(self.home, self.rows_before, expect)


@pytest.fixture(scope="module", params=sorted(PROVIDERS))
def proxied(request, tmp_path_factory):
    """One mitmdump and one fake per provider, for the module's tests."""
    make_fake, provider_config = PROVIDERS[request.param]
    tmp_path = tmp_path_factory.mktemp(f"gemini-cli-{request.param}")
    provider = make_fake().start()
    home = tmp_path / "detour-home"
    home.mkdir(mode=0o700)
    config = {"providers": {"fake": provider_config(provider.base_url)},
              "routes": {"*": ["fake/fake-model"]}}
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    proxy = Mitmdump(tmp_path / "mitmproxy", home)
    (tmp_path / "mitmproxy").mkdir()
    try:
        proxy.start()
        yield Stack(provider, proxy, home)
    finally:
        proxy.stop()
        provider.stop()


@pytest.fixture
def stack(proxied, tmp_path):
    """The module's proxy and fake, with a fresh HOME and working directory for the CLI."""
    client_home = tmp_path / "client-home"
    (client_home / ".gemini").mkdir(parents=True)
    (client_home / ".gemini" / "settings.json").write_text(json.dumps({
        "privacy": {"usageStatisticsEnabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False},
        "telemetry": {"enabled": False}}))
    (tmp_path / "work").mkdir()
    proxied.provider.clear()
    with show_on_failure(proxied.proxy, proxied.provider):
        yield dataclasses.replace(proxied, client_home=client_home, workdir=tmp_path / "work",
                                  rows_before=len(new_rows(proxied.home, 0, 0)))


def google_login(stack: Stack) -> dict:
    """Gemini CLI logged in with Google, as far as it can tell: a cached login whose access
    token is fresh (so it never refreshes it), and the Code Assist auth type."""
    (stack.client_home / ".gemini" / "oauth_creds.json").write_text(json.dumps({
        "access_token": GOOGLE_TOKEN, "refresh_token": "1//fake-refresh-token-not-real",
        "scope": "https://www.googleapis.com/auth/cloud-platform", "token_type": "Bearer",
        "expiry_date": int(time.time() * 1000) + 3_600_000}))
    return {"GOOGLE_GENAI_USE_GCA": "true"}


def run_gemini(stack: Stack, *args: str, login: dict | None = None) -> ClientRun:
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
           "HOME": str(stack.client_home), "GEMINI_CLI_TRUST_WORKSPACE": "true",
           "HTTPS_PROXY": stack.proxy.url, "NODE_EXTRA_CA_CERTS": str(stack.proxy.ca_cert),
           **(login or {"GEMINI_API_KEY": CLIENT_KEY})}
    run = run_client([GEMINI, *args], env, stack.workdir, TIMEOUT)
    if run.returncode is None:
        pytest.fail(f"gemini {' '.join(args)} did not finish within {TIMEOUT:.0f} s")
    return run


def assert_rows(stack: Stack, n: int, client_format: str = "gemini") -> list[dict]:
    rows = stack.usage_rows(n)
    assert len(rows) == n, [(r["model_requested"], r["status"], r["error"]) for r in rows]
    for row in rows:
        assert (row["client_format"], row["provider"], row["status"]) == (
            client_format, "fake", 200)
        assert row["model_upstream"] == "fake-model" and row["error"] is None
        assert row["input_tokens"] > 0 and row["output_tokens"] > 0
    return rows


def assert_key_stayed_home(stack: Stack) -> None:
    for r in stack.provider.requests:
        for secret in (CLIENT_KEY, GOOGLE_TOKEN):
            assert secret not in json.dumps(r.headers) and secret.encode() not in r.body


def test_text_answer(stack):
    run = run_gemini(stack, "-p", "Say hi")
    assert run.returncode == 0, run.stderr
    assert stack.provider.default_text in run.stdout
    calls = stack.model_calls()
    assert len(calls) == 2, [r.path for r in calls]  # the classifier, then the agent call
    assert any("Say hi" in json.dumps(r.json) for r in calls)
    assert_key_stayed_home(stack)
    rows = assert_rows(stack, 2)
    assert [r["stream"] for r in rows] == [0, 1]


def test_shell_tool_round_trip(stack):
    run = run_gemini(stack, "--yolo", "-p", "RUN: echo detour-gemini-ok")
    assert run.returncode == 0, run.stderr
    # the fake's agent answers the tool's output back: it reached the CLI, which printed it
    assert "FAKE-TOOL-RESULT" in run.stdout and "detour-gemini-ok" in run.stdout
    calls = stack.model_calls()
    assert len(calls) == 3, [r.path for r in calls]
    last = json.dumps(calls[-1].json)
    assert "detour-gemini-ok" in last and "run_shell_command" in last
    assert_key_stayed_home(stack)
    assert_rows(stack, 3)


@pytest.mark.parametrize("proxied", ["anthropic", "chat"], indirect=True)
def test_google_login_rerouted(stack):
    """Code Assist mode: its setup calls (token check, loadCodeAssist, quota, ...) answered by
    detour, its model calls (in their envelope) by the Chat or the Anthropic provider."""
    login = google_login(stack)
    run = run_gemini(stack, "-p", "Say hi", login=login)
    assert run.returncode == 0, run.stderr
    assert stack.provider.default_text in run.stdout
    tool = run_gemini(stack, "--yolo", "-p", "RUN: echo detour-gca-ok", login=login)
    assert tool.returncode == 0, tool.stderr
    assert "FAKE-TOOL-RESULT" in tool.stdout and "detour-gca-ok" in tool.stdout
    calls = stack.model_calls()
    assert len(calls) == 5, [r.path for r in calls]  # classifier + answer, classifier + 2
    assert_key_stayed_home(stack)
    # only model calls reached the provider: the setup calls were answered by detour
    assert all(r.route.endswith(("/chat/completions", "/v1/messages"))
               for r in stack.provider.requests)
    assert_rows(stack, 5, "gemini-cli")
