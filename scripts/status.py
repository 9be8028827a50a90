"""`detour status`: is a proxy running for this DETOUR_HOME (pid, address, uptime), the
configuration in force, each provider's accounts with their state, what each route resolves to,
today's calls (every process's, from Postgres with `database:`), and the tool calls that went
by untouched.

While a proxy runs, accounts and routes are the proxy's own view: its `detour.accounts` and
`detour.routes` commands, asked on its loopback metrics port (proxy.json says which): stored
accounts and their logins (needs_login), rests, recent errors, rate limits last seen. Without a
proxy (or a metrics port) they are read from DETOUR_HOME's files (config.yaml, detour.db's
cooldowns and accounts; both from Postgres with `database:`), so status works the same whoever
started the proxy, or with none. Rests that cannot be read leave an account's state "unknown"
(never "ready"), with why in one line. One status run tries Postgres once (PostgresReads).
"""

import contextlib
import datetime
import json
import sqlite3
import time
import urllib.request
from pathlib import Path

import click

from addons.config import Config, ConfigError, config_warnings, load_config
from addons.instance import running_instance
from addons.routing import account_label
from addons.untouched import read_untouched
from certs.env import proxy_url
from scripts.options import Settings, output_options, pass_settings

DB_NAME = "detour.db"
VIEW_TIMEOUT = 3.0  # seconds to wait for the running proxy's view
CONNECT_TIMEOUT = 3  # seconds (whole: libpq's unit) a run waits for the `database:`, once


class DatabaseUnreadable(Exception):
    """What the `database:` could not answer, and why: one line, never its password."""


class PostgresReads:
    """The `database:` (Postgres) as one command reads it: one connection, made at the first
    read within CONNECT_TIMEOUT and kept until `close`, so a host that drops packets costs one
    timeout, not one per read. Once it could not be reached (or was lost), every later read of
    the run fails at once with that first error."""

    def __init__(self, url: str):
        self.url = url
        self.error: str | None = None
        self._conn = None

    def __enter__(self) -> "PostgresReads":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def read(self, query):
        """query(connection)'s answer; DatabaseUnreadable when it cannot be had."""
        import psycopg

        from addons.usage_postgres import connect
        if self._conn is None and self.error is None:
            try:
                self._conn = connect(self.url, CONNECT_TIMEOUT)
            except psycopg.Error as e:
                self.error = self._why(e)
        if self.error is not None:
            raise DatabaseUnreadable(self.error)
        try:
            return query(self._conn)
        except psycopg.Error as e:
            if self._conn.broken or self._conn.closed:  # lost: not tried again in this run
                self.error = self._why(e)
            raise DatabaseUnreadable(self._why(e)) from None

    def close(self) -> None:
        from addons.usage_postgres import close_quietly
        close_quietly(self._conn)
        self._conn = None

    def _why(self, e: Exception) -> str:
        from addons.usage_postgres import safe_dsn
        why = " ".join(f"{type(e).__name__}: {e}".split())  # psycopg's run over lines
        return f"database {safe_dsn(self.url)}: {why}"


def proxy_record(home: Path) -> dict:
    instance = running_instance(home)
    if instance is None:
        return {"running": False}
    return {"running": True, "pid": instance.pid,
            "url": proxy_url(instance.client_host, instance.port), "host": instance.host,
            "port": instance.port, "started": _iso(instance.started),
            "uptime_seconds": round(time.time() - instance.started),
            "web_port": instance.web_port, "log": instance.log}


def config_record(path: Path) -> tuple[dict, Config | None]:
    try:
        config = load_config(path)
    except ConfigError as e:
        return {"path": str(path), "valid": False, "error": str(e)}, None
    return {"path": str(path), "valid": True, "providers": len(config.providers),
            "routes": len(config.routes), "combos": len(config.combos),
            "clients": len(config.clients), "warnings": config_warnings(config)}, config


def label_of(entry, index: int) -> str:
    """The label detour gives an account, without resolving an `env:`/`file:` reference (the
    label is the reference itself): status works in a shell that lacks the variables."""
    ref = entry if isinstance(entry, str) else entry.key
    return account_label(ref, ref, index)


