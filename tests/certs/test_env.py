import shutil
import subprocess
from pathlib import Path

import pytest

from certs.env import SHELLS, client_env, detect_shell, proxy_url, render_exports

# Every character a shell could take for syntax: quotes (typographic too), $, `, \, ;, newline.
NASTY = "it's \"$HOME\" `id` $(id) \\n \\ ; & | * ~ ‘x’ ‚y‛\nsecond line"


def test_client_env_sends_everything_through_the_proxy_and_trusts_it():
    env = client_env("http://127.0.0.1:8080", Path("/c/ca.pem"), Path("/h/bundle.pem"), {})
    assert env == {
        "HTTPS_PROXY": "http://127.0.0.1:8080",
        "https_proxy": "http://127.0.0.1:8080",
        "HTTP_PROXY": "http://127.0.0.1:8080",
        "http_proxy": "http://127.0.0.1:8080",
        "NO_PROXY": "localhost,127.0.0.1,::1",
        "no_proxy": "localhost,127.0.0.1,::1",
        "NODE_EXTRA_CA_CERTS": "/c/ca.pem",
        "CODEX_CA_CERTIFICATE": "/c/ca.pem",
        "SSL_CERT_FILE": "/h/bundle.pem",
        "REQUESTS_CA_BUNDLE": "/h/bundle.pem",
        "CURL_CA_BUNDLE": "/h/bundle.pem",
    }


def test_no_proxy_keeps_what_the_user_already_exempts():
    env = client_env("http://127.0.0.1:8080", Path("/c/ca.pem"), Path("/h/bundle.pem"),
                     {"no_proxy": "intranet.corp, 127.0.0.1,.internal"})
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1,intranet.corp,.internal"


@pytest.mark.parametrize(
    "host,url",
    [
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("localhost", "http://localhost:8080"),
        ("::1", "http://[::1]:8080"),
    ],
)
def test_proxy_url(host, url):
    assert proxy_url(host, 8080) == url


def test_render_each_shell():
    env = {"A": "x y", "B": "it's"}
    assert render_exports(env, "bash") == "export A='x y'\nexport B='it'\\''s'\n"
    assert render_exports(env, "zsh") == render_exports(env, "bash")
    assert render_exports(env, "fish") == "set -gx A 'x y'\nset -gx B 'it\\'s'\n"
    assert render_exports(env, "powershell") == "$env:A = 'x y'\n$env:B = 'it''s'\n"


def test_fish_escapes_backslashes_and_powershell_doubles_typographic_quotes():
    assert render_exports({"A": "a\\'b"}, "fish") == "set -gx A 'a\\\\\\'b'\n"
    assert render_exports({"A": "a\u2019b"}, "powershell") == "$env:A = 'a\u2019\u2019b'\n"


def test_render_rejects_unknown_shells_and_bad_names():
    with pytest.raises(ValueError, match="unknown shell 'cmd'"):
        render_exports({"A": "1"}, "cmd")
    with pytest.raises(ValueError, match="not a variable name"):
        render_exports({"A;rm -rf /": "1"}, "bash")


# Run the output in each real shell that is installed: the value must come back byte for byte.
SHELL_RUNNERS = {
    "bash": (["bash", "--norc", "--noprofile", "-c"], 'printf %s "$V"'),
    "zsh": (["zsh", "-f", "-c"], 'printf %s "$V"'),
    "fish": (["fish", "--no-config", "-c"], 'printf %s "$V"'),
    "powershell": (
        ["pwsh", "-NoProfile", "-NonInteractive", "-Command"],
        "[Console]::Out.Write($env:V)",
    ),
}


@pytest.mark.parametrize("shell", SHELLS)
def test_a_real_shell_reads_the_value_back_unchanged(shell):
    argv, show = SHELL_RUNNERS[shell]
    if not shutil.which(argv[0]):
        pytest.skip(f"{argv[0]} is not installed")
    script = render_exports({"V": NASTY}, shell) + show
    out = subprocess.run([*argv, script], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout == NASTY


@pytest.mark.parametrize(
    "environ,shell",
    [
        ({"SHELL": "/bin/bash"}, "bash"),
        ({"SHELL": "/usr/bin/zsh"}, "zsh"),
        ({"SHELL": "/usr/local/bin/fish"}, "fish"),
        ({"SHELL": "/usr/bin/pwsh"}, "powershell"),
        ({"PSModulePath": "C:\\x"}, "powershell"),
        ({"SHELL": "/bin/tcsh"}, "bash"),
        ({}, "bash"),
    ],
)
def test_detect_shell(environ, shell):
    assert detect_shell(environ) == shell
