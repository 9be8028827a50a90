"""`detour run TOOL` end to end, as a newcomer runs it: the installed `detour` command starts
a real proxy (mitmdump with the router) in the background for its DETOUR_HOME, runs the tool
through it, and the next `detour run` uses the same proxy; `detour status` sees it, `detour up`
on the same home is refused, `detour stop` ends it with its usage rows written.

    detour run TOOL --HTTPS_PROXY--> mitmdump (background, DETOUR_HOME/proxy.log)
                                        --> FakeOpenAI (every model, `routes: "*"`)
                                        \\--> FakeAnthropic (api.anthropic.com's other paths)

The tools: a Python script (the environment it got, without detour's own secrets that the
proxy has, an HTTPS call trusting the CA through SSL_CERT_FILE, an API path detour does not
take) and, slow-marked, the real Claude Code with a Bash tool round trip. Every process is
bounded; the background proxy is stopped by its pid.
"""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from cryptography.fernet import Fernet

from addons.instance import Instance, home_locked, running_instance
from certs.ca import ensure_ca
from scripts.doctor import probe_tls
from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.openai_provider import FakeOpenAI, agent_reply
from tests.harness import PROXY_VARS, ROOT, free_port

DETOUR = Path(sys.executable).parent / "detour"
CLAUDE = ROOT / "clients" / "node_modules" / ".bin" / "claude"
PROVIDER_KEY = "sk-fake-provider-key"
CLIENT_KEY = "test-client-key-not-real"
TIMEOUT = 60.0

# a tool: prints what detour gave it (the whole environment into a file: not in a test's
# output), then makes a model call and an untouched API call the way any HTTPS client would
# (httpx reads HTTPS_PROXY and SSL_CERT_FILE itself)
PYTHON_TOOL = textwrap.dedent("""
    import json, os, sys
    import httpx
    env = {k: os.environ.get(k) for k in ("HTTPS_PROXY", "NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE",
           "REQUESTS_CA_BUNDLE", "CODEX_CA_CERTIFICATE", "NODE_USE_ENV_PROXY", "NO_PROXY")}
    print(json.dumps(env))
    with open(f"tool-env-{sys.argv[1]}.json", "w") as f:
        json.dump(dict(os.environ), f)
    headers = {"x-api-key": "%s", "anthropic-version": "2023-06-01"}
    with httpx.Client(timeout=30) as c:
        r = c.post("https://api.anthropic.com/v1/messages", headers=headers,
                   json={"model": "claude-x", "max_tokens": 50,
                         "messages": [{"role": "user", "content": "Say hi"}]})
        print(r.status_code, r.json()["content"][0]["text"])
        r = c.get("https://api.anthropic.com/v1/models", headers=headers)
        print(r.status_code, "models")
    sys.exit(int(sys.argv[1]))
""" % CLIENT_KEY)


class Stack:
    def __init__(self, tmp: Path):
        self.provider = FakeOpenAI(keys={PROVIDER_KEY}, default_reply=agent_reply).start()
        self.vendor = FakeAnthropic(keys={CLIENT_KEY}).start()  # the client's own key
        self.home = tmp / "detour-home"
        self.home.mkdir(mode=0o700)
        self.confdir = tmp / "mitmproxy"
        self.client_home = tmp / "client-home"
        self.client_home.mkdir()
        (self.home / "config.yaml").write_text(yaml.safe_dump({
            "providers": {"fake": {"kind": "openai", "base_url": self.provider.base_url + "/v1",
                                   "api_keys": [PROVIDER_KEY]}},
            "routes": {"*": ["fake/fake-model"]},
            "vendors": {"api.anthropic.com": self.vendor.base_url},
        }))
        self.port = free_port()
        self.first: subprocess.CompletedProcess | None = None

    def env(self, **extra) -> dict:
        """The user's shell: no proxy variables of the test runner's, a fresh HOME."""
        env = {k: v for k, v in os.environ.items()
               if k.lower() not in PROXY_VARS and k not in ("NODE_EXTRA_CA_CERTS",
                                                            "SSL_CERT_FILE", "DETOUR_HOME")}
        return {**env, "HOME": str(self.client_home), **extra}

    def detour_secrets(self) -> dict:
        """detour's own variables in the user's shell: a credentials key (a real one, which
        the proxy started then uses), the file holding it, and a key backend."""
        self.credentials_key = Fernet.generate_key().decode()
        key_file = self.home.parent / "credentials-key"
        key_file.write_text(self.credentials_key)
        return {"DETOUR_CREDENTIALS_KEY": self.credentials_key,
                "DETOUR_CREDENTIALS_KEY_FILE": str(key_file), "DETOUR_KEY_BACKEND": "file",
                "DETOUR_HOME": str(self.home)}

    def detour(self, *args: str, env: dict | None = None,
               timeout: float = TIMEOUT) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(
            [str(DETOUR), "--home", str(self.home), "--confdir", str(self.confdir), *args],
            env=env or self.env(), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=self.client_home)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # the tool's group; the proxy has its own
            out, err = proc.communicate()
            pytest.fail(f"detour {' '.join(args)} did not finish in {timeout:.0f} s:\n{err}")
        print(f"===== detour {' '.join(args)[:80]}: exit {proc.returncode}\n{out}\n{err}")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    def stop(self) -> None:
        """Stop the background proxy: `detour stop`, and by its pid if that failed."""
        instance = Instance.read(self.home)
        if home_locked(self.home):
            self.detour("stop", timeout=40)
        if instance is not None and home_locked(self.home):
            os.kill(instance.pid, signal.SIGKILL)
        self.provider.stop()
        self.vendor.stop()
        log = self.home / "proxy.log"
        if log.exists():
            print("===== proxy.log =====\n" + log.read_text(errors="replace")[-20000:])

    def rows(self) -> list[dict]:
        db = sqlite3.connect(self.home / "detour.db")
        db.row_factory = sqlite3.Row
        try:
            return [dict(r) for r in db.execute("SELECT * FROM usage ORDER BY id")]
        finally:
            db.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    if not DETOUR.exists():
        pytest.skip(f"no detour command at {DETOUR} (uv sync installs it)")
    stack = Stack(tmp_path_factory.mktemp("detour-run"))
    try:
        # the first run starts the proxy: recorded for the first test
        stack.first = stack.detour("run", "--port", str(stack.port), "python3", "-c",
                                   PYTHON_TOOL, "7", env=stack.env(**stack.detour_secrets()))
        yield stack
    finally:
        stack.stop()


