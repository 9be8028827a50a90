"""`detour up` (argument building, guard, banner; exec replaced) and `detour env`."""

import os
import re
import ssl
import subprocess
import sys
import textwrap
from pathlib import Path

import httpx
import pytest

import addons
import scripts.proxy
from certs.ca import ensure_ca
from scripts.proxy import env_hint, is_loopback, mitmproxy_command, router_script, up_argv
from scripts.options import Settings

VENV_BIN = Path(sys.executable).parent


@pytest.fixture
def fake_router(tmp_path, monkeypatch) -> Path:
    """A stand-in for addons/router.py, so `up` runs whether or not the router exists yet."""
    router = tmp_path / "router.py"
    router.write_text("addons = []\n")
    monkeypatch.setattr(scripts.proxy, "router_script", lambda: router)
    return router


@pytest.fixture
def execs(monkeypatch) -> list[list[str]]:
    """Replace os.execv: record what `up` would run instead of becoming mitmproxy."""
    calls: list[list[str]] = []

    def fake_execv(path, argv):
        assert path == argv[0]
        calls.append(list(argv))

    monkeypatch.setattr(scripts.proxy.os, "execv", fake_execv)
    # nothing listens here: whether this machine's 8080 is taken is test_background's matter
    monkeypatch.setattr(scripts.proxy, "port_problem", lambda host, port: None)
    return calls


def test_router_script_is_the_installed_addons_router():
    assert router_script() == Path(addons.__file__).parent / "router.py"


def test_up_argv_runs_mitmdump_from_this_venv(tmp_path):
    argv = up_argv(home=tmp_path / "h", confdir=tmp_path / "c")
    assert argv == [
        str(VENV_BIN / "mitmdump"),
        "-s", str(router_script()),
        "--listen-host", "127.0.0.1",
        "--listen-port", "8080",
        "--set", f"confdir={tmp_path / 'c'}",
        "--set", f"detour_home={tmp_path / 'h'}",
    ]  # fmt: skip


def test_up_argv_web_and_quiet(tmp_path):
    argv = up_argv(
        home=tmp_path, confdir=tmp_path, host="::1", port=9000, web=True, web_port=9001, quiet=True
    )
    assert argv[0] == str(VENV_BIN / "mitmweb")
    assert argv[argv.index("--listen-host") + 1] == "::1"
    assert argv[argv.index("--listen-port") + 1] == "9000"
    assert argv[-3:] == ["--web-port", "9001", "--quiet"]


def test_without_the_console_script_the_interpreter_runs_mitmproxy(tmp_path, monkeypatch):
    monkeypatch.setattr(scripts.proxy.sys, "executable", str(tmp_path / "bin" / "python"))
    cmd = mitmproxy_command("mitmdump")
    assert cmd[:2] == [str(tmp_path / "bin" / "python"), "-c"]
    assert "from mitmproxy.tools.main import mitmdump" in cmd[2]


