import asyncio

import sqlite_utils

from addons.usage import USAGE_COLUMNS, UsageRow, UsageStore, now_iso


def row(i: int) -> UsageRow:
    return UsageRow(now_iso(), f"flow{i}", "claude-cli/2.1.197", "anthropic", "claude-opus-4-8",
                    True, provider="fake", account="env:K", input_tokens=i, output_tokens=2 * i,
                    route=[{"provider": "fake", "status": 200}])


def test_schema_has_the_public_columns(tmp_path):
    UsageStore(tmp_path / "detour.db")
    db = sqlite_utils.Database(tmp_path / "detour.db")
    assert set(USAGE_COLUMNS) <= set(db["usage"].columns_dict)
    assert db.journal_mode == "wal"


def test_close_flushes_everything(tmp_path):
    store = UsageStore(tmp_path / "detour.db")
    for i in range(450):
        store.add(row(i))
    store.close()
    db = sqlite_utils.Database(tmp_path / "detour.db")
    rows = list(db["usage"].rows)
    assert len(rows) == 450
    assert rows[7]["input_tokens"] == 7 and rows[7]["output_tokens"] == 14
    assert rows[7]["route"] == '[{"provider":"fake","status":200}]'


async def test_background_flush(tmp_path):
    store = UsageStore(tmp_path / "detour.db", flush_interval=0.05)
    task = asyncio.ensure_future(store.run())
    store.add(row(1))
    db = sqlite_utils.Database(tmp_path / "detour.db")
    for _ in range(100):
        await asyncio.sleep(0.02)
        if db["usage"].count:
            break
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    assert db["usage"].count == 1
    db.close()


def test_failed_write_keeps_rows(tmp_path):
    path = tmp_path / "detour.db"
    store = UsageStore(path)
    store.add(row(1))
    path.unlink()
    path.mkdir()  # the database path is now a directory: the write fails
    assert store.flush() == 0
    path.rmdir()
    UsageStore(path)
    assert store.flush() == 1


def test_a_row_is_stored_once_even_if_reported_twice(tmp_path):
    store = UsageStore(tmp_path / "detour.db")
    r = row(1)
    store.add(r)
    store.add(r)
    store.close()
    assert sqlite_utils.Database(tmp_path / "detour.db")["usage"].count == 1
