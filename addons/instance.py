"""One proxy per DETOUR_HOME, and where it listens: `proxy.lock` and `proxy.json`.

A running proxy holds an exclusive lock on `DETOUR_HOME/proxy.lock` for its whole life (the
system drops it when the process ends, however it ends), so a second proxy on the same home is
refused at start instead of sharing its database and cooldowns unseen. Once mitmproxy listens,
the proxy writes `DETOUR_HOME/proxy.json` (pid, listen address, start time, confdir, config,
log): what `detour run`, `detour env`, `detour status` and `detour stop` read to find it. The
state file alone proves nothing (a killed proxy leaves it behind); the lock says whether it is
current (`running_instance`).
"""

import asyncio
import json
import logging
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.utils.asyncio_utils import create_task

from addons.config import config_warnings
from addons.settings import DetourSettings

log = logging.getLogger(__name__)

# set by `detour up --workers N` (scripts/workers.py) in each worker's environment
WORKER_ENV = "DETOUR_WORKER"
SUPERVISOR_ENV = "DETOUR_SUPERVISOR_PID"
LOCK_NAME = "proxy.lock"
STATE_NAME = "proxy.json"
LOG_NAME = "proxy.log"  # where a proxy `detour run` started in the background writes
LISTEN_WAIT_SECONDS = 60.0  # mitmproxy binds its servers after the scripts load


@dataclass(frozen=True, slots=True)
class Instance:
    """A proxy running for a DETOUR_HOME, as its state file says."""

    pid: int
    host: str  # the listen address ("" or "0.0.0.0": every interface)
    port: int
    started: float  # Unix time
    home: str
    confdir: str
    config: str
    web_port: int | None = None  # mitmweb's UI
    log: str | None = None  # the log file of a background proxy

    @property
    def client_host(self) -> str:
        """Where a client on this machine reaches it: loopback for a wildcard address."""
        if self.host in ("", "0.0.0.0", "::"):
            return "127.0.0.1"
        return self.host

    @classmethod
    def read(cls, home: Path) -> "Instance | None":
        try:
            raw = json.loads((home / STATE_NAME).read_text())
            return cls(**{k: raw.get(k) for k in cls.__dataclass_fields__ if k in raw})
        except (OSError, ValueError, TypeError):
            return None


# ---------------------------------------------------------------- the lock


class HomeLock:
    """An exclusive, advisory lock on DETOUR_HOME/proxy.lock (flock on POSIX, msvcrt on
    Windows). The lock file is never removed: removing it would let two processes lock two
    different files of the same name."""

    def __init__(self, home: Path):
        self.path = home / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> bool:
        """True if this process now holds it; False if another process does."""
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            _lock(fd)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            try:
                _unlock(fd)
            finally:
                os.close(fd)


if sys.platform == "win32":  # pragma: no cover - exercised on Windows only
    import msvcrt

    def _lock(fd: int) -> None:
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
else:
    import fcntl

    def _lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)


def home_locked(home: Path) -> bool:
    """Whether some process holds DETOUR_HOME's proxy lock now."""
    if not (home / LOCK_NAME).exists():
        return False
    lock = HomeLock(home)
    if lock.acquire():
        lock.release()
        return False
    return True


def running_instance(home: Path) -> Instance | None:
    """The proxy running for this home, or None. A state file without the lock held is a
    leftover of a proxy that was killed; the lock without a state file is a proxy still
    starting (None until it listens)."""
    if not home_locked(home):
        return None
    return Instance.read(home)


# ---------------------------------------------------------------- the addon


class ProxyInstance:
    """Takes DETOUR_HOME's lock at start (refusing a second proxy there), writes proxy.json
    once mitmproxy listens, removes it at a clean stop."""

    def __init__(self, settings: DetourSettings):
        self.settings = settings
        self.lock: HomeLock | None = None
        self.home: Path | None = None
        self.instance: Instance | None = None
        self._writer: asyncio.Task | None = None

    def configure(self, updated) -> None:
        if self.lock is not None or self.home is not None:
            return  # the first home stays this process's (a later detour_home is the same proxy)
        home = self.settings.runtime.home
        if os.environ.get(WORKER_ENV):
            # a worker of `detour up --workers N`: its supervisor holds the lock for them all
            self.home = home
            return
        lock = HomeLock(home)
        try:
            held = lock.acquire()
        except OSError as e:
            raise exceptions.OptionsError(f"detour: cannot lock {lock.path}: {e}") from None
        if not held:
            other = Instance.read(home)
            who = (f"pid {other.pid}, port {other.port}" if other is not None
                   else "starting, or started outside detour up")
            raise exceptions.OptionsError(
                f"detour: another detour proxy already runs for DETOUR_HOME {home} ({who}); "
                "two proxies would share its database and cooldowns. Use that one "
                "(`detour run TOOL`, `detour env`), stop it (`detour stop`), or give this one "
                "another home (--home DIR, --set detour_home=DIR)")
        self.lock, self.home = lock, home
        for warning in config_warnings(self.settings.runtime.config):
            log.warning("detour: config: %s", warning)

    def running(self) -> None:
        if os.environ.get(WORKER_ENV, "1") != "1":
            return  # worker 1 says where the workers listen
        self._writer = create_task(self._publish(), name="detour instance state", keep_ref=True)

    async def _publish(self) -> None:
        """Write proxy.json once mitmproxy's proxy server listens (the `running` hook can come
        before its sockets are bound)."""
        server = ctx.master.addons.get("proxyserver")
        deadline = time.monotonic() + LISTEN_WAIT_SECONDS
        addrs = []
        while time.monotonic() < deadline:
            addrs = server.listen_addrs() if server is not None else []
            if addrs:
                break
            await asyncio.sleep(0.05)
        if not addrs:
            log.warning("detour: mitmproxy does not listen; %s not written", STATE_NAME)
            return
        host, port = addrs[0][0], addrs[0][1]
        rt = self.settings.runtime
        web_port = getattr(ctx.options, "web_port", None)  # mitmweb's option only
        self.instance = Instance(
            pid=_proxy_pid(), host=str(ctx.options.listen_host or host), port=int(port),
            started=time.time(), home=str(self.home), confdir=str(ctx.options.confdir),
            config=str(rt.config_path), web_port=web_port,
            log=os.environ.get("DETOUR_PROXY_LOG") or None)
        write_state(self.home, self.instance)

    def done(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if self.home is not None and self.instance is not None:
            current = Instance.read(self.home)
            if current is not None and current.pid == _proxy_pid():
                (self.home / STATE_NAME).unlink(missing_ok=True)
        if self.lock is not None:
            self.lock.release()
            self.lock = None


def _proxy_pid() -> int:
    """The pid `detour stop` signals: this process, or the supervisor of its workers."""
    return int(os.environ.get(SUPERVISOR_ENV) or os.getpid())


def write_state(home: Path, instance: Instance) -> None:
    tmp = home / f".{STATE_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(instance), indent=2) + "\n")
    os.replace(tmp, home / STATE_NAME)
