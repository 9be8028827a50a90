"""The proxy's side of addons/instance.py: DETOUR_HOME's lock taken at start (a second proxy on
the same home is refused, naming the first), `proxy.json` written once mitmproxy listens and
removed at a clean stop; the configuration's warnings logged at start."""

import asyncio
import logging
import os
import time
from pathlib import Path

from mitmproxy import ctx, exceptions
from mitmproxy.utils.asyncio_utils import create_task

from addons.config import config_warnings
from addons.instance import (STATE_NAME, SUPERVISOR_ENV, WORKER_ENV, HomeLock, Instance,
                             write_state)
from addons.settings import DetourSettings

log = logging.getLogger(__name__)

LISTEN_WAIT_SECONDS = 60.0  # mitmproxy binds its servers after the scripts load


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
        # where `detour status` asks for detour.accounts and detour.routes (addons/metrics.py)
        metrics = ctx.master.addons.get("metricsserver")
        if metrics is not None and getattr(ctx.options, "detour_metrics_port", 0):
            try:
                await asyncio.wait_for(metrics.started.wait(),
                                       max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass
        self.instance = Instance(
            pid=_proxy_pid(), host=str(ctx.options.listen_host or host), port=int(port),
            started=time.time(), home=str(self.home), confdir=str(ctx.options.confdir),
            config=str(rt.config_path), web_port=web_port,
            log=os.environ.get("DETOUR_PROXY_LOG") or None,
            metrics_port=metrics.port if metrics is not None else None)
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
