"""Benchmark plumbing shared by the scenarios: the fake vendors as processes of their own, a
lean HTTPS-through-a-proxy client, timed phases with the proxy's CPU, small statistics.

The client is h11 over a blocking TLS socket (no httpx): its own cost per request is small and
steady, so the proxy stays the bottleneck at concurrency 16 and latencies are the proxy's.
"""

import os
import queue
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import h11

from tests.harness import cpu_of_pid, stop_process

ROOT = Path(__file__).resolve().parent.parent.parent
LISTENING = re.compile(r"listening on (https?)://([\d.]+):(\d+)")
_NO_PROXY_ENV = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY",
                 "all_proxy")


class FakeProcess:
    """`python -m scripts.bench.fake KIND ARGS...` in a process of its own (its CPU is neither
    the proxy's nor the client's); lines it prints after the listening line are queued."""

    def __init__(self, kind: str, *args: str):
        self.argv = [sys.executable, "-m", "scripts.bench.fake", kind, "--port", "0", *args]
        self.proc: subprocess.Popen | None = None
        self.base_url = ""
        self.port = 0
        self.lines: queue.Queue[str] = queue.Queue()
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None
        self._early: list[str] = []

    def launch(self) -> "FakeProcess":
        """Start the process; `wait_ready()` waits for its port."""
        env = {k: v for k, v in os.environ.items() if k not in _NO_PROXY_ENV}
        self.proc = subprocess.Popen(self.argv, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, bufsize=1)
        self._reader = threading.Thread(target=self._pump, daemon=True)
        self._reader.start()
        return self

    def _pump(self) -> None:
        for line in iter(self.proc.stdout.readline, ""):
            line = line.rstrip("\n")
            m = LISTENING.search(line)
            if m and not self._listening.is_set():
                self.base_url = f"{m.group(1)}://{m.group(2)}:{m.group(3)}"
                self.port = int(m.group(3))
                self._listening.set()
            elif self._listening.is_set():
                self.lines.put(line)
            else:
                self._early.append(line)
        self._listening.set()

    def wait_ready(self, timeout: float = 30.0) -> "FakeProcess":
        if not self._listening.wait(timeout) or not self.port:
            raise RuntimeError(f"fake {' '.join(self.argv[3:])} did not start:\n"
                               + "\n".join(self._early))
        return self

    def cpu_seconds(self) -> float:
        return cpu_of_pid(self.proc.pid)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM, self._reader)


@dataclass(slots=True)
class Reply:
    status: int
    t0: float  # time.monotonic() when the request started to be written
    t_mark: float | None  # when the first chunk holding the marker arrived
    t_end: float  # when the end of the response arrived
    size: int
    tail: bytes  # the last bytes of the body
    body: bytes | None  # the whole body, when asked for


def ready_dirs(tmp: Path, fakes: list["FakeProcess"]) -> tuple[Path, Path]:
    """Once every fake listens: a mitmproxy confdir holding a CA, and an empty DETOUR_HOME."""
    from certs.ca import ensure_ca

    confdir = tmp / "confdir"
    ensure_ca(confdir)
    for f in fakes:
        f.wait_ready()
    home = tmp / "home"
    home.mkdir()
    return confdir, home


