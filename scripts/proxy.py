"""`detour up` (run the proxy) and `detour env` (the shell variables that send clients to it)."""

import errno
import os
import shlex
import shutil
import socket
import sys
import tempfile
from pathlib import Path

import click

import addons
from addons.config import DEFAULT_HOME, config_warnings, ensure_home, is_loopback
from addons.instance import Instance, home_locked, running_instance
from addons.users import users_path
from certs.ca import default_confdir
from certs.env import client_env, detect_shell, proxy_url, render_exports
from scripts.certs import prepare_trust
from scripts.config import checked_config
from scripts.options import (
    DEFAULT_HOST,
    DEFAULT_PORT,
    DetourError,
    Settings,
    address_options,
    pass_settings,
    shell_option,
)

DEFAULT_WEB_PORT = 8081
WRITE_CHECK_PREFIX = ".detour-write-check-"


def router_script() -> Path:
    """addons/router.py of the installed package: the `-s` script mitmproxy loads."""
    return Path(addons.__file__).parent / "router.py"


def mitmproxy_command(tool: str) -> list[str]:
    """How to run `tool` (mitmdump or mitmweb) from the venv detour runs in: its console script
    next to sys.executable, else the same entry point through this interpreter."""
    bin_dir = Path(sys.executable).parent  # not resolved: a venv's python is a symlink
    exe = shutil.which(tool, path=str(bin_dir))
    if exe:
        return [exe]
    return [
        sys.executable,
        "-c",
        f"import sys; from mitmproxy.tools.main import {tool}; sys.exit({tool}())",
    ]


def up_argv(
    *,
    home: Path,
    confdir: Path,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    web: bool = False,
    web_port: int = DEFAULT_WEB_PORT,
    quiet: bool = False,
    allow_remote: bool = False,
) -> list[str]:
    """The mitmdump (or mitmweb) command line that runs the router; argv[0] is the program."""
    argv = mitmproxy_command("mitmweb" if web else "mitmdump")
    argv += [
        "-s", str(router_script()),
        "--listen-host", host,
        "--listen-port", str(port),
        # absolute: a mitmproxy started with another HOME would mint a CA nobody trusts
        "--set", f"confdir={confdir}",
        "--set", f"detour_home={home}",
    ]  # fmt: skip
    if allow_remote:
        # the router refuses a non-loopback listen address unless told so
        argv += ["--set", "detour_allow_remote=true"]
    if web:
        argv += ["--web-port", str(web_port)]
    if quiet:
        argv.append("--quiet")
    return argv


def usable_home(home: Path) -> Path:
    """ensure_home, then a real write (root ignores file modes, not a read-only filesystem): a
    DETOUR_HOME detour cannot write is a one-line error naming it and the cause, here, rather
    than a traceback now or a proxy that fails to store usage later. Returns config.yaml's path."""
    try:
        config_path = ensure_home(home)
        fd, probe = tempfile.mkstemp(prefix=WRITE_CHECK_PREFIX, dir=home)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise DetourError(f"DETOUR_HOME {home} cannot be used: {os_cause(e)}") from None
    return config_path


def os_cause(error: OSError) -> str:
    """`Read-only file system: /x/y`: the cause and the path, a temporary file named by its
    folder (its own name says nothing to the user)."""
    if not error.filename:
        return error.strerror or str(error)
    path = Path(error.filename)
    if isinstance(error, NotADirectoryError):
        blocker = next((p for p in path.parents if p.is_file()), None)
        if blocker is not None:
            return f"{blocker} is a file, not a folder"
    if path.name.startswith(WRITE_CHECK_PREFIX) or (
            path.name.startswith(".") and path.name.endswith(".tmp")):  # the bundle's temp file
        path = path.parent
    return f"{error.strerror}: {path}"


def trust(settings: Settings):
    """prepare_trust, with a one-line error for a folder it cannot write (home or confdir)."""
    try:
        return prepare_trust(settings)
    except OSError as e:
        raise DetourError(f"cannot prepare the CA and trust bundle: {os_cause(e)}") from None


