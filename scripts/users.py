"""`detour user`: the gateway's users (<home>/users.htpasswd, addons/users.py). A running
proxy reloads the file within a second of a change."""

import click

from addons.users import (LIMIT_NAMES, NO_LIMIT, User, UserLimits, UsersError, check_name, editing,
                          hash_secret, new_secret, read_users, users_path, with_limits)
from scripts.options import DetourError, Settings, emit, output_options, pass_settings


class LimitValue(click.ParamType):
    """A non-negative number, or `none` (no limit)."""

    name = "N|none"

    def __init__(self, kind: type):
        self.kind = kind

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)) or value == NO_LIMIT:
            return value
        try:
            number = self.kind(value)
        except ValueError:
            self.fail(f"{value!r} is not a number or 'none'", param, ctx)
        if number < 0:
            self.fail("must not be negative", param, ctx)
        return number


@click.group()
def user():
    """The gateway's users: who may use the proxy, and their limits.

    Once a user exists, every client needs a user's credentials in its proxy URL (407
    otherwise), and the proxy serves the AI vendors' hosts only (and config `allow_hosts`).

    \b
    Example:
        detour user add alice --host gateway.example.com
        detour user limits alice --rpm 60 --usd-per-month 50
    """


@user.command()
@click.argument("name")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="The gateway's address as clients reach it (for the printed URL).")
@click.option("--port", "-p", type=click.IntRange(1, 65535), default=8080, show_default=True,
              help="The gateway's port (for the printed URL).")
@click.option("--rotate", is_flag=True, help="Give an existing user a new secret (the old one "
              "stops working at once).")
@pass_settings
def add(settings: Settings, name: str, host: str, port: int, rotate: bool):
    """Add a user and print its proxy URL, secret included (shown this once; only its hash
    is stored).

    \b
    Example:
        detour user add alice --host gateway.example.com
        # HTTPS_PROXY=http://alice:<secret>@gateway.example.com:8080
    """
    secret = new_secret()
    try:
        check_name(name)
        with editing(settings.home) as users:
            current = users.get(name)
            if current is not None and not rotate:
                raise DetourError(f"user {name!r} exists; `detour user add {name} --rotate` "
                                  "gives it a new secret")
            if current is None and rotate:
                raise DetourError(f"no user {name!r} to rotate")
            users[name] = User(name, hash_secret(secret),
                               current.limits if current else UserLimits())
    except UsersError as e:
        raise DetourError(str(e)) from None
    click.echo(f"HTTPS_PROXY=http://{name}:{secret}@{host}:{port}")


@user.command(name="list")
@output_options
@pass_settings
def list_(settings: Settings, as_json: bool):
    """List the users and their limits (never a secret).

    \b
    Example:
        detour user list --json
    """
    try:
        users = read_users(users_path(settings.home))
    except UsersError as e:
        raise DetourError(str(e)) from None
    if users is None:
        click.echo("no users: the proxy asks for no credentials (detour user add NAME)",
                   err=True)
        users = {}
    record = {name: {limit: getattr(u.limits, limit) for limit in LIMIT_NAMES}
              for name, u in users.items()}
    if as_json or not record:
        if as_json:
            emit({"users": record}, True)
        return
    for name, limits in record.items():
        shown = ", ".join(f"{k}={v:g}" for k, v in limits.items() if v is not None)
        click.echo(f"{name}  {shown or 'no limits'}")


@user.command()
@click.argument("name")
@pass_settings
def remove(settings: Settings, name: str):
    """Remove a user: a running proxy refuses it within a second, open connections too.

    \b
    Example:
        detour user remove alice
    """
    try:
        with editing(settings.home) as users:
            if users.pop(name, None) is None:
                raise DetourError(f"no user {name!r}")
    except UsersError as e:
        raise DetourError(str(e)) from None
    click.echo(f"removed {name}")


@user.command()
@click.argument("name")
@click.option("--rpm", type=LimitValue(int), help="Model calls per minute.")
@click.option("--tokens-per-day", type=LimitValue(int),
              help="Tokens (input, output and cache) per UTC day.")
@click.option("--usd-per-month", type=LimitValue(float),
              help="Cost in USD (config `prices`) per UTC calendar month.")
@output_options
@pass_settings
def limits(settings: Settings, name: str, rpm, tokens_per_day, usd_per_month, as_json: bool):
    """Set a user's limits (`none` removes one; 0 refuses every call) and print them. A call
    over a limit gets 429 in its client's format, with Retry-After.

    \b
    Example:
        detour user limits alice --rpm 60 --tokens-per-day 2000000 --usd-per-month 50
        detour user limits alice --rpm none
    """
    try:
        with editing(settings.home) as users:
            current = users.get(name)
            if current is None:
                raise DetourError(f"no user {name!r}")
            users[name] = updated = with_limits(current, rpm=rpm, tokens_per_day=tokens_per_day,
                                                usd_per_month=usd_per_month)
    except UsersError as e:
        raise DetourError(str(e)) from None
    emit({"user": name} | {limit: getattr(updated.limits, limit) for limit in LIMIT_NAMES},
         as_json)