def pin(pid: int, cpus: set[int]) -> None:
    """Pin every thread of process `pid` to `cpus` (threads it starts later inherit it)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:  # a thread that just ended
            pass


def rss_of_pid(pid: int) -> int:
    """Resident memory of a process, bytes (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def open_streams_rss(pid: int, connect: Callable[[], "TunnelClient"], request: h11.Request,
                     body: bytes, marker: bytes, n: int, warm: int = 8, width: int = 32,
                     at: Callable[[str], None] | None = None) -> dict:
    """Resident memory of proxy `pid` per stream held open: `n` streams at once (each one's
    `marker` received, the provider holding the rest), opened `width` at a time.

    `warm` streams are opened at once and closed first (the path's code, caches, pools and the
    allocator's arenas for that many are in place, as in a proxy that has served), then RSS is
    read before, with half of them open and with all open; the figure is (all - before) / n,
    and the marginal one (all - half) / (n - n/2) says whether the first streams paid for
    something once. `at("before")`, `at("half")` and `at("open")` run just before each
    reading, once RSS holds still (e.g. a garbage collection and malloc_trim in the proxy, a
    tracemalloc snapshot)."""
    def settle_rss() -> int:
        # the proxy has ended what was closed, written what was opened; the first call that
        # ends loads the price tables (genai_prices: ~26 MB kept, ~40 MB more for a second
        # or two, in a thread), so wait for RSS to hold still: six readings 0.25 s apart
        # within 128 KB, 20 s at most
        readings = [rss_of_pid(pid)]
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.25)
            readings = readings[-5:] + [rss_of_pid(pid)]
            if len(readings) == 6 and max(readings) - min(readings) < 131072:
                break
        return readings[-1]

    clients: list[TunnelClient] = []
    lock = threading.Lock()

    def open_one() -> None:
        client = connect()
        with lock:
            clients.append(client)
        client.open_stream(request, body, marker)

    def open_many(count: int, threads: int) -> None:
        # many at once: each waits for its first event (a provider's event interval)
        with ThreadPoolExecutor(threads) as pool:
            for fut in [pool.submit(open_one) for _ in range(count)]:
                fut.result()

    def close_all() -> None:
        for client in clients:
            client.close()
        clients.clear()

    try:
        if warm:
            open_many(warm, warm)
            close_all()
        def reading(stage: str) -> int:
            settle_rss()
            if at:
                at(stage)
            return rss_of_pid(pid)

        before = reading("before")
        half = n // 2
        open_many(half, width)
        mid = reading("half")
        open_many(n - half, width)
        during = reading("open")
    finally:
        close_all()
    return {"streams": n, "rss_before": before, "rss_half": mid, "rss_open": during,
            "kb_per_stream": (during - before) / n / 1024,
            "kb_marginal": (during - mid) / max(1, n - half) / 1024}


class TunnelClient:
    """One keep-alive HTTPS connection through an HTTP proxy: `CONNECT host:port`, TLS to the
    proxy (which intercepts it: `ctx` trusts the proxy's CA), then HTTP/1.1 requests (h11).
    `tunnel=False`: straight to a reverse proxy instead, over TLS when `ctx` is given, plain
    HTTP when it is None."""

    def __init__(self, proxy_port: int, host: str, port: int, ctx: ssl.SSLContext | None,
                 timeout: float = 60.0, tunnel: bool = True):
        sock = socket.create_connection(("127.0.0.1", proxy_port), timeout=timeout)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if tunnel:
            authority = f"{host}:{port}"
            sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                data = sock.recv(4096)
                if not data:
                    sock.close()
                    raise ConnectionError("the proxy closed the connection after CONNECT")
                head += data
            if head.split(b" ", 2)[1] != b"200":
                sock.close()
                raise ConnectionError(f"CONNECT refused: {head[:200]!r}")
        self.sock = ctx.wrap_socket(sock, server_hostname=host) if ctx is not None else sock
        self.conn = h11.Connection(h11.CLIENT)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def open_stream(self, request: h11.Request, body: bytes, marker: bytes) -> None:
        """Send a request and read its answer until `marker` arrived, then leave it open (the
        rest waits in the socket until `close`)."""
        conn = self.conn
        self.sock.sendall(conn.send(request) + conn.send(h11.Data(data=body))
                          + conn.send(h11.EndOfMessage()))
        seen = b""
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.sock.recv(65536))
            elif isinstance(event, h11.Response) and event.status_code != 200:
                raise RuntimeError(f"HTTP {event.status_code}")
            elif isinstance(event, h11.Data):
                seen = (seen + event.data)[-4096:]
                if marker in seen:
                    return
            elif isinstance(event, (h11.EndOfMessage, h11.ConnectionClosed)):
                raise RuntimeError(f"the answer ended before {marker!r}")

    def send(self, request: h11.Request, body: bytes, marker: bytes | None = None,
             keep: bool = False) -> Reply:
        conn = self.conn
        t0 = time.monotonic()
        self.sock.sendall(conn.send(request) + conn.send(h11.Data(data=body))
                          + conn.send(h11.EndOfMessage()))
        status, t_mark, size, tail = 0, None, 0, b""
        parts: list[bytes] | None = [] if keep else None
        while True:
            event = conn.next_event()
            if event is h11.NEED_DATA:
                conn.receive_data(self.sock.recv(262144))
                continue
            kind = type(event)
            if kind is h11.Data:
                data = event.data
                if t_mark is None and marker is not None and marker in tail + data:
                    t_mark = time.monotonic()
                size += len(data)
                tail = (tail + data)[-128:]
                if parts is not None:
                    parts.append(data)
            elif kind is h11.Response:
                status = event.status_code
            elif kind is h11.EndOfMessage:
                t_end = time.monotonic()
                break
            elif kind is h11.ConnectionClosed:
                raise ConnectionError("the proxy closed the connection mid-response")
        conn.start_next_cycle()
        return Reply(status, t0, t_mark, t_end, size, tail,
                     b"".join(parts) if parts is not None else None)


