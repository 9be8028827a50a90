"""The real Codex CLI (0.169), unmodified, in API-key mode, through a real mitmdump running
detour, routed to a loopback Anthropic provider and to a loopback Chat provider (each fake
with its scripted agent):

    codex exec ... --HTTPS_PROXY--> mitmdump -s addons/router.py --> FakeAnthropic | FakeOpenAI
                                               \\--> FakeOpenAI (api.openai.com, `vendors:`)

Codex opens a WebSocket on /v1/responses before each turn; detour answers its upgrade 426 and
Codex falls back to HTTPS at once (no "Reconnecting..." retries). Both of Codex's tool shapes
run: its default model's code mode (the custom `exec` tool, JavaScript, offered to the
provider as a function {input}) and the classic shape of `-m gpt-5.5` (`exec_command`).

Codex runs as the captures were recorded: a fresh HOME and CODEX_HOME with the config that
turns off update checks, analytics, plugins and model discovery, an invented key in
CODEX_API_KEY, the proxy, and mitmproxy's CA in SSL_CERT_FILE. Nothing leaves 127.0.0.1.
Skipped when the codex binary is missing (`bash scripts/install-clients.sh` installs it).
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

from tests.fakes import anthropic_vendor, openai_provider
from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.codex_backend import FakeCodexBackend, chatgpt_token
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Text
from tests.harness import ROOT, Mitmdump

pytestmark = pytest.mark.slow

CODEX = ROOT / "clients" / "node_modules" / ".bin" / "codex"
CLIENT_KEY = "sk-proj-invented-codex-client-key"  # what Codex sends; never reaches a provider
PROVIDER_KEY = "sk-fake-provider-key"
PROVIDER_MODEL = "fake-model"
CODEX_TIMEOUT = 60.0
CODEX_CONFIG = """\
check_for_update_on_startup = false
[analytics]
enabled = false
[otel]
metrics_exporter = "none"
[features]
plugins = false
api_key_model_discovery = false
"""
CHATGPT_ACCOUNT = "acct-codex-user"  # the login's account (auth.json and wham/accounts/check)
CLASSIC_MODEL = "gpt-5.5"  # Codex's classic tool shape (top-level tools, exec_command)

if not os.access(CODEX, os.X_OK):
    pytest.skip(f"the real Codex CLI is not installed at {CODEX}; run "
                "`bash scripts/install-clients.sh` (CI does, in .ci/run)", allow_module_level=True)


@dataclasses.dataclass
class CodexStack:
    kind: str  # the provider's kind
    provider: FakeAnthropic | FakeOpenAI
    vendor: FakeOpenAI  # api.openai.com's non-model paths
    chatgpt: FakeCodexBackend  # chatgpt.com's non-model paths (ChatGPT-login mode)
    proxy: Mitmdump
    home: Path
    root: Path

    def model_requests(self):
        return [r for r in self.provider.requests if r.method == "POST"]

    def rows(self, since: int, expect: int, timeout: float = 10.0) -> list[dict]:
        """Usage rows after id `since` (written in batches: waits for `expect` of them)."""
        deadline = time.monotonic() + timeout
        while True:
            db = sqlite3.connect(self.home / "detour.db")
            try:
                db.row_factory = sqlite3.Row
                rows = [dict(r) for r in db.execute(
                    "SELECT * FROM usage WHERE id > ? ORDER BY id", (since,))]
            except sqlite3.OperationalError:
                rows = []
            finally:
                db.close()
            if len(rows) >= expect or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)

    def last_row_id(self) -> int:
        db = sqlite3.connect(self.home / "detour.db")
        try:
            return db.execute("SELECT COALESCE(MAX(id), 0) FROM usage").fetchone()[0]
        except sqlite3.OperationalError:
            return 0
        finally:
            db.close()


def start_stack(tmp: Path, kind: str, extra_config: dict | None = None) -> CodexStack:
    if kind == "anthropic":
        provider = FakeAnthropic(keys={PROVIDER_KEY},
                                 default_reply=anthropic_vendor.agent_reply).start()
        spec = {"kind": "anthropic", "base_url": provider.base_url}
    else:
        provider = FakeOpenAI(keys={PROVIDER_KEY}, default_reply=openai_provider.agent_reply
                              ).start()
        spec = {"kind": "openai", "base_url": provider.base_url + "/v1"}
    vendor = FakeOpenAI().start()
    chatgpt = FakeCodexBackend(account_id=CHATGPT_ACCOUNT).start()
    home = tmp / "detour-home"
    home.mkdir(mode=0o700)
    config = {"providers": {"fake": {**spec, "api_keys": [PROVIDER_KEY]}},
              "routes": {"*": [f"fake/{PROVIDER_MODEL}"]},
              "vendors": {"api.openai.com": vendor.base_url, "chatgpt.com": chatgpt.base_url}}
    config.update(extra_config or {})
    (home / "config.yaml").write_text(yaml.safe_dump(config))
    (tmp / "mitmproxy").mkdir()
    proxy = Mitmdump(tmp / "mitmproxy", home)
    try:
        proxy.start()
    except BaseException:
        provider.stop()
        vendor.stop()
        chatgpt.stop()
        raise
    return CodexStack(kind, provider, vendor, chatgpt, proxy, home, tmp)


def stop_stack(stack: CodexStack) -> None:
    stack.proxy.stop()
    stack.provider.stop()
    stack.vendor.stop()
    stack.chatgpt.stop()
    print(f"===== requests to the provider ({stack.kind}) =====")
    for r in stack.provider.requests:
        print(f"{r.method} {r.path} ({len(r.body)} bytes)")
    print("===== requests to the vendor fakes (api.openai.com, chatgpt.com) =====")
    for r in stack.vendor.requests + stack.chatgpt.requests:
        print(f"{r.method} {r.path}")
    print("===== mitmdump output =====")
    print(stack.proxy.text[-6000:])


@pytest.fixture(scope="module", params=["anthropic", "openai"])
def stack(request, tmp_path_factory):
    s = start_stack(tmp_path_factory.mktemp(f"codex-{request.param}"), request.param)
    try:
        yield s
    finally:
        stop_stack(s)


@dataclasses.dataclass
class CodexRun:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


def codex_home(root: Path, auth: dict | None = None) -> tuple[Path, Path]:
    """A fresh HOME with CODEX_HOME inside it (config.toml; `auth` as auth.json if given)."""
    n = len(list(root.glob("client-*")))
    home = root / f"client-{n}"
    (home / ".codex").mkdir(parents=True)
    (home / ".codex" / "config.toml").write_text(CODEX_CONFIG)
    if auth is not None:
        (home / ".codex" / "auth.json").write_text(json.dumps(auth))
    (home / "work").mkdir()
    return home, home / ".codex"


def run_codex(stack: CodexStack, prompt: str, *args: str, auth: dict | None = None) -> CodexRun:
    """`codex exec` with the recipe's minimal environment and a timeout (its whole process
    group is killed if it overruns). `auth`: ChatGPT-login mode (an auth.json) instead of
    the API key."""
    home, codex_dir = codex_home(stack.root, auth)
    env = {"PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"), "HOME": str(home),
           "CODEX_HOME": str(codex_dir), "HTTPS_PROXY": stack.proxy.url,
           "SSL_CERT_FILE": str(stack.proxy.ca_cert)}
    if auth is None:
        env["CODEX_API_KEY"] = CLIENT_KEY
    argv = [str(CODEX), "exec", "--skip-git-repo-check", "--color", "never", *args, prompt]
    started = time.monotonic()
    proc = subprocess.Popen(argv, env=env, cwd=home / "work", stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=CODEX_TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        print(stderr.decode(errors="replace"))
        pytest.fail(f"codex exec {prompt!r} did not finish within {CODEX_TIMEOUT:.0f} s")
    run = CodexRun(proc.returncode, stdout.decode(errors="replace"),
                   stderr.decode(errors="replace"), time.monotonic() - started)
    print(f"===== codex exec {' '.join(args)} {prompt!r}: exit {run.returncode} "
          f"after {run.seconds:.1f} s =====")
    print("----- stdout -----\n" + run.stdout)
    print("----- stderr -----\n" + run.stderr)
    return run


def default_text(stack: CodexStack) -> str:
    return type(stack.provider).default_text


def assert_no_websocket_retry(run: CodexRun) -> None:
    """Codex tried its WebSocket once per turn and fell back at once: no reconnect loop."""
    assert "Reconnecting" not in run.stderr, run.stderr


def tool_results(stack: CodexStack, body: dict) -> list[str]:
    """The tool results a provider request carries, as text."""
    if stack.kind == "anthropic":
        return [json.dumps(b.get("content")) for m in body["messages"]
                if isinstance(m.get("content"), list)
                for b in m["content"] if b.get("type") == "tool_result"]
    return [json.dumps(m.get("content")) for m in body["messages"] if m["role"] == "tool"]


def tool_calls(stack: CodexStack, body: dict) -> list[tuple[str, dict]]:
    if stack.kind == "anthropic":
        return [(b["name"], b["input"]) for m in body["messages"]
                if m["role"] == "assistant" and isinstance(m.get("content"), list)
                for b in m["content"] if b.get("type") == "tool_use"]
    return [(c["function"]["name"], json.loads(c["function"]["arguments"]))
            for m in body["messages"] if m["role"] == "assistant"
            for c in m.get("tool_calls") or []]


def assert_rows(stack: CodexStack, since: int, n: int) -> None:
    rows = stack.rows(since, n)
    assert [(r["client_format"], r["provider"], r["model_upstream"], r["status"], r["stream"],
             r["error"]) for r in rows] == [
        ("openai-responses", "fake", PROVIDER_MODEL, 200, 1, None)] * n, rows
    assert all(r["client"].startswith("codex_exec/") for r in rows), rows
    assert all(r["input_tokens"] > 0 and r["output_tokens"] > 0 for r in rows), rows


def assert_client_key_never_reached_provider(stack: CodexStack) -> None:
    for r in stack.provider.requests:
        assert CLIENT_KEY not in json.dumps(r.headers) and CLIENT_KEY.encode() not in r.body


def test_text_answer(stack):
    """With Codex's model discovery on (its default): it asks chatgpt.com for its catalogue,
    which detour answers (every model rerouted), so no call leaves for chatgpt.com."""
    since, before = stack.last_row_id(), len(stack.model_requests())
    run = run_codex(stack, "Say hi", "-c", "features.api_key_model_discovery=true")

    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == default_text(stack)
    assert_no_websocket_retry(run)
    sent = stack.model_requests()[before:]
    assert len(sent) == 1
    assert sent[0].json["model"] == PROVIDER_MODEL and sent[0].json["stream"] is True
    assert "Say hi" in json.dumps(sent[0].json["messages"])
    # the vendor fake never saw a model call, nor a WebSocket upgrade (detour answered it)
    assert not [r for r in stack.vendor.requests if r.route.startswith("/v1/responses")]
    assert stack.chatgpt.requests == []
    assert_client_key_never_reached_provider(stack)
    assert_rows(stack, since, 1)


@pytest.mark.parametrize("model", [None, CLASSIC_MODEL], ids=["code-mode-exec", "exec_command"])
def test_shell_tool_round_trip(stack, model):
    since, before = stack.last_row_id(), len(stack.model_requests())
    args = ["-m", model] if model else []
    run = run_codex(stack, "RUN: echo detour-tool-ok", *args)

    assert run.returncode == 0, run.stderr
    assert_no_websocket_retry(run)
    sent = stack.model_requests()[before:]
    assert len(sent) == 2, [r.path for r in sent]
    first, second = sent[0].json, sent[1].json
    offered = {t.get("name") or t["function"]["name"] for t in first["tools"]}
    if model is None:
        # code mode: the custom `exec` tool (JavaScript) as a function taking {input}
        assert "exec" in offered
        ((name, arguments),) = tool_calls(stack, second)
        assert name == "exec" and "detour-tool-ok" in arguments["input"]
    else:
        assert "exec_command" in offered
        assert tool_calls(stack, second) == [("exec_command", {"cmd": "echo detour-tool-ok"})]
    # Codex ran the command; its output went back to the provider as the call's result
    results = tool_results(stack, second)
    assert len(results) == 1 and "detour-tool-ok" in results[0], results
    assert "FAKE-TOOL-RESULT" in run.stdout and "detour-tool-ok" in run.stdout
    assert_client_key_never_reached_provider(stack)
    assert_rows(stack, since, 2)


def chatgpt_login() -> dict:
    """An auth.json of a ChatGPT login (unsigned JWTs: Codex reads their claims only)."""
    token = chatgpt_token(CHATGPT_ACCOUNT)
    return {"OPENAI_API_KEY": None, "auth_mode": "chatgpt",
            "tokens": {"id_token": token, "access_token": token,
                       "refresh_token": "rt-invented-refresh-token",
                       "account_id": CHATGPT_ACCOUNT},
            "last_refresh": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def test_chatgpt_login_mode_text_and_shell_tool(stack):
    """Codex logged in with ChatGPT calls chatgpt.com/backend-api/codex/responses (zstd bodies);
    routed like API-key mode, the login token never reaching the provider."""
    since, before = stack.last_row_id(), len(stack.model_requests())
    auth = chatgpt_login()
    run = run_codex(stack, "Say hi", auth=auth)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == default_text(stack)
    assert_no_websocket_retry(run)
    tool = run_codex(stack, "RUN: echo detour-tool-ok", auth=auth)
    assert tool.returncode == 0, tool.stderr
    assert "FAKE-TOOL-RESULT" in tool.stdout and "detour-tool-ok" in tool.stdout

    sent = stack.model_requests()[before:]
    assert len(sent) == 3, [r.path for r in sent]
    results = tool_results(stack, sent[2].json)
    assert len(results) == 1 and "detour-tool-ok" in results[0], results
    token = auth["tokens"]["access_token"]
    for r in sent:
        assert token not in json.dumps(r.headers) and token.encode() not in r.body
    # every model rerouted: detour answered Codex's account check and catalogue itself, and
    # no model call reached chatgpt.com (the fake)
    assert not [r for r in stack.chatgpt.requests if "/codex/responses" in r.route
                or r.route.endswith(("/wham/accounts/check", "/codex/models"))]
    rows = stack.rows(since, 3)
    assert [(r["client_format"], r["provider"], r["status"]) for r in rows] == [
        ("openai-responses", "fake", 200)] * 3, rows


def test_mid_turn_compaction_is_summarised_by_the_provider(stack):
    """Codex compacts mid-turn past its token limit (remote compaction v2: a turn ending with a
    compaction_trigger item, answered by one compaction item). The provider is asked for the
    summary in its own format; Codex accepts the item and the turn goes on from the summary."""
    since, before = stack.last_row_id(), len(stack.model_requests())
    run = run_codex(stack, "RUN: echo detour-tool-ok", "-c", "model_auto_compact_token_limit=5000")

    assert run.returncode == 0, run.stderr
    assert "context compacted" in run.stderr and "compact task" not in run.stderr, run.stderr
    sent = stack.model_requests()[before:]
    assert len(sent) == 3, [r.path for r in sent]
    asked, after = json.dumps(sent[1].json["messages"][-1]), json.dumps(sent[2].json["messages"])
    assert "CONTEXT CHECKPOINT COMPACTION" in asked
    # the summary (the fake's text) stands for the history in the next request
    assert "Here is the summary produced by the other language model" in after
    assert default_text(stack) in after
    assert run.stdout.strip() == default_text(stack)
    assert_rows(stack, since, 3)


def test_reasoning_streams_as_codexs_own_reasoning(stack):
    """The provider's thinking (Anthropic thinking blocks, Chat reasoning_content) reaches Codex
    as its reasoning events: `codex exec --json` shows a reasoning item before the answer."""
    stack.provider.enqueue(Text("the answer", reasoning="pondering the question"))
    run = run_codex(stack, "Say hi", "--json")
    assert run.returncode == 0, run.stderr
    items = [json.loads(line)["item"] for line in run.stdout.splitlines()
             if line.startswith("{") and json.loads(line).get("type") == "item.completed"]
    assert [(i["type"], i["text"]) for i in items] == [
        ("reasoning", "pondering the question"), ("agent_message", "the answer")]
