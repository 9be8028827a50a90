"""`detour certs`: the mitmproxy CA and the trust bundle."""

import datetime
from pathlib import Path

import click

from certs.bundle import write_trust_bundle
from certs.ca import CA, CAError, ensure_ca
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
