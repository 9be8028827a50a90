"""`detour usage`: the usage database read back: tables by day, model, provider, account,
client tool and user, a chart per day, totals; or JSON, CSV, or Datasette (`--serve`). With
config.yaml's `database: postgresql://...` it reads the rows every process wrote there."""

from contextlib import contextmanager
from datetime import UTC, datetime

import click
from rich.console import Console
from rich.table import Table
from rich.text import Text

from addons.config import ConfigError, load_config
from addons.usage import open_db
from scripts.options import DetourError, Settings, pass_settings
from scripts.usage_report import DIMENSIONS, Report, Sums, WhenError, parse_when, summarise
from scripts.usage_report import summarise_postgres, to_csv, to_json

DB_NAME = "detour.db"
# partial blocks: a bar's last cell shows eighths
_BLOCKS = " ▏▎▍▌▋▊▉█"


class When(click.ParamType):
    """A --since/--until value, checked by click: `7d`, `24h`, a date, an ISO time, `all`."""

    name = "time"

    def __init__(self, end_of_day: bool = False):
        self.end_of_day = end_of_day

    def convert(self, value, param, ctx):
        if isinstance(value, datetime) or value is None:
            return value
        try:
            return parse_when(value, datetime.now(UTC), self.end_of_day) or "all"
        except WhenError as e:
            self.fail(str(e), param, ctx)


@click.command()
@click.option("--since", type=When(), default="7d", show_default=True,
              help="Start: 7d, 24h, 30m, 2w (ago), today, yesterday, a date, an ISO time, all.")
@click.option("--until", type=When(end_of_day=True), default="now", show_default=True,
              help="End (a date includes that day): same forms as --since.")
@click.option("--by", "dimensions", type=click.Choice(DIMENSIONS), multiple=True,
              help="Tables to show (repeatable). Default: all of them.")
@click.option("--json", "as_json", is_flag=True, help="Output JSON.")
@click.option("--csv", "as_csv", is_flag=True, help="Output CSV (one line per group).")
@click.option("--serve", is_flag=True,
              help="Browse the database in Datasette instead (on 127.0.0.1, read-only).")
@click.option("--port", type=click.IntRange(0, 65535), default=8001, show_default=True,
              help="Datasette's port with --serve (0: any free port).")
@pass_settings
def usage(settings: Settings, since, until, dimensions, as_json, as_csv, serve, port):
    """What your calls used and cost: tokens, cost, fallbacks and errors by day, model,
    provider, account, client tool and user, from <home>/detour.db (or the Postgres
    database of config.yaml's `database:`).

    A cost is summed where the model's price is known; `unpriced` counts calls without one.
    Subscription (OAuth) logins count at their API-equivalent price, shown apart as `subs.`.

    \b
    Example:
        detour usage                          # the last 7 days
        detour usage --since 2026-11-01 --until 2026-11-30 --by model
        detour usage --since 30d --by user    # a team gateway's users
        detour usage --since 24h --json | jq .totals.cost_usd
        detour usage --serve                  # Datasette on http://127.0.0.1:8001
    """
    if as_json and as_csv:
        raise DetourError("--json and --csv: choose one")
    since = None if since == "all" else since
    until = datetime.now(UTC) if until == "all" else until
    if since is not None and since >= until:
        raise DetourError("--since must be before --until")
    database = _postgres(settings)
    if database is not None:
        if serve:
            return _serve_postgres_snapshot(settings, database, port)
        report = _postgres_summary(database, since, until)
    else:
        db_path = settings.home / DB_NAME
        if not db_path.is_file():
            raise DetourError(f"no usage recorded yet: {db_path} does not exist "
                              "(detour up creates it)")
        open_db(db_path).close()  # an older database gets its new columns and indexes first
        if serve:
            from scripts.usage_datasette import serve_datasette
            return serve_datasette(db_path, port)
        report = summarise(db_path, since, until)
    dims = dimensions or DIMENSIONS
    if as_json:
        click.echo(to_json(report, dims))
    elif as_csv:
        click.echo(to_csv(report, dims), nl=False)
    else:
        render(report, dims, Console(highlight=False, soft_wrap=False))


def _postgres(settings: Settings) -> str | None:
    """config.yaml's `database:` (every process's rows in Postgres), if set."""
    if not settings.config_path.is_file():
        return None
    try:
        return load_config(settings.config_path).database
    except ConfigError as e:
        raise DetourError(str(e)) from None


def _serve_postgres_snapshot(settings: Settings, url: str, port: int) -> None:
    """Datasette reads SQLite: serve a snapshot of the Postgres rows, said to be one."""
    from addons.usage_postgres import safe_dsn
    from scripts.usage_datasette import postgres_snapshot, serve_datasette
    with _database_errors(url):
        path, as_of, count = postgres_snapshot(url, settings.home)
    note = (f"A snapshot of {safe_dsn(url)} as of {as_of:%Y-%m-%d %H:%M:%S} UTC; run "
            "`detour usage --serve` again to refresh it.")
    click.echo(f"{note} {count:,} usage rows in {path}.", err=True)
    serve_datasette(path, port, note)


