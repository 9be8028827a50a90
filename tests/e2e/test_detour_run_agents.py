"""Real agents, unmodified, each set up the way its own documentation says, run with `detour
run` against a loopback provider, finishing a prompt with a shell tool round trip:

- the Cline CLI (`cline` on npm): `cline auth --provider anthropic --apikey ... --modelid ...`,
  then `cline --yolo PROMPT` (a one-shot run that ends through its `submit_and_exit` tool);
- opencode (`opencode-ai` on npm): `ANTHROPIC_API_KEY`, `opencode run -m anthropic/MODEL`;
- Codex CLI with an API key (`CODEX_API_KEY`, `codex exec`): OpenAI Responses over HTTPS once
  its WebSocket attempts fail (detour does not take those yet);
- Qwen Code with an OpenAI key and `OPENAI_BASE_URL=https://api.openai.com/v1` (Chat);
- Gemini CLI with an API key (`GEMINI_API_KEY`): the Gemini API, translated to Chat.
(Claude Code's is in test_detour_run.py.)

The proxy is a plain `mitmdump -s addons/router.py` started here (so `detour run` also shows it
finds a proxy it did not start), in upstream mode towards a dead loopback port: whatever the
agents send to hosts detour does not handle (telemetry, update checks, package registries)
fails on the spot instead of reaching the internet; the provider is `proxy: direct`.
Each is skipped when missing (`bash scripts/install-clients.sh`; DETOUR_CLIENTS_BIN names
more folders of executables, searched first).
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from addons.instance import running_instance
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Text, ToolCall
from tests.harness import PROXY_VARS, ROOT, Mitmdump

pytestmark = pytest.mark.slow

# where the agents' executables are looked for, in order
BINS = [Path(p) for p in os.environ.get("DETOUR_CLIENTS_BIN", "").split(os.pathsep) if p] + [
    ROOT / "clients" / "node_modules" / ".bin"]


def installed(name: str) -> bool:
    return any(os.access(b / name, os.X_OK) for b in BINS)


def missing(name: str) -> str:
    return f"no {name} in {os.pathsep.join(map(str, BINS))} (bash scripts/install-clients.sh)"
DETOUR = Path(sys.executable).parent / "detour"
PROVIDER_KEY = "sk-fake-provider-key"
CLIENT_KEY = "test-client-key-not-real"
TIMEOUT = 55.0
DEAD_UPSTREAM = "upstream:http://127.0.0.1:9"  # the discard port: nothing listens there


def text_of(content) -> str:
    if isinstance(content, str):
        return content
    return "".join(p.get("text", "") for p in content or [] if isinstance(p, dict))


def agent(received):
    """A scripted model for every agent: a prompt `RUN: CMD` gets a call of the agent's shell
    tool (Cline's run_commands, opencode's bash, Codex's exec_command, Qwen Code's
    run_shell_command); its result gets the answer
    `FAKE-TOOL-RESULT: ...`, through submit_and_exit where the agent offers it (a Cline
    --yolo run ends only through that tool)."""
    body = received.json or {}
    if (body.get("response_format") or {}).get("type") == "json_schema":
        # Gemini CLI's model router asks for a rating in JSON (structured output)
        return Text(json.dumps({"complexity_reasoning": "a fake provider's rating",
                                "complexity_score": 1}))
    messages = body.get("messages") or []
    tools = {(t.get("function") or {}).get("name") for t in body.get("tools") or []}
    if not messages or not tools:
        return None  # a title or summary request: the default text
    last = messages[-1]
    if last.get("role") == "tool":
        answer = "FAKE-TOOL-RESULT: " + text_of(last.get("content")).strip()
        if "submit_and_exit" in tools:
            return ToolCall("submit_and_exit", {"summary": answer, "verified": True})
        return Text(answer)
    prompt = text_of(last.get("content")) if last.get("role") == "user" else ""
    if "RUN: " not in prompt:
        return None
    command = prompt.split("RUN: ", 1)[1].splitlines()[0].strip().strip('"')
    if "run_commands" in tools:
        return ToolCall("run_commands", {"commands": [command]})
    if "exec_command" in tools:
        return ToolCall("exec_command", {"cmd": command})
    if "run_shell_command" in tools:
        return ToolCall("run_shell_command", {"command": command, "is_background": False,
                                              "description": "run the requested command"})
    if "bash" in tools:
        return ToolCall("bash", {"command": command, "description": "run the requested command"})
    return None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("agents")
    provider = FakeOpenAI(keys={PROVIDER_KEY}, default_reply=agent).start()
    home = tmp / "detour-home"
    home.mkdir()
    (home / "config.yaml").write_text(yaml.safe_dump({
        "providers": {"fake": {"kind": "openai", "base_url": provider.base_url + "/v1",
                               "api_keys": [PROVIDER_KEY], "proxy": "direct"}},
        "routes": {"*": ["fake/fake-model"]},
    }))
    proxy = Mitmdump(tmp / "mitmproxy", home, extra=["--mode", DEAD_UPSTREAM])
    try:
        proxy.start()
        yield {"provider": provider, "home": home, "confdir": tmp / "mitmproxy", "tmp": tmp,
               "proxy": proxy}
    finally:
        proxy.stop()
        provider.stop()
        print("===== mitmdump =====\n" + proxy.text[-15000:])


def detour_run(stack, name: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    work = stack["tmp"] / f"{name}-work"
    work.mkdir(exist_ok=True)
    proc = subprocess.Popen([str(DETOUR), "--home", str(stack["home"]), "--confdir",
                             str(stack["confdir"]), "run", *args], env=env, cwd=work,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"detour run {' '.join(args)} did not finish in {TIMEOUT:.0f} s\n"
                    f"{out[-3000:]}\n{err[-3000:]}")
    print(f"===== detour run {' '.join(args)}: exit {proc.returncode}\n{out[-5000:]}\n"
          f"{err[-5000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def base_env(stack, name: str, **extra) -> dict:
    client_home = stack["tmp"] / f"{name}-home"
    client_home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k.lower() not in PROXY_VARS and k not in ("NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE")}
    return {**env, "HOME": str(client_home), "PATH": os.pathsep.join([*map(str, BINS), os.environ["PATH"]]),
            "DO_NOT_TRACK": "1", **extra}


def chat_calls_since(stack, before: int) -> list:
    return [r for r in stack["provider"].requests[before:]
            if r.route.endswith("/chat/completions")]


def tool_results(calls) -> list[str]:
    return [text_of(m.get("content")) for r in calls for m in (r.json or {}).get("messages", [])
            if m.get("role") == "tool"]


def assert_round_trip(stack, before: int, marker: str) -> None:
    calls = chat_calls_since(stack, before)
    shells = ("run_commands", "bash", "exec_command", "run_shell_command")
    asked = [r for r in calls if any(t["function"]["name"] in shells
                                     for t in (r.json or {}).get("tools", []))]
    assert len(asked) >= 2, [len(r.body) for r in calls]
    assert any(marker in result for result in tool_results(asked)), tool_results(asked)
    for r in calls:  # the provider got its own key, never the agent's
        assert r.headers.get("authorization") == f"Bearer {PROVIDER_KEY}"
        assert CLIENT_KEY.encode() not in r.body


@pytest.mark.skipif(not installed("cline"), reason=missing("cline"))
def test_cline_cli(stack):
    env = base_env(stack, "cline", CLINE_NO_AUTO_UPDATE="1")
    configured = detour_run(stack, "cline", "cline", "auth", "--provider", "anthropic",
                            "--apikey", CLIENT_KEY, "--modelid", "claude-sonnet-4-6", env=env)
    assert configured.returncode == 0, configured.stderr
    assert "using the proxy on" in configured.stderr  # the mitmdump started above
    before = len(stack["provider"].requests)
    run = detour_run(stack, "cline", "cline", "--yolo", "RUN: echo detour-cline-ok", env=env)
    assert run.returncode == 0, run.stderr
    assert_round_trip(stack, before, "detour-cline-ok")


@pytest.mark.skipif(not installed("opencode"), reason=missing("opencode"))
def test_opencode(stack):
    dead = "http://127.0.0.1:9/"  # its package installs must not reach a registry
    env = base_env(stack, "opencode", ANTHROPIC_API_KEY=CLIENT_KEY,
                   OPENCODE_DISABLE_AUTOUPDATE="true", OPENCODE_DISABLE_MODELS_FETCH="true",
                   OPENCODE_DISABLE_DEFAULT_PLUGINS="true", OPENCODE_DISABLE_LSP_DOWNLOAD="true",
                   OPENCODE_DISABLE_SHARE="true", npm_config_registry=dead,
                   BUN_CONFIG_REGISTRY=dead)
    before = len(stack["provider"].requests)
    run = detour_run(stack, "opencode", "opencode", "run", "-m", "anthropic/claude-sonnet-4-5",
                     "RUN: echo detour-opencode-ok", env=env)
    assert run.returncode == 0, run.stderr
    assert_round_trip(stack, before, "detour-opencode-ok")
    assert "FAKE-TOOL-RESULT" in run.stdout


@pytest.mark.skipif(not installed("codex"), reason=missing("codex"))
def test_codex_cli_with_an_api_key(stack):
    env = base_env(stack, "codex", CODEX_API_KEY=CLIENT_KEY)
    before = len(stack["provider"].requests)
    quiet = ["-c", "check_for_update_on_startup=false", "-c", "analytics.enabled=false",
             "-c", "features.plugins=false", "-c", "features.api_key_model_discovery=false",
             "-c", 'otel.metrics_exporter="none"']
    run = detour_run(stack, "codex", "codex", "exec", "--skip-git-repo-check", *quiet,
                     "-m", "gpt-5.5", "RUN: echo detour-codex-ok", env=env)
    assert run.returncode == 0, run.stderr
    assert_round_trip(stack, before, "detour-codex-ok")
    assert "FAKE-TOOL-RESULT" in run.stdout


@pytest.mark.skipif(not installed("qwen"), reason=missing("qwen"))
def test_qwen_code_with_an_openai_key(stack):
    env = base_env(stack, "qwen", OPENAI_API_KEY=CLIENT_KEY,
                   OPENAI_BASE_URL="https://api.openai.com/v1")
    settings = Path(env["HOME"]) / ".qwen" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({
        "privacy": {"usageStatisticsEnabled": False}, "general": {"enableAutoUpdate": False},
        "telemetry": {"enabled": False}, "memory": {"enableManagedAutoMemory": False}}))
    before = len(stack["provider"].requests)
    run = detour_run(stack, "qwen", "qwen", "--auth-type", "openai", "--yolo", "-p",
                     "RUN: echo detour-qwen-ok", env=env)
    assert run.returncode == 0, run.stderr
    assert_round_trip(stack, before, "detour-qwen-ok")
    assert "FAKE-TOOL-RESULT" in run.stdout


@pytest.mark.skipif(not installed("gemini"), reason=missing("gemini"))
def test_gemini_cli_with_an_api_key(stack):
    env = base_env(stack, "gemini", GEMINI_API_KEY="AIza-client-key-not-real",
                   GEMINI_CLI_TRUST_WORKSPACE="true")
    settings = Path(env["HOME"]) / ".gemini" / "settings.json"
    settings.parent.mkdir(parents=True, exist_ok=True)
    settings.write_text(json.dumps({
        "privacy": {"usageStatisticsEnabled": False}, "telemetry": {"enabled": False},
        "general": {"enableAutoUpdate": False, "enableAutoUpdateNotification": False}}))
    before = len(stack["provider"].requests)
    run = detour_run(stack, "gemini", "gemini", "--yolo", "-p", "RUN: echo detour-gemini-ok",
                     env=env)
    assert run.returncode == 0, run.stderr
    assert_round_trip(stack, before, "detour-gemini-ok")
    assert "FAKE-TOOL-RESULT" in run.stdout
    for r in chat_calls_since(stack, before):
        assert b"AIza-client-key-not-real" not in r.body


def test_the_proxy_was_found_through_its_state_file(stack):
    # proxy.json is written once mitmproxy listens, just after it says so: when every agent
    # above was skipped, this test comes that soon
    deadline = time.monotonic() + 30
    while running_instance(stack["home"]) is None and time.monotonic() < deadline:
        time.sleep(0.1)
    instance = running_instance(stack["home"])
    assert instance is not None and instance.port == stack["proxy"].port
    assert json.loads((stack["home"] / "proxy.json").read_text())["pid"] == \
        stack["proxy"].proc.pid
