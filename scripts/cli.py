"""The `detour` command: one click group, its commands split by noun into scripts/<noun>.py."""

from pathlib import Path

import click

from addons.config import home_dir
from certs.ca import DEFAULT_CONFDIR
from scripts.background import run, stop
from scripts.account import account
from scripts.certs import certs
from scripts.config import config
from scripts.doctor import doctor
from scripts.options import Settings
from scripts.proxy import env, up
from scripts.usage import usage
from scripts.status import status
from scripts.users import user


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="detour")
@click.option(
    "--home",
    envvar="DETOUR_HOME",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="detour's directory: config.yaml, detour.db, ca-bundle.pem.  [default: ~/.detour]",
)
@click.option(
    "--confdir",
    type=click.Path(file_okay=False, path_type=Path),
    default=DEFAULT_CONFDIR,
    show_default=True,
    help="mitmproxy's confdir, where its CA lives.",
)
@click.pass_context
def cli(ctx: click.Context, home: Path | None, confdir: Path):
    """Run unmodified AI coding CLIs against any provider and account, through mitmproxy.

    \b
    Example:
        detour up                 # the proxy, on 127.0.0.1:8080
        eval "$(detour env)"      # in another shell: send its tools through it
        claude                    # now routed by <home>/config.yaml
    """
    ctx.obj = Settings(
        home=home_dir(str(home) if home else None),
        confdir=confdir.expanduser().absolute(),
    )


cli.add_command(up)
cli.add_command(env)
cli.add_command(certs)
# `detour cert install` reads as a sentence; the same group, not listed twice
cli.add_command(click.Group("cert", commands=certs.commands, help=certs.help, hidden=True))
cli.add_command(config)
cli.add_command(usage)
cli.add_command(run)
cli.add_command(stop)
cli.add_command(status)
cli.add_command(doctor)
cli.add_command(user)
cli.add_command(account)
