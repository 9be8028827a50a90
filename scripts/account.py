"""`detour account`: the accounts detour holds itself (API keys, subscription logins), kept in
<home>/detour.db, or the Postgres database of config.yaml's `database:`, with their secrets
encrypted (addons/credentials). They join the accounts of the config.yaml provider of the same
name; a running proxy picks up every change within about a second."""

import asyncio
import contextlib
import itertools
import sys
import time
import webbrowser

import click
import httpx

from addons import formats
from addons.config import ConfigError, load_config
from addons.credentials import importers, logins, oauth
from addons.credentials.logins import LoginFailed
from addons.credentials.provider import CredentialProvider, NeedsLogin, RefreshFailed
from addons.credentials.store import (API_KEY, OAUTH, AccountError, AccountStoreBase,
                                      StoredAccount, StoreUnavailable, open_account_store)
from addons.credentials.vault import VaultError
from addons.credentials.vendors import VENDORS
from addons.routing import Account, account_label
from scripts.options import DetourError, Settings, output_options, pass_settings
from scripts.status import DatabaseUnreadable, rest_rows

# a cheap call per provider kind that needs a valid credential: the model list
TEST_PATHS = {"openai": "/models", "openai-responses": "/models", "anthropic": "/v1/models",
              "codex": "/models", "gemini": "/models",
              "copilot": "/models", "copilot-responses": "/models", "qwen": "/models",
              "iflow": "/models"}


def open_store(settings: Settings) -> AccountStoreBase:
    """The store config.yaml names: the Postgres database of `database:` (this home's
    detour.db accounts imported into it once, said on stderr), else detour.db."""
    try:
        database = load_config(settings.config_path).database
    except ConfigError as e:
        if settings.config_path.exists():  # it may name a shared database: never guess
            raise DetourError(str(e)) from None
        database = None
    try:
        store = open_account_store(settings.home, database,
                                   lambda line: click.echo(line, err=True))
    except Exception as e:  # a database that is not one, a read-only home, Postgres away
        where = "" if database else f"{settings.home / 'detour.db'}: "
        raise DetourError(f"{where}{e}") from None
    ctx = click.get_current_context(silent=True)
    if ctx is not None:  # its kept connection closed when the command ends
        ctx.call_on_close(store.close)
    return store


def load_providers(settings: Settings) -> dict:
    try:
        return load_config(settings.config_path).providers
    except ConfigError as e:
        raise DetourError(str(e)) from None


def _fail(e: Exception) -> DetourError:
    return DetourError(str(e))


class _AccountGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except StoreUnavailable as e:  # Postgres gone mid-command: one line, no traceback
            raise DetourError(str(e)) from None


@click.group(cls=_AccountGroup)
def account():
    """Accounts detour holds: API keys and subscription logins, encrypted in detour.db.

    \b
    Example:
        detour account add deepseek --api-key     # asks for the key (hidden)
        detour account list
    """


@account.command()
@click.argument("provider")
@click.option("--api-key", "api_key", is_flag=True, required=True,
              help="Read an API key: a hidden prompt, or stdin when it is not a terminal.")
@click.option("--name", help="Its name within the provider (default key-N).")
@click.option("--priority", type=click.IntRange(0), default=1, show_default=True,
              help="Its group: lower groups are asked first.")
@pass_settings
def add(settings: Settings, provider: str, api_key: bool, name: str | None, priority: int):
    """Add an API key to PROVIDER (a provider of config.yaml).

    \b
    Example:
        detour account add deepseek --api-key --name work
        pass show deepseek | detour account add deepseek --api-key
    """
    providers = load_providers(settings)
    if provider not in providers:
        raise DetourError(f"no provider {provider!r} in {settings.config_path} (configured: "
                          f"{', '.join(providers) or 'none'}); add it there first")
    if sys.stdin.isatty():
        key = click.prompt("API key", hide_input=True)
    else:
        key = sys.stdin.readline()
    key = key.strip()
    if not key:
        raise DetourError("no key given")
    store = open_store(settings)
    try:
        acct = store.add(provider, name, API_KEY, {"api_key": key}, priority=priority)
    except (AccountError, VaultError) as e:
        raise _fail(e) from None
    click.echo(f"added {provider}/{acct.name} (encrypted in {store.where})")


