"""`detour up --workers N`: N mitmdump processes with the router on one listening port.

mitmproxy uses one core; a busy gateway needs several. The supervisor (`run_workers`) makes
the listening sockets before any worker starts: one per worker, each with SO_REUSEPORT, so the
kernel spreads the client connections over them. It keeps them open for its whole life and
hands each worker its own (an inherited descriptor; `worker_mitmdump` below gives it to
mitmproxy's proxy server instead of a socket of its own). A connection the kernel queued on a
worker's socket is therefore never reset by that worker's end: a socket closed with
connections in its queue would reset them (RST), and a worker closes its sockets whenever it
stops, crashes or is killed. Connections made while the workers start wait in the queues; a
worker that dies after it served is started again on the same socket, and takes the
connections that queued meanwhile (a startup failure, or a worker dying again and again,
stops them all). They share DETOUR_HOME (config.yaml, detour.db: SQLite takes their writes in
turns) and, with `state:` in config.yaml, rests, round-robin turns and limit counters
(addons/shared_state.py); without it each worker keeps its own. The supervisor prints each
worker's lines prefixed `[worker N]`, passes SIGINT and SIGTERM on to every worker (each
stops cleanly, writing its queued usage rows) and stops them all when one cannot be kept up.
The workers share the mitmproxy confdir too: the supervisor makes its CA and dhparam file
before any of them starts, so that none of them writes one while another reads it.
"""

import asyncio
import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time

WORKER_MODULE = "scripts.workers"


def worker_argv(mitmdump_args: list[str]) -> list[str]:
    """The command of one worker: this module's `worker_mitmdump` with mitmdump's args."""
    return [sys.executable, "-m", WORKER_MODULE, *mitmdump_args]


# what each worker is told (addons/instance.py): the supervisor holds DETOUR_HOME's lock and
# is the pid `detour stop` signals; worker 1 writes proxy.json for it
from addons.instance import SUPERVISOR_ENV, WORKER_ENV  # noqa: E402

LISTEN_FDS_ENV = "DETOUR_LISTEN_FDS"  # the worker's listening sockets, made by the supervisor
READY_FD_ENV = "DETOUR_READY_FD"  # where the worker says its proxy serves its sockets
BACKLOG = 100  # asyncio's default, as mitmproxy's own listener has
# a worker dying more often than this is not restarted: a crash loop stops them all
RESTARTS = 3
RESTART_WINDOW = 60.0


def listen_sockets(host: str, port: int, count: int) -> list[list[socket.socket]]:
    """Each worker's listening sockets on host:port, one per address `host` names (as asyncio
    binds them), with SO_REUSEPORT: the kernel spreads the connections over the workers."""
    addrs = dict.fromkeys((family, kind, proto, addr) for family, kind, proto, _, addr in
                          socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                             flags=socket.AI_PASSIVE))
    made: list[list[socket.socket]] = []
    try:
        for _ in range(count):
            mine: list[socket.socket] = []
            made.append(mine)
            for family, kind, proto, addr in addrs:
                sock = socket.socket(family, kind, proto)
                mine.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(addr)
                sock.listen(BACKLOG)
    except OSError:
        for sock in (s for mine in made for s in mine):
            sock.close()
        raise
    return made


def prepare_confdir(confdir) -> None:
    """The CA and the dhparam file in mitmproxy's confdir, made once here before any worker
    starts: each worker's mitmproxy would otherwise make the missing ones itself, all at once
    (several CAs, each overwriting the last; a dhparam file read while another writes it)."""
    from certs.ca import ensure_ca, ensure_dhparam
    ensure_ca(confdir)
    ensure_dhparam(confdir)


