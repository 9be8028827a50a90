"""`detour run TOOL` (the proxy of this DETOUR_HOME, started in the background if none runs,
then the tool through it) and `detour stop` (that background proxy, stopped cleanly).

A proxy is found through DETOUR_HOME's lock and state file (addons/instance.py), whoever
started it: `detour up` in another terminal, an earlier `detour run`, or a plain
`mitmdump -s addons/router.py`.
"""

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import click

from addons.instance import LOG_NAME, Instance, home_locked, running_instance
from certs.env import proxy_url, tool_env
from scripts.options import DEFAULT_HOST, DEFAULT_PORT, DetourError, Settings, pass_settings
from scripts.progress import Spinner
from scripts.proxy import (check_port, port_problem, prepare_proxy, proxy_settings,
                           refuse_second_proxy, trust, up_argv)

START_TIMEOUT = 60.0  # seconds for a background proxy to listen
STOP_TIMEOUT = 20.0  # seconds for it to flush its rows and exit after SIGTERM
LOG_KEEP_BYTES = 5 << 20  # a background proxy's log is rotated once past this at a start
# npm packages of the tools people run through detour, for "command not found"
KNOWN_TOOLS = {
    "claude": "@anthropic-ai/claude-code",
    "codex": "@openai/codex",
    "gemini": "@google/gemini-cli",
    "qwen": "@qwen-code/qwen-code",
    "cline": "cline",
    "opencode": "opencode-ai",
}

# The tool gets none of detour's own variables but DETOUR_HOME (a `detour` command it runs finds
# this home): DETOUR_CREDENTIALS_KEY decrypts every stored login and key, and
# DETOUR_CREDENTIALS_KEY_FILE says where that key is; the rest (DETOUR_KEY_BACKEND,
# DETOUR_OAUTH_*, the proxy's workers, metrics port and profiling) configure detour, not the tool.
# The proxy started here still gets them all.
TOOL_KEEPS = frozenset({"DETOUR_HOME"})


class ToolNotFound(DetourError):
    exit_code = 127  # what a shell answers for a command it cannot find


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- the background proxy


def start_background(settings: Settings, host: str, port: int | None) -> Instance:
    """Start the proxy as a detached process logging to DETOUR_HOME/proxy.log and wait until it
    listens. `port` None: 8080, or a free port when 8080 is taken."""
    refuse_second_proxy(settings)
    if port is None:
        port = DEFAULT_PORT if port_problem(host, DEFAULT_PORT) is None else free_port(host)
    else:
        check_port(host, port)
    prepare_proxy(settings)
    log_path = settings.home / LOG_NAME
    _rotate(log_path)
    argv = up_argv(home=settings.home, confdir=settings.confdir, host=host, port=port)
    env = {**os.environ, "DETOUR_PROXY_LOG": str(log_path)}
    with open(log_path, "ab") as log:
        log.write(f"\n==== detour: proxy starting {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                  f"{' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=env, cwd=settings.home,
                                **_detached())
    with Spinner(f"starting a proxy in the background on {proxy_url(host, port)}"):
        instance = _wait_listening(settings.home, proc, log_path)
    return instance


def _still_starting(home: Path) -> Instance | None:
    """A proxy that holds the home's lock but has not said where it listens yet (another
    `detour run` starting it at this moment): waited for."""
    deadline = time.monotonic() + START_TIMEOUT
    while home_locked(home):
        instance = Instance.read(home)
        if instance is not None:
            return instance
        if time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return running_instance(home)


def _detached() -> dict:
    """Its own session: Ctrl-C in the tool's terminal must not stop the shared proxy."""
    if os.name == "nt":  # pragma: no cover
        return {"creationflags": subprocess.CREATE_NEW_PROCESS_GROUP
                | subprocess.DETACHED_PROCESS}
    return {"start_new_session": True}


def _wait_listening(home: Path, proc: subprocess.Popen, log_path: Path) -> Instance:
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        code = proc.poll()
        if code is not None:
            raise DetourError(f"the proxy exited (code {code}) before it listened; its log "
                              f"({log_path}) ends with: {_tail(log_path)}")
        instance = Instance.read(home)
        if instance is not None and instance.pid == proc.pid:
            return instance  # written once mitmproxy's server is bound
        if time.monotonic() > deadline:
            proc.terminate()
            raise DetourError(f"the proxy did not listen within {START_TIMEOUT:.0f} s; its log "
                              f"({log_path}) ends with: {_tail(log_path)}")
        time.sleep(0.05)


def _rotate(log_path: Path) -> None:
    try:
        if log_path.stat().st_size > LOG_KEEP_BYTES:
            os.replace(log_path, log_path.with_name(log_path.name + ".1"))
    except OSError:
        pass


def _tail(path: Path, lines: int = 6) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return "(no log)"
    start = max((i for i, line in enumerate(text) if line.startswith("==== detour:")),
                default=0)
    return " | ".join(text[start + 1:][-lines:]) or "(nothing)"


def stop_instance(home: Path, timeout: float = STOP_TIMEOUT) -> Instance | None:
    """Stop this home's proxy (SIGTERM: mitmproxy shuts down, detour flushes its usage rows)
    and wait until it released the lock. Returns what was stopped, or None if none ran."""
    instance = running_instance(home)
    if instance is None:
        if home_locked(home):
            raise DetourError(f"a proxy holds {home}'s lock but has not said where it "
                              "listens yet (still starting?); try again in a moment")
        return None
    try:
        os.kill(instance.pid, signal.SIGTERM)
    except ProcessLookupError:
        return instance  # it ended meanwhile
    except PermissionError:
        raise DetourError(f"not allowed to stop pid {instance.pid} (another user's proxy?)")
    deadline = time.monotonic() + timeout
    with Spinner(f"stopping the proxy (pid {instance.pid})"):
        while home_locked(home):
            if time.monotonic() > deadline:
                raise DetourError(
                    f"the proxy (pid {instance.pid}) is still running {timeout:.0f} s after "
                    f"SIGTERM; `kill -9 {instance.pid}` ends it (usage rows not yet written "
                    "are then lost)")
            time.sleep(0.05)
    return instance


# ---------------------------------------------------------------- commands


@click.command(context_settings={"ignore_unknown_options": True,
                                 "allow_interspersed_args": False})
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=None,
              help="Port of a proxy started here.  [default: 8080, or a free one if taken]")