def accounts_record(config: Config | None, db: Path,
                    reads: PostgresReads | None = None) -> list[dict]:
    """Each account (config.yaml's, then those detour holds in detour.db, numbered as the proxy
    numbers them) with its state: disabled, needs_login (with why), resting (as a whole or for
    some models, with why and until when, from the cooldowns the proxy keeps in detour.db),
    ready, or unknown (with why: the rests could not be read). With `database:`, read through
    `reads` (one of its own if not given)."""
    if reads is None and config is not None and config.database:
        with PostgresReads(config.database) as reads:
            return accounts_record(config, db, reads)
    try:
        rests, unread = _rests(db, reads), None
    except DatabaseUnreadable as e:
        rests, unread = [], f"rests not read: {e}"
    stored = _stored_accounts(config, db, reads)
    out = []
    for name, provider in (config.providers if config else {}).items():
        entries = [(label_of(entry, i), not isinstance(entry, str) and entry.disabled
                    and "disabled in config.yaml", None)
                   for i, entry in enumerate(provider.api_keys)]
        entries += [(f"db:{acct}", not enabled and "disabled: `detour account enable` takes "
                     "it back", f"needs login: {error or 'its refresh was refused'}"
                     if state == "needs_login" else None)
                    for owner, acct, enabled, state, error in stored if owner == name]
        for i, (label, disabled, login) in enumerate(entries or [("no-key", None, None)]):
            key = f"{name}/{label}"
            mine = [r for r in rests if r["key"] == key or r["key"].startswith(key + "@")]
            state, why = (("disabled", disabled) if disabled else ("needs_login", login)
                          if login else ("unknown", unread) if unread else
                          ("resting", f"{mine[0]['reason']}: {mine[0]['cause']}")
                          if mine else ("ready", None))
            out.append({"provider": name, "account": f"account {i + 1}", "label": label,
                        "state": state, "why": why, "rests": [
                            {"model": r["key"].partition("@")[2] or None, **{
                                k: r[k] for k in ("until", "seconds_left", "reason", "cause")}}
                            for r in mine]})
    return out


def proxy_views(home: Path) -> tuple[list[dict], list[dict]] | None:
    """The running proxy's `detour.accounts` (in this record's shape) and `detour.routes`, from
    its loopback metrics port; None when no proxy answers there."""
    instance = running_instance(home)
    if instance is None or not instance.metrics_port:
        return None
    # never through HTTPS_PROXY/HTTP_PROXY: they may point at this very proxy
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    views = {}
    try:
        for view in ("accounts", "routes"):
            with opener.open(f"http://127.0.0.1:{instance.metrics_port}/{view}",
                             timeout=VIEW_TIMEOUT) as answer:
                views[view] = json.loads(answer.read())[view]
    except (OSError, ValueError, KeyError):
        return None
    accounts = []
    for a in views["accounts"]:
        rests = ([{"model": None, **a["account_rest"]}] if a.get("account_rest") else [])
        rests += [{"model": m, **r} for m, r in (a.get("model_rests") or {}).items()]
        accounts.append({"provider": a["provider"], "account": a["account"],
                         "label": a["label"], "state": a["state"], "why": a.get("why"),
                         "rests": rests, "recent_errors": a.get("recent_errors", []),
                         "rate_limits": a.get("rate_limits")})
    return accounts, views["routes"]


def rest_rows(db: Path, database: str | PostgresReads | None = None
              ) -> list[tuple[str, float, str, str]]:
    """(key, until, reason, cause) of every rest kept now: in detour.db, or every process's in
    the `database:` (Postgres: its URL, or the run's PostgresReads); [] where there are none.
    Postgres's that cannot be read raise DatabaseUnreadable: a state is then unknown, not
    ready."""
    if isinstance(database, str):
        with PostgresReads(database) as reads:
            return rest_rows(db, reads)
    if database is not None:
        from addons.cooldown_postgres import rests_in
        return database.read(rests_in)
    return _query(db, "SELECT key, until, reason, cause FROM cooldowns WHERE until > ?",
                  (time.time(),))


def _rests(db: Path, reads: PostgresReads | None = None) -> list[dict]:
    return [{"key": k, "until": _iso(u), "seconds_left": round(u - time.time()), "reason": r,
             "cause": c} for k, u, r, c in rest_rows(db, reads)]


