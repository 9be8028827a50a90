"""`detour certs`: the mitmproxy CA and the trust bundle."""

import datetime
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import click

from certs.bundle import write_trust_bundle
from certs.ca import CA, CAError, ensure_ca
from certs.trust_store import install_plan, with_privileges
from scripts.options import DetourError, Settings, emit, output_options, pass_settings


def prepare_ca(settings: Settings) -> CA:
    """The CA in the confdir, created if missing; says so on stderr when it was."""
    try:
        ca = ensure_ca(settings.confdir)
    except CAError as e:
        raise DetourError(str(e)) from None
    if ca.created:
        click.echo(f"detour: created a new mitmproxy CA in {ca.confdir}", err=True)
    return ca


def prepare_trust(settings: Settings) -> tuple[CA, Path]:
    """The CA and `<home>/ca-bundle.pem` (system CAs + ours), both created or refreshed."""
    ca = prepare_ca(settings)
    settings.home.mkdir(parents=True, exist_ok=True, mode=0o700)
    return ca, write_trust_bundle(ca, settings.bundle_path)


def describe(ca: CA) -> dict[str, object]:
    days = (ca.not_after - datetime.datetime.now(datetime.UTC)).days
    return {
        "subject": ca.subject,
        "sha256": ca.fingerprint_sha256,
        "not_before": ca.not_before.isoformat(),
        "not_after": ca.not_after.isoformat(),
        "status": "EXPIRED" if ca.expired else f"valid, {days} days left",
        "cert": str(ca.cert_path),
        "key": str(ca.key_path),
    }


@click.group()
def certs():
    """The mitmproxy CA that clients must trust, and the trust bundle.

    The CA lives in mitmproxy's confdir (--confdir, default ~/.mitmproxy); an existing one is
    reused, never replaced.

    \b
    Example:
        detour certs show
    """


@certs.command()
@pass_settings
def path(settings: Settings):
    """Print the path of the CA certificate (public PEM), creating the CA if needed.

    \b
    Example:
        NODE_EXTRA_CA_CERTS="$(detour certs path)" claude
    """
    click.echo(prepare_ca(settings).cert_path)


@certs.command()
@output_options
@pass_settings
def show(settings: Settings, as_json: bool):
    """Show the CA: subject, SHA-256 fingerprint, validity and files.

    \b
    Example:
        detour certs show --json
    """
    emit(describe(prepare_ca(settings)), as_json)


@certs.command()
@pass_settings
def bundle(settings: Settings):
    """Write <home>/ca-bundle.pem (system CAs + the mitmproxy CA) and print its path.

    For runtimes whose CA variable replaces their roots (SSL_CERT_FILE, REQUESTS_CA_BUNDLE,
    CURL_CA_BUNDLE): Python, curl, Codex.

    \b
    Example:
        curl --cacert "$(detour certs bundle)" -x http://127.0.0.1:8080 https://example.com
    """
    click.echo(prepare_trust(settings)[1])


def can_ask() -> bool:
    """Whether a person can answer a question on stdin."""
    return sys.stdin.isatty()


@certs.command()
@click.option("--yes", "-y", is_flag=True, help="Run the commands without asking.")
@click.option("--dry-run", is_flag=True, help="Only print the commands.")
@click.option("--user", "user_store", is_flag=True,
              help="The current user's store where the system has one (macOS login keychain, "
                   "Windows user Root store); no admin rights needed.")
@pass_settings
def install(settings: Settings, yes: bool, dry_run: bool, user_store: bool):
    """Trust the CA system-wide (Linux, macOS, Windows), with your consent.

    Prints the commands, asks, then runs them (sudo where the store is shared). Without a
    terminal to ask on, and with --dry-run, it only prints them. Tools on Node or Bun (Claude
    Code, Gemini CLI, Qwen Code) ignore the system store: `detour run` still gives them the CA.

    \b
    Example:
        detour cert install
        detour cert install --dry-run
    """
    ca = prepare_ca(settings)
    plan = install_plan(ca.cert_path, sys.platform, system_wide=not user_store)
    if not plan.supported:
        click.echo(f"detour: {plan.note}", err=True)
        raise SystemExit(1)
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    steps = [with_privileges(s, admin=plan.admin, is_root=is_root,
                             has_sudo=shutil.which("sudo") is not None) for s in plan.steps]
    click.echo(f"To trust {ca.cert_path} ({ca.subject}, SHA-256 "
               f"{ca.fingerprint_sha256[:23]}...) in the {plan.system} store:")
    for step in steps:
        click.echo(f"  {shlex.join(step)}")
    if plan.note:
        click.echo(f"Note: {plan.note}.")
    if dry_run:
        return
    if not yes:
        if not can_ask():
            click.echo("detour: not run (no terminal to ask on): run them yourself, or pass "
                       "--yes", err=True)
            return
        if not click.confirm("Run these commands?", default=False):
            click.echo("detour: nothing changed", err=True)
            return
    for step in steps:
        try:
            done = subprocess.run(step, check=False)
        except OSError as e:
            raise DetourError(f"{step[0]}: {e.strerror}; run the commands above yourself")
        if done.returncode != 0:
            raise DetourError(f"`{shlex.join(step)}` failed (exit {done.returncode}); "
                              "nothing after it was run")
    click.echo(f"detour: the CA is trusted in the {plan.system} store", err=True)
