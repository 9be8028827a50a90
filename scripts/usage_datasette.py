"""`detour usage --serve`: Datasette on the usage database, on 127.0.0.1, with titled tables,
column descriptions and canned queries (`metadata()`).

The canned queries read `usage_daily` (the sums per day, kept by triggers) where sums suffice,
so they stay fast on millions of rows; the ones that need a call's own story (its route, its
error) read the rows of a bounded window through the `ts` index.

With `database: postgresql://...` Datasette (SQLite only) serves a snapshot: the `usage` and
`usage_rejected` rows, and the rests of every process resting now (`cooldowns`), copied from
Postgres into DETOUR_HOME/usage-snapshot/detour.db, built by `open_db` (the same schema,
`usage_daily` and its triggers, so the sums come out the same), private (0600) and replaced
whole (`postgres_snapshot`). Usage rows hold labels, never a key.
"""

import json
import os
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from addons.usage import REJECTED_COLUMNS, USAGE_COLUMNS, open_db

DATABASE = "detour"  # Datasette names a database by its file's stem

USAGE_DESCRIPTIONS = {
    "ts": "When the request arrived (ISO 8601, UTC)",
    "flow_id": "mitmproxy's flow id: x-detour-id of the answer, the flow in mitmweb, the "
               "request log's files",
    "client": "The client's User-Agent, as sent",
    "client_tool": "The client tool, normalised from the User-Agent (claude-code, codex, "
                   "gemini-cli, qwen-code, openai-python, curl ...)",
    "client_version": "The client tool's version",
    "client_format": "The wire format the client spoke (anthropic, openai-chat, "
                     "openai-responses ...)",
    "provider": "The provider that answered (a vendor host for passthrough)",
    "account": "The account's label (an env var name, a key file, a short hash); never a key",
    "model_requested": "The model the client asked for",
    "model_upstream": "The model that answered",
    "status": "The HTTP status the client got (0: no answer: the client left, the proxy "
              "stopped)",
    "attempts": "Candidates asked; more than 1: a fallback",
    "input_tokens": "Input tokens, cached ones excluded (Anthropic's accounting)",
    "output_tokens": "Output tokens, reasoning included",
    "cache_read_tokens": "Input tokens read from the provider's cache",
    "cache_write_tokens": "Input tokens written to the provider's cache",
    "reasoning_tokens": "Reasoning tokens (part of output_tokens)",
    "cost_usd": "Cost in USD; empty when the model has no known price (never a guessed 0)",
    "cost_basis": "api: what the call cost; subscription: the API-equivalent cost of a "
                  "subscription (OAuth) login's call",
    "price_source": "Where the price came from: config (prices:) or genai-prices",
    "latency_ms": "From the request to the answer's end",
    "ttfb_ms": "From the request to the answer's first byte",
    "stream": "1 for a streamed answer",
    "error": "What went wrong, as the client was told, or how the call ended",
    "route": "Each candidate asked or skipped, as JSON: provider, account, model, status, ms, "
             "error, the rest it earned",
    "user": "The gateway user who made the call (detour user add); empty without users",
}
assert set(USAGE_DESCRIPTIONS) == set(USAGE_COLUMNS) - {"id"}, "describe every usage column"

DAILY_DESCRIPTIONS = {
    "day": "UTC day", "model": "The model that answered (or the one asked)",
    "provider": "The provider", "account": "The account's label", "client_tool": "Client tool",
    "user": "The gateway user (empty without users)", "calls": "Calls", "cost_usd": "USD of the priced calls",
    "subscription_usd": "The part of cost_usd that is subscription logins' API equivalent",
    "unpriced": "Calls with tokens whose model has no price",
    "fallbacks": "Calls that needed more than one attempt",
    "errors": "Calls with a status >= 400 or no answer",
    "latency_ms": "Sum of latencies (divide by latency_count)",
    "ttfb_ms": "Sum of times to first byte (divide by ttfb_count)",
}

QUERIES = {
    "cost_per_tool_this_month": {
        "title": "Cost per client tool, this month",
        "description": "Calls, tokens and cost per client tool since the first of this month "
                       "(UTC). unpriced: calls whose model has no price, left out of the cost.",
        "sql": """
select client_tool, sum(calls) as calls,
  sum(input_tokens + output_tokens + cache_read_tokens + cache_write_tokens) as tokens,
  round(sum(cost_usd), 4) as cost_usd, round(sum(subscription_usd), 4) as subscription_usd,
  sum(unpriced) as unpriced
from usage_daily
where day >= strftime('%Y-%m-01', 'now') and calls > 0
group by client_tool
order by cost_usd desc, tokens desc""",
    },
    "fallbacks_per_account": {
        "title": "Fallbacks per account, last 30 days",
        "description": "Attempts that failed and made detour ask the next candidate: per "
                       "provider and account, how often and with what statuses or errors.",
        "sql": """
select json_extract(attempt.value, '$.provider') as provider,
  json_extract(attempt.value, '$.account') as account,
  count(*) as failed_attempts,
  group_concat(distinct coalesce(json_extract(attempt.value, '$.status'),
                                 json_extract(attempt.value, '$.error'))) as statuses,
  max(usage.ts) as last_seen
from usage, json_each(usage.route) as attempt
where usage.ts >= strftime('%Y-%m-%dT%H:%M:%S', 'now', '-30 days') and usage.attempts > 1
  and json_extract(attempt.value, '$.skipped') is null
  and (json_extract(attempt.value, '$.status') is null
       or json_extract(attempt.value, '$.status') >= 400
       or json_extract(attempt.value, '$.error') is not null)
group by provider, account
order by failed_attempts desc""",
    },
    "slowest_providers": {
        "title": "Slowest providers, last 7 days",
        "description": "Average time to first byte and whole-call latency per provider and "
                       "model, slowest first byte first.",
        "sql": """
select provider, model, sum(calls) as calls,
  round(sum(ttfb_ms) / nullif(sum(ttfb_count), 0)) as avg_ttfb_ms,
  round(sum(latency_ms) / nullif(sum(latency_count), 0)) as avg_latency_ms,
  sum(errors) as errors
from usage_daily
where day >= date('now', '-7 days') and calls > 0
group by provider, model
order by avg_ttfb_ms desc""",
    },
    "errors_by_kind": {
        "title": "Errors by kind, last 7 days",
        "description": "Calls that got a status >= 400 or no answer, by status and the first "
                       "words of their error.",
        "sql": """
select status, substr(coalesce(error, ''), 1, 80) as kind, count(*) as calls,
  group_concat(distinct provider) as providers, max(ts) as last_seen
from usage
where ts >= strftime('%Y-%m-%dT%H:%M:%S', 'now', '-7 days')
  and (status >= 400 or coalesce(status, 0) = 0)
group by status, kind
order by calls desc""",
    },
}