def _when(ts: float | None) -> str:
    if ts is None:
        return ""
    left = ts - time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))
    if left <= 0:
        return f"{stamp} (expired)"
    return f"{stamp} (in {_duration(left)})"


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 120:
        return f"{seconds}s"
    if seconds < 7200:
        return f"{seconds // 60}m"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


def account_rows(settings: Settings) -> list[dict]:
    """Every account: config.yaml's keys (by label) and the stored ones; never a secret. Rests
    that cannot be read: each cooldown is "unknown", and cooldown_error says why."""
    store = open_store(settings)
    try:
        config = load_config(settings.config_path)
        providers, database = config.providers, config.database
    except ConfigError:
        providers, database = {}, None
    # resting keys (`provider/label`, also per model) -> (until, reason)
    try:
        rests, unread = {k: (u, r) for k, u, r, _ in
                         rest_rows(settings.home / "detour.db", database)}, None
    except DatabaseUnreadable as e:
        rests, unread = {}, f"rests not read: {e}"
    rows = []
    for pname, spec in providers.items():
        for i, entry in enumerate(spec.api_keys):
            ref = entry if isinstance(entry, str) else entry.key
            disabled = not isinstance(entry, str) and entry.disabled
            label = account_label(ref, ref, i)
            rows.append({"provider": pname, "name": label, "source": "config.yaml",
                         "kind": API_KEY, "state": "disabled" if disabled else "ready",
                         "priority": 1 if isinstance(entry, str) else entry.priority,
                         "plan": "", "email": "", "expires": "", "last_error": "",
                         "cooldown": _rest(rests, f"{pname}/{label}")})
    for a in store.accounts():
        rows.append({"provider": a.provider, "name": a.name,
                     "source": ("postgres" if database else "detour.db")
                               + ("" if a.provider in providers
                                              else " (provider not in config.yaml)"),
                     "kind": a.kind if a.kind == API_KEY else f"{OAUTH} ({a.vendor})",
                     "state": a.state, "priority": a.priority, "plan": a.plan or "",
                     "email": a.email or "", "expires": _when(a.expires_at),
                     "last_error": a.last_error or "",
                     "cooldown": _rest(rests, f"{a.provider}/{a.label}")})
    if unread:
        for row in rows:
            row.update(cooldown="unknown", cooldown_error=unread)
    return rows


def _rest(rests: dict, key: str) -> str:
    mine = [(u, r, k) for k, (u, r) in rests.items() if k == key or k.startswith(key + "@")]
    if not mine:
        return ""
    until, reason, k = max(mine)
    model = k.partition("@")[2]
    return f"{reason} {_duration(until - time.time())}" + (f" ({model})" if model else "")


@account.command("list")
@output_options
@pass_settings
def list_(settings: Settings, as_json: bool):
    """Every account: state, plan, token expiry, last error, cooldown (never a secret).

    \b
    Example:
        detour account list
        detour account list --json
    """
    rows = account_rows(settings)
    if as_json:
        import json
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no accounts (config.yaml has no api_keys; nothing stored)")
        return
    colours = {"ready": "green", "needs login": "red", "disabled": "bright_black"}
    print_table(("provider", "name", "kind", "state", "prio", "plan / email", "expires",
                 "cooldown", "last error", "source"),
                [(r["provider"], r["name"], r["kind"], STATE_WORDS.get(r["state"], r["state"]),
                  str(r["priority"]),
                  " ".join(x for x in (r["plan"], r["email"]) if x), r["expires"],
                  r["cooldown"], r["last_error"], r["source"]) for r in rows],
                {3: lambda v: colours.get(v)})
    if rows[0].get("cooldown_error"):
        click.echo(rows[0]["cooldown_error"], err=True)


# how the table says a state (`--json` keeps the stored value: needs_login)
STATE_WORDS = {"needs_login": "needs login"}


