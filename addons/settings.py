"""The `detour_*` mitmproxy options, the configuration they point at, and the runtime every
detour addon shares (providers, cooldowns, forwarder, relay, usage store).

Bad configuration fails at start with an OptionsError naming the field; a bad edit of a
running proxy's config.yaml is logged and the previous configuration stays in force.
"""

import asyncio
import gc
import json
import logging
import resource
import sqlite3
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import yaml
from mitmproxy import command, ctx, exceptions
from mitmproxy.proxy.mode_specs import ProxyMode, ReverseMode, UpstreamMode
from mitmproxy.utils.asyncio_utils import create_task

from addons import formats
from addons.config import (CONFIG_NAME, PASSTHROUGH, Config, ConfigError, ensure_home, home_dir,
                           is_loopback, load_config, parse_config)
from addons.cooldown_store import CooldownStore
from addons.credentials.provider import CredentialProvider
from addons.credentials.store import StoreUnavailable, open_account_store
from addons.forwarding import Forwarder
from addons.relay import MAX_WAITING, ConditionLog, RelayServer
from addons.routing import CooldownBook, ProviderRuntime, build_providers
from addons.scrubber import scrubber_for
from addons.usage import UsageStore
from addons.users import users_path

log = logging.getLogger(__name__)
# httpx logs every request at INFO and httpcore traces ~12 DEBUG records per request; mitmproxy
# sets the root logger to DEBUG and turns each record into an `add_log` hook call: measured at
# ~3% of the proxy's CPU per call, and noise in its event log
for _name in ("httpx", "httpcore", "hpack"):
    logging.getLogger(_name).setLevel(logging.WARNING)

CONFIG_POLL_SECONDS = 1.0
CONFIG_SETTLE_SECONDS = 0.2  # a changed file is loaded once it stays the same this long
# a streamed call that arrives before the relay listens (the proxy's port opens first) waits
# this long for it, then gets a 503 in its client's format
RELAY_WAIT_SECONDS = 10.0
# mitmproxy options under which detour cannot work, and why
REFUSED_OPTIONS = {
    "stream_large_bodies": "it streams large request bodies past the request hook, which "
                           "must read a model call's body to route it",
}


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
    rests: CooldownStore  # the cooldowns kept in the usage database
    relay: RelayServer | None = None


