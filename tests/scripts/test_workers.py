"""`detour up --workers 2`: two mitmdump processes on one port (SO_REUSEPORT) serve the client
connections between them, their lines prefixed `[worker N]`, their usage rows in the one
detour.db; SIGINT stops both cleanly. A worker killed while the kernel holds connections
queued on its socket resets none of them: it is started again on the same socket and answers
them. And --workers with --web is refused."""

import asyncio
import contextlib
import io
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest
import sqlite_utils
from click.testing import CliRunner

from scripts.cli import cli
from scripts.workers import listen_sockets, run_workers, serving_inherited
from tests.fakes.openai_provider import FakeOpenAI
from tests.harness import free_port, stop_process

URL = "https://api.openai.com/v1/chat/completions"
DETOUR = Path(sys.executable).parent / "detour"  # the console script of this venv
CHAT = {"model": "x", "messages": [{"role": "user", "content": "hi"}]}


@contextlib.contextmanager
def two_workers(tmp_path, fake):
    """`detour up --workers 2` on a free port, once both workers listen: (process, its output
    so far, port, home, a TLS context trusting its CA); stopped by SIGINT after."""
    home = tmp_path / "home"
    home.mkdir()
    (home / "config.yaml").write_text(
        f'providers:\n  f: {{kind: openai, base_url: "{fake.base_url}/v1", '
        f'api_keys: [sk-workers]}}\nroutes:\n  "*": [f/m]\n')
    port = free_port()
    proc = subprocess.Popen(
        [str(DETOUR), "--home", str(home), "--confdir",
         str(tmp_path / "conf"), "up", "--port", str(port), "--workers", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = bytearray()
    reader = threading.Thread(target=lambda: [out.extend(line) for line in
                                              iter(proc.stdout.readline, b"")], daemon=True)
    reader.start()
    run = {"code": None}
    try:
        deadline = time.monotonic() + 60
        while out.count(b"proxy listening at") < 2:
            assert proc.poll() is None and time.monotonic() < deadline, out.decode()
            time.sleep(0.05)
        ctx = ssl.create_default_context(cafile=str(tmp_path / "conf" / "mitmproxy-ca-cert.pem"))
        yield proc, out, port, home, ctx, run
    finally:
        run["code"] = stop_process(proc, signal.SIGINT, reader)


def call(port: int, ctx) -> httpx.Response:
    """One chat call through the proxy on a new connection."""
    with httpx.Client(proxy=f"http://127.0.0.1:{port}", verify=ctx, trust_env=False,
                      timeout=20) as c:
        return c.post(URL, json=CHAT)


def test_two_workers_share_one_port(tmp_path):
    with FakeOpenAI(keys=["sk-workers"]) as fake:
        with two_workers(tmp_path, fake) as (proc, out, port, home, ctx, run):
            ids = []
            for _ in range(16):  # a new connection each: the kernel picks a worker for each
                r = call(port, ctx)
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-detour-id"])
    text = out.decode(errors="replace")
    assert run["code"] == 0, text
    served = set(re.findall(r"\[worker (\d)\] .*client connect", text))
    assert served == {"1", "2"}, text[-3000:]  # 16 connections never all hash to one
    rows = list(sqlite_utils.Database(home / "detour.db")["usage"].rows)
    assert sorted(row["flow_id"] for row in rows) == sorted(ids)  # both flushed on SIGINT


def worker_pid(supervisor: int, number: int) -> int:
    """The pid of `detour up`'s worker `number` (DETOUR_WORKER in its environment)."""
    children = Path(f"/proc/{supervisor}/task/{supervisor}/children").read_text().split()
    for pid in map(int, children):
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        if f"DETOUR_WORKER={number}".encode() in env:
            return pid
    raise AssertionError(f"no worker {number} among {children}")


def queued(pid: int, port: int) -> int:
    """Connections waiting in the accept queue of the process's listening socket on
    127.0.0.1:port (/proc/net/tcp: a listening socket's rx_queue is its accept queue)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            link = os.readlink(fd)
            if link.startswith("socket:["):
                inodes.add(link[len("socket:["):-1])
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, state, queues, inode = fields[1], fields[3], fields[4], fields[9]
        if state == "0A" and local == f"0100007F:{port:04X}" and inode in inodes:
            return int(queues.split(":")[1], 16)
    raise AssertionError(f"pid {pid} has no listening socket on port {port}")


@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads Linux's /proc")
def test_worker_killed_with_connections_queued_resets_none(tmp_path):
    """Worker 2 stopped (SIGSTOP: its loop accepts nothing) while the kernel keeps putting
    connections in its socket's queue, then killed (a crash): those connections are not
    reset (a socket closed with a queue resets it); worker 2 comes back on the same socket
    and answers each, while worker 1 answers its own."""
    with FakeOpenAI(keys=["sk-workers"]) as fake, contextlib.ExitStack() as conns:
        with two_workers(tmp_path, fake) as (proc, out, port, home, ctx, run):
            second = worker_pid(proc.pid, 2)
            os.kill(second, signal.SIGSTOP)
            clients = []
            while queued(second, port) < 2:  # the kernel hashes about half of them there
                assert len(clients) < 64
                c = conns.enter_context(socket.create_connection(("127.0.0.1", port), 10))
                c.sendall(b"CONNECT api.openai.com:443 HTTP/1.1\r\nHost: api.openai.com\r\n\r\n")
                clients.append(c)
            os.kill(second, signal.SIGKILL)
            for c in clients:
                c.settimeout(60)  # worker 2 starts again first
                assert c.recv(64).startswith(b"HTTP/1.1 200"), out.decode(errors="replace")
            assert call(port, ctx).status_code == 200
            assert worker_pid(proc.pid, 2) != second
    text = out.decode(errors="replace")
    assert "worker 2 ended (exit code -9); starting it again" in text, text[-3000:]
    assert run["code"] == 0, text[-3000:]


async def test_a_worker_serves_the_supervisors_sockets_and_leaves_them_listening():
    """The worker's start_server on the supervisor's port serves the sockets it inherited
    (several: one server over them all), says so once, and closing it leaves them listening:
    a connection made then waits in their queue, it is not refused. Other ports listen anew."""
    port = free_port()
    inherited = [sock for mine in listen_sockets("127.0.0.1", port, 2) for sock in mine]
    read_end, write_end = os.pipe()

    async def answer(reader, writer):
        writer.write(b"served")
        await writer.drain()
        writer.close()

    try:
        start_server = serving_inherited(asyncio.start_server, inherited, [write_end])
        server = await start_server(answer, "127.0.0.1", port)
        assert os.read(read_end, 8) == b"1"
        assert sorted(s.getsockname() for s in server.sockets) == [("127.0.0.1", port)] * 2
        for _ in range(8):  # whichever socket the kernel picks serves it
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await reader.read() == b"served"
            writer.close()
            await writer.wait_closed()
        server.close()
        for each in server.servers:
            await each.wait_closed()
        with socket.create_connection(("127.0.0.1", port), 5):
            pass  # queued at the supervisor's sockets
        elsewhere = await start_server(answer, "127.0.0.1", 0)
        assert elsewhere.sockets[0].getsockname()[1] != port
        elsewhere.close()
        await elsewhere.wait_closed()
    finally:
        os.close(read_end)
        for sock in inherited:
            sock.close()


def test_the_supervisor_makes_the_confdir_files_before_any_worker_starts(tmp_path):
    """A fresh confdir: the CA and the dhparam file are there, whole, when a worker starts
    (here one that only looks), so no worker's mitmproxy writes one while another reads it."""
    from mitmproxy.certs import DEFAULT_DHPARAM

    confdir = tmp_path / "conf"
    looks = ("import sys; from pathlib import Path; c = Path(sys.argv[1]); sys.exit(0 if "
             "(c / 'mitmproxy-ca.pem').is_file() and (c / 'mitmproxy-dhparam.pem')"
             ".read_bytes() == sys.argv[2].encode() else 3)")
    out = io.StringIO()
    code = run_workers([sys.executable, "-c", looks, str(confdir), DEFAULT_DHPARAM.decode()], 1,
                       host="127.0.0.1", port=free_port(), out=out, confdir=confdir)
    assert code == 0, out.getvalue()


def test_workers_refuse_web(tmp_path):
    result = CliRunner().invoke(cli, ["--home", str(tmp_path), "up", "--workers", "2", "--web"])
    assert result.exit_code == 2 and "drop --web" in result.output
