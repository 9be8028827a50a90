"""Real mitmdump processes for integration tests and benchmarks: started on an ephemeral
loopback port with their own confdir, stopped by their PID (never anyone else's)."""

import contextlib
import dataclasses
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUTER = ROOT / "addons" / "router.py"
MITMDUMP = Path(sys.executable).parent / "mitmdump"
PROXY_VARS = {"https_proxy", "http_proxy", "all_proxy", "no_proxy"}
# "HTTP(S) proxy listening at ...", "reverse proxy to URL listening at ...": any mode
LISTENING = re.compile(rb" listening at (?:\*|[\d.]+):(\d+)")


def free_port() -> int:
    """A loopback port nothing listens on now (the system may hand it out again later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cpu_of_pid(pid: int) -> float:
    """User + system CPU seconds of a process, all its threads (Linux): its CPU-time clock
    (the scheduler's runtime, in ns; the clock id glibc's `clock_getcpuclockid` makes), else
    /proc/PID/stat's ticks (10 ms: a short phase reads a handful of them)."""
    try:
        return time.clock_gettime((~pid << 3) | 2)
    except (OSError, AttributeError):
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop_process(proc: subprocess.Popen, sig: int, reader: threading.Thread | None = None):
    """Stop a process we started (by its PID): `sig`, then a kill after 10 s; join the thread
    reading its output and close the pipe."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if reader is not None:
        reader.join(5)
    if proc.stdout is not None:
        proc.stdout.close()
    return proc.returncode


@dataclasses.dataclass
class ClientRun:
    """A real CLI's run: its exit status, what it printed, how long it took."""

    returncode: int | None  # None: it overran and was killed
    stdout: str
    stderr: str
    seconds: float

    def show(self, argv) -> None:
        print(f"===== {' '.join(map(str, argv))}: exit {self.returncode} after "
              f"{self.seconds:.1f} s =====")
        print("----- stdout -----\n" + self.stdout + "\n----- stderr -----\n" + self.stderr)


