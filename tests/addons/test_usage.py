import asyncio
import contextlib
import errno
import json
import os
import sqlite3
import stat
import subprocess

import pytest
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


# ---------------------------------------------------------------- bad rows, locked or full disks


def stored(path) -> list[dict]:
    db = sqlite_utils.Database(path)
    try:
        return list(db["usage"].rows)
    finally:
        db.close()


def test_a_row_sqlite_refuses_is_set_aside_and_never_blocks_the_others(tmp_path):
    path = tmp_path / "detour.db"
    store = UsageStore(path)
    for i in range(10):
        r = row(i)
        if i == 4:
            r.input_tokens = 2**63  # OverflowError: beyond SQLite's 64-bit INTEGER
        store.add(r)
    assert store.flush() == 9
    store.add(row(10))
    assert store.flush() == 1  # later batches are not held up by the bad row
    store.close()
    assert sorted(r["flow_id"] for r in stored(path)) == sorted(
        f"flow{i}" for i in range(11) if i != 4)
    db = sqlite_utils.Database(path)
    [rejected] = list(db["usage_rejected"].rows)
    assert rejected["flow_id"] == "flow4" and "OverflowError" in rejected["reason"]
    assert json.loads(rejected["row"])["input_tokens"] == 2**63
    db.close()
    assert not (tmp_path / "usage-spill.jsonl").exists()


def hold_exclusive_lock(path) -> sqlite3.Connection:
    """Another process's writer, as a real second connection holding the write lock."""
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("BEGIN EXCLUSIVE")
    return conn


def test_a_clean_stop_while_the_database_is_locked_spills_and_the_next_start_imports(tmp_path):
    path = tmp_path / "detour.db"
    store = UsageStore(path, busy_timeout=0.2)
    store.add(row(100))
    store.flush()
    holder = hold_exclusive_lock(path)
    for i in range(30):
        store.add(row(i))
    assert store.flush() == 0  # locked: the rows wait in the queue
    assert store.stats()["rows_queued"] == 30
    store.close()  # still locked: spilled, not lost
    spill = tmp_path / "usage-spill.jsonl"
    assert stat.S_IMODE(spill.stat().st_mode) == 0o600
    lines = spill.read_text().splitlines()
    assert len(lines) == 30
    saved = spill.read_bytes()
    holder.rollback()

    # the lock still held at the next start: the file stays for the start after
    holder = hold_exclusive_lock(path)
    UsageStore(path, busy_timeout=0.2).close()
    assert spill.read_bytes() == saved
    holder.rollback()
    holder.close()

    UsageStore(path).close()
    assert not spill.exists()
    rows = stored(path)
    assert len(rows) == 31 and {r["flow_id"] for r in rows} == {f"flow{i}" for i in range(30)} | {
        "flow100"}
    assert next(r for r in rows if r["flow_id"] == "flow7")["output_tokens"] == 14

    # a crash between the import's commit and the file's removal imports the file again:
    # rows already stored are not stored twice
    spill.write_bytes(saved + saved)
    UsageStore(path).close()
    assert len(stored(path)) == 31 and not spill.exists()


def test_rows_set_aside_while_the_database_is_locked_are_spilled_with_their_reason(tmp_path):
    path = tmp_path / "detour.db"
    store = UsageStore(path, busy_timeout=0.2)
    bad = row(1)
    bad.output_tokens = 2**64
    store.add(bad)
    store.add(row(2))
    store.flush()
    store.add(row(3))
    holder = hold_exclusive_lock(path)
    store.close()
    holder.rollback()
    holder.close()
    assert len((tmp_path / "usage-spill.jsonl").read_text().splitlines()) == 1  # row 3
    UsageStore(path).close()
    assert {r["flow_id"] for r in stored(path)} == {"flow2", "flow3"}
    assert [r["flow_id"] for r in sqlite_utils.Database(path)["usage_rejected"].rows] == ["flow1"]


def test_an_unreadable_spill_line_is_set_aside_not_dropped(tmp_path):
    path = tmp_path / "detour.db"
    UsageStore(path).close()
    good = json.dumps({"row": row(5).as_record()})
    (tmp_path / "usage-spill.jsonl").write_text(good + '\n{"row": {"ts": "2026-\n')
    UsageStore(path).close()
    assert [r["flow_id"] for r in stored(path)] == ["flow5"]
    [rejected] = sqlite_utils.Database(path)["usage_rejected"].rows
    assert rejected["reason"] == "unreadable line 2 of usage-spill.jsonl"
    assert json.loads(rejected["row"]) == {"line": '{"row": {"ts": "2026-'}


@contextlib.contextmanager
def tiny_filesystem(mountpoint, size: str):
    mountpoint.mkdir()
    try:
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs",
                        str(mountpoint)], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root and CAP_SYS_ADMIN): {e}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=True, timeout=30)


def fill(path) -> None:
    """Write until the filesystem has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (1 << 16, 4096, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * size)
        with pytest.raises(OSError) as full:
            os.write(fd, b"\0")
        assert full.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_clean_stop_on_a_full_disk_spills_and_the_next_start_imports(tmp_path):
    with tiny_filesystem(tmp_path / "home", "4m") as home:
        path = home / "detour.db"
        store = UsageStore(path, busy_timeout=0.2)
        store.add(row(100))
        store.flush()
        fill(home / "filler")
        for i in range(50):
            store.add(row(i))
        assert store.flush() == 0  # the disk is full: the rows wait
        store.close()
        assert len((home / "usage-spill.jsonl").read_text().splitlines()) == 50
        (home / "filler").unlink()
        UsageStore(path).close()
        assert len(stored(path)) == 51
        assert not (home / "usage-spill.jsonl").exists()
        assert (home / "usage-spill.reserve").stat().st_size == 1 << 20  # set aside again