def port_problem(host: str, port: int) -> str | None:
    """Why mitmproxy could not listen on host:port, or None if it can. Binds as asyncio does
    (SO_REUSEADDR on POSIX), so a port that merely has connections in TIME_WAIT is free."""
    try:
        infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                   flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        return f"cannot resolve {host}: {e.strerror}"
    for family, kind, proto, _, addr in infos:
        with socket.socket(family, kind, proto) as s:
            if os.name != "nt":
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                if e.errno in (errno.EADDRINUSE, getattr(errno, "WSAEADDRINUSE", -1)):
                    return f"port {port} on {host or 'every interface'} is in use"
                return f"cannot listen on {host}:{port}: {e.strerror}"
    return None


def check_port(host: str, port: int, option: str = "--port") -> None:
    """detour's own message for a port it cannot listen on, before any banner (mitmproxy's
    would suggest its `--mode regular@PORT`)."""
    problem = port_problem(host, port)
    if problem:
        raise DetourError(f"{problem}: choose another with {option}, e.g. {option} {port + 10}")


def refuse_second_proxy(settings: Settings) -> None:
    """A second proxy on a home whose proxy already runs is refused, naming the first: two
    would share one database and its cooldowns unseen."""
    if not home_locked(settings.home):
        return
    other = Instance.read(settings.home)
    who = (f"pid {other.pid} on {proxy_url(other.client_host, other.port)}" if other
           else "still starting")
    raise DetourError(
        f"a detour proxy already runs for {settings.home} ({who}). Use it (`detour run TOOL`, "
        "`eval \"$(detour env)\"`), stop it (`detour stop`), or start another with --home DIR.")


def proxy_settings(settings: Settings, instance: Instance) -> Settings:
    """The settings of a running proxy: its CA is in the confdir it was started with, which a
    client must trust whatever --confdir this command got."""
    if not instance.confdir:
        return settings
    return Settings(home=settings.home, confdir=Path(instance.confdir))


def prepare_proxy(settings: Settings):
    """What a proxy needs before it starts: a usable DETOUR_HOME, a valid config.yaml, the
    router script, the CA and the trust bundle. Returns (config path, CA, bundle)."""
    config_path = usable_home(settings.home)
    config = checked_config(config_path)
    for warning in config_warnings(config):
        click.secho(f"detour: warning: {warning}", fg="yellow", err=True)
    router = router_script()
    if not router.is_file():
        raise DetourError(f"{router}: not found; is detour installed completely?")
    ca, bundle = trust(settings)
    return config_path, ca, bundle


def run_hint(settings: Settings) -> str:
    """`detour run` for this proxy's home (it finds the proxy, its port and CA from there)."""
    args = ["detour"]
    if settings.home != Path(DEFAULT_HOME).expanduser().resolve():
        args += ["--home", str(settings.home)]
    return shlex.join(args) + " run TOOL [ARGS]"


def env_hint(settings: Settings, host: str, port: int, shell: str) -> str:
    """The command that loads `detour env` in another shell, with the options it needs here."""
    args = ["detour"]
    if settings.home != Path(DEFAULT_HOME).expanduser().resolve():
        args += ["--home", str(settings.home)]
    if settings.confdir != default_confdir().absolute():
        args += ["--confdir", str(settings.confdir)]
    args.append("env")
    # a wildcard bind is reached through loopback on this machine
    if host not in ("0.0.0.0", "::", "") and host != DEFAULT_HOST:
        args += ["--host", host]
    if port != DEFAULT_PORT:
        args += ["--port", str(port)]
    if shell == "fish":
        return f"{shlex.join(args)} | source"
    if shell == "powershell":
        return f"{shlex.join([*args, '--shell', 'powershell'])} | Invoke-Expression"
    return f'eval "$({shlex.join(args)})"'


@click.command()
@address_options
@click.option("--web", is_flag=True, help="Run mitmweb (a browser UI) instead of mitmdump.")
@click.option(
    "--web-port",
    type=click.IntRange(1, 65535),
    default=DEFAULT_WEB_PORT,
    show_default=True,
    help="mitmweb UI port (with --web).",
)
@click.option("--quiet", "-q", is_flag=True, help="No banner; mitmproxy logs errors only.")
@click.option("--workers", type=click.IntRange(1, 64), default=1, show_default=True,
              help="mitmdump processes on the one port (SO_REUSEPORT), one per core; share "
              "their state with `state: redis://...` in config.yaml.")