_CALLS_TODAY = ("SELECT provider, model_upstream, model_requested, count(*), "
                "sum(CASE WHEN status >= 400 OR status = 0 THEN 1 ELSE 0 END), "
                "sum(input_tokens), sum(output_tokens), sum(cache_read_tokens), sum(cost_usd) "
                "FROM usage WHERE ts >= {} GROUP BY 1, 2, 3 ORDER BY 4 DESC")
_TOTALS = ("calls", "failed", "input_tokens", "output_tokens", "cache_read_tokens", "cost_usd")


def calls_today(db: Path, reads: PostgresReads | None = None) -> dict:
    """Today's model calls (since local midnight): count, failures, tokens, cost, and by
    provider and model; every process's from the `database:` (Postgres), else detour.db's.
    Postgres away: `error` says why (one line) and the counts are None."""
    midnight = datetime.datetime.now().astimezone().replace(hour=0, minute=0, second=0,
                                                            microsecond=0)
    since = midnight.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if reads is not None:
        try:
            rows = reads.read(lambda conn: _postgres_calls(conn, since))
        except DatabaseUnreadable as e:
            return {"since": midnight.isoformat(timespec="seconds"), "error": str(e),
                    **dict.fromkeys(_TOTALS), "by_model": []}
    else:
        rows = _query(db, _CALLS_TODAY.format("?"), (since,))
    total = dict.fromkeys(_TOTALS, 0) | {"cost_usd": 0.0}
    groups = []
    for provider, upstream, requested, n, failed, tin, tout, cached, cost in rows:
        group = {"provider": provider or "", "model": upstream or requested or "",
                 "calls": int(n), "failed": int(failed or 0), "input_tokens": int(tin or 0),
                 "output_tokens": int(tout or 0), "cache_read_tokens": int(cached or 0),
                 "cost_usd": round(float(cost or 0.0), 6)}
        groups.append(group)
        for k in total:
            total[k] += group[k]
    total["cost_usd"] = round(total["cost_usd"], 6)
    return {"since": midnight.isoformat(timespec="seconds"), **total, "by_model": groups}


def _postgres_calls(conn, since: str) -> list[tuple]:
    """The rows of _CALLS_TODAY from Postgres; [] before any process made its table."""
    from addons.usage_postgres import table_rows
    return table_rows(conn, "usage", _CALLS_TODAY.format("%s"), (since,))


_STORED_ACCOUNTS = ("SELECT provider, name, enabled, state, last_error FROM accounts "
                    "ORDER BY provider, priority, id")


def _stored_accounts(config: Config | None, db: Path,
                     reads: PostgresReads | None = None) -> list[tuple]:
    """(provider, name, enabled, state, last_error) of each account detour holds: in the
    Postgres database of `database:` (through `reads`; said on stderr if it cannot be read),
    else detour.db."""
    if reads is None:
        return _query(db, _STORED_ACCOUNTS, ())
    try:
        return reads.read(_postgres_accounts)
    except DatabaseUnreadable as e:
        click.echo(f"stored accounts not shown: {e}", err=True)
        return []


def _postgres_accounts(conn) -> list[tuple]:
    """The rows of _STORED_ACCOUNTS from Postgres; [] before any process made its table."""
    from addons.usage_postgres import table_rows
    return table_rows(conn, "accounts", _STORED_ACCOUNTS)


def _query(db: Path, sql: str, args: tuple) -> list[tuple]:
    if not db.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=2)
        try:
            return conn.execute(sql, args).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []  # no such table yet (a proxy that never ran), or the file is not a database


def status_record(settings: Settings) -> dict:
    config, parsed = config_record(settings.config_path)
    db = settings.home / DB_NAME
    views = proxy_views(settings.home)
    # the `database:` tried once for the whole record
    with (PostgresReads(parsed.database) if parsed is not None and parsed.database
          else contextlib.nullcontext()) as reads:
        accounts, routes = views if views is not None else (
            accounts_record(parsed, db, reads), None)
        today = calls_today(db, reads)
    return {"home": str(settings.home), "proxy": proxy_record(settings.home), "config": config,
            "accounts": accounts, "accounts_from": "proxy" if views is not None else "files",
            "routes": routes, "today": today, "untouched": read_untouched(settings.home),
            "shared_state": shared_state_record(settings.home)}