@click.option("--quiet", "-q", is_flag=True, help="Say nothing before the tool starts.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED,
                metavar="TOOL [ARGS]...")
@pass_settings
def run(settings: Settings, port: int | None, quiet: bool, command: tuple[str, ...]):
    """Run TOOL [ARGS...] through the proxy of this DETOUR_HOME.

    Uses the proxy already running for it, or starts one in the background (it keeps running
    for the next tool; `detour stop` stops it). The tool gets HTTPS_PROXY and the variables
    that make it trust the proxy's CA (NODE_EXTRA_CA_CERTS, SSL_CERT_FILE,
    REQUESTS_CA_BUNDLE, CODEX_CA_CERTIFICATE, ...), and none of detour's own variables
    (DETOUR_CREDENTIALS_KEY and the rest) but DETOUR_HOME, set to the home this run used.
    Its exit code is detour's.

    \b
    Example:
        detour run claude -p "Say hi"
        detour run -- codex exec "fix the tests"
        detour run --port 9000 gemini
    """
    # the home this run used (`--home` wins over the shell's DETOUR_HOME): a `detour` command
    # the tool runs finds this proxy's home, not another
    env = without_detour_variables(os.environ) | {"DETOUR_HOME": str(settings.home)}
    tool = command[0]
    path = _which(tool, env.get("PATH"))
    instance = running_instance(settings.home) or _still_starting(settings.home)
    if instance is None:
        instance = start_background(settings, DEFAULT_HOST, port)
        said = (f"started a proxy in the background on "
                f"{proxy_url(instance.client_host, instance.port)} (pid {instance.pid}; log "
                f"{instance.log or settings.home / LOG_NAME}; `detour stop` stops it)")
    else:
        if port is not None and port != instance.port:
            raise DetourError(
                f"the proxy of {settings.home} already runs on port {instance.port}, not "
                f"{port}: drop --port, or `detour stop` it first")
        said = (f"using the proxy on {proxy_url(instance.client_host, instance.port)} "
                f"(pid {instance.pid})")
    ca, bundle = trust(proxy_settings(settings, instance))
    env.update(tool_env(proxy_url(instance.client_host, instance.port), ca.cert_path, bundle,
                        env))
    if not quiet:
        click.echo(f"detour: {said}", err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    argv = [tool, *command[1:]]
    if os.name == "nt":  # pragma: no cover - no exec that keeps the console there
        sys.exit(subprocess.call([path, *argv[1:]], env=env))
    # exec: the tool owns the terminal, its signals and its exit code
    os.execve(path, argv, env)


def without_detour_variables(environ: Mapping[str, str]) -> dict[str, str]:
    """`environ` less detour's own variables (TOOL_KEEPS stay): what a tool starts from."""
    return {name: value for name, value in environ.items()
            if not name.upper().startswith("DETOUR_") or name.upper() in TOOL_KEEPS}


def _which(tool: str, path_var: str | None) -> str:
    import shutil

    found = shutil.which(tool, path=path_var)
    if found:
        return found
    if os.sep in tool or (os.altsep and os.altsep in tool):
        raise ToolNotFound(f"{tool}: no such executable file")
    hint = ""
    if tool in KNOWN_TOOLS:
        hint = f"; install it with `npm install -g {KNOWN_TOOLS[tool]}`, or give its path"
    raise ToolNotFound(f"{tool}: command not found on PATH{hint}")


@click.command()
@pass_settings
def stop(settings: Settings):
    """Stop the proxy running for this DETOUR_HOME (usage rows are written before it exits).

    \b
    Example:
        detour stop
    """
    stopped = stop_instance(settings.home)
    if stopped is None:
        click.echo(f"detour: no proxy is running for {settings.home}", err=True)
        return
    click.echo(f"detour: stopped the proxy on {proxy_url(stopped.client_host, stopped.port)} "
               f"(pid {stopped.pid})", err=True)