class DetourSettings:
    def __init__(self):
        self.runtime: Runtime | None = None
        self._refused_peers: set[str] = set()
        self._clients: set[str] = set()  # client connections open now
        self._conditions = ConditionLog(log)
        self._finished_hooks: list = []
        self._stopping_hooks: list = []
        self._watch: asyncio.Task | None = None
        self._flusher: asyncio.Task | None = None
        self._rests_writer: asyncio.Task | None = None
        self._mtime: float | None = None
        self._relay_started = asyncio.Event()
        # why the last edit of config.yaml was refused, until an edit loads (for /healthz)
        self.config_error: str | None = None
        # the team gateway (addons/gateway.py): users' limits, asked before a call is routed
        self.gate = None
        # accounts of detour's own store (`detour account ...`), joined to config.yaml's
        self.credentials: CredentialProvider | None = None
        self._accounts_revision: int | None = None
        self._accounts_reload: asyncio.Task | None = None
        self._accounts_stale = False
        # why stored accounts cannot be read now (their store away), until they can (/healthz)
        self.accounts_problem: str | None = None
        self._refresher: asyncio.Task | None = None
        # the targets of mitmproxy's reverse modes (host -> origin): detour serves Ollama's
        # API there (addons/formats.py `with_ollama_hosts`); passthrough goes to the origin
        self.reverse_origins: dict[str, str] = {}

    def format_table(self) -> "formats.FormatTable":
        """The endpoints detour takes, as configured (formats.py, config `chat_hosts`, Ollama's
        on the reverse modes' hosts): what the interceptor, the gateway and the request log
        read. A method: mitmproxy reads every attribute of an addon when it collects commands."""
        rt = self.runtime
        table = rt.config.format_table if rt is not None else formats.TABLE
        return formats.with_ollama_hosts(table, tuple(self.reverse_origins))

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
        loader.add_option(
            "detour_relay_max_waiting", int, MAX_WAITING,
            "Relay connections that have not sent a request yet, beyond which the one waiting "
            "longest is closed (the relay's ports are open to every local user).",
        )
        loader.add_option(
            "detour_max_clients", int, 0,
            "Client connections served at once; more are refused until some close (one log "
            "line). 0: a quarter of the open-files limit (a streamed call holds about four "
            "descriptors). mitmproxy closes an idle client connection after tcp_timeout.",
        )
        loader.add_option(
            "detour_direct", bool, True,
            "A streamed model call with one usable candidate (no fallback possible, an API "
            "key's account, an HTTP/1 client) that mitmproxy's own connection can reach as "
            "configured goes through it, translated on the way back, instead of through "
            "detour's relay (addons/direct.py): no relay hop per event. Its failures are told "
            "in the client's format (addons/error_reply.py). Off: the relay takes every "
            "streamed call.",
        )
        loader.add_option(
            "detour_usage_record", bool, True,
            "Record a usage row per model call in <detour_home>/detour.db. Off: no rows are "
            "written (nor counted in /metrics).",
        )
        loader.add_option(
            "detour_allow_remote", bool, False,
            "Allow a listen address other than loopback. Without users (`detour user add`) the "
            "proxy has no authentication: anyone who reaches the port spends your provider "
            "accounts. Without it, detour "
            "refuses a non-loopback listen address and disconnects non-loopback clients.",
        )

    def configure(self, updated):
        first = self.runtime is None
        if first or updated & {"detour_home", "detour_config"}:
            self._load()
        elif "upstream_auth" in updated:
            self._apply(self.runtime.config, self.runtime.providers)
        self.runtime.store.recording = ctx.options.detour_usage_record
        # refused before any option is changed from here: an update made here and then rolled
        # back by this refusal would call configure again, which would make it again (a loop
        # that ended mitmdump's start in a RecursionError)
        for name, why in REFUSED_OPTIONS.items():
            if getattr(ctx.options, name, None):
                raise exceptions.OptionsError(f"detour: {name} cannot be used with detour: {why}")
        if ctx.options.connection_strategy != "lazy":
            # eager would dial the vendor on CONNECT, before detour could reroute the call
            ctx.options.update(connection_strategy="lazy")
        if first or updated & {"mode", "listen_host", "detour_allow_remote", "upstream_auth"}:
            try:
                modes = [ProxyMode.parse(m) for m in ctx.options.mode]
            except ValueError:
                return  # mitmproxy's proxyserver reports a bad mode
            self._check_listen(modes)
            self.runtime.forwarder.upstream_proxy = _upstream_proxy(modes)
            self.reverse_origins = {
                m.address[0]: f"{m.scheme}://{m.address[0]}:{m.address[1]}"
                for m in modes if isinstance(m, ReverseMode) and m.scheme in ("http", "https")}

    def _check_listen(self, modes: list[ProxyMode]) -> None:
        """No open proxy by accident: mitmproxy listens on every interface by default, and
        detour answers anyone who reaches it with the operator's provider keys."""
        authenticated = self._authenticated()
        allowed = ctx.options.detour_allow_remote or authenticated
        for mode in modes:
            if mode.listen_port(ctx.options.listen_port) is None:
                continue  # not a network listener (local capture mode)
            host = mode.listen_host(ctx.options.listen_host)
            if is_loopback(host):
                continue
            if not host and not allowed:
                # mitmproxy's default (every interface). Refusing it would refuse the plain
                # `mitmdump -s addons/router.py`, and listen_host set from here comes too late:
                # mitmdump binds while the script is still loading. So the socket may be open
                # to the network, but `client_connected` closes every non-loopback peer.
                log.warning("detour: mitmproxy listens on every interface (its default); "
                            "detour answers loopback clients only. Add --listen-host 127.0.0.1 "
                            "to not listen on the network at all")
                continue
            where = f"{host or 'every interface'} ({mode.full_spec})"
            if not allowed:
                raise exceptions.OptionsError(
                    f"detour: refusing to listen on {where}: the proxy has no users (`detour user "
                    "add`), so anyone who reaches it spends your provider accounts. Listen on "
                    "loopback (--listen-host 127.0.0.1), add users, or allow it with "
                    "--set detour_allow_remote=true (detour up --allow-remote)")
            if authenticated:
                log.info("detour: listening on %s; clients authenticate (proxyauth: detour's "
                         "users, `detour user list`)", where)
            else:
                log.warning("detour: listening on %s, reachable from the network without "
                            "authentication (detour_allow_remote)", where)

    def _authenticated(self) -> bool:
        """Clients must authenticate: mitmproxy's proxyauth is set, or detour's users file
        exists (the gateway sets proxyauth to it, addons/gateway.py)."""
        return bool(getattr(ctx.options, "proxyauth", None)) or (
            self.runtime is not None and users_path(self.runtime.home).exists())

    def client_connected(self, client) -> None:
        """No open proxy, whatever address mitmproxy bound: unless detour_allow_remote is set,
        a peer that is not this machine is disconnected before it can send anything. Nor a
        proxy out of file descriptors: beyond detour_max_clients, new clients are refused."""
        self._clients.add(client.id)
        limit = ctx.options.detour_max_clients or _default_max_clients()
        if len(self._clients) > limit:
            client.error = f"detour: {limit} client connections open (detour_max_clients)"
            self._conditions.note("clients", "detour: %d client connections open "
                                  "(detour_max_clients); refusing new ones until some close",
                                  limit)
            return
        if ctx.options.detour_allow_remote or not client.peername or getattr(
                ctx.options, "proxyauth", None):  # authenticated clients may be anywhere
            return
        host = str(client.peername[0])
        if is_loopback(host.removeprefix("::ffff:")):
            return
        client.error = "detour: only loopback clients are served (detour_allow_remote is off)"
        if host not in self._refused_peers:
            # one line per peer, not per connection: a scanner must not flood the log
            if len(self._refused_peers) < 1024:
                self._refused_peers.add(host)
            log.warning("detour: refused a connection from %s: only loopback clients are "
                        "served (--set detour_allow_remote=true to serve the network)", host)

    def client_disconnected(self, client) -> None:
        self._clients.discard(client.id)

    def _load(self) -> None:
        home = home_dir(ctx.options.detour_home or None)
        try:
            if ctx.options.detour_config:
                cfg_path = Path(ctx.options.detour_config).expanduser().resolve()
                home.mkdir(parents=True, exist_ok=True, mode=0o700)
            else:
                cfg_path = ensure_home(home)
            config = load_config(cfg_path)
            if self.credentials is None:  # Postgres with `database:` (store_postgres.py)
                self.credentials = CredentialProvider(open_account_store(home, config.database),
                                                      self.accounts_changed)
            self._accounts_revision = self.credentials.store.revision()
            providers = build_providers(config, self.credentials.load())
            store = rests = None
            if self.runtime is None:
                if config.database:  # imported only then: psycopg is not small
                    from addons.usage_postgres import PostgresUsageStore
                    store = PostgresUsageStore(config.database, home)
                else:
                    store = UsageStore(home / "detour.db")
                cooldowns = CooldownBook()  # outlives reloads: a resting account stays resting
                rests = self._cooldown_store(config, home, cooldowns)
                rests.load()  # and restarts
        except (ConfigError, OSError, sqlite3.Error, StoreUnavailable) as e:
            # a read-only or full DETOUR_HOME, a database that is not one: one line, at start
            raise exceptions.OptionsError(f"detour: {home}: {e}") from None
        self._mtime = _mtime(cfg_path)
        if self.runtime is None:
            self.runtime = Runtime(home, cfg_path, config, providers, cooldowns,
                                   Forwarder(config, cooldowns), store, rests)
            self.runtime.forwarder.credentials = self.credentials
            self.credentials.proxy_of = self.runtime.forwarder.proxy_of
        rt = self.runtime
        rt.home, rt.config_path = home, cfg_path
        self._apply(config, providers)
        log.info("detour: home %s, config %s (%d providers)", home, cfg_path, len(providers))

    def _cooldown_store(self, config: Config, home: Path, book: CooldownBook) -> CooldownStore:
        """Where rests are kept: with the usage rows' Postgres, every process's rests together
        (read again while Redis does not tell this process the others'); else detour.db."""
        if not config.database:
            return CooldownStore(home / "detour.db", book)
        from addons.cooldown_postgres import PostgresCooldownStore

        def shared_up() -> bool:
            shared = getattr(self.gate, "shared", None)
            return shared is not None and shared.up
        return PostgresCooldownStore(config.database, book, shared_up=shared_up)

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
        self._rests_writer = create_task(rt.rests.run(), name="detour cooldowns write",
                                         keep_ref=True)
        self._watch = create_task(self._watch_config(), name="detour config watch", keep_ref=True)
        self._refresher = create_task(self.credentials.run(), name="detour token refresh",
                                      keep_ref=True)
        if rt.relay is None and not self._relay_started.is_set():
            relay = RelayServer(rt.forwarder, self.finished, ctx.options.detour_relay_ports,
                                ctx.options.detour_relay_max_waiting)
            create_task(self._start_relay(relay), name="detour relay start", keep_ref=True)
        # build the HTTP clients (and their TLS contexts) now, not on the first call
        rt.forwarder.client(None)
        # what is loaded by now (mitmproxy, detour, their modules: ~100k objects) lives as long
        # as the process: out of the collector's sight, a full collection (every few hundred
        # calls, as each call's parsed body fills the young generations) no longer walks it all
        # (~90 ms of CPU each time)
        gc.freeze()

    async def _start_relay(self, relay: RelayServer) -> None:
        await relay.start()
        self.runtime.relay = relay
        self._relay_started.set()

    async def ready_relay(self) -> RelayServer | None:
        """The relay, once it listens. mitmproxy opens the proxy's port before `running`, so
        a call may come first: it waits (bounded); None if the relay is not there."""
        rt = self.runtime
        if rt.relay is None and not self._relay_started.is_set():
            try:
                async with asyncio.timeout(RELAY_WAIT_SECONDS):
                    await self._relay_started.wait()
            except TimeoutError:
                pass
        return rt.relay

    def done(self):
        rt = self.runtime
        if rt is None:
            return
        for task in (self._watch, self._flusher, self._rests_writer, self._refresher,
                     self._accounts_reload):
            if task is not None:
                task.cancel()
        if rt.relay is not None:
            relay, rt.relay = rt.relay, None
            relay.stop()
        for hook in self._stopping_hooks:  # the calls still open end while the store takes rows
            hook()
        self._relay_started.clear()
        create_task(rt.forwarder.aclose(), name="detour http close", keep_ref=True)
        create_task(self.credentials.aclose(), name="detour oauth close", keep_ref=True)
        rt.rests.write()
        rt.rests.close()
        rt.store.close()
        self.credentials.store.close()

    @command.command("detour.cooldowns.clear")
    def clear_cooldowns(self, account: str = "") -> str:
        """End rests by hand (a key replaced, a balance topped up): every rest without an
        argument; else those of one account (`provider/label` as detour.status shows it, or
        `provider/account N`, every model of it), one account for one model
        (`provider/label@model`) or a whole provider (`provider`, `passthrough`). Returns
        JSON: the keys whose rest ended."""
        rt = self.runtime
        target = _account_key(account.strip(), rt.providers)
        if not target:
            ended = rt.cooldowns.clear_where(lambda key: True)
        else:
            ended = rt.cooldowns.clear_where(
                lambda key: key == target or key.startswith((target + "@", target + "/")))
        rt.rests.write()  # rare, small, and the operator expects it to hold after a restart
        log.info("detour: cooldowns cleared%s: %s", f" for {account}" if account else "",
                 ", ".join(ended) or "none were resting")
        return json.dumps({"cleared": ended})

    async def _poll_accounts(self) -> None:
        """Accounts added, removed or changed by `detour account ...` (or another process's
        refresh, on any host sharing the database) while the proxy runs: the store's revision
        moved. Asked off the event loop; a store that cannot be read (Postgres away) leaves
        the accounts last read in force, said once, and they are read again when it is back."""
        store = self.credentials.store
        try:
            revision = await asyncio.to_thread(store.revision)
        except (sqlite3.Error, StoreUnavailable) as e:
            if self.accounts_problem is None:
                log.warning("detour: cannot read stored accounts now (%s); serving with the "
                            "accounts last read", e)
            self.accounts_problem = str(e)
            return
        if self.accounts_problem is not None:
            log.info("detour: stored accounts readable again (%s)", store.where)
            self.accounts_problem = None
            self._accounts_revision = None
        if revision != self._accounts_revision:
            self._accounts_revision = revision
            self.accounts_changed()

    def accounts_changed(self) -> None:
        """Rebuild the providers' account lists from config.yaml and the store (read off the
        event loop; a change made while a read runs is read again after it)."""
        if self.runtime is None:
            return
        self._accounts_stale = True
        if self._accounts_reload is None or self._accounts_reload.done():
            self._accounts_reload = create_task(self._reload_accounts(),
                                                name="detour accounts reload", keep_ref=True)

    async def _reload_accounts(self) -> None:
        while self._accounts_stale:
            self._accounts_stale = False
            try:
                stored = await asyncio.to_thread(self.credentials.read)
            except (sqlite3.Error, StoreUnavailable) as e:
                log.warning("detour: cannot read stored accounts now (%s); serving with the "
                            "accounts last read", e)
                self._accounts_revision = None  # read again at the next poll
                return
            rt = self.runtime
            try:
                providers = build_providers(rt.config, self.credentials.load(stored))
            except ConfigError as e:
                log.error("detour: %s; keeping the previous accounts", e)
                return
            self._apply(rt.config, providers)
            log.info("detour: accounts reloaded (%d stored)",
                     sum(1 for p in providers.values() for a in p.accounts
                         if a.stored_id is not None))

    def finished(self, job) -> None:
        for hook in self._finished_hooks:
            hook(job)

    def on_finished(self, hook) -> None:
        """Register what runs when a relay job ends (the interceptor ends its call)."""
        self._finished_hooks.append(hook)

    def on_stopping(self, hook) -> None:
        """Register what runs when the proxy stops, after the relay ended its jobs and before
        the usage store closes."""
        self._stopping_hooks.append(hook)

    async def _watch_config(self) -> None:
        """Hot reload: poll the file's mtime (cheap, and works on every filesystem). A change is
        loaded once the file has held still for a moment: an editor truncates, then writes."""
        while True:
            await asyncio.sleep(CONFIG_POLL_SECONDS)
            await self._poll_accounts()
            rt = self.runtime
            seen = _signature(rt.config_path)
            if seen is None or seen[0] == self._mtime:
                continue
            await asyncio.sleep(CONFIG_SETTLE_SECONDS)
            if _signature(rt.config_path) != seen:
                continue  # still being written: look again at the next poll
            self._mtime = seen[0]
            try:
                stored = self.credentials.load(await asyncio.to_thread(self.credentials.read))
            except (sqlite3.Error, StoreUnavailable):
                stored = self.credentials.loaded  # the poll says why
            try:
                config, providers = _reload(rt.config_path, rt.config, stored)
            except ConfigError as e:
                log.error("detour: %s; keeping the previous configuration", e)
                self.config_error = str(e)
                continue
            self.config_error = None
            self._apply(config, providers)
            log.info("detour: reloaded %s (%d providers)", rt.config_path, len(providers))