def test_the_fallback_invocation_really_starts_mitmproxy(monkeypatch):
    monkeypatch.setattr(scripts.proxy.shutil, "which", lambda *a, **k: None)
    cmd = mitmproxy_command("mitmdump")
    assert cmd[0] == sys.executable
    out = subprocess.run([*cmd, "--version"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "Mitmproxy:" in out.stdout


@pytest.mark.parametrize(
    "host,loopback",
    [
        ("127.0.0.1", True),
        ("127.0.0.2", True),
        ("localhost", True),
        ("::1", True),
        ("[::1]", True),
        ("0.0.0.0", False),
        ("::", False),
        ("", False),
        ("192.168.1.10", False),
        ("myhost.example", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_up_checks_config_makes_ca_and_bundle_then_execs(detour, home, confdir, fake_router, execs):
    result = detour("up")

    assert len(execs) == 1
    argv = execs[0]
    assert argv == up_argv(home=home, confdir=confdir)
    assert argv[argv.index("-s") + 1] == str(fake_router)
    assert (home / "config.yaml").exists()  # the commented default, written first
    assert (confdir / "mitmproxy-ca.pem").exists()
    assert (home / "ca-bundle.pem").read_bytes().endswith(ensure_ca(confdir).cert_pem)
    banner = result.stderr
    assert "proxy on http://127.0.0.1:8080" in banner
    assert str(home / "config.yaml") in banner
    assert str(confdir / "mitmproxy-ca-cert.pem") in banner
    hint = f'in another shell: eval "$(detour --home {home} --confdir {confdir} env)"'
    assert hint in banner
    assert f"or run a tool through it: detour --home {home} run TOOL [ARGS]" in banner
    assert result.stdout == ""


def test_up_web_quiet_on_another_port(detour, home, confdir, fake_router, execs):
    result = detour("up", "--web", "--web-port", "9091", "--port", "9090", "--quiet")
    assert execs == [
        up_argv(home=home, confdir=confdir, port=9090, web=True, web_port=9091, quiet=True)
    ]
    assert "proxy on" not in result.output  # no banner


def test_up_refuses_a_remote_bind_without_allow_remote(detour, home, confdir, fake_router, execs):
    result = detour("up", "--host", "0.0.0.0", expect=2)
    assert execs == []
    assert "no authentication" in result.stderr and "--allow-remote" in result.stderr
    assert not home.exists() and not confdir.exists()  # refused before anything was made


def test_up_with_allow_remote_warns_and_runs(detour, home, confdir, fake_router, execs):
    result = detour("up", "--host", "0.0.0.0", "--allow-remote")
    assert "WARNING" in result.stderr and "no authentication" in result.stderr
    assert execs == [up_argv(home=home, confdir=confdir, host="0.0.0.0", allow_remote=True)]
    assert "detour_allow_remote=true" in execs[0]  # the router would refuse 0.0.0.0 otherwise
    # clients on this machine reach a wildcard bind through loopback
    assert f"--confdir {confdir} env)" in result.stderr


def test_up_with_a_bad_config_fails_before_starting_anything(
    detour, home, confdir, fake_router, execs
):
    home.mkdir()
    (home / "config.yaml").write_text("routes:\n  x: [ghost/model]\n")
    result = detour("up", expect=2)
    assert execs == []
    assert "routes.x[0]" in result.stderr and "unknown provider 'ghost'" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not confdir.exists()  # no CA made for a proxy that never started


def test_up_without_the_router_is_an_error(detour, tmp_path, monkeypatch, execs):
    monkeypatch.setattr(scripts.proxy, "router_script", lambda: tmp_path / "nope" / "router.py")
    result = detour("up", expect=2)
    assert "router.py: not found" in result.stderr and execs == []


def test_env_hint_follows_the_shell_and_the_options(tmp_path):
    default = Settings(
        home=Path("~/.detour").expanduser().resolve(), confdir=Path.home() / ".mitmproxy"
    )
    assert env_hint(default, "127.0.0.1", 8080, "bash") == 'eval "$(detour env)"'
    assert env_hint(default, "127.0.0.1", 9090, "zsh") == 'eval "$(detour env --port 9090)"'
    assert env_hint(default, "::1", 8080, "fish") == "detour env --host ::1 | source"
    assert (
        env_hint(default, "0.0.0.0", 8080, "powershell")
        == "detour env --shell powershell | Invoke-Expression"
    )
    odd = Settings(home=tmp_path / "my home", confdir=Path.home() / ".mitmproxy")
    assert env_hint(odd, "127.0.0.1", 8080, "bash") == (
        f"eval \"$(detour --home '{tmp_path / 'my home'}' env)\""
    )


# ---- detour env


def test_env_bash_output_evaluates_to_the_client_variables(detour, home, confdir):
    out = detour("env", "--shell", "bash").stdout
    assert out.startswith("export HTTPS_PROXY='http://127.0.0.1:8080'\n")
    shown = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", out + "env"],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": os.environ["PATH"]},
    ).stdout
    variables = dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)
    assert variables["HTTPS_PROXY"] == variables["https_proxy"] == "http://127.0.0.1:8080"
    assert variables["HTTP_PROXY"] == "http://127.0.0.1:8080"
    assert variables["NO_PROXY"] == "localhost,127.0.0.1,::1"
    assert variables["NODE_EXTRA_CA_CERTS"] == str(confdir / "mitmproxy-ca-cert.pem")
    assert variables["CODEX_CA_CERTIFICATE"] == str(confdir / "mitmproxy-ca-cert.pem")
    for name in ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        assert variables[name] == str(home / "ca-bundle.pem")
    # what they point at exists
    assert Path(variables["NODE_EXTRA_CA_CERTS"]).is_file()
    assert Path(variables["SSL_CERT_FILE"]).is_file()


@pytest.mark.parametrize(
    "shell,first_line",
    [
        ("bash", "export HTTPS_PROXY='http://127.0.0.1:9999'"),
        ("zsh", "export HTTPS_PROXY='http://127.0.0.1:9999'"),
        ("fish", "set -gx HTTPS_PROXY 'http://127.0.0.1:9999'"),
        ("powershell", "$env:HTTPS_PROXY = 'http://127.0.0.1:9999'"),
    ],
)
def test_env_for_each_shell(detour, shell, first_line):
    lines = detour("env", "--shell", shell, "--port", "9999").stdout.splitlines()
    assert lines[0] == first_line
    assert len(lines) == 11


def test_env_shell_defaults_from_SHELL(detour, monkeypatch):
    monkeypatch.setenv("SHELL", "/usr/bin/fish")
    assert detour("env").stdout.startswith("set -gx ")


def test_env_ipv6_host(detour):
    assert detour("env", "--host", "::1", "--shell", "bash").stdout.startswith(
        "export HTTPS_PROXY='http://[::1]:8080'\n"
    )


def test_env_keeps_stdout_pure_for_eval(detour):
    result = detour("env", "--shell", "bash")
    assert "created a new mitmproxy CA" in result.stderr  # the note goes to stderr
    assert all(line.startswith("export ") for line in result.stdout.splitlines())


def test_env_rejects_an_unknown_shell(detour):
    result = detour("env", "--shell", "cmd", expect=2)
    assert "'cmd' is not one of" in result.stderr


# ---- the real thing: mitmdump started with up_argv signs with our CA, the bundle trusts it

STUB_ROUTER = '''
from mitmproxy import ctx, http


class StubRouter:
    """Declares detour_home like the real router and answers every request itself."""

    def load(self, loader):
        loader.add_option("detour_home", str, "", "detour's home")

    def running(self):
        ctx.options.connection_strategy = "lazy"

    def request(self, flow):
        body = f"home={ctx.options.detour_home} confdir={ctx.options.confdir}"
        flow.response = http.Response.make(200, body.encode())


addons = [StubRouter()]
'''


def test_mitmdump_runs_with_up_argv_and_clients_trust_it_through_the_bundle(
    detour, home, confdir, tmp_path, monkeypatch
):
    router = tmp_path / "stub_router.py"
    router.write_text(textwrap.dedent(STUB_ROUTER))
    monkeypatch.setattr(scripts.proxy, "router_script", lambda: router)
    bundle = Path(detour("certs", "bundle").stdout.strip())
    argv = up_argv(home=home, confdir=confdir, port=0)

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        port, seen = None, []
        for line in proc.stdout:
            seen.append(line)
            if m := re.search(r"proxy listening at .*:(\d+)", line):
                port = int(m.group(1))
                break
        assert port, "".join(seen)
        context = ssl.create_default_context(cafile=str(bundle))
        with httpx.Client(
            proxy=f"http://127.0.0.1:{port}", verify=context, trust_env=False, timeout=20
        ) as client:
            response = client.get("https://api.vendor.test/v1/messages")
        assert response.status_code == 200
        assert response.text == f"home={home} confdir={confdir}"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        proc.stdout.close()
