"""A clean stop never loses a row, through a real mitmdump: calls answered while another process
holds detour.db's write lock, or while DETOUR_HOME's disk is full, are spilled at the stop
(SIGINT) to DETOUR_HOME/usage-spill.jsonl, the stop stays prompt, and the next mitmdump on that
home imports them, each once."""

import json
import signal

from tests.addons.test_usage import fill, hold_exclusive_lock, tiny_filesystem
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, capture, start_proxy

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}
CALLS = 20


def config(fake_openai) -> str:
    return (f'providers:\n  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", '
            f'api_keys: [{PROVIDER_KEY}]}}\nroutes: {{"*": [fake/fake-model]}}\n')


def answered_calls(proxy, n: int, stream: bool = False) -> list[str]:
    """`n` calls, each answered 200; their flow ids."""
    ids = []
    with proxy.client() as c:
        for i in range(n):
            r = c.post(URL, json=dict(capture("text"), stream=stream or i % 2 == 1),
                       headers=HEADERS)
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-detour-id"])
    return ids


def stop_cleanly(proxy) -> None:
    """SIGINT, and the process ends by itself (the harness kills it only after 10 s)."""
    code = proxy.mitm.stop()
    assert code == 0 and code != -signal.SIGKILL, (code, proxy.mitm.text[-3000:])


def spilled(home) -> list[dict]:
    spill = home / "usage-spill.jsonl"
    assert spill.exists(), "nothing spilled"
    assert (spill.stat().st_mode & 0o777) == 0o600
    return [json.loads(line)["row"] for line in spill.read_text().splitlines()]


def imported_at_next_start(confdir, home, fake_openai, expect: list[str]) -> None:
    again = start_proxy(confdir, home, config(fake_openai))
    try:
        rows = again.rows(expect=len(expect))
    finally:
        again.mitm.stop()
    ids = [r["flow_id"] for r in rows]
    assert sorted(ids) == sorted(expect), (len(ids), len(expect))
    assert not (home / "usage-spill.jsonl").exists()


def test_a_clean_stop_while_the_database_is_locked_spills_and_the_next_start_imports(
        confdir, tmp_path, fake_openai):
    home = tmp_path / "home"
    proxy = start_proxy(confdir, home, config(fake_openai))
    holder = None
    try:
        first = answered_calls(proxy, 1)
        assert len(proxy.rows(expect=1)) == 1
        holder = hold_exclusive_lock(home / "detour.db")  # another process's writer
        ids = answered_calls(proxy, CALLS)
        stop_cleanly(proxy)
    finally:
        proxy.mitm.stop()
        if holder is not None:
            holder.rollback()
            holder.close()
    rows = spilled(home)
    assert sorted(r["flow_id"] for r in rows) == sorted(ids)
    assert all(r["status"] == 200 and r["provider"] == "fake" for r in rows)
    assert PROVIDER_KEY not in (home / "usage-spill.jsonl").read_text()
    assert f"usage: {CALLS} rows could not be written" in proxy.mitm.text
    imported_at_next_start(confdir, home, fake_openai, first + ids)


def test_a_clean_stop_on_a_full_disk_spills_and_the_next_start_imports(
        confdir, tmp_path, fake_openai):
    with tiny_filesystem(tmp_path / "home", "8m") as home:
        proxy = start_proxy(confdir, home, config(fake_openai))
        try:
            first = answered_calls(proxy, 1)
            assert len(proxy.rows(expect=1)) == 1
            fill(home / "filler")
            ids = answered_calls(proxy, CALLS)
            stop_cleanly(proxy)
        finally:
            proxy.mitm.stop()
        rows = spilled(home)
        assert sorted(r["flow_id"] for r in rows) == sorted(ids)
        assert f"usage: {CALLS} rows could not be written" in proxy.mitm.text
        (home / "filler").unlink()
        imported_at_next_start(confdir, home, fake_openai, first + ids)