def _postgres_summary(url: str, since, until) -> Report:
    with _database_errors(url):
        return summarise_postgres(url, since, until)


@contextmanager
def _database_errors(url: str):
    """A Postgres error as the command's error, naming the database (never its password)."""
    import psycopg

    from addons.usage_postgres import safe_dsn
    try:
        yield
    except psycopg.Error as e:
        raise DetourError(f"database {safe_dsn(url)}: {type(e).__name__}: "
                          f"{str(e).strip()}") from None


# ---------------------------------------------------------------- the terminal view


def render(report: Report, dimensions, console: Console) -> None:
    since = report.since.strftime("%Y-%m-%d %H:%M") if report.since else "the first call"
    console.print(f"[bold]Usage[/] from {since} to {report.until:%Y-%m-%d %H:%M} UTC")
    if not report.totals.calls:
        console.print("no calls in this window")
        return
    console.print(totals_line(report.totals))
    if "day" in dimensions and len(report.by["day"]) > 0:
        console.print(day_chart(report))
    for dim in dimensions:
        console.print(group_table(report, dim))


def totals_line(t: Sums) -> Text:
    text = Text()
    text.append(f"{t.calls:,} calls", style="bold")
    text.append(f"  {human(t.tokens)} tokens ({human(t.input_tokens)} in, "
                f"{human(t.output_tokens)} out, {human(t.cache_read_tokens)} cache read, "
                f"{human(t.cache_write_tokens)} cache write)")
    text.append(f"  {money(t.cost_usd)}", style="bold green")
    if t.subscription_usd:
        text.append(f" (of which {money(t.subscription_usd)} subscription, API-equivalent)")
    if t.unpriced:
        text.append(f"  {t.unpriced:,} unpriced", style="yellow")
    text.append(f"  {t.fallbacks:,} fallbacks  ")
    text.append(f"{t.errors:,} errors", style="red" if t.errors else "")
    return text


def group_table(report: Report, dim: str) -> Table:
    table = Table(title=f"by {dim}", title_justify="left", show_footer=True, box=None,
                  header_style="bold", footer_style="bold")
    t = report.totals
    columns = [
        (dim, "total", "left"), ("calls", f"{t.calls:,}", "right"),
        ("input", human(t.input_tokens), "right"), ("output", human(t.output_tokens), "right"),
        ("cache rd", human(t.cache_read_tokens), "right"),
        ("cache wr", human(t.cache_write_tokens), "right"),
        ("cost", money(t.cost_usd), "right"),
        ("subs.", money(t.subscription_usd) if t.subscription_usd else "", "right"),
        ("unpriced", f"{t.unpriced:,}", "right"), ("fallbacks", f"{t.fallbacks:,}", "right"),
        ("errors", f"{t.errors:,}", "right"), ("avg ms", ms(t.avg_latency_ms), "right"),
    ]
    for header, footer, justify in columns:
        table.add_column(header, footer=footer, justify=justify, no_wrap=True)
    for key, s in report.rows(dim):
        table.add_row(key or "-", f"{s.calls:,}", human(s.input_tokens), human(s.output_tokens),
                      human(s.cache_read_tokens), human(s.cache_write_tokens),
                      money(s.cost_usd) if s.unpriced < s.calls else "-",
                      money(s.subscription_usd) if s.subscription_usd else "",
                      f"{s.unpriced:,}" if s.unpriced else "",
                      f"{s.fallbacks:,}" if s.fallbacks else "",
                      f"{s.errors:,}" if s.errors else "", ms(s.avg_latency_ms))
    return table


def day_chart(report: Report, width: int = 30) -> Table:
    """Tokens and cost per day as bars, each scaled to its own busiest day."""
    days = report.rows("day")
    most_tokens = max(s.tokens for _, s in days) or 1
    most_cost = max(s.cost_usd for _, s in days) or 1
    table = Table(title="per day", title_justify="left", box=None, header_style="bold")
    table.add_column("day", no_wrap=True)
    table.add_column("tokens", no_wrap=True)
    table.add_column("", justify="right", no_wrap=True)
    table.add_column("cost", no_wrap=True)
    table.add_column("", justify="right", no_wrap=True)
    for day, s in days:
        table.add_row(day, Text(bar(s.tokens / most_tokens, width), style="cyan"),
                      human(s.tokens), Text(bar(s.cost_usd / most_cost, width), style="green"),
                      money(s.cost_usd))
    return table


def bar(fraction: float, width: int) -> str:
    eighths = round(max(0.0, min(1.0, fraction)) * width * 8)
    full, part = divmod(eighths, 8)
    return ("█" * full + (_BLOCKS[part] if part else "")).ljust(width)


def human(n: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def money(usd: float) -> str:
    return f"${usd:,.2f}" if usd >= 1 or usd == 0 else f"${usd:.4f}"


def ms(value: float | None) -> str:
    return "" if value is None else f"{value:,.0f}"