def metadata(note: str = "") -> dict:
    return {
        "title": "detour usage",
        "description": "One row per model call detour intercepted (table usage), and their "
                       "daily sums (usage_daily). Costs are in USD; tokens follow Anthropic's "
                       "accounting (input excludes cached tokens)."
                       + (f" {note}" if note else ""),
        "databases": {DATABASE: {
            "tables": {
                "usage": {"title": "Usage: one row per model call",
                          "sort_desc": "ts", "columns": USAGE_DESCRIPTIONS},
                "usage_daily": {"title": "Usage per day, model, provider, account, tool "
                                         "and user",
                                "sort_desc": "day", "columns": DAILY_DESCRIPTIONS},
                "usage_rejected": {"title": "Usage rows SQLite refused, with why"},
                "cooldowns": {"title": "Accounts resting now (until: Unix time)"},
                "_sqlite_migrations": {"hidden": True},
            },
            "queries": QUERIES,
        }},
    }


def serve_datasette(db_path: Path, port: int, note: str = "") -> None:
    """Run Datasette on `db_path` at 127.0.0.1:`port` until interrupted. In this process:
    stopping it (Ctrl-C, SIGTERM) stops Datasette, nothing is left running. `note` is added
    to the description on Datasette's pages."""
    from datasette.cli import cli as datasette_cli

    with tempfile.TemporaryDirectory(prefix="detour-datasette-") as tmp:
        meta = Path(tmp) / "metadata.json"
        meta.write_text(json.dumps(metadata(note), indent=2))
        datasette_cli.main(["serve", str(db_path), "--host", "127.0.0.1", "--port", str(port),
                            "--metadata", str(meta), "--setting", "sql_time_limit_ms", "5000"],
                           prog_name="datasette", standalone_mode=False)


SNAPSHOT_DIR = "usage-snapshot"  # under DETOUR_HOME; the file is detour.db: Datasette's name
_COPIED = {"usage": USAGE_COLUMNS, "usage_rejected": REJECTED_COLUMNS}


def postgres_snapshot(url: str, home: Path, batch: int = 2000) -> tuple[Path, datetime, int]:
    """Copy the usage rows (and the rows Postgres set aside) of the database at `url` into a
    new SQLite file that replaces home/usage-snapshot/detour.db whole once complete. Returns
    its path, the time it is as of, and how many usage rows it holds. psycopg's errors
    propagate (the caller names the database)."""
    import psycopg

    folder = home / SNAPSHOT_DIR
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = folder / "detour.db"
    partial = folder / f".detour-{os.getpid()}.db"  # one run's own, never served
    for leftover in (partial, *(partial.with_name(partial.name + s) for s in ("-wal", "-shm"))):
        leftover.unlink(missing_ok=True)
    db = open_db(partial)  # 0600 from its first byte; the SQLite path's schema and triggers
    try:
        with psycopg.connect(url, connect_timeout=10) as conn:
            # both tables as of one moment
            conn.isolation_level = psycopg.IsolationLevel.REPEATABLE_READ
            with conn.transaction():
                as_of = datetime.now(UTC)
                for table, columns in _COPIED.items():
                    names = list(columns)
                    quoted = ", ".join(f'"{name}"' for name in names)
                    # a server-side cursor: the rows come in batches, memory stays bounded
                    with conn.cursor(name=f"snapshot_{table}") as cursor:
                        cursor.itersize = batch
                        cursor.execute(f"SELECT {quoted} FROM {table} ORDER BY id")
                        db[table].insert_all((dict(zip(names, row)) for row in cursor),
                                             batch_size=batch)
                _copy_rests(conn, db)
        count = db["usage"].count
        db.execute("PRAGMA journal_mode=DELETE")  # one self-contained file to move
        db.close()
        os.replace(partial, path)
    except BaseException:
        db.close()
        partial.unlink(missing_ok=True)
        raise
    return path, as_of, count


def _copy_rests(conn, db) -> None:
    """The rests resting now (Postgres keeps every process's, addons/cooldown_postgres.py),
    in the table and columns detour.db has."""
    from addons.cooldown_store import _CREATE, TABLE
    from addons.usage_postgres import table_rows
    rows = table_rows(conn, TABLE, f"SELECT key, until, reason, cause, streak, updated FROM "
                      f"{TABLE} WHERE until > %s", (time.time(),))
    with db.conn:
        db.conn.execute(_CREATE)
        if rows:
            db.conn.executemany(f"INSERT INTO {TABLE} (key, until, reason, cause, streak, "
                                "updated) VALUES (?, ?, ?, ?, ?, ?)", rows)