class FreshClient:
    """A client that opens a new connection (CONNECT and TLS handshake included) for every
    request, as a CLI started per task would: `--new-connection`."""

    def __init__(self, connect: Callable[[], TunnelClient]):
        self.connect = connect

    def send(self, *args, **kwargs) -> Reply:
        client = self.connect()
        try:
            return client.send(*args, **kwargs)
        finally:
            client.close()

    def close(self) -> None:
        pass


@dataclass
class Phase:
    """What one timed phase measured: every reply, the wall time and the proxy's CPU."""

    replies: list[Reply] = field(default_factory=list)
    wall: float = 0.0
    cpu: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.replies)

    def latencies_ms(self) -> list[float]:
        return [(r.t_end - r.t0) * 1000 for r in self.replies]

    def marks_ms(self) -> list[float]:
        return [(r.t_mark - r.t0) * 1000 for r in self.replies if r.t_mark is not None]


def run_phase(clients: list[TunnelClient | FreshClient], per_client: int, request: h11.Request, body: bytes,
              cpu: Callable[[], float], check: Callable[[Reply], str | None],
              marker: bytes | None = None, warm: int = 1, settle: float = 0.03) -> Phase:
    """Each client (one thread each) sends `warm` untimed requests, then all start together and
    send `per_client` timed requests back to back on their keep-alive connection. CPU is the
    proxy's, read just before the start and `settle` seconds after the last reply."""
    phase = Phase()
    ready = threading.Barrier(len(clients) + 1)
    go = threading.Barrier(len(clients) + 1)
    lock = threading.Lock()

    def work(client: TunnelClient) -> None:
        mine: list[Reply] = []
        try:
            for _ in range(warm):
                reply = client.send(request, body, marker)
                if problem := check(reply):
                    raise RuntimeError(f"warm-up: {problem}")
        except Exception as e:  # noqa: BLE001 - reported by the caller
            with lock:
                phase.errors.append(f"{type(e).__name__}: {e}")
            ready.abort()
            return
        try:
            ready.wait()
            go.wait()
            for _ in range(per_client):
                reply = client.send(request, body, marker)
                if problem := check(reply):
                    raise RuntimeError(problem)
                mine.append(reply)
        except threading.BrokenBarrierError:
            return
        except Exception as e:  # noqa: BLE001
            with lock:
                phase.errors.append(f"{type(e).__name__}: {e}")
        finally:
            with lock:
                phase.replies.extend(mine)

    threads = [threading.Thread(target=work, args=(c,), daemon=True) for c in clients]
    for t in threads:
        t.start()
    try:
        ready.wait()
    except threading.BrokenBarrierError:
        for t in threads:
            t.join(60)
        return phase
    cpu0, t0 = cpu(), time.monotonic()
    go.wait()
    for t in threads:
        t.join()
    phase.wall = time.monotonic() - t0
    time.sleep(settle)
    phase.cpu = cpu() - cpu0
    return phase


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def percentile(values, q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    k = (len(values) - 1) * q
    lo = int(k)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (k - lo)