def shared_state_record(home: Path) -> list[dict]:
    """How each running process of this home is with `state: redis://...`, as it last wrote
    it (addons/shared_state.py): joined, or serving on its own state and why."""
    import json
    import os
    import socket

    from addons.shared_state import STATUS_DIR
    out = []
    for path in sorted((home / STATUS_DIR).glob("*.json")):
        try:
            record = json.loads(path.read_text())
            if record.get("host") == socket.gethostname():
                os.kill(int(record["pid"]), 0)  # a process killed leaves its file behind
        except PermissionError:
            pass  # alive, another user's
        except (OSError, ValueError, KeyError, TypeError):
            continue
        out.append(record)
    return out


def _iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="seconds")


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds} s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes} min {seconds} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def render(record: dict) -> list[str]:
    proxy, config, today = record["proxy"], record["config"], record["today"]
    lines = []
    if proxy["running"]:
        web = f", mitmweb UI on port {proxy['web_port']}" if proxy.get("web_port") else ""
        lines.append(f"proxy     running on {proxy['url']} (pid {proxy['pid']}, up "
                     f"{_duration(proxy['uptime_seconds'])}{web})")
        if proxy.get("log"):
            lines.append(f"          log {proxy['log']}")
    else:
        lines.append("proxy     not running (`detour up`, or `detour run TOOL` starts one)")
    lines.append(f"home      {record['home']}")
    for shared in record.get("shared_state", []):
        lines.append(f"state     pid {shared['pid']}@{shared['host']}: {shared['detail']}")
    if config["valid"]:
        lines.append(f"config    {config['path']}: {config['providers']} providers, "
                     f"{config['routes']} routes, {config['combos']} combos")
        lines += [f"  warning: {w}" for w in config["warnings"]]
    else:
        lines.append(f"config    INVALID: {config['error']}")
    unknown = [a["why"] for a in record["accounts"] if a["state"] == "unknown"]
    if not record["accounts"]:
        lines.append("accounts  none configured (observe mode: calls go to their vendors)")
    else:  # rests not read: why, once
        lines.append("accounts" + (f"  {unknown[0]}" if unknown else ""))
    for a in record["accounts"]:
        state = a["state"]
        if state in ("needs_login", "disabled"):
            state = a.get("why") or state
        elif state == "unknown":  # why: on the accounts line
            state = "unknown: rests not read"
        else:
            for rest in a["rests"]:
                model = f" for {rest['model']}" if rest["model"] else ""
                state = (f"resting{model} {_duration(rest['seconds_left'])} more "
                         f"({rest['reason']}: {rest['cause'] or '-'})")
                break
        lines.append(f"  {a['provider']:<14} {a['account']:<10} {a['label']:<24} {state}")
    if record.get("routes"):
        lines.append("routes    (as the proxy would ask now)")
        for r in record["routes"]:
            asked = ", ".join(
                (f"{c['provider']}/{c['account']}" if c.get("account") else c["provider"])
                + (f" ({c['state']})" if c["state"] != "ready" else "")
                for c in r["candidates"])
            lines.append(f"  {r['configured']:<30} {asked or 'no candidate'}")
    if today.get("error"):
        lines.append(f"today     calls not counted: {today['error']}")
    else:
        lines.append(f"today     {today['calls']} calls, {today['failed']} failed, "
                     f"{today['input_tokens']} input / {today['output_tokens']} output tokens"
                     + (f", ${today['cost_usd']:.4f}" if today["cost_usd"] else ""))
    for g in today["by_model"][:10]:
        lines.append(f"  {g['provider'] or '-':<14} {g['model']:<34} {g['calls']} calls"
                     + (f", {g['failed']} failed" if g["failed"] else ""))
    if record["untouched"]:
        lines.append("untouched tool calls (went to their vendor as they were):")
        for u in record["untouched"][:10]:
            what = f"{u['host']}{u['path']}" if u["path"] else u["host"]
            lines.append(f"  {u['method']} {what} x{u['count']}: {u['why']}")
    return lines


@click.command()
@output_options
@pass_settings
def status(settings: Settings, as_json: bool):
    """Show whether a proxy runs for this DETOUR_HOME, the config in force, each account's
    state and rests, today's calls, and tool calls that went by untouched.

    \b
    Example:
        detour status
        detour status --json | jq .accounts
    """
    record = status_record(settings)
    if as_json:
        import json

        click.echo(json.dumps(record, indent=2))
        return
    click.echo("\n".join(render(record)))
