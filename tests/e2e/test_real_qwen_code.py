"""The real Qwen Code CLI (OpenAI auth, its default DashScope endpoint), unmodified, through a
real mitmdump running detour, answered by a loopback Anthropic provider or a loopback Gemini
provider (their scripted agents).

    qwen -p ... --HTTPS_PROXY--> mitmdump -s addons/router.py --> FakeAnthropic | FakeGemini

Qwen Code speaks OpenAI Chat to `dashscope.aliyuncs.com/compatible-mode/v1`, one of the hosts
detour intercepts as `openai-chat` by default (config `chat_hosts`). Run as its recipe says: a
fresh HOME, an invented key, the proxy, mitmproxy's CA, telemetry and memory extraction off.

Skipped only when the qwen binary is missing (`bash scripts/install-clients.sh`).
"""

import json
import os

import pytest
import yaml

from tests.fakes import anthropic_vendor, gemini_provider
from tests.harness import ROOT, ClientRun, Mitmdump, new_rows, run_client, show_on_failure

pytestmark = pytest.mark.slow

QWEN = ROOT / "clients" / "node_modules" / ".bin" / "qwen"
CLIENT_KEY = "sk-qwen-client-key-not-real"
TIMEOUT = 55.0

if not os.access(QWEN, os.X_OK):
    pytest.skip(f"the real Qwen Code is not installed at {QWEN}; run "
                "`bash scripts/install-clients.sh` (CI does, in .ci/run)", allow_module_level=True)

PROVIDERS = {
    "anthropic": (lambda: anthropic_vendor.FakeAnthropic(
        default_reply=anthropic_vendor.agent_reply),
        lambda base: {"kind": "anthropic", "base_url": base,
                      "api_keys": ["sk-ant-fake-vendor-key"]}),
    "gemini": (lambda: gemini_provider.FakeGemini(default_reply=gemini_provider.agent_reply),
               lambda base: {"kind": "gemini", "base_url": base,
                             "api_keys": ["AIza-fake-provider-key"]}),
}


@pytest.fixture(scope="module", params=sorted(PROVIDERS))
def proxied(request, tmp_path_factory):
    """One mitmdump and one fake per provider, for the module's tests."""
    make_fake, provider_config = PROVIDERS[request.param]
    tmp_path = tmp_path_factory.mktemp(f"qwen-{request.param}")
    provider = make_fake().start()
    home = tmp_path / "detour-home"
    home.mkdir(mode=0o700)
    (home / "config.yaml").write_text(yaml.safe_dump({
        "providers": {"fake": provider_config(provider.base_url)},
        "routes": {"*": ["fake/fake-model"]}}))
    (tmp_path / "mitmproxy").mkdir()
    proxy = Mitmdump(tmp_path / "mitmproxy", home)
    try:
        proxy.start()
        yield provider, proxy, home
    finally:
        proxy.stop()
        provider.stop()


@pytest.fixture
def stack(proxied, tmp_path):
    """The module's fake and proxy, with a fresh HOME and working directory for Qwen Code."""
    provider, proxy, home = proxied
    client_home = tmp_path / "client-home"
    (client_home / ".qwen").mkdir(parents=True)
    (client_home / ".qwen" / "settings.json").write_text(json.dumps({
        "privacy": {"usageStatisticsEnabled": False}, "general": {"enableAutoUpdate": False},
        "telemetry": {"enabled": False}, "memory": {"enableManagedAutoMemory": False}}))
    (tmp_path / "work").mkdir()
    provider.clear()
    before = len(new_rows(home, 0, 0))
    with show_on_failure(proxy, provider):
        yield provider, proxy, client_home, tmp_path / "work", home, before


def run_qwen(stack, *args: str) -> ClientRun:
    _, proxy, client_home, workdir, _, _ = stack
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
           "HOME": str(client_home), "OPENAI_API_KEY": CLIENT_KEY,
           "HTTPS_PROXY": proxy.url, "NODE_EXTRA_CA_CERTS": str(proxy.ca_cert)}
    run = run_client([QWEN, "--auth-type", "openai", *args], env, workdir, TIMEOUT)
    if run.returncode is None:
        pytest.fail(f"qwen {' '.join(args)} did not finish within {TIMEOUT:.0f} s")
    return run


def model_calls(provider):
    calls = [r for r in provider.requests if r.method == "POST"]
    for r in calls:
        assert CLIENT_KEY not in json.dumps(r.headers) and CLIENT_KEY.encode() not in r.body
    return calls


def test_text_answer(stack):
    provider = stack[0]
    run = run_qwen(stack, "-p", "Say hi")
    assert run.returncode == 0, run.stderr
    assert provider.default_text in run.stdout
    calls = model_calls(provider)
    assert len(calls) == 1 and "Say hi" in json.dumps(calls[0].json)
    assert_rows(stack, 1)


def assert_rows(stack, n: int) -> None:
    """One usage row per model call: Qwen Code's Chat calls, answered by the fake."""
    _, _, _, _, home, before = stack
    rows = new_rows(home, before, n)
    assert len(rows) == n, [(r["model_requested"], r["status"], r["error"]) for r in rows]
    for row in rows:
        assert (row["client_format"], row["provider"], row["status"]) == (
            "openai-chat", "fake", 200)
        assert row["model_upstream"] == "fake-model" and row["output_tokens"] > 0


def test_shell_tool_round_trip(stack):
    provider = stack[0]
    run = run_qwen(stack, "--yolo", "-p", "RUN: echo detour-qwen-ok")
    assert run.returncode == 0, run.stderr
    assert "FAKE-TOOL-RESULT" in run.stdout and "detour-qwen-ok" in run.stdout
    calls = model_calls(provider)
    assert len(calls) == 2, [r.path for r in calls]
    last = json.dumps(calls[-1].json)
    assert "run_shell_command" in last and "detour-qwen-ok" in last
    assert_rows(stack, 2)
