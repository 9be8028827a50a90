"""The `detour_*` mitmproxy options, the configuration they point at, and the runtime every
detour addon shares (providers, cooldowns, forwarder, relay, usage store).

Bad configuration fails at start with an OptionsError naming the field; a bad edit of a
running proxy's config.yaml is logged and the previous configuration stays in force.
"""

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

import yaml
from mitmproxy import ctx, exceptions
from mitmproxy.utils.asyncio_utils import create_task

from addons.config import (CONFIG_NAME, Config, ConfigError, ensure_home, home_dir, load_config,
                           parse_config)
from addons.forwarding import Forwarder
from addons.relay import RelayServer
from addons.routing import CooldownBook, ProviderRuntime, build_providers
from addons.scrubber import scrubber_for
from addons.usage import UsageStore

log = logging.getLogger(__name__)
# httpx logs every request at INFO and httpcore traces ~12 DEBUG records per request; mitmproxy
# sets the root logger to DEBUG and turns each record into an `add_log` hook call: measured at
# ~3% of the proxy's CPU per call, and noise in its event log
for _name in ("httpx", "httpcore", "hpack"):
    logging.getLogger(_name).setLevel(logging.WARNING)

CONFIG_POLL_SECONDS = 1.0
CONFIG_SETTLE_SECONDS = 0.2  # a changed file is loaded once it stays the same this long


@dataclass
class Runtime:
    """What the addons share. Replaced parts (config, providers) are swapped whole, so a flow
    that already started keeps the configuration it started with."""

    home: Path
    config_path: Path
    config: Config
    providers: dict[str, ProviderRuntime]
    cooldowns: CooldownBook
    forwarder: Forwarder
    store: UsageStore
    relay: RelayServer | None = None


class DetourSettings:
    def __init__(self):
        self.runtime: Runtime | None = None
        self._finished_hooks: list = []
        self._watch: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._mtime: float | None = None

    def load(self, loader):
        loader.add_option(
            "detour_home", str, "",
            "detour's home folder: config.yaml, detour.db. Default: $DETOUR_HOME or ~/.detour.",
        )
        loader.add_option(
            "detour_config", str, "",
            f"The configuration file. Default: <detour_home>/{CONFIG_NAME} (created, commented, "
            "if missing).",
        )
        loader.add_option(
            "detour_relay_ports", int, 8,
            "Loopback ports of the streaming relay (mitmproxy opens at most 5 connections per "
            "client connection and upstream address, so HTTP/2 clients need several).",
        )

    def configure(self, updated):
        if self.runtime is None or updated & {"detour_home", "detour_config"}:
            self._load()
        elif "upstream_auth" in updated:
            self._apply(self.runtime.config, self.runtime.providers)
        if ctx.options.connection_strategy != "lazy":
            # eager would dial the vendor on CONNECT, before detour could reroute the call
            ctx.options.update(connection_strategy="lazy")

    def _load(self) -> None:
        home = home_dir(ctx.options.detour_home or None)
        try:
            if ctx.options.detour_config:
                cfg_path = Path(ctx.options.detour_config).expanduser().resolve()
                home.mkdir(parents=True, exist_ok=True, mode=0o700)
            else:
                cfg_path = ensure_home(home)
            config = load_config(cfg_path)
            providers = build_providers(config)
        except (ConfigError, OSError) as e:
            raise exceptions.OptionsError(f"detour: {e}") from None
        self._mtime = _mtime(cfg_path)
        if self.runtime is None:
            cooldowns = CooldownBook()  # outlives reloads: a resting account stays resting
            self.runtime = Runtime(home, cfg_path, config, providers, cooldowns,
                                   Forwarder(config, cooldowns), UsageStore(home / "detour.db"))
        rt = self.runtime
        rt.home, rt.config_path = home, cfg_path
        self._apply(config, providers)
        log.info("detour: home %s, config %s (%d providers)", home, cfg_path, len(providers))

    def _apply(self, config: Config, providers: dict[str, ProviderRuntime]) -> None:
        rt = self.runtime
        rt.config, rt.providers = config, providers
        rt.forwarder.config = config
        # what providers write back is scrubbed of every secret this configuration holds
        proxy_auth = getattr(ctx.options, "upstream_auth", "")  # an outbound proxy's user:pass
        rt.forwarder.scrubber = scrubber_for(providers, proxy_auth)

    def running(self):
        rt = self.runtime
        self._flusher = create_task(rt.store.run(), name="detour usage flush", keep_ref=True)
        self._watch = create_task(self._watch_config(), name="detour config watch", keep_ref=True)
        if rt.relay is None:
            rt.relay = RelayServer(rt.forwarder, self.finished, ctx.options.detour_relay_ports)
            create_task(rt.relay.start(), name="detour relay start", keep_ref=True)
        # build the HTTP clients (and their TLS contexts) now, not on the first call
        rt.forwarder.client(True)

    def done(self):
        rt = self.runtime
        if rt is None:
            return
        for task in (self._watch, self._flusher):
            if task is not None:
                task.cancel()
        if rt.relay is not None:
            relay, rt.relay = rt.relay, None
            relay.stop()
        create_task(rt.forwarder.aclose(), name="detour http close", keep_ref=True)
        rt.store.close()

    def finished(self, job) -> None:
        for hook in self._finished_hooks:
            hook(job)

    def on_finished(self, hook) -> None:
        """Register what runs when a relay job ends (the interceptor records it)."""
        self._finished_hooks.append(hook)

    async def _watch_config(self) -> None:
        """Hot reload: poll the file's mtime (cheap, and works on every filesystem). A change is
        loaded once the file has held still for a moment: an editor truncates, then writes."""
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            rt = self.runtime
            seen = _signature(rt.config_path)
            if seen is None or seen[0] == self._mtime:
                continue
            await asyncio.sleep(CONFIG_SETTLE_SECONDS)
            if _signature(rt.config_path) != seen:
                continue  # still being written: look again at the next poll
            self._mtime = seen[0]
            try:
                config, providers = _reload(rt.config_path, rt.config)
            except ConfigError as e:
                log.error("detour: %s; keeping the previous configuration", e)
                continue
            self._apply(config, providers)
            log.info("detour: reloaded %s (%d providers)", rt.config_path, len(providers))


def _reload(path: Path, current: Config) -> tuple[Config, dict[str, ProviderRuntime]]:
    """The edited configuration, or a ConfigError naming why it is kept out. An edit that would
    drop every provider (so every route: each call then goes to the original vendor) is taken
    for a file caught half written unless it names its routes (`routes: {"*": [passthrough]}`)."""
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    config = parse_config(text, str(path))
    if current.providers and not config.providers and not _names_routes(text):
        raise ConfigError(
            f"{path}: this edit drops every provider and route (an empty or half-written "
            "file?); to send every call to the original vendors on purpose, write "
            "routes: {\"*\": [passthrough]}")
    return config, build_providers(config)


def _names_routes(text: str) -> bool:
    raw = yaml.safe_load(text)  # parse_config has read it: valid YAML
    return isinstance(raw, dict) and "routes" in raw


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
