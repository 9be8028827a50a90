"""`detour run`, `detour stop`, `detour env` and `detour up` around a proxy that runs for the
home: a held lock and a state file stand for it here (tests/e2e/test_detour_run.py drives a
real one)."""

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time

import pytest

import scripts.background
import scripts.proxy
from addons.instance import HomeLock, Instance, home_locked, running_instance, write_state
from addons.usage import UsageRow, UsageStore
from tests.harness import ROOT, free_port


@pytest.fixture
def execs(monkeypatch) -> list:
    """os.execve and os.execv recorded instead of replacing the test process."""
    calls: list = []
    monkeypatch.setattr(scripts.background.os, "execve",
                        lambda path, argv, env: calls.append((path, argv, env)))
    monkeypatch.setattr(scripts.proxy.os, "execv", lambda path, argv: calls.append((path, argv)))
    return calls


@pytest.fixture
def running(home, confdir):
    """A proxy 'running' for home: its lock held by this process, its state file written."""
    home.mkdir(parents=True)
    lock = HomeLock(home)
    assert lock.acquire()
    instance = Instance(pid=os.getpid(), host="127.0.0.1", port=18099, started=time.time() - 90,
                        home=str(home), confdir=str(confdir), config=str(home / "config.yaml"),
                        log=str(home / "proxy.log"))
    write_state(home, instance)
    yield instance
    lock.release()


@pytest.fixture
def busy_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield s.getsockname()[1]


# ---- the lock and the state file


def test_the_lock_is_exclusive_and_a_state_file_without_it_is_stale(home, running):
    assert home_locked(home)
    assert running_instance(home) == running
    other = HomeLock(home)
    # flock is per open file description: a second one in the same process is refused too
    assert not other.acquire()


def test_a_leftover_state_file_is_not_a_running_proxy(home, confdir):
    home.mkdir(parents=True)
    write_state(home, Instance(pid=1, host="127.0.0.1", port=1, started=0.0, home=str(home),
                               confdir=str(confdir), config=""))
    assert Instance.read(home).port == 1
    assert not home_locked(home)
    assert running_instance(home) is None


# ---- detour run


def test_run_uses_the_running_proxy_and_execs_the_tool_with_its_env(detour, home, confdir,
                                                                      running, execs):
    result = detour("run", "python3", "-c", "print(1)", "--flag")
    assert "using the proxy on http://127.0.0.1:18099" in result.stderr
    [(path, argv, env)] = execs
    assert os.path.basename(path).startswith("python3")
    assert argv == ["python3", "-c", "print(1)", "--flag"]  # its own options stay its own
    assert env["HTTPS_PROXY"] == env["https_proxy"] == "http://127.0.0.1:18099"
    assert env["NODE_EXTRA_CA_CERTS"] == env["CODEX_CA_CERTIFICATE"] == str(
        confdir / "mitmproxy-ca-cert.pem")
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == str(home / "ca-bundle.pem")
    assert env["NODE_USE_ENV_PROXY"] == "1"
    assert env["NO_PROXY"].startswith("localhost,127.0.0.1")
    assert env["PATH"] == os.environ["PATH"]  # the user's environment is kept


def test_run_after_a_double_dash(detour, running, execs):
    detour("run", "--", "python3", "--version")
    assert execs[0][1] == ["python3", "--version"]


def test_run_quiet_says_nothing(detour, running, execs):
    detour("certs", "path")  # the CA exists (else creating it is said)
    assert detour("run", "-q", "python3").stderr == ""


def test_a_missing_tool_is_a_clear_error_with_the_shell_code(detour, running, execs):
    result = detour("run", "claude", "-p", "hi", expect=127)
    assert "claude: command not found on PATH" in result.stderr
    assert "npm install -g @anthropic-ai/claude-code" in result.stderr
    assert execs == []
    result = detour("run", "/nonexistent/tool", expect=127)
    assert "/nonexistent/tool: no such executable file" in result.stderr


def test_a_missing_tool_starts_no_proxy(detour, home, execs, monkeypatch):
    monkeypatch.setattr(scripts.background, "start_background",
                        lambda *a: pytest.fail("started a proxy for a tool that is missing"))
    detour("run", "no-such-tool-here", expect=127)


def test_run_refuses_another_port_than_the_running_proxys(detour, running, execs):
    result = detour("run", "--port", "9999", "python3", expect=2)
    assert "already runs on port 18099, not 9999" in result.stderr


