"""The real Claude Code CLI, unmodified, through a real mitmdump running detour, answered by a
loopback OpenAI-compatible provider (FakeOpenAI with its scripted agent).

    claude -p ... --HTTPS_PROXY--> mitmdump -s addons/router.py --> FakeOpenAI (Chat Completions)
                                               \\--> FakeAnthropic (non-model calls, `vendors:`)

Claude Code runs as the recording of the captures did: an `env -i` style environment
(a fresh HOME, an invented API key, the proxy, mitmproxy's CA, the non-essential traffic
switches). Nothing leaves 127.0.0.1. On failure pytest shows what each test printed: Claude's
stdout and stderr, the requests each fake received and mitmdump's whole output.

Skipped only when the claude binary is missing (`bash scripts/install-clients.sh` installs it;
CI runs it in .ci/run).
"""

import dataclasses
import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.openai_provider import FakeOpenAI, agent_reply
from tests.fakes.replies import ToolCall, ToolCalls
from tests.harness import ROOT, Mitmdump

pytestmark = pytest.mark.slow

CLAUDE = ROOT / "clients" / "node_modules" / ".bin" / "claude"
CLIENT_KEY = "test-client-key-not-real"  # what Claude Code sends; must never reach the provider
PROVIDER_KEY = "sk-fake-provider-key"  # what detour must send instead (FakeOpenAI's default)
PROVIDER_MODEL = "fake-model"
CLAUDE_TIMEOUT = 90.0
TOOL_CALL_ID = "call_detour_e2e_bash_1"

if not os.access(CLAUDE, os.X_OK):
    pytest.skip(f"the real Claude Code is not installed at {CLAUDE}; run "
                "`bash scripts/install-clients.sh` (CI does, in .ci/run)", allow_module_level=True)


def scripted_agent(received):
    """FakeOpenAI's `agent_reply`, with a fixed id on the tool call it makes, so the test can
    follow that id through Claude Code and back."""
    reply = agent_reply(received)
    if isinstance(reply, ToolCall):
        reply = ToolCalls((dataclasses.replace(reply, id=TOOL_CALL_ID),))
    return reply


@dataclasses.dataclass
class Stack:
    provider: FakeOpenAI
    vendor: FakeAnthropic
    proxy: Mitmdump
    home: Path  # DETOUR_HOME
    client_home: Path  # Claude Code's HOME
    workdir: Path  # Claude Code's working directory

    def chat_requests(self):
        return [r for r in self.provider.requests
                if r.method == "POST" and r.route.endswith("/chat/completions")]

    def usage_rows(self) -> list[dict]:
        """The usage table, after stopping mitmdump (a clean stop flushes the batched rows)."""
        self.proxy.stop()
        db = sqlite3.connect(self.home / "detour.db")
        try:
            db.row_factory = sqlite3.Row
            return [dict(r) for r in db.execute("SELECT * FROM usage ORDER BY id")]
        finally:
            db.close()


@pytest.fixture
def stack(tmp_path):
    provider = FakeOpenAI(keys={PROVIDER_KEY}, default_reply=scripted_agent).start()
    vendor = FakeAnthropic().start()
    home = tmp_path / "detour-home"
    home.mkdir(mode=0o700)
    config = {
        "providers": {"fake": {"kind": "openai", "base_url": provider.base_url + "/v1",
                               "api_keys": [PROVIDER_KEY]}},
        "routes": {"*": [f"fake/{PROVIDER_MODEL}"]},
        # Claude Code's non-model calls (/api/claude_code/settings, ...) go to a loopback fake
        # (404 for all of them) instead of the unreachable internet
        "vendors": {"api.anthropic.com": vendor.base_url},
    }
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    confdir = tmp_path / "mitmproxy"
    confdir.mkdir()
    client_home = tmp_path / "client-home"
    client_home.mkdir()
    workdir = tmp_path / "work"
    workdir.mkdir()
    proxy = Mitmdump(confdir, home)
    try:
        proxy.start()
        assert proxy.ca_cert.exists(), f"mitmdump wrote no CA in {confdir}"
        yield Stack(provider, vendor, proxy, home, client_home, workdir)
    finally:
        proxy.stop()
        provider.stop()
        vendor.stop()
        # shown by pytest only when the test failed
        print("\n===== requests to the fake provider (FakeOpenAI) =====")
        for r in provider.requests:
            print(f"{r.method} {r.path} ({len(r.body)} bytes)")
        print("===== requests to the fake vendor (FakeAnthropic, non-model calls) =====")
        for r in vendor.requests:
            print(f"{r.method} {r.path} ({len(r.body)} bytes)")
        print("===== mitmdump output =====")
        print(proxy.text)


