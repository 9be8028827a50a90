"""The store's observers (what /metrics counts), recording off, and the writability check."""

import os

from addons.usage import UsageRow, UsageStore, now_iso


def row(i: int) -> UsageRow:
    return UsageRow(now_iso(), f"flow{i}", "curl/8.5.0", "openai-chat", "m", False,
                    client_tool="curl", input_tokens=i)


def test_observers_see_each_stored_row_once(tmp_path):
    seen = []
    store = UsageStore(tmp_path / "detour.db")
    store.observers.append(seen.extend)
    store.observers.append(lambda rows: 1 / 0)  # a broken observer stops nothing
    for i in range(3):
        store.add(row(i))
    assert store.flush() == 3
    assert store.flush() == 0
    store.add(row(3))
    store.close()
    assert [r["flow_id"] for r in seen] == ["flow0", "flow1", "flow2", "flow3"]


def test_rows_the_database_cannot_take_are_observed_when_written(tmp_path):
    seen = []
    path = tmp_path / "detour.db"
    store = UsageStore(path)
    store.observers.append(seen.extend)
    store.add(row(1))
    path.rename(tmp_path / "aside.db")
    assert store.flush() == 0 and seen == []
    assert "no database file" in store.check_writable(0.1)
    (tmp_path / "aside.db").rename(path)
    assert store.check_writable(0.1) is None
    assert store.flush() == 1 and [r["flow_id"] for r in seen] == ["flow1"]


def test_recording_off_drops_rows(tmp_path):
    store = UsageStore(tmp_path / "detour.db")
    store.recording = False
    store.add(row(1))
    assert store.stats()["rows_queued"] == 0
    store.close()
    assert not os.path.exists(tmp_path / "usage-spill.jsonl")
