"""The usage row's `user` column: added to a database made before it, and what each user's
limits count at start (tokens today, cost this month) read from the stored rows."""

import calendar
import sqlite3

from addons.usage import UsageRow, UsageStore


def test_an_older_database_gets_the_user_column_and_keeps_its_rows(tmp_path):
    path = tmp_path / "detour.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE usage (id INTEGER PRIMARY KEY, ts TEXT NOT NULL, flow_id TEXT)")
    conn.execute("INSERT INTO usage (ts, flow_id) VALUES ('2026-01-01T00:00:00Z', 'old')")
    conn.commit()
    conn.close()
    store = UsageStore(path)
    store.add(UsageRow("2026-01-02T00:00:00.000Z", "new", "c", "openai-chat", "m", False,
                       user="alice"))
    store.close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT flow_id, user FROM usage ORDER BY id").fetchall() == [
        ("old", None), ("new", "alice")]
    conn.close()


def test_spent_by_user_counts_today_and_this_month(tmp_path):
    store = UsageStore(tmp_path / "detour.db")
    now = calendar.timegm((2026, 6, 15, 12, 0, 0))
    rows = [("2026-06-15T01:00:00.000Z", "a", 10, 1.0), ("2026-06-14T23:00:00.000Z", "a", 100,
                                                         2.0),
            ("2026-05-31T23:00:00.000Z", "a", 1000, 4.0), ("2026-06-15T02:00:00.000Z", "b", 1,
                                                           0.5)]
    for i, (ts, user, tokens, usd) in enumerate(rows):
        store.add(UsageRow(ts, f"f{i}", "c", "openai-chat", "m", False, user=user,
                           input_tokens=tokens, cost_usd=usd))
    store.flush()
    assert store.spent_by_user(["a", "c"], now) == {"a": (10, 3.0)}
    store.close()