def run_client(argv, env: dict, cwd: Path, timeout: float, show: bool = True) -> ClientRun:
    """Run a real CLI in its own process group (Node CLIs relaunch themselves in a child), stdin
    closed, bounded by `timeout`: the whole group is killed when it overruns, and whatever
    the group left behind when it ends."""
    started = time.monotonic()
    proc = subprocess.Popen([str(a) for a in argv], env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    overran = False
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        overran = True
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    run = ClientRun(None if overran else proc.returncode, stdout.decode(errors="replace"),
                    stderr.decode(errors="replace"), time.monotonic() - started)
    if show:
        run.show(argv)
    return run


@contextlib.contextmanager
def show_on_failure(proxy: "Mitmdump", provider):
    """Around one real-client test sharing a proxy and a fake: print (pytest shows it when the
    test failed) what the provider received and what mitmdump logged during the test."""
    start = len(proxy.output)
    try:
        yield
    finally:
        print("\n===== requests to the fake provider =====")
        for r in provider.requests:
            print(f"{r.method} {r.path} ({len(r.body)} bytes)")
        print("===== mitmdump output =====")
        print(bytes(proxy.output[start:]).decode(errors="replace"))


def new_rows(home: Path, after: int, expect: int, timeout: float = 15.0) -> list[dict]:
    """The usage rows of DETOUR_HOME's database past the first `after`, waiting (rows are
    written in batches) until there are `expect` of them or `timeout` passed."""
    deadline = time.monotonic() + timeout
    while True:
        rows = []
        if (home / "detour.db").exists():
            db = sqlite3.connect(home / "detour.db")
            try:
                db.row_factory = sqlite3.Row
                rows = [dict(r) for r in db.execute("SELECT * FROM usage ORDER BY id")][after:]
            except sqlite3.OperationalError:  # the table is not there yet
                rows = []
            finally:
                db.close()
        if len(rows) >= expect or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


class Mitmdump:
    """`mitmdump [-s addons/router.py] --listen-port 0`, its port read from its own output."""

    def __init__(self, confdir: Path, home: Path | None = None, router: bool = True,
                 extra: list[str] = (), env: dict | None = None,
                 web: tuple[int, str] | None = None):
        """`web=(port, password)` runs mitmweb instead, its UI and API on that port."""
        self.confdir = confdir
        self.home = home
        program = MITMDUMP if web is None else MITMDUMP.parent / "mitmweb"
        self.args = [str(program), "--listen-host", "127.0.0.1", "--listen-port", "0",
                     "--set", f"confdir={confdir}"]
        if not any(a.startswith("flow_detail=") for a in extra):  # quiet unless asked
            self.args += ["--set", "flow_detail=0"]
        if router and not any(a.startswith("detour_metrics_port=") for a in extra):
            # the metrics port is fixed by default (9464): one per machine, not one per test
            self.args += ["--set", "detour_metrics_port=0"]
        if router:
            self.args += ["-s", str(ROUTER)]
            if home is not None:
                self.args += ["--set", f"detour_home={home}"]
        self.web_port: int | None = None
        if web is not None:
            self.web_port = web[0] or free_port()
            self.args += ["--set", f"web_port={self.web_port}", "--set", f"web_password={web[1]}",
                          "--set", "web_open_browser=false"]
        self.args += list(extra)
        if env is None:
            # the test runner's own proxy settings must not leak into the proxy under test
            env = {k: v for k, v in os.environ.items() if k.lower() not in PROXY_VARS}
        self.env = dict(env)
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None
        self.output = bytearray()
        self._reader: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ca_cert(self) -> Path:
        return self.confdir / "mitmproxy-ca-cert.pem"

    def start(self, timeout: float = 60.0) -> "Mitmdump":
        """Start it; with `web`, until mitmweb itself answers on its port: a port chosen free
        can be taken by another listener before mitmweb binds it (seen once in CI: the
        websocket got someone else's 404), so a mismatch restarts it on another port (3 tries)."""
        for attempt in range(3):
            try:
                self._start(timeout)
            except RuntimeError:
                if self.web_port is None or "Web server failed to listen" not in self.text:
                    raise
                who = "its port was taken before it could listen"
            else:
                if self.web_port is None:
                    return self
                who = self._who_answers_web()
            if who is None:
                return self
            self.stop()
            if attempt == 2:
                raise RuntimeError(f"mitmweb never answered on its port: {who}\n{self.text}")
            old = self.web_port
            self.web_port = free_port()
            self.args[self.args.index(f"web_port={old}")] = f"web_port={self.web_port}"
            self.output.clear()
            self.port = None
        return self

    def _who_answers_web(self) -> str | None:
        """None when mitmweb answers on `web_port`, else what answered. Its proxy can be listening
        before its web server is (12.3 logs them in that order)."""
        import httpx

        deadline = time.monotonic() + 30
        while b"Web server listening at" not in self.output and self.proc.poll() is None:
            if time.monotonic() > deadline:
                return "its web server never said it listens"
            time.sleep(0.05)

        try:
            r = httpx.get(f"http://127.0.0.1:{self.web_port}/", trust_env=False, timeout=10)
        except httpx.HTTPError as e:
            return f"{type(e).__name__}: {e}"
        if r.headers.get("server", "").startswith("mitmproxy"):
            return None
        return f"HTTP {r.status_code} {dict(r.headers)} {r.text[:200]!r}"

    def _start(self, timeout: float) -> None:
        self.proc = subprocess.Popen(self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=self.env, cwd=ROOT)
        found = threading.Event()

        def pump():
            for line in iter(self.proc.stdout.readline, b""):
                self.output += line
                m = LISTENING.search(line)
                if m and self.port is None:
                    self.port = int(m.group(1))
                    found.set()
            found.set()

        self._reader = threading.Thread(target=pump, daemon=True)
        self._reader.start()
        deadline = time.monotonic() + timeout
        while not found.wait(0.05):
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"mitmdump did not start:\n{self.text}")
        if self.port is None:
            self.stop()
            raise RuntimeError(f"mitmdump exited:\n{self.text}")

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def cpu_seconds(self) -> float:
        return cpu_of_pid(self.proc.pid)

    def peak_rss_mb(self) -> float:
        """The process's peak resident memory so far (VmHWM, Linux), in MB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmHWM in /proc/PID/status")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        # SIGINT: mitmproxy's clean shutdown (addons' `done`: the usage rows are flushed)
        return stop_process(self.proc, signal.SIGINT, self._reader)

    def __enter__(self) -> "Mitmdump":
        return self if self.proc is not None else self.start()  # started already: just stop

    def __exit__(self, *exc) -> None:
        self.stop()


def running(interceptor):
    """An Interceptor (addons/intercept.py) as mitmproxy's `running` leaves it, for a test
    context (taddons), which runs no `running`: its CredentialsPutBack in the chain, so a call
    does not wait for detour to be running."""
    interceptor.running()
    return interceptor