def test_the_first_run_starts_a_background_proxy_and_returns_the_tools_exit_code(stack):
    run = stack.first
    assert run.returncode == 7, run.stderr
    url = f"http://127.0.0.1:{stack.port}"
    assert f"detour: started a proxy in the background on {url}" in run.stderr
    assert "detour stop" in run.stderr
    env = json.loads(run.stdout.splitlines()[0])
    assert env["HTTPS_PROXY"] == url
    assert env["NODE_EXTRA_CA_CERTS"] == env["CODEX_CA_CERTIFICATE"] == str(
        stack.confdir / "mitmproxy-ca-cert.pem")
    assert env["SSL_CERT_FILE"] == env["REQUESTS_CA_BUNDLE"] == str(stack.home / "ca-bundle.pem")
    assert env["NODE_USE_ENV_PROXY"] == "1"
    # the model call went through the proxy (trusted through SSL_CERT_FILE) to the provider
    assert run.stdout.splitlines()[1] == f"200 {FakeOpenAI.default_text}"
    assert run.stdout.splitlines()[2] == "200 models"
    instance = running_instance(stack.home)
    assert instance is not None and instance.port == stack.port
    assert instance.log == str(stack.home / "proxy.log")


def test_the_tool_gets_none_of_detours_secrets_and_the_proxy_gets_them(stack):
    env = json.loads((stack.client_home / "tool-env-7.json").read_text())  # the first run's
    assert [name for name, value in env.items() if stack.credentials_key in value] == []
    assert {k: v for k, v in env.items() if k.startswith("DETOUR_")} == {
        "DETOUR_HOME": str(stack.home)}  # what a `detour` command run by the tool needs
    proxy_environ = Path(f"/proc/{running_instance(stack.home).pid}/environ")
    if proxy_environ.exists():  # Linux: the background proxy decrypts with the key
        assert (f"DETOUR_CREDENTIALS_KEY={stack.credentials_key}".encode()
                in proxy_environ.read_bytes().split(b"\0"))


def test_the_next_run_uses_the_same_proxy(stack):
    before = running_instance(stack.home)
    run = stack.detour("run", "--", "python3", "-c", PYTHON_TOOL, "0")
    assert run.returncode == 0, run.stderr
    assert (f"detour: using the proxy on http://127.0.0.1:{stack.port} (pid {before.pid})"
            in run.stderr)
    assert running_instance(stack.home) == before


# a tool that runs `detour status` itself: which home does that command look at?
HOME_TOOL = textwrap.dedent("""
    import json, os, subprocess, sys
    status = subprocess.run([sys.argv[1], "status", "--json"], capture_output=True, text=True,
                            timeout=30)
    print(json.dumps({"DETOUR_HOME": os.environ.get("DETOUR_HOME"),
                      "status_home": json.loads(status.stdout)["home"]}))
""")


