"""A bounded soak through mitmweb: thousands of calls of every kind (whole, streamed, clients
leaving mid-stream, passthrough), providers flapping (429, 500, cut streams, a provider that
refuses every connection, so the fallback runs on every rerouted call), then detour's own
`detour.status` must show nothing left behind: no call, job or row in flight, the process's
open files and asyncio tasks back to their baseline, its memory near it, and one usage row
per call (9router #1245: a gateway whose memory grew for days)."""

import collections
import json
import os
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlite_utils

from tests.captures import anthropic_events
from tests.e2e.conftest import PROVIDER_KEY, capture, free_port, start_proxy
from tests.fakes.replies import CutAfter, Status, Text

PASSWORD = "detour-test-soak"
URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": "k", "anthropic-version": "2023-06-01"}
CALLS = 2000
THREADS = 8
RSS_GROWTH = 64 << 20  # bytes: generous; a leak of one flow per call would be far more


def command(web_port: int, name: str):
    # mitmweb's API wants its XSRF cookie echoed in a header (any matching value will do)
    r = httpx.post(f"http://127.0.0.1:{web_port}/commands/{name}", json={"arguments": []},
                   headers={"Authorization": f"Bearer {PASSWORD}", "X-XSRFToken": "d0e1f2",
                            "Cookie": "_mitmproxy_xsrf=d0e1f2"}, trust_env=False, timeout=10)
    r.raise_for_status()
    return r.json()["value"]


def status(web_port: int) -> dict:
    return json.loads(command(web_port, "detour.status"))


def start_web(confdir: Path, home: Path, fake_openai, more_config: str = "", **mitmdump):
    """mitmweb with the router, the fake provider as `fake` behind every model; its web port."""
    web_port = free_port()
    proxy = start_proxy(
        confdir, home,
        f'providers:\n  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", '
        f'api_keys: [{PROVIDER_KEY}]}}\n' + (more_config or 'routes: {"*": [fake/fake-model]}\n'),
        web=(web_port, PASSWORD), **mitmdump)
    return proxy, proxy.mitm.web_port  # another, if that one was taken


def connections_to(pid: int, port: int) -> int:
    """Sockets of the proxy's network namespace connected to `port` and holding a descriptor
    (the provider leg's pooled keep-alive connections, when the proxy is idle)."""
    count = 0
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            remote_port, state = int(fields[2].rsplit(":", 1)[1], 16), fields[3]
            if remote_port == port and state != "06":  # TIME_WAIT holds no descriptor
                count += 1
    return count


SQLITE_REUSED_FDS = 2  # detour.db descriptors SQLite may hold for reuse (see at_rest)


def fd_targets(pid: int) -> collections.Counter:
    """What the process's descriptors point at (files by path, sockets and pipes by kind): said
    when a count differs, so a failure names what was left open."""
    out = collections.Counter()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:  # closed meanwhile
            continue
        out[target.split(":")[0] if target.startswith(("socket:", "pipe:", "anon_inode:"))
            else target] += 1
    return out


def at_rest(web_port: int, pid: int, upstream_ports: tuple[int, ...],
            timeout: float = 15.0) -> dict:
    """detour.status once nothing is in flight (`gateway` describes the users and shared state,
    not work), with `open_fds` less the upstream keep-alive
    connections (detour's provider pool, mitmproxy's passthrough connections). mitmweb
    keeps every flow it showed (about 60 kB each): they are cleared first, so `rss_bytes`
    measures what detour keeps."""
    command(web_port, "view.clear")
    deadline = time.monotonic() + timeout
    while True:
        state = status(web_port)
        busy = {k: v for k, v in state.items()
                if k not in ("cooling_down", "process", "relay_ports", "gateway") and v}
        if not busy and state["process"]["relay_connections"] == 0:
            break
        assert time.monotonic() < deadline, f"left behind: {busy}, {state['process']}"
        time.sleep(0.2)
    state["process"]["open_fds"] -= sum(connections_to(pid, port) for port in upstream_ports)
    # detour.db's descriptors apart: SQLite keeps a closed connection's descriptor open while
    # another connection of the process holds a lock on the file (closing it would drop the
    # process's POSIX locks), and reuses it at the next open; the usage writer's connection
    # stays open, so a store that opened and closed one meanwhile can leave one there
    db = sum(n for target, n in fd_targets(pid).items() if "/detour.db" in target)
    state["process"]["open_fds"] -= db
    state["process"]["db_fds"] = db
    return state["process"]


def at_rest_settled(web_port: int, pid: int, upstream_ports: tuple[int, ...],
            timeout: float = 15.0) -> dict:
    """`at_rest` once two readings 0.3 s apart agree on open fds and tasks: connections a
    client closed are closed on the proxy's side a moment later, and a baseline read in that
    moment would count them."""
    deadline = time.monotonic() + timeout
    last = at_rest(web_port, pid, upstream_ports)
    while True:
        time.sleep(0.3)
        now = at_rest(web_port, pid, upstream_ports)
        if all(now[k] == last[k] for k in ("open_fds", "asyncio_tasks")) \
                or time.monotonic() > deadline:
            return now
        last = now