@dataclasses.dataclass
class ClaudeRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def run_claude(stack: Stack, *args: str) -> ClaudeRun:
    """`claude ARGS` with the recipe's minimal environment and a timeout; the whole process
    group it started is killed if it overruns."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(stack.client_home),
        "ANTHROPIC_API_KEY": CLIENT_KEY,
        "HTTPS_PROXY": stack.proxy.url,
        "NODE_EXTRA_CA_CERTS": str(stack.proxy.ca_cert),
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "DISABLE_AUTOUPDATER": "1",
    }
    started = time.monotonic()
    proc = subprocess.Popen([str(CLAUDE), *args], env=env, cwd=stack.workdir,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=CLAUDE_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        _show(args, proc.returncode, stdout, stderr, time.monotonic() - started)
        pytest.fail(f"claude {' '.join(args)} did not finish within {CLAUDE_TIMEOUT:.0f} s")
    run = ClaudeRun(proc.returncode, stdout.decode(errors="replace"),
                    stderr.decode(errors="replace"), time.monotonic() - started)
    _show(args, run.returncode, stdout, stderr, run.seconds)
    return run


def _show(args, returncode, stdout: bytes, stderr: bytes, seconds: float) -> None:
    print(f"===== claude {' '.join(args)}: exit {returncode} after {seconds:.1f} s =====")
    print("----- stdout -----\n" + stdout.decode(errors="replace"))
    print("----- stderr -----\n" + stderr.decode(errors="replace"))


def expected_usage(received, reply) -> tuple[int, int]:
    """The tokens FakeOpenAI reported for one request (replies.Usage: prompt = body // 4,
    completion = generated text or tool arguments // 4, at least 1 each)."""
    prompt = max(1, len(received.body) // 4)
    if isinstance(reply, ToolCalls):
        generated = len(reply.text) + sum(
            len(json.dumps(dict(c.arguments), separators=(",", ":"), ensure_ascii=False))
            for c in reply.calls)
    else:
        generated = len(reply.text if reply is not None else FakeOpenAI.default_text)
    return prompt, max(1, generated // 4)


def assert_client_key_never_reached_provider(stack: Stack) -> None:
    for r in stack.provider.requests:
        assert r.headers.get("authorization") == f"Bearer {PROVIDER_KEY}", r.headers
        assert "x-api-key" not in r.headers
        assert CLIENT_KEY not in json.dumps(r.headers), f"client key in headers of {r.path}"
        assert CLIENT_KEY.encode() not in r.body, f"client key in the body of {r.path}"


def assert_usage_rows(stack: Stack, chats) -> list[dict]:
    """One usage row per model call, all of them /v1/messages calls answered by the fake, with
    the fake's own token counts; the non-model calls are not counted."""
    rows = stack.usage_rows()
    print("===== usage rows =====")
    for row in rows:
        print({k: row[k] for k in ("client_format", "provider", "model_requested",
                                   "model_upstream", "status", "stream", "input_tokens",
                                   "output_tokens", "error", "route")})
    assert len(rows) == len(chats), (len(rows), len(chats))
    for row, received in zip(rows, chats):
        assert row["client_format"] == "anthropic"
        assert row["provider"] == "fake"
        assert row["model_upstream"] == PROVIDER_MODEL
        assert row["model_requested"].startswith("claude-"), row["model_requested"]
        assert row["status"] == 200
        assert row["error"] is None
        assert row["client"].startswith("claude-cli/"), row["client"]
        prompt, completion = expected_usage(received, scripted_agent(received))
        assert (row["input_tokens"], row["output_tokens"]) == (prompt, completion)
    return rows


def assert_non_model_calls_went_to_vendor_fake(stack: Stack) -> None:
    """Every call Claude Code made to api.anthropic.com other than /v1/messages reached the
    vendor fake (vendors: override), and no model call did."""
    assert all(not r.route.endswith("/messages") for r in stack.vendor.requests), \
        [r.path for r in stack.vendor.requests]
    if stack.vendor.requests:
        # they keep the client's own key (so the provider-side check above is not vacuous)
        assert any(r.headers.get("x-api-key") == CLIENT_KEY for r in stack.vendor.requests)


def test_text_answer(stack):
    run = run_claude(stack, "-p", "Say hi")

    assert run.returncode == 0, run.stderr
    assert FakeOpenAI.default_text in run.stdout
    chats = stack.chat_requests()
    assert len(chats) == 1, [r.path for r in stack.provider.requests]
    body = chats[0].json
    assert body["model"] == PROVIDER_MODEL
    assert body["stream"] is True
    assert any(m["role"] == "user" and "Say hi" in json.dumps(m["content"])
               for m in body["messages"])
    assert_client_key_never_reached_provider(stack)
    assert_non_model_calls_went_to_vendor_fake(stack)
    rows = assert_usage_rows(stack, chats)
    assert rows[0]["stream"] == 1


@pytest.mark.parametrize("output_format", ["text", "stream-json"])
def test_bash_tool_round_trip(stack, output_format):
    args = ["-p", "RUN: echo detour-tool-ok", "--allowedTools", "Bash"]
    if output_format == "stream-json":
        args += ["--output-format", "stream-json", "--verbose"]
    run = run_claude(stack, *args)

    assert run.returncode == 0, run.stderr
    chats = stack.chat_requests()
    assert len(chats) == 2, [r.path for r in stack.provider.requests]
    first, second = chats[0].json, chats[1].json
    assert any(t.get("function", {}).get("name") == "Bash" for t in first.get("tools", []))
    assert isinstance(scripted_agent(chats[0]), ToolCalls)

    # the follow-up carries the call the fake made and Bash's output, under the same id
    messages = second["messages"]
    calls = [c for m in messages if m["role"] == "assistant" for c in m.get("tool_calls") or []]
    assert [c["id"] for c in calls] == [TOOL_CALL_ID], calls
    assert calls[0]["function"]["name"] == "Bash"
    assert json.loads(calls[0]["function"]["arguments"])["command"] == "echo detour-tool-ok"
    results = [m for m in messages if m["role"] == "tool"]
    assert len(results) == 1, messages
    assert results[0]["tool_call_id"] == TOOL_CALL_ID
    assert "detour-tool-ok" in json.dumps(results[0]["content"])
    assert messages[-1]["role"] == "tool", [m["role"] for m in messages]

    if output_format == "text":
        assert "FAKE-TOOL-RESULT" in run.stdout
        assert "detour-tool-ok" in run.stdout
    else:
        events = [json.loads(line) for line in run.stdout.splitlines() if line.strip()]
        uses = [b for e in events if e.get("type") == "assistant"
                for b in e["message"]["content"] if b.get("type") == "tool_use"]
        assert [(u["name"], u["input"]["command"]) for u in uses] == \
            [("Bash", "echo detour-tool-ok")], uses
        tool_results = [b for e in events if e.get("type") == "user"
                        for b in e["message"]["content"]
                        if isinstance(b, dict) and b.get("type") == "tool_result"]
        assert len(tool_results) == 1 and tool_results[0]["tool_use_id"] == uses[0]["id"]
        assert "detour-tool-ok" in json.dumps(tool_results[0]["content"])
        assert not tool_results[0].get("is_error"), tool_results
        final = [e for e in events if e.get("type") == "result"]
        assert len(final) == 1 and final[0]["subtype"] == "success", final
        assert "FAKE-TOOL-RESULT" in final[0]["result"]

    assert_client_key_never_reached_provider(stack)
    assert_non_model_calls_went_to_vendor_fake(stack)
    assert_usage_rows(stack, chats)


def test_a_dead_provider_is_reported_at_once_not_after_minutes_of_retries(stack):
    """Every candidate refuses its connection: Claude Code gets a 502 naming the refusal, with
    `x-should-retry: false`, so it shows the cause at once instead of retrying for minutes
    (it retries 5xx ten times; it took 3 minutes before). One model call, one usage row."""
    dead = f"http://127.0.0.1:{_free_port()}/v1"
    config = yaml.safe_load((stack.home / "config.yaml").read_text())
    config["providers"]["dead"] = {"kind": "openai", "base_url": dead, "api_keys": ["k-dead"]}
    config["routes"] = {"*": ["dead/m"]}
    (stack.home / "config.yaml").write_text(yaml.safe_dump(config))
    deadline = time.monotonic() + 30
    while "detour: reloaded" not in stack.proxy.text:
        assert time.monotonic() < deadline, "the edited config was not reloaded"
        time.sleep(0.1)
    run = run_claude(stack, "-p", "Say hi")
    assert run.returncode != 0
    assert "connection refused" in run.stdout + run.stderr
    rows = stack.usage_rows()
    assert [r["status"] for r in rows] == [502], rows  # asked once: no retries


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