def test_run_without_a_tool_is_a_usage_error(detour):
    assert "Missing argument 'TOOL [ARGS]...'" in detour("run", expect=2).stderr


def test_a_background_proxy_that_exits_at_once_is_reported_with_its_log(detour, home, execs,
                                                                         monkeypatch):
    """The proxy dies before it listens (here: a config error only mitmproxy sees, simulated
    by a program that prints and exits): the error quotes its log."""
    monkeypatch.setattr(scripts.background, "up_argv", lambda **kw: [
        "python3", "-c", "import sys; print('boom: the reason'); sys.exit(3)"])
    # a port free now (the one next to a busy one may be anyone's on a busy machine)
    result = detour("run", "--port", str(free_port()), "python3", expect=2)
    assert "the proxy exited (code 3) before it listened" in result.stderr
    assert "boom: the reason" in result.stderr
    assert execs == []


def test_run_on_a_busy_port_names_the_option(detour, busy_port, execs):
    result = detour("run", "--port", str(busy_port), "python3", expect=2)
    assert f"port {busy_port} on 127.0.0.1 is in use: choose another with --port" in \
        result.stderr


# ---- detour up


def test_up_on_a_busy_port_says_so_before_any_banner(detour, busy_port, execs):
    result = detour("up", "--port", str(busy_port), expect=2)
    assert result.stderr.strip() == (
        f"Error: port {busy_port} on 127.0.0.1 is in use: choose another with --port, "
        f"e.g. --port {busy_port + 10}")
    assert "proxy on" not in result.output and "regular@" not in result.output
    assert execs == []


def test_up_refuses_a_second_proxy_on_the_same_home(detour, running, execs):
    result = detour("up", "--port", "18098", expect=2)
    assert "a detour proxy already runs for" in result.stderr
    assert f"pid {running.pid} on http://127.0.0.1:18099" in result.stderr
    assert "detour stop" in result.stderr
    assert execs == []


# ---- detour env


def test_env_points_at_the_running_proxys_port(detour, running):
    result = detour("env", "--shell", "bash")
    assert result.stdout.startswith("export HTTPS_PROXY='http://127.0.0.1:18099'\n")
    assert "no proxy is running" not in result.stderr


def test_env_says_when_no_proxy_runs(detour):
    result = detour("env", "--shell", "bash")
    assert result.stdout.startswith("export HTTPS_PROXY='http://127.0.0.1:8080'\n")
    assert "no proxy is running for" in result.stderr


def test_env_with_an_explicit_port_keeps_it(detour, running):
    result = detour("env", "--shell", "bash", "--port", "9000")
    assert result.stdout.startswith("export HTTPS_PROXY='http://127.0.0.1:9000'\n")


# ---- detour stop


def test_stop_without_a_proxy(detour):
    assert "no proxy is running" in detour("stop").stderr


HOLDER = """
import signal, sys, time
from pathlib import Path
from addons.instance import HomeLock, Instance, write_state
home = Path(sys.argv[1])
lock = HomeLock(home)
assert lock.acquire()
stop = []
signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
write_state(home, Instance(pid=__import__("os").getpid(), host="127.0.0.1", port=18097,
                           started=time.time(), home=str(home), confdir="", config=""))
deadline = time.monotonic() + 60
while not stop and time.monotonic() < deadline:
    time.sleep(0.02)
print("terminated" if stop else "timed out", flush=True)
"""


def test_stop_sends_sigterm_and_waits_until_the_proxy_released_the_lock(detour, home):
    """A process holding the home's lock like a proxy: `detour stop` ends it by its pid."""
    home.mkdir(parents=True)
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(home)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
    try:
        deadline = time.monotonic() + 30
        while running_instance(home) is None:
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        result = detour("stop")
        assert (f"stopped the proxy on http://127.0.0.1:18097 (pid {proc.pid})"
                in result.stderr)
        assert not home_locked(home)
        assert proc.wait(10) == 0
        assert proc.stdout.read().strip() == "terminated"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()


# ---- detour status


def test_status_without_a_proxy(detour, home):
    record = json.loads(detour("status", "--json").stdout)
    assert record["proxy"] == {"running": False}
    assert record["today"]["calls"] == 0
    assert "not running" in detour("status").stdout