def print_table(header, rows, colour_of=None) -> None:
    """Aligned columns, the header bold and some cells coloured on a terminal (plain text
    when piped); a long last error is cut so a row stays one line."""
    cells = [[str(c) for c in header]] + [[str(c)[:80] for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for n, row in enumerate(cells):
        parts = []
        for i, cell in enumerate(row):
            text = cell.ljust(widths[i])
            colour = (colour_of or {}).get(i)
            if n == 0:
                text = click.style(text, bold=True)
            elif colour is not None and colour(cell):
                text = click.style(text, fg=colour(cell))
            parts.append(text)
        click.echo("  ".join(parts).rstrip())


@contextlib.asynccontextmanager
async def spinner(message: str):
    """A spinner on stderr while waiting (a terminal only); gone when the wait ends."""
    if not sys.stderr.isatty():
        yield
        return

    async def spin():
        for frame in itertools.cycle("|/-\\"):
            click.echo(f"\r{frame} {message}", nl=False, err=True)
            await asyncio.sleep(0.15)
    task = asyncio.ensure_future(spin())
    try:
        yield
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        click.echo("\r" + " " * (len(message) + 2) + "\r", nl=False, err=True)


def _stored(store: AccountStoreBase, provider: str, name: str) -> StoredAccount:
    try:
        return store.get(provider, name)
    except AccountError as e:
        raise _fail(e) from None


@account.command()
@click.argument("provider", required=False)
@click.argument("name", required=False)
@click.option("--all", "everything", is_flag=True,
              help="Forget every stored account (and the key check): the way out of a lost key.")
@click.confirmation_option("--yes", prompt="Forget the stored secret(s)?",
                           help="Do not ask.")
@pass_settings
def remove(settings: Settings, provider: str | None, name: str | None, everything: bool):
    """Forget a stored account (its secrets go with it).

    \b
    Example:
        detour account remove deepseek work --yes
    """
    store = open_store(settings)
    if everything:
        click.echo(f"removed {store.remove_all()} accounts")
        return
    if not provider or not name:
        raise DetourError("give PROVIDER and NAME (or --all)")
    try:
        store.remove(provider, name)
    except AccountError as e:
        raise _fail(e) from None
    click.echo(f"removed {provider}/{name}")


def _toggle(settings: Settings, provider: str, name: str, enabled: bool) -> None:
    store = open_store(settings)
    try:
        store.set_enabled(provider, name, enabled)
    except AccountError as e:
        raise _fail(e) from None
    click.echo(f"{provider}/{name} {'enabled' if enabled else 'disabled'}")


@account.command()
@click.argument("provider")
@click.argument("name")
@pass_settings
def enable(settings: Settings, provider: str, name: str):
    """Ask a stored account again.

    \b
    Example:
        detour account enable deepseek work
    """
    _toggle(settings, provider, name, True)


@account.command()
@click.argument("provider")
@click.argument("name")
@pass_settings
def disable(settings: Settings, provider: str, name: str):
    """Keep a stored account but never ask it.

    \b
    Example:
        detour account disable deepseek work
    """
    _toggle(settings, provider, name, False)


@account.command()
@click.argument("provider")
@click.argument("name")
@click.argument("new_name")
@pass_settings
def rename(settings: Settings, provider: str, name: str, new_name: str):
    """Give a stored account another name.

    \b
    Example:
        detour account rename deepseek key-1 work
    """
    store = open_store(settings)
    try:
        store.rename(provider, name, new_name)
    except AccountError as e:
        raise _fail(e) from None
    click.echo(f"renamed {provider}/{name} to {new_name}")


@account.command("rotate-key")
@pass_settings
def rotate_key(settings: Settings):
    """Encrypt every stored secret with a new key (the old key is dropped).

    \b
    Example:
        detour account rotate-key
    """
    store = open_store(settings)
    try:
        n = store.rotate_key()
    except VaultError as e:
        raise _fail(e) from None
    click.echo(f"{n} accounts re-encrypted with a new key in {store.vault.where()}")


@account.command()
@click.argument("provider")
@click.argument("name")
@pass_settings
def test(settings: Settings, provider: str, name: str):
    """Make one cheap real call with the account (its provider's model list); an expired
    login is refreshed first.

    \b
    Example:
        detour account test deepseek work
    """
    providers = load_providers(settings)
    spec = providers.get(provider)
    if spec is None:
        raise DetourError(f"no provider {provider!r} in {settings.config_path}")
    store = open_store(settings)
    stored = _stored(store, provider, name)
    ok, message = asyncio.run(_test(store, spec, stored))
    click.echo(f"{provider}/{name}: {message}")
    if not ok:
        sys.exit(1)


async def _test(store: AccountStoreBase, spec, stored: StoredAccount) -> tuple[bool, str]:
    creds = CredentialProvider(store)
    try:
        try:
            loaded = {a.id: a for a in creds.load()}
        except VaultError as e:
            return False, str(e)
        if creds.problem:
            return False, creds.problem
        acct = loaded[stored.id]
        account = Account(acct.label, acct.current_secret, acct.name, acct.priority,
                          not acct.enabled, acct.id)
        try:
            await creds.fresh(account)
        except (NeedsLogin, RefreshFailed) as e:
            return False, str(e)
        kind = formats.provider_kind(spec.kind)
        if kind.account_project:
            return await _test_code_assist(store, spec, acct, creds.token(account))
        dialect = formats.dialect_name(spec.dialect, spec.base_url) if kind.dialects else None
        headers = {"accept": "application/json", "user-agent": "detour/0.1"}
        headers.update(kind.fixed_headers)
        query: dict[str, str] = {}
        creds.put_on(account, kind, dialect, headers, query)
        headers.update(spec.headers)
        url = creds.base_url(account, spec) + TEST_PATHS.get(spec.kind, "/models")
        t0 = time.perf_counter()
        try:
            async with httpx.AsyncClient(trust_env=False, verify=spec.verify) as http:
                resp = await http.get(url, headers=headers, params=query, timeout=20)
        except httpx.HTTPError as e:
            return False, f"cannot reach {url}: {type(e).__name__}"
        ms = (time.perf_counter() - t0) * 1000
        if resp.status_code < 300:
            return True, f"ok (HTTP {resp.status_code} from {url}, {ms:.0f} ms)"
        from addons.forwarding import error_of
        from addons.scrubber import SecretScrubber
        text = SecretScrubber([creds.token(account), acct.current_secret]).scrub(
            error_of(resp.content)[0])
        return False, f"HTTP {resp.status_code} from {url}: {text}"
    finally:
        await creds.aclose()


async def _test_code_assist(store: AccountStoreBase, spec, acct: StoredAccount, token: str
                            ) -> tuple[bool, str]:
    """Code Assist lists no models: its cheap real call is the login's project lookup
    (loadCodeAssist, as Gemini CLI makes at start), whose answer is kept."""
    t0 = time.perf_counter()
    try:
        async with httpx.AsyncClient(trust_env=False, verify=spec.verify) as http:
            project, tier = await logins.code_assist_project(
                http, None, token, acct.project_id, base_url=spec.base_url)
    except LoginFailed as e:
        return False, str(e)
    ms = (time.perf_counter() - t0) * 1000
    store.set_project(acct.id, project, tier)
    return True, f"ok (Code Assist project {project}, tier {tier}, {ms:.0f} ms)"


@account.command()
@click.argument("vendor", type=click.Choice(sorted(VENDORS)))
@click.option("--name", help="Its name within the provider (default login-N); logging in "
              "again under a taken name replaces that login.")
@click.option("--provider", help="The config.yaml provider it joins (default: VENDOR).")
@click.option("--priority", type=click.IntRange(0), default=1, show_default=True,
              help="Its group: lower groups are asked first.")
@click.option("--project", help="Gemini/Antigravity: the Google Cloud project for Code Assist "
              "(paid tiers need one; the free tier finds its own).")
@click.option("--no-browser", is_flag=True,
              help="Print the URL (or device code) instead of opening a browser: for a remote "
                   "machine (forward the callback port, e.g. ssh -L 1455:localhost:1455).")
@pass_settings
def login(settings: Settings, vendor: str, name: str | None, provider: str | None,
          priority: int, project: str | None, no_browser: bool):
    """Log in to a subscription with the vendor's own OAuth flow; the tokens are stored
    encrypted, and detour refreshes them from then on.

    \b
    Example:
        detour account login claude --name work
        detour account login codex --no-browser
        detour account login qwen                 # prints a code to enter on chat.qwen.ai
    """
    v = VENDORS[vendor]
    provider = provider or vendor
    try:
        providers = load_config(settings.config_path).providers
    except ConfigError:
        providers = {}
    spec = providers.get(provider)
    if spec is not None and spec.kind not in v.kinds:
        raise DetourError(f"provider {provider!r} is kind {spec.kind}; a {vendor} login serves "
                          f"kind {' or '.join(v.kinds)} (use --provider)")
    store = open_store(settings)
    try:
        store.check_key()
    except VaultError as e:
        raise _fail(e) from None
    try:
        done = asyncio.run(_login(v, no_browser, project))
    except KeyboardInterrupt:
        raise DetourError("login cancelled; nothing was stored") from None
    except (LoginFailed, oauth.OAuthError, oauth.TokenEndpointUnreachable) as e:
        raise DetourError(f"{vendor} login failed: {e}") from None
    try:
        acct = store.add(provider, name, OAUTH, done.secrets, vendor=vendor, priority=priority,
                         expires_at=done.expires_at, replace=bool(name), **done.meta)
    except (AccountError, VaultError) as e:
        raise _fail(e) from None
    who = done.meta.get("email") or done.meta.get("account_id") or ""
    click.echo(f"logged in: {provider}/{acct.name}" + (f" ({who})" if who else ""))
    if spec is None:
        click.echo(f"note: {settings.config_path} has no provider {provider!r} yet; add one of "
                   f"kind {v.kinds[0]} for this login to serve calls", err=True)


async def _login(v, no_browser: bool, project: str | None):
    async def open_url(url: str) -> None:
        if no_browser or not await asyncio.to_thread(webbrowser.open, url):
            click.echo(f"Open this URL to log in to {v.title}:\n\n  {url}\n", err=True)
        else:
            click.echo(f"A browser was opened to log in to {v.title}. If not, open:\n  {url}",
                       err=True)

    async def notify(dc) -> None:
        url = dc.verification_uri_complete or dc.verification_uri
        click.echo(f"To log in to {v.title}, open {url}\nand enter the code:  "
                   + click.style(dc.user_code, bold=True), err=True)
        if not no_browser:
            await asyncio.to_thread(webbrowser.open, url)

    async with httpx.AsyncClient(trust_env=False) as http:
        async with spinner("Waiting for the login to complete (Ctrl-C cancels)..."):
            return await logins.login(v, http, open_url, notify, project=project)


@account.command("import")
@click.argument("vendor", required=False, type=click.Choice(sorted(importers.READERS)))
@click.option("--provider", help="The config.yaml provider it joins (default: the vendor).")
@click.option("--name", help="Its name (default imported-N).")
@click.option("--yes", is_flag=True, help="Import without asking.")
@pass_settings
def import_(settings: Settings, vendor: str | None, provider: str | None, name: str | None,
            yes: bool):
    """Adopt the logins the CLIs hold on this machine (Claude Code, Codex, Gemini CLI, Qwen
    Code), after showing what was found. detour then refreshes them; their files are left
    as they are.

    \b
    Example:
        detour account import            # every CLI's login found
        detour account import codex --yes
    """
    found = importers.find([vendor] if vendor else None)
    if not found:
        click.echo("no CLI login found" + (f" for {vendor}" if vendor else ""))
        return
    store = open_store(settings)
    held = {}
    try:
        for a in store.accounts(secrets=True):
            if a.kind == OAUTH:
                held[a.secrets.get("refresh_token")] = a
    except VaultError as e:
        raise _fail(e) from None
    rows, todo = [], []
    for f in found:
        same = held.get(f.secrets.get("refresh_token"))
        note = f"already held as {same.provider}/{same.name}" if same else "new"
        who = " ".join(x for x in (f.meta.get("email"), f.meta.get("plan")) if x)
        rows.append((VENDORS[f.vendor].title, str(f.path), who, _when(f.expires_at), note))
        if same is None:
            todo.append(f)
    print_table(("login", "file", "account", "expires", ""), rows)
    if not todo:
        return
    if not yes and not click.confirm(f"Import {len(todo)} login(s) into {store.where}?",
                                     default=True):
        click.echo("nothing imported")
        return
    for f in todo:
        target = provider or f.vendor
        try:
            acct = store.add(target, name or _free_name(store, target), OAUTH, f.secrets,
                             vendor=f.vendor, expires_at=f.expires_at, **f.meta)
        except (AccountError, VaultError) as e:
            raise _fail(e) from None
        click.echo(f"imported {target}/{acct.name} from {f.path}")


def _free_name(store: AccountStoreBase, provider: str) -> str:
    taken = {a.name for a in store.accounts(provider)}
    return next(f"imported-{i}" for i in range(1, len(taken) + 2) if f"imported-{i}" not in taken)
