"""What the `detour` commands share: the global settings object, the error type, and reusable
option bundles (like sqlite-utils' `output_options`)."""

import json
from dataclasses import dataclass
from pathlib import Path

import click

from addons.config import CONFIG_NAME
from certs.env import SHELLS

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
BUNDLE_NAME = "ca-bundle.pem"


class DetourError(click.ClickException):
    """A user-facing failure: one line on stderr, exit code 2 (bad configuration or usage)."""

    exit_code = 2

    def __init__(self, message: str):
        # one line, even for a YAML error that spans several
        super().__init__(" ".join(str(message).split()))


@dataclass(frozen=True, slots=True)
class Settings:
    """The global options, resolved once by the `cli` group."""

    home: Path  # DETOUR_HOME
    confdir: Path  # mitmproxy's confdir, where its CA lives

    @property
    def config_path(self) -> Path:
        return self.home / CONFIG_NAME

    @property
    def bundle_path(self) -> Path:
        return self.home / BUNDLE_NAME


pass_settings = click.make_pass_decorator(Settings)


def address_options(fn):
    """--host and --port of the proxy (where `detour up` listens, where clients connect)."""
    fn = click.option(
        "--port",
        "-p",
        type=click.IntRange(1, 65535),
        default=DEFAULT_PORT,
        show_default=True,
        help="Proxy port.",
    )(fn)
    fn = click.option(
        "--host",
        default=DEFAULT_HOST,
        show_default=True,
        help="Proxy address.",
    )(fn)
    return fn


def shell_option(fn):
    return click.option(
        "--shell",
        type=click.Choice(SHELLS),
        default=None,
        help="Syntax to print; default: from $SHELL, else bash.",
    )(fn)


def output_options(fn):
    """--json: machine-readable output instead of the aligned text."""
    return click.option("--json", "as_json", is_flag=True, help="Output JSON.")(fn)


def emit(record: dict, as_json: bool) -> None:
    """Print `record` as JSON, or as aligned `key  value` lines."""
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    width = max(len(k) for k in record)
    for key, value in record.items():
        click.echo(f"{key.replace('_', ' '):<{width}}  {value}")
