"""`detour config`: where config.yaml is, whether it is valid, and a commented default."""

import click

from addons.config import (Config, ConfigError, config_warnings, ensure_home, load_config,
                           resolve_api_key)
from scripts.options import DetourError, Settings, emit, output_options, pass_settings


def check_config(path) -> Config:
    """Load and validate config.yaml, and resolve every key (`env:NAME`, `file:PATH`), so that a
    missing variable or key file is reported now rather than when a request needs it.
    Raises ConfigError naming the field."""
    config = load_config(path)
    for name, provider in config.providers.items():
        for i, entry in enumerate(provider.api_keys):
            resolve_api_key(entry, f"{path}: providers.{name}.api_keys[{i}]")
    return config


def checked_config(path) -> Config:
    """check_config for commands: a ConfigError becomes a one-line error and exit code 2."""
    try:
        return check_config(path)
    except ConfigError as e:
        raise DetourError(str(e)) from None


@click.group()
def config():
    """The configuration file, <home>/config.yaml.

    \b
    Example:
        detour config check
    """


@config.command()
@pass_settings
def path(settings: Settings):
    """Print the path of config.yaml (whether or not it exists yet).

    \b
    Example:
        $EDITOR "$(detour config path)"
    """
    click.echo(settings.config_path)


@config.command()
@output_options
@pass_settings
def check(settings: Settings, as_json: bool):
    """Validate config.yaml: print "ok: N providers, M routes", or the bad field and exit 2.

    \b
    Example:
        detour config check && detour up
    """
    if not settings.config_path.exists():
        raise DetourError(
            f"{settings.config_path}: no such file"
            " (`detour config init` writes a commented default)"
        )
    cfg = checked_config(settings.config_path)
    counts = {
        "providers": len(cfg.providers),
        "routes": len(cfg.routes),
        "combos": len(cfg.combos),
    }
    warnings = config_warnings(cfg)
    if as_json:
        emit({"ok": True, "path": str(settings.config_path), **counts, "warnings": warnings},
             as_json=True)
    else:
        click.echo(
            f"ok: {counts['providers']} providers, {counts['routes']} routes,"
            f" {counts['combos']} combos ({settings.config_path})"
        )
        for warning in warnings:
            click.secho(f"warning: {warning}", fg="yellow", err=True)


@config.command()
@pass_settings
def init(settings: Settings):
    """Write the commented default config.yaml if there is none; never overwrites.

    \b
    Example:
        detour --home ./detour-home config init
    """
    existed = settings.config_path.exists()
    path = ensure_home(settings.home)
    click.echo(f"{'exists, left unchanged' if existed else 'wrote'}: {path}")