def test_status_shows_the_proxy_accounts_rests_and_todays_calls(detour, home, running):
    (home / "config.yaml").write_text(
        "providers:\n"
        "  deepseek: {kind: openai, base_url: 'https://api.deepseek.com/v1',\n"
        "             api_keys: [env:DS_A, 'sk-literal-key', {key: env:DS_C, disabled: true}]}\n"
        "  spare: {kind: openai, base_url: 'http://127.0.0.1:1/v1'}\n"
        "routes: {'*': [deepseek/deepseek-chat]}\n")
    store = UsageStore(home / "detour.db")
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    for status, tokens in ((200, 100), (200, 50), (429, 0)):
        store.add(UsageRow(ts=now, flow_id=f"f{status}{tokens}", client="claude-cli/2",
                           client_format="anthropic-messages", model_requested="claude-x",
                           stream=True, provider="deepseek", account="env:DS_A",
                           model_upstream="deepseek-chat", status=status,
                           input_tokens=tokens, output_tokens=tokens // 2, cost_usd=0.001))
    store.add(UsageRow(ts="2000-01-01T00:00:00.000Z", flow_id="old", client="c",
                       client_format="anthropic-messages", model_requested="m", stream=False))
    store.close()
    conn = sqlite3.connect(home / "detour.db")
    with conn:
        from addons.cooldown_store import _CREATE
        conn.execute(_CREATE)
        conn.execute("INSERT INTO cooldowns VALUES (?, ?, ?, ?, ?, ?)",
                     ("deepseek/env:DS_A@deepseek-chat", time.time() + 120, "rate_limit",
                      "429 Too Many Requests", 1, now))
        conn.execute("INSERT INTO cooldowns VALUES (?, ?, ?, ?, ?, ?)",
                     ("deepseek/env:OLD", time.time() - 5, "auth", "401", 1, now))
    conn.close()
    (home / "untouched.json").write_text(json.dumps({"pid": 1, "calls": [
        {"method": "CONNECT", "host": "generativelanguage.googleapis.com", "path": "",
         "why": "the Gemini API: detour does not handle this host yet", "count": 4}]}))

    record = json.loads(detour("status", "--json").stdout)
    assert record["proxy"]["running"] and record["proxy"]["port"] == 18099
    assert 89 <= record["proxy"]["uptime_seconds"] < 600
    assert record["config"]["valid"] and record["config"]["providers"] == 2
    assert record["config"]["warnings"] == [
        "providers.spare: no route, combo or client route uses it",
        "providers.spare: no api_keys: calls go to it without a credential (right for a "
        "local server; a hosted API answers 401)"]
    accounts = {(a["provider"], a["account"]): a for a in record["accounts"]}
    first = accounts[("deepseek", "account 1")]
    assert first["label"] == "env:DS_A" and first["state"] == "resting"
    [rest] = first["rests"]
    assert rest["model"] == "deepseek-chat" and rest["reason"] == "rate_limit"
    assert 100 <= rest["seconds_left"] <= 120
    assert accounts[("deepseek", "account 2")]["label"].startswith("key2:")
    assert "sk-literal-key" not in json.dumps(record)  # a label, never the key
    assert accounts[("deepseek", "account 2")]["state"] == "ready"
    assert accounts[("deepseek", "account 3")]["state"] == "disabled"
    assert accounts[("spare", "account 1")]["label"] == "no-key"
    today = record["today"]
    assert (today["calls"], today["failed"]) == (3, 1)
    assert (today["input_tokens"], today["output_tokens"]) == (150, 75)
    assert today["cost_usd"] == pytest.approx(0.003)
    assert record["untouched"][0]["host"] == "generativelanguage.googleapis.com"

    text = detour("status").stdout
    assert "running on http://127.0.0.1:18099" in text
    assert "resting for deepseek-chat" in text and "rate_limit: 429 Too Many Requests" in text
    assert "3 calls, 1 failed" in text
    assert "CONNECT generativelanguage.googleapis.com x4" in text
    assert "warning: providers.spare" in text


def test_status_of_an_invalid_config_says_why(detour, home):
    home.mkdir(parents=True)
    (home / "config.yaml").write_text("routes: {'*': [nowhere/model]}\n")
    record = json.loads(detour("status", "--json").stdout)
    assert not record["config"]["valid"]
    assert "unknown provider 'nowhere'" in record["config"]["error"]
    assert "INVALID" in detour("status").stdout