def _reload(path: Path, current: Config, stored=()) -> tuple[Config, dict[str, ProviderRuntime]]:
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
    return config, build_providers(config, stored)


def _names_routes(text: str) -> bool:
    raw = yaml.safe_load(text)  # parse_config has read it: valid YAML
    return isinstance(raw, dict) and "routes" in raw


def _account_key(name: str, providers: dict[str, ProviderRuntime]) -> str:
    """What `detour.cooldowns.clear` was given, as a cooldown key prefix: a client-facing
    `provider/account N` becomes `provider/label`; anything else is taken as written."""
    provider, sep, rest = name.partition("/")
    runtime = providers.get(provider)
    if sep and runtime is not None and provider != PASSTHROUGH:
        for account in runtime.accounts:
            if rest == account.name:
                return f"{provider}/{account.label}"
    return name


def _signature(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _upstream_proxy(modes: list[ProxyMode]) -> str | None:
    """The proxy URL of mitmproxy's `upstream:` mode (with `upstream_auth` as its
    credentials), for the provider calls detour makes itself."""
    urls = {f"{m.scheme}://{f'[{m.address[0]}]' if ':' in m.address[0] else m.address[0]}"
            f":{m.address[1]}" for m in modes if isinstance(m, UpstreamMode)}
    if len(urls) > 1:
        raise exceptions.OptionsError(
            f"detour: {len(urls)} upstream proxies in --mode; detour sends provider calls "
            "through one: use a single upstream mode, or set each provider's `proxy:`")
    if not urls:
        return None
    url = urls.pop()
    auth = getattr(ctx.options, "upstream_auth", None)  # mitmproxy's upstream_auth addon
    if auth:
        user, _, password = auth.partition(":")
        scheme, _, rest = url.partition("://")
        url = f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}@{rest}"
    return url


def _default_max_clients() -> int:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    return max(64, soft // 4) if soft != resource.RLIM_INFINITY else 1 << 16


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None
