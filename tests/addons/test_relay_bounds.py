"""The relay's loopback ports under a local process holding connections open: connections
waiting for a request are bounded (the longest-waiting closed first), a real call still gets
in, accepting survives running out of file descriptors, and each condition is one log line."""

import asyncio
import json
import logging
import subprocess
import sys
from pathlib import Path

import httpx

from tests.addons.test_relay import start
from tests.addons.test_relay_h11 import sse_upstreams

ROOT = Path(__file__).resolve().parents[2]


async def relay_call(url: httpx.URL) -> bytes:
    reader, writer = await asyncio.open_connection(url.host, url.port)
    try:
        writer.write(b"POST " + url.raw_path + b" HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n")
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 "), head
        return await reader.readuntil(b"\r\n0\r\n\r\n")
    finally:
        writer.close()


async def test_waiting_connections_are_bounded_and_a_real_call_still_gets_in(caplog):
    relay, fwd, job, finished = await start(sse_upstreams())
    relay.max_waiting = 20
    url = httpx.URL(relay.submit(job))
    held = []
    try:
        with caplog.at_level(logging.WARNING, logger="addons.relay"):
            async with asyncio.timeout(20):
                for _ in range(300):
                    held.append(await asyncio.open_connection(url.host, url.port))
                while relay.stats()["connections"] > 20:  # the relay catches up
                    await asyncio.sleep(0.01)
                assert relay.stats()["connections_waiting"] == 20
                assert b"message_stop" in await relay_call(url)
                assert await held[0][0].read() == b""  # the oldest were closed
                while not finished:  # recorded once the relay has seen its work end
                    await asyncio.sleep(0.01)
        lines = [r.getMessage() for r in caplog.records if r.name == "addons.relay"]
        assert len(lines) == 1 and "closing the oldest" in lines[0], lines
        assert finished == [job]
    finally:
        for _, w in held:
            w.close()
        relay.stop()
        await relay.wait_closed()
        await fwd.aclose()
    assert relay.stats()["connections"] == 0


# run in a child process: it lowers its own limit of open files until the relay cannot accept
OUT_OF_DESCRIPTORS = """
import asyncio, errno, json, logging, os, resource
import httpx
from tests.addons.test_relay import start
from tests.addons.test_relay_h11 import sse_upstreams
from tests.addons.test_relay_bounds import relay_call

lines = []
handler = logging.Handler()
handler.emit = lambda record: lines.append(record.getMessage())
logging.getLogger("addons.relay").addHandler(handler)

async def main():
    relay, fwd, job, finished = await start(sse_upstreams())
    relay.max_waiting = 100_000  # the descriptors run out first
    url = httpx.URL(relay.submit(job))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (len(os.listdir("/proc/self/fd")) + 200, hard))
    held = []
    refused = None
    for _ in range(400):  # each connection costs two descriptors here: ours and the relay's
        try:
            held.append(await asyncio.open_connection(url.host, url.port))
        except OSError as e:
            refused = errno.errorcode.get(e.errno)
            break
    await asyncio.sleep(1)  # the relay meets EMFILE accepting what is still in the backlog
    held.pop(0)[1].close()  # a descriptor for the real call
    await asyncio.sleep(0.1)
    async with asyncio.timeout(20):
        body = await relay_call(url)
    for _, writer in held:
        writer.close()
    relay.stop()
    await relay.wait_closed()
    await fwd.aclose()
    print(json.dumps({"refused": refused, "held": len(held), "answered": b"message_stop" in body,
                      "finished": len(finished), "lines": lines}))

asyncio.run(main())
"""


def test_out_of_file_descriptors_is_survived_and_logged_once():
    done = subprocess.run([sys.executable, "-c", OUT_OF_DESCRIPTORS], cwd=ROOT, timeout=60,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.splitlines()[-1])
    assert out["refused"] == "EMFILE" and out["answered"] and out["finished"] == 1, out
    lines = out["lines"]
    # accept() refused, waiting connections closed to get descriptors back: each condition
    # logged once, then once more as a count at stop
    assert any("Too many open files" in line for line in lines), lines
    assert any("out of file descriptors" in line for line in lines), lines
    assert len(lines) <= 4, lines
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
