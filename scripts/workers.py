"""`detour up --workers N`: N mitmdump processes with the router on one listening port.

mitmproxy uses one core; a busy gateway needs several. Each worker's proxy listener sets
SO_REUSEPORT (mitmproxy has no option for it: `reuse_port_mitmdump` below adds it to the
listeners of a nonzero port, before mitmdump starts), so the kernel spreads the client
connections over the workers. They share DETOUR_HOME (config.yaml, detour.db: SQLite takes
their writes in turns) and, with `state:` in config.yaml, rests, round-robin turns and limit
counters (addons/shared_state.py); without it each worker keeps its own. The supervisor prints
each worker's lines prefixed `[worker N]`, passes SIGINT and SIGTERM on to every worker (each
stops cleanly, writing its queued usage rows) and stops them all when one exits.
"""

import asyncio
import os
import signal
import subprocess
import sys
import threading

WORKER_MODULE = "scripts.workers"


def worker_argv(mitmdump_args: list[str]) -> list[str]:
    """The command of one worker: this module's `reuse_port_mitmdump` with mitmdump's args."""
    return [sys.executable, "-m", WORKER_MODULE, *mitmdump_args]


# what each worker is told (addons/instance.py): the supervisor holds DETOUR_HOME's lock and
# is the pid `detour stop` signals; worker 1 writes proxy.json for it
from addons.instance import SUPERVISOR_ENV, WORKER_ENV  # noqa: E402


def run_workers(argv: list[str], count: int, out=None, home=None) -> int:
    """Run `count` workers of `argv` until they stop; returns the first nonzero exit code.
    With `home`, the supervisor holds that DETOUR_HOME's lock for the workers' life."""
    out = out or sys.stdout
    home_lock = None
    if home is not None:
        from addons.instance import HomeLock
        home_lock = HomeLock(home)
        if not home_lock.acquire():
            out.write(f"detour: another detour proxy already runs for DETOUR_HOME {home}\n")
            return 1
    procs: list[subprocess.Popen] = []
    lock = threading.Lock()

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

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGINT, signal.SIGTERM)}
    readers = []
    try:
        for number in range(1, count + 1):
            env = dict(os.environ, **{WORKER_ENV: str(number), SUPERVISOR_ENV: str(os.getpid())})
            worker = list(argv)
            if number > 1 and not any(a.startswith("detour_metrics_port=") for a in argv):
                # one metrics port per host: worker 1 serves it (its own counts)
                worker += ["--set", "detour_metrics_port=0"]
            proc = subprocess.Popen(worker, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env=env)
            procs.append(proc)
            reader = threading.Thread(target=pump, args=(number, proc), daemon=True)
            reader.start()
            readers.append(reader)
        # one worker gone (a crash, a port it could not bind): the others stop too
        while all(proc.poll() is None for proc in procs):
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
    return next((proc.returncode for proc in procs if proc.returncode), 0)


def reuse_port_mitmdump() -> int:
    """mitmdump whose listeners on a given port set SO_REUSEPORT (ephemeral ports, such as
    the relay's, are left as they are)."""
    original = asyncio.start_server

    async def start_server(client_connected_cb, host=None, port=None, **kwargs):
        if port:
            kwargs.setdefault("reuse_port", True)
        return await original(client_connected_cb, host, port, **kwargs)

    asyncio.start_server = start_server
    from mitmproxy.tools.main import mitmdump
    return mitmdump()


if __name__ == "__main__":
    sys.exit(reuse_port_mitmdump())