@pytest.mark.slow
def test_nothing_is_left_behind(confdir, tmp_path, fake_openai, fake_anthropic):
    fake_anthropic.keys.add("k")
    dead = free_port()  # nothing listens: every connection refused
    proxy, web_port = start_web(
        confdir, tmp_path / "home", fake_openai,
        f'  dead: {{kind: openai, base_url: "http://127.0.0.1:{dead}/v1", api_keys: [k-dead]}}\n'
        f'routes: {{"passthrough-model": [passthrough], "*": [dead/m, fake/fake-model]}}\n'
        f'vendors: {{api.anthropic.com: "{fake_anthropic.base_url}"}}\n'
        'cooldown_seconds: 0\n')
    m = proxy.mitm
    upstream_ports = (int(fake_openai.base_url.rsplit(":", 1)[1]),
                      int(fake_anthropic.base_url.rsplit(":", 1)[1]))
    body = capture("text")
    ids: list[str] = []
    answered = collections.Counter()

    def one(c: httpx.Client, i: int) -> None:
        kind = i % 10
        call = dict(body, stream=kind not in (0, 1, 8))
        if kind in (8, 9):
            call["model"] = "passthrough-model"
        if kind in (6, 7):  # 20%: the client leaves after the first bytes
            with c.stream("POST", URL, json=call, headers=HEADERS) as r:
                ids.append(r.headers["x-detour-id"])
                next(r.iter_raw())
            answered["left"] += 1
            return
        r = c.post(URL, json=call, headers=HEADERS)
        ids.append(r.headers["x-detour-id"])
        good = r.status_code == 200 and (not call["stream"] or anthropic_events(r.content))
        answered["ok" if good else str(r.status_code)] += 1

    def worker(start: int, n: int) -> None:
        with proxy.client() as c:
            for i in range(start, start + n):
                one(c, i)

    def run(n: int) -> None:
        threads = [threading.Thread(target=worker, args=(t * n, n)) for t in range(THREADS)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 120
        while any(t.is_alive() for t in threads):
            # mitmweb keeps every flow it shows, and the memory of thousands of them stays
            # with the process once cleared: cleared as they come, RSS measures detour
            command(web_port, "view.clear")
            assert time.monotonic() < deadline, "the calls did not end"
            time.sleep(0.3)

    with m:  # stops it
        # the command sees a call in flight (so an all-zero answer below means something)
        fake_openai.enqueue(Text(pieces=["x"] * 20, delay=0.1))
        with proxy.client() as c, c.stream("POST", URL, json=dict(body, stream=True),
                                           headers=HEADERS) as r:
            chunks = r.iter_raw()  # kept: a dropped iterator closes the response
            next(chunks)
            busy = status(web_port)
            assert busy["relayed_flows"] == 1 and busy["relay_jobs_running"] == 1, busy
            b"".join(chunks)

        run(20)  # warm up: pools, caches, the first allocations
        base = at_rest_settled(web_port, m.proc.pid, upstream_ports)
        base_fds = fd_targets(m.proc.pid)
        flapping = [Status(429), Status(500), CutAfter(2), Text(pieces=["a"] * 30, delay=0.001)]
        fake_openai.enqueue(*flapping * (CALLS // 8))
        run(CALLS // THREADS)
        deadline = time.monotonic() + 15
        while True:  # settles: connections the clients closed are closed on the proxy's side
            after = at_rest(web_port, m.proc.pid, upstream_ports)
            settled = all(after[k] == base[k] for k in ("open_fds", "asyncio_tasks"))
            if settled or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        # a 502 only when the flapping provider failed and the dead one refused
        assert set(answered) <= {"ok", "left", "502"} and answered["ok"] > CALLS // 2, answered
        after_fds = fd_targets(m.proc.pid)
        print(f"soak: {dict(answered)}; at rest before {base}; after {after}")  # pytest -s
        assert after["open_fds"] == base["open_fds"], (
            base, after, {"opened": after_fds - base_fds, "closed": base_fds - after_fds})
        assert after["asyncio_tasks"] == base["asyncio_tasks"], (base, after)
        assert after["db_fds"] <= base["db_fds"] + SQLITE_REUSED_FDS, (base, after)
        assert after["rss_bytes"] - base["rss_bytes"] < RSS_GROWTH, (base, after)

    db = sqlite_utils.Database(proxy.home / "detour.db")
    try:
        rows = collections.Counter(r["flow_id"] for r in db["usage"].rows)
    finally:
        db.close()
    assert len(ids) == CALLS + THREADS * 20
    doubled = [i for i, n in rows.items() if n > 1]
    missing = [i for i in ids if i not in rows]
    assert not doubled and not missing, (len(doubled), len(missing))