@click.option(
    "--allow-remote",
    is_flag=True,
    help="Allow --host other than loopback without users (`detour user add`): no "
    "authentication then.",
)
@pass_settings
def up(
    settings: Settings,
    host: str,
    port: int,
    web: bool,
    web_port: int,
    quiet: bool,
    allow_remote: bool,
    workers: int = 1,
):
    """Run the proxy: mitmdump (or mitmweb with --web) with the detour router.

    Validates config.yaml first (writing the commented default if there is none), creates or
    reuses the mitmproxy CA and the trust bundle, then replaces itself with mitmproxy.

    \b
    Example:
        detour up --port 8080
        # in another shell:
        eval "$(detour env)" && claude
    """
    if workers > 1 and web:
        raise DetourError("--workers runs mitmdump processes: drop --web (one mitmweb per port)")
    if not is_loopback(host) and users_path(settings.home).exists():
        # detour's users authenticate every client (proxyauth, addons/gateway.py)
        click.echo(f"detour: listening on {host}: clients authenticate as detour's users "
                   "(detour user list)", err=True)
    elif not is_loopback(host):
        warning = (
            f"listening on {host} exposes the proxy to the network, and it has no"
            " authentication: anyone who can reach the port can spend your provider accounts"
            " (gateways like this one have been exploited through 0.0.0.0 binds)"
        )
        if not allow_remote:
            raise DetourError(f"refusing: {warning}. Pass --allow-remote to do it anyway.")
        click.secho(f"detour: WARNING: {warning}", fg="red", err=True)
    refuse_second_proxy(settings)
    check_port(host, port)
    if web:
        check_port(DEFAULT_HOST, web_port, "--web-port")  # mitmweb's UI listens on loopback
    config_path, ca, bundle = prepare_proxy(settings)
    argv = up_argv(
        home=settings.home,
        confdir=settings.confdir,
        host=host,
        port=port,
        web=web,
        web_port=web_port,
        quiet=quiet,
        allow_remote=allow_remote,
    )
    if not quiet:
        banner = [
            f"detour: proxy on {proxy_url(host, port)}"
            + (f", mitmweb UI on port {web_port} (its login URL follows)" if web else ""),
            f"  config  {config_path}",
            f"  CA      {ca.cert_path}  (SHA-256 {ca.fingerprint_sha256[:23]}...)",
            f"  bundle  {bundle}",
            f"in another shell: {env_hint(settings, host, port, detect_shell())}",
            f"  or run a tool through it: {run_hint(settings)}",
        ]
        if ca.expired:
            banner.insert(3, f"  WARNING: the CA expired on {ca.not_after:%Y-%m-%d}")
        click.echo("\n".join(banner), err=True)
    sys.stdout.flush()
    sys.stderr.flush()
    if workers > 1:
        from scripts.workers import run_workers, worker_argv
        mitmdump_args = argv[len(mitmproxy_command("mitmdump")):]
        sys.exit(run_workers(worker_argv(mitmdump_args), workers, home=settings.home,
                             host=host, port=port, confdir=settings.confdir))
    # exec, not a child: Ctrl-C and SIGTERM go straight to mitmproxy, which shuts down cleanly
    os.execv(argv[0], argv)


@click.command()
@address_options
@shell_option
@pass_settings
def env(settings: Settings, host: str, port: int, shell: str | None):
    """Print the variables that send a shell's tools through the proxy and make them trust it.

    HTTPS_PROXY and friends, NO_PROXY for loopback, NODE_EXTRA_CA_CERTS and
    CODEX_CA_CERTIFICATE (the CA), SSL_CERT_FILE, REQUESTS_CA_BUNDLE and CURL_CA_BUNDLE (the
    bundle of system CAs + ours). Creates the CA and the bundle if needed.

    \b
    Example:
        eval "$(detour env)"                          # bash, zsh
        detour env | source                           # fish
        detour env --shell powershell | Invoke-Expression
    """
    click_ctx = click.get_current_context()
    if all(click_ctx.get_parameter_source(name) is click.core.ParameterSource.DEFAULT
           for name in ("host", "port")):
        running = running_instance(settings.home)
        if running is not None:
            host, port = running.client_host, running.port
            settings = proxy_settings(settings, running)
    else:
        running = True  # the address was given: nothing to say
    ca, bundle = trust(settings)
    if running is None:
        click.echo(f"detour: no proxy is running for {settings.home} yet; these variables "
                   f"point at {proxy_url(host, port)} (start it with `detour up`, or run "
                   "a tool with `detour run TOOL`)", err=True)
    variables = client_env(proxy_url(host, port), ca.cert_path, bundle)
    click.echo(render_exports(variables, shell or detect_shell()), nl=False)