def run_workers(argv: list[str], count: int, *, host: str, port: int, out=None,
                home=None, confdir=None) -> int:
    """Run `count` workers of `argv` on host:port until they stop; returns the first nonzero
    exit code. With `home`, the supervisor holds that DETOUR_HOME's lock for the workers'
    life; with `confdir` (the workers' mitmproxy confdir), it makes its files first."""
    out = out or sys.stdout
    if confdir is not None:
        from certs.ca import CAError
        try:
            prepare_confdir(confdir)
        except (CAError, OSError) as e:
            out.write(f"detour: cannot prepare the mitmproxy confdir {confdir}: {e}\n")
            return 1
    home_lock = None
    if home is not None:
        from addons.instance import HomeLock
        home_lock = HomeLock(home)
        if not home_lock.acquire():
            out.write(f"detour: another detour proxy already runs for DETOUR_HOME {home}\n")
            return 1
    try:
        sockets = listen_sockets(host, port, count)
    except OSError as e:
        out.write(f"detour: cannot listen on {host}:{port}: {e.strerror or e}\n")
        if home_lock is not None:
            home_lock.release()
        return 1
    procs: list[subprocess.Popen] = []
    ready: list[int] = []  # each worker's end of its ready pipe (the supervisor reads)
    started: list[bool] = []  # whether the worker served its sockets
    restarts = [collections.deque(maxlen=RESTARTS) for _ in range(count)]
    code = 0
    lock = threading.Lock()
    readers: list[threading.Thread] = []

    def pump(number: int, proc: subprocess.Popen) -> None:
        for line in iter(proc.stdout.readline, b""):
            with lock:
                out.write(f"[worker {number}] {line.decode(errors='replace')}")
                out.flush()

    stopping: list[int] = []  # the signal already passed on: a second SIGINT would make a
    # worker that is writing its rows quit at once (it died by SIGINT, rows lost)

    def forward(signum, frame) -> None:
        if stopping:
            return
        stopping.append(signum)
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    def spawn(number: int) -> tuple[subprocess.Popen, int]:
        env = dict(os.environ, **{WORKER_ENV: str(number), SUPERVISOR_ENV: str(os.getpid())})
        worker = list(argv)
        if number > 1 and not any(a.startswith("detour_metrics_port=") for a in argv):
            # one metrics port per host: worker 1 serves it (its own counts)
            worker += ["--set", "detour_metrics_port=0"]
        fds = [sock.fileno() for sock in sockets[number - 1]]
        read_end, write_end = os.pipe()
        env[LISTEN_FDS_ENV] = ",".join(map(str, fds))
        env[READY_FD_ENV] = str(write_end)
        try:
            proc = subprocess.Popen(worker, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env, pass_fds=[*fds, write_end])
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        os.set_blocking(read_end, False)
        reader = threading.Thread(target=pump, args=(number, proc), daemon=True)
        reader.start()
        readers.append(reader)
        return proc, read_end

    def served(index: int) -> bool:
        if not started[index]:
            try:
                started[index] = os.read(ready[index], 1) == b"1"
            except BlockingIOError:
                pass
        return started[index]

    def restartable(index: int) -> bool:
        """A worker that died after it served, not dying again and again: started anew
        on its sockets (the connections queued there meanwhile are its)."""
        times = restarts[index]
        now = time.monotonic()
        return served(index) and (len(times) < RESTARTS or now - times[0] > RESTART_WINDOW)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        for number in range(1, count + 1):
            proc, read_end = spawn(number)
            procs.append(proc)
            ready.append(read_end)
            started.append(False)
        while not stopping:
            gone = [i for i, proc in enumerate(procs) if proc.poll() is not None]
            if gone and not stopping and all(restartable(i) for i in gone):
                for i in gone:
                    with lock:
                        out.write(f"detour: worker {i + 1} ended (exit code "
                                  f"{procs[i].returncode}); starting it again\n")
                    restarts[i].append(time.monotonic())
                    os.close(ready[i])
                    procs[i], ready[i] = spawn(i + 1)
                    started[i] = False
            elif gone:
                # a startup failure (a config error) or a crash loop: the others stop too
                code = next((procs[i].returncode for i in gone if procs[i].returncode), 0)
                break
            try:
                procs[0].wait(0.5)
            except subprocess.TimeoutExpired:
                pass
        forward(signal.SIGINT, None)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        if home_lock is not None:
            home_lock.release()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for reader in readers:
            reader.join(5)
        for proc in procs:
            if proc.stdout is not None:
                proc.stdout.close()
        for fd in ready:
            os.close(fd)
        # the last holder: connections still queued are reset now, the proxy being stopped
        for sock in (s for mine in sockets for s in mine):
            sock.close()
    return code or next((proc.returncode for proc in procs if proc.returncode), 0)


class _Servers:
    """The asyncio servers of a host that names several addresses, as the one server
    mitmproxy expects (it uses their sockets and closes them)."""

    def __init__(self, servers: list[asyncio.Server]):
        self.servers = servers

    @property
    def sockets(self) -> list[socket.socket]:
        return [sock for server in self.servers for sock in server.sockets]

    def close(self) -> None:
        for server in self.servers:
            server.close()


def inherited_sockets() -> list[socket.socket]:
    """The listening sockets the supervisor handed this worker (kept from its own children)."""
    found = []
    for fd in filter(None, os.environ.get(LISTEN_FDS_ENV, "").split(",")):
        os.set_inheritable(int(fd), False)
        found.append(socket.socket(fileno=int(fd)))
    return found


def serving_inherited(original, inherited: list[socket.socket], ready: list[int]):
    """asyncio.start_server (`original`) that serves the `inherited` sockets of the port it
    is asked for instead of listening anew, and then tells the supervisor (`ready`)."""

    async def start_server(client_connected_cb, host=None, port=None, **kwargs):
        mine = [s for s in inherited if port and s.getsockname()[1] == port]
        if not mine:
            return await original(client_connected_cb, host, port, **kwargs)
        # a copy each: closing the server (mitmproxy stopping it) leaves the socket, and its
        # queued connections, to the supervisor and this worker's successor
        servers = [await original(client_connected_cb, sock=socket.socket(fileno=os.dup(
            s.fileno())), **kwargs) for s in mine]
        while ready:  # told once: this worker serves; a restart now keeps its connections
            fd = ready.pop()
            os.write(fd, b"1")
            os.close(fd)
        return servers[0] if len(servers) == 1 else _Servers(servers)

    return start_server


def worker_mitmdump() -> int:
    """mitmdump whose proxy server serves the sockets the supervisor made (on their port),
    rather than listening on sockets of its own; any other listener is left as it is."""
    ready = [int(fd) for fd in filter(None, [os.environ.get(READY_FD_ENV)])]
    for fd in ready:
        os.set_inheritable(fd, False)
    asyncio.start_server = serving_inherited(asyncio.start_server, inherited_sockets(), ready)
    from mitmproxy.tools.main import mitmdump
    return mitmdump()


if __name__ == "__main__":
    sys.exit(worker_mitmdump())