def test_the_tool_gets_the_home_given_by_home_not_the_shells(stack, tmp_path):
    shells = tmp_path / "the-shells-home"
    run = stack.detour("run", "-q", "python3", "-c", HOME_TOOL, str(DETOUR),
                       env=stack.env(DETOUR_HOME=str(shells)))  # and `--home stack.home`
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout) == {"DETOUR_HOME": str(stack.home),
                                      "status_home": str(stack.home)}
    assert not shells.exists()


def test_env_points_at_it_and_up_is_refused(stack):
    env = stack.detour("env", "--shell", "bash")
    assert env.stdout.startswith(f"export HTTPS_PROXY='http://127.0.0.1:{stack.port}'\n")
    up = stack.detour("up", "--port", str(free_port()))
    assert up.returncode == 2
    assert "a detour proxy already runs for" in up.stderr


def test_status_shows_the_proxy_todays_calls_and_the_untouched_call(stack):
    deadline = time.monotonic() + 20
    while True:  # rows and the untouched list are written within a second or so
        record = json.loads(stack.detour("status", "--json").stdout)
        if (record["today"]["calls"] >= 2 and record["untouched"]) or \
                time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert record["proxy"]["running"] and record["proxy"]["port"] == stack.port
    assert record["today"]["calls"] >= 2
    # from the proxy's detour.accounts (or detour.db, if its metrics port was taken)
    [account] = record["accounts"]
    assert {k: account[k] for k in ("provider", "account", "state", "why", "rests")} == {
        "provider": "fake", "account": "account 1", "state": "ready", "why": None, "rests": []}
    [untouched] = [u for u in record["untouched"] if u["path"] == "/v1/models"]
    assert (untouched["method"], untouched["host"]) == ("GET", "api.anthropic.com")
    assert "not a model call detour translates" in untouched["why"]
    log = (stack.home / "proxy.log").read_text()
    assert "a tool call went by untouched: GET api.anthropic.com/v1/models" in log


def test_doctor_probes_the_running_proxys_tls_against_the_ca_and_the_bundle(stack, tmp_path):
    run = stack.detour("doctor", "--json")
    checks = json.loads(run.stdout)
    tls = [c for c in checks if c["name"] == "tls" or c["name"].startswith("tool ")]
    assert tls and all(c["state"] == "ok" for c in tls), tls
    assert {"name": "proxy", "state": "ok", "fix": "",
            "detail": f"running on 127.0.0.1:{stack.port} (pid "
                      f"{running_instance(stack.home).pid})"} in checks
    # another CA than the proxy's: the handshake does not verify, and says so
    other = ensure_ca(tmp_path / "other-confdir")
    verdict = probe_tls("127.0.0.1", stack.port, other.cert_path)
    assert "does not verify against" in verdict and str(other.cert_path) in verdict
    assert probe_tls("127.0.0.1", stack.port, stack.confdir / "mitmproxy-ca-cert.pem") == ""


@pytest.mark.slow
@pytest.mark.skipif(not os.access(CLAUDE, os.X_OK), reason=f"no Claude Code at {CLAUDE}; "
                    "`bash scripts/install-clients.sh` installs it")
def test_real_claude_code_with_a_tool_round_trip(stack):
    before = len([r for r in stack.provider.requests if r.route.endswith("/chat/completions")])
    env = stack.env(ANTHROPIC_API_KEY=CLIENT_KEY, CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
                    DISABLE_TELEMETRY="1", DISABLE_ERROR_REPORTING="1",
                    DISABLE_AUTOUPDATER="1", PATH=f"{CLAUDE.parent}:{os.environ['PATH']}")
    run = stack.detour("run", "claude", "-p", "RUN: echo detour-run-ok", "--allowedTools",
                       "Bash", env=env)
    assert run.returncode == 0, run.stderr
    assert "using the proxy" in run.stderr
    chats = [r for r in stack.provider.requests if r.route.endswith("/chat/completions")]
    chats = chats[before:]
    assert len(chats) == 2, [r.path for r in stack.provider.requests]
    results = [m for m in chats[1].json["messages"] if m["role"] == "tool"]
    assert len(results) == 1 and "detour-run-ok" in json.dumps(results[0]["content"])
    assert "FAKE-TOOL-RESULT" in run.stdout


def test_stop_ends_it_with_its_rows_written(stack):
    pid = running_instance(stack.home).pid
    run = stack.detour("stop", timeout=40)
    assert run.returncode == 0, run.stderr
    assert f"stopped the proxy on http://127.0.0.1:{stack.port} (pid {pid})" in run.stderr
    assert not home_locked(stack.home)
    assert not (stack.home / "proxy.json").exists()
    rows = stack.rows()
    assert len(rows) >= 2
    assert {r["provider"] for r in rows} == {"fake"}
    assert "stopped" not in stack.detour("stop").stderr  # nothing left to stop
