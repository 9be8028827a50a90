"""One proxy per DETOUR_HOME, and where it listens: `proxy.lock` and `proxy.json`.

A running proxy holds an exclusive lock on `DETOUR_HOME/proxy.lock` for its whole life (the
system drops it when the process ends, however it ends), so a second proxy on the same home is
refused at start instead of sharing its database and cooldowns unseen. Once mitmproxy listens,
the proxy writes `DETOUR_HOME/proxy.json` (pid, listen address, start time, confdir, config,
log): what `detour run`, `detour env`, `detour status` and `detour stop` read to find it. The
state file alone proves nothing (a killed proxy leaves it behind); the lock says whether it is
current (`running_instance`). The proxy's side is addons/proxy_instance.py; this module is
what the CLI reads, without loading mitmproxy.
"""

import json
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

# set by `detour up --workers N` (scripts/workers.py) in each worker's environment: the
# supervisor holds the lock and is the pid `detour stop` signals (addons/proxy_instance.py)
WORKER_ENV = "DETOUR_WORKER"
SUPERVISOR_ENV = "DETOUR_SUPERVISOR_PID"
LOCK_NAME = "proxy.lock"
STATE_NAME = "proxy.json"
LOG_NAME = "proxy.log"  # where a proxy `detour run` started in the background writes


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
    metrics_port: int | None = None  # loopback /metrics, /accounts, /routes (addons/metrics.py)

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


def write_state(home: Path, instance: Instance) -> None:
    tmp = home / f".{STATE_NAME}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(asdict(instance), indent=2) + "\n")
    os.replace(tmp, home / STATE_NAME)
