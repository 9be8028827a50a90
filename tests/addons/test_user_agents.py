import sqlite3

import pytest
import sqlite_utils

from addons.usage import UsageRow, UsageStore, open_db
from addons.user_agents import client_tool


@pytest.mark.parametrize("agent, tool, version", [
    ("claude-cli/2.1.197 (external, sdk-cli)", "claude-code", "2.1.197"),
    ("codex_exec/0.169.0 (Debian 12.0.0; x86_64) dumb (codex_exec; 0.169.0)", "codex", "0.169.0"),
    ("codex_cli_rs/0.170.1 (Mac OS 15.1.0; arm64) iTerm.app/3.5.10", "codex", "0.170.1"),
    ("GeminiCLI-tui/0.61.0/gemini-2.5-pro (linux; x64; terminal)", "gemini-cli", "0.61.0"),
    ("GeminiCLI/0.62.1/gemini-2.5-flash (darwin; arm64)", "gemini-cli", "0.62.1"),
    ("QwenCode/0.15.10 (linux; x64)", "qwen-code", "0.15.10"),
    ("OpenAI/Python 1.109.1", "openai-python", "1.109.1"),
    ("OpenAI/JS 5.23.0", "openai-js", "5.23.0"),
    ("Anthropic/Python 0.69.0", "anthropic-python", "0.69.0"),
    ("Anthropic/JS 0.65.0", "anthropic-js", "0.65.0"),
    ("google-genai-sdk/1.41.0 gl-python/3.12.1", "google-genai", "1.41.0"),
    ("curl/8.5.0", "curl", "8.5.0"),
    ("python-httpx/0.28.1", "python-httpx", "0.28.1"),
    ("Python/3.12 aiohttp/3.10.5", "aiohttp", "3.10.5"),
    ("MyTool/3.1 (x)", "MyTool", "3.1"),
    ("mytool", "mytool", ""),
    ("", "", ""),
    ("   ", "", ""),
])
def test_client_tool(agent, tool, version):
    assert client_tool(agent) == (tool, version)


def test_an_older_database_gets_the_tool_columns_filled_in(tmp_path):
    path = tmp_path / "detour.db"
    # a database as the previous version wrote it: no client_tool, client_version, cost_basis
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE usage (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, flow_id TEXT, "
                 "client TEXT, client_format TEXT, model_requested TEXT, cost_usd FLOAT)")
    conn.executemany("INSERT INTO usage (ts, flow_id, client, model_requested) VALUES (?,?,?,?)",
                     [("2026-11-01T00:00:00.000Z", f"f{i}", agent, "m")
                      for i, agent in enumerate(["claude-cli/2.1.100 (external, cli)",
                                                 "QwenCode/0.15.10 (linux; x64)", "", None])])
    conn.commit()
    conn.close()

    store = UsageStore(path)
    store.add(UsageRow("2026-11-02T00:00:00.000Z", "new", "curl/8.5.0", "openai-chat", "m",
                       False, client_tool="curl", client_version="8.5.0"))
    store.close()

    db = sqlite_utils.Database(path)
    rows = {r["flow_id"]: (r["client_tool"], r["client_version"]) for r in db["usage"].rows}
    assert rows == {"f0": ("claude-code", "2.1.100"), "f1": ("qwen-code", "0.15.10"),
                    "f2": ("", ""), "f3": ("", ""), "new": ("curl", "8.5.0")}
    indexed = {tuple(i.columns) for i in db["usage"].indexes}
    assert {("ts",), ("flow_id",), ("client_tool", "ts"), ("provider", "account", "ts")} <= indexed
    applied = [m["name"] for m in db["_sqlite_migrations"].rows]
    db.close()
    open_db(path).close()  # a second open applies nothing again
    db = sqlite_utils.Database(path)
    assert [m["name"] for m in db["_sqlite_migrations"].rows] == applied
    db.close()
