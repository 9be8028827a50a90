"""The team gateway: who may use the proxy, what they may reach, how much they may spend, and
the state several detour processes share.

- Users live in `DETOUR_HOME/users.htpasswd` (addons/users.py, `detour user ...`). When the
  file exists, mitmproxy's own `proxyauth` option is set to it (`@path`), so a client without
  valid credentials gets mitmproxy's 407 and nothing is proxied. mitmproxy checks a tunnel's
  credentials once, at its CONNECT, and trusts the connection afterwards; detour checks every
  request again against the file as it is now (a cache keeps that to a dictionary look-up), so
  a removed user or a rotated secret is refused at once, on open connections too. The file is
  polled; an edit reloads both checks.
- A gateway (users configured, or `detour_allow_remote`) is not an open proxy: a CONNECT or
  plain request to a host other than the vendors' is refused (403) unless config
  `allow_hosts` names it.
- Each model call carries its user (`flow.metadata["detour.user"]`, the usage row's `user`);
  a call over one of its user's limits is refused, 429 in its client's format, before routing
  (addons/user_limits.py).
- `state: redis://...` in config: cooldowns, round-robin turns and limit counters are shared
  through Redis (addons/shared_state.py), and so are the stored logins' refresh lease and
  rotated tokens (addons/credentials/shared_tokens.py); without it, or while Redis is away,
  each process keeps its own.

mitmproxy's proxyauth puts the client's secret in `flow.metadata["proxyauth"]`, which mitmweb
shows and a saved flow keeps: detour replaces it with the name alone once it has checked it.
"""

import asyncio
import fnmatch
import hashlib
import logging
import time

from mitmproxy import ctx, http
from mitmproxy.addons.proxyauth import make_auth_required_response
from mitmproxy.utils.asyncio_utils import create_task

from addons.config import ROUND_ROBIN
from addons.credentials.shared_tokens import SharedTokens
from addons.routing import account_key
from addons.settings import DetourSettings
from addons.shared_state import SharedState, safe_url
from addons.user_limits import LocalCounters, Refusal, spent_tokens
from addons.users import User, UsersError, read_users, users_path

log = logging.getLogger(__name__)

USER_META = "detour.user"
AUTH_META = "proxyauth"  # where mitmproxy's proxyauth puts (user, secret)
PROXY_AUTHORIZATION = "proxy-authorization"
REDACTED = "[redacted]"
USERS_POLL_SECONDS = 1.0
MAX_VERIFIED = 4096  # cached (user, secret digest) checks; cleared whole past it
SHARED_USE = -1e12  # an LRU position from Redis, as a last-used time before any local one


class Gateway:
    def __init__(self, settings: DetourSettings):
        self.settings = settings
        settings.gate = self
        self.users: dict[str, User] | None = None  # None: no users file, no authentication
        self.counters = LocalCounters()
        self.shared = None  # addons.shared_state.SharedState while `state:` is configured
        self._path = None
        self._signature = None
        self._verified: dict[tuple[str, bytes], str] = {}  # -> the hash it was checked against
        self._watch: asyncio.Task | None = None
        self._refused_hosts: set[str] = set()
        self._database: str | None = None  # the usage database in use (read at start)

    # ------------------------------------------------------------ users file

    def configure(self, updated):
        rt = self.settings.runtime
        if rt is None:
            return
        path = users_path(rt.home)
        if path != self._path:
            self._path = path
            self._reload(initial=True)
        if self.shared is None and rt.config.state:
            # made before the proxy runs: a token refresh at start must already go through it
            self._join_state(rt.config.state)
        if "proxyauth" in updated and self.users is not None and not self._owns_auth():
            log.warning("detour: proxyauth is set to something other than %s: detour's users "
                        "are not asked for; limits apply to the names it lets in", path)

    def _owns_auth(self) -> bool:
        return ctx.options.proxyauth == f"@{self._path}"

    def _reload(self, initial: bool = False) -> None:
        """Read the users file again; a bad file keeps the users in force (logged)."""
        self._signature = _signature(self._path)
        try:
            users = read_users(self._path)
        except UsersError as e:
            if initial:
                from mitmproxy import exceptions
                raise exceptions.OptionsError(f"detour: {e}") from None
            log.error("detour: %s; keeping the users in force", e)
            return
        was = self.users
        if users is None and was is not None:
            # never an open proxy by deleting a file: nobody gets in until it is back
            log.warning("detour: %s is gone: every client is refused until it is back (or "
                        "detour restarts without it)", self._path)
            users = {}
        self.users = users
        self._verified.clear()
        if users is None:
            return
        if not ctx.options.proxyauth or self._owns_auth():
            if self._path.exists():
                # set anew even when unchanged: mitmproxy's htpasswd reader loads on configure
                ctx.options.update(proxyauth=f"@{self._path}")
        log.info("detour: %d users from %s", len(users), self._path)
        self._seed_counters()

    def _seed_counters(self) -> None:
        """This month's and today's spending of each limited user, from the rows stored."""
        limited = [name for name, user in self.users.items()
                   if user.limits and self.counters.snapshot(name) is None]
        if not limited:
            return
        try:
            spent = self.settings.runtime.store.spent_by_user(limited, time.time())
        except Exception as e:  # noqa: BLE001 - a count missing must not stop the proxy
            log.warning("detour: cannot read users' spending so far: %s", e)
            return
        for name, (tokens, usd) in spent.items():
            if self.counters.snapshot(name) is None:  # else counted here since: newer
                self.counters.seed(name, tokens, usd)

    async def _watch_users(self) -> None:
        """The users file, and the configuration's `state:` (config.yaml is reloaded by the
        settings addon; a changed URL is joined here)."""
        while True:
            await asyncio.sleep(USERS_POLL_SECONDS)
            if _signature(self._path) != self._signature:
                self._reload()
            await self._follow_state()

    async def _follow_state(self) -> None:
        rt = self.settings.runtime
        if rt.config.database != self._database:
            self._database = rt.config.database
            log.warning("detour: config.yaml's `database:` changed: usage rows go where they "
                        "went until detour restarts")
        url = rt.config.state
        if self.shared is not None and self.shared.url == url:
            if not self.shared.started:
                self.shared.start()
            return
        if self.shared is not None:
            shared, self.shared = self.shared, None
            self._share_tokens(None)
            await shared.stop()
            log.info("detour: shared state %s left", safe_url(shared.url))
        if url:
            self._join_state(url)
            self.shared.start()

    def _join_state(self, url: str) -> None:
        rt = self.settings.runtime
        self.shared = SharedState(url, rt.cooldowns, self.counters, rt.home)
        self._share_tokens(self.shared)

    def _share_tokens(self, shared: SharedState | None) -> None:
        """The stored logins' refresh lease and rotated tokens go through `shared` too."""
        credentials = self.settings.credentials
        if credentials is not None:
            credentials.shared = None if shared is None else SharedTokens(
                shared, credentials.store.vault, credentials.rotated)

    def running(self):
        self._database = self.settings.runtime.config.database
        self._watch = create_task(self._watch_users(), name="detour users watch",
                                  keep_ref=True)
        create_task(self._follow_state(), name="detour shared state start", keep_ref=True)

    def done(self):
        if self._watch is not None:
            self._watch.cancel()
        if self.shared is not None:
            shared, self.shared = self.shared, None
            create_task(shared.stop(), name="detour shared state stop", keep_ref=True)

    # ------------------------------------------------------------ access

    @property
    def is_gateway(self) -> bool:
        """Users configured, or remote clients allowed: only the vendors' hosts are proxied."""
        return self.users is not None or bool(ctx.options.detour_allow_remote)

    def http_connect(self, flow: http.HTTPFlow) -> None:
        self._admit_flow(flow)

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._admit_flow(flow)

    def _admit_flow(self, flow: http.HTTPFlow) -> None:
        if PROXY_AUTHORIZATION in flow.request.headers:
            # left on a flow proxyauth refused (a near miss of a real secret, maybe)
            flow.request.headers[PROXY_AUTHORIZATION] = REDACTED
        if flow.response is not None:
            return  # refused by proxyauth already
        if self.users is not None and self._owns_auth():
            name = self._user_of(flow)
            if name is None:
                flow.response = make_auth_required_response(True)
                return
            flow.metadata[USER_META] = name
        elif AUTH_META in flow.metadata:  # another proxyauth (LDAP, ...): its name counts
            name = flow.metadata[AUTH_META][0]
            flow.metadata[AUTH_META] = (name, REDACTED)
            flow.metadata[USER_META] = name
        if self.is_gateway and not self.host_allowed(flow.request.host):
            host = flow.request.host
            flow.response = http.Response.make(
                403, f"detour: {host} is not proxied by this gateway (it serves the AI "
                     "vendors' hosts; allow_hosts in config.yaml adds others)\n",
                {"content-type": "text/plain"})
            if host not in self._refused_hosts and len(self._refused_hosts) < 1024:
                self._refused_hosts.add(host)  # one line per host: a scan must not flood
                log.info("detour: refused %s (not a vendor host, not in allow_hosts)", host)

    def _user_of(self, flow: http.HTTPFlow) -> str | None:
        """The user of a flow mitmproxy's proxyauth let in, if the users file still has it
        with that secret; the secret is taken off the flow either way."""
        auth = flow.metadata.get(AUTH_META)
        if not auth or len(auth) != 2:
            return None  # not let in by proxyauth (a replay, another mode)
        name, secret = auth
        flow.metadata[AUTH_META] = (name, REDACTED)
        user = self.users.get(name)
        if user is None or secret == REDACTED:
            return None
        key = (name, hashlib.sha256(secret.encode()).digest())
        if self._verified.get(key) == user.secret_hash:
            return name
        if not user.check(secret):
            return None
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[key] = user.secret_hash
        return name

    def host_allowed(self, host: str) -> bool:
        if host in self.settings.format_table().handled_hosts:
            return True
        rt = self.settings.runtime
        host = host.lower()
        return any(fnmatch.fnmatchcase(host, pattern.lower())
                   for pattern in rt.config.allow_hosts)

    # ------------------------------------------------------------ limits

    async def admit(self, user: str, model: str = "", user_agent: str = "") -> Refusal | None:
        """Whether a model call of `user` may go on (the interceptor asks before routing,
        with nothing awaited between this and the routing). With shared state, the same
        round trip takes the route's round-robin turns for every process."""
        account = self.users.get(user) if user and self.users else None
        limits = account.limits if account is not None and account.limits else None
        shared = self.shared
        if shared is not None and shared.up:
            groups, lru = self._turn_groups(model, user_agent)
            if limits or groups or lru:
                decided = await shared.admit(user, limits, groups, lru)
                if decided is not None:
                    refused, turns, used = decided
                    if refused is None:
                        book = self.settings.runtime.cooldowns
                        for group, turn in zip(groups, turns):
                            book.set_turn(group, turn)
                        for (group, labels), numbers in zip(lru, used):
                            provider = group.rpartition("#")[0]
                            for label, number in zip(labels, numbers):
                                # below any local time: Redis's order decides while it is up
                                book.used(account_key(provider, label), SHARED_USE + number)
                        if limits:
                            self.counters.counted(user)
                    return refused
        return self.counters.admit(user, limits) if limits else None

    def _turn_groups(self, model: str, user_agent: str
                     ) -> tuple[list[str], list[tuple[str, list[str]]]]:
        """The round-robin groups (`provider#priority`, two accounts or more) the route of
        `model` may take a turn of, and its least-recently-used groups with the labels of
        their accounts ready for it (two or more)."""
        rt = self.settings.runtime
        groups: list[str] = []
        lru: list[tuple[str, list[str]]] = []
        now = time.monotonic()
        for entry in rt.config.candidates(model, user_agent):
            name, sep, upstream = entry.partition("/")
            provider = rt.providers.get(name) if sep else None
            if provider is None:
                continue
            if provider.spec.strategy == ROUND_ROBIN:
                sizes: dict[int, int] = {}
                for account in provider.accounts:
                    if not account.disabled:
                        sizes[account.priority] = sizes.get(account.priority, 0) + 1
                groups += [f"{name}#{p}" for p, n in sizes.items()
                           if n > 1 and f"{name}#{p}" not in groups]
                continue
            upstream = model if upstream == "*" else upstream
            ready: dict[int, list[str]] = {}
            for account in provider.accounts:
                if not account.disabled and rt.cooldowns.rest(
                        account_key(name, account.label), upstream, now) is None:
                    ready.setdefault(account.priority, []).append(account.label)
            lru += [(f"{name}#{p}", labels) for p, labels in ready.items()
                    if len(labels) > 1 and all(g != f"{name}#{p}" for g, _ in lru)]
        return groups, lru

    def recorded(self, row) -> None:
        """A call's row was written: its tokens and cost count against its user's limits."""
        user = getattr(row, "user", "")
        if not user or self.users is None:
            return
        tokens, usd = spent_tokens(row), row.cost_usd or 0.0
        if not tokens and not usd:
            return
        self.counters.record(user, tokens, usd)
        if self.shared is not None:
            self.shared.record(user, tokens, usd)

    def stats(self) -> dict:
        out = {"users": None if self.users is None else len(self.users),
               "authentication": "proxyauth" if self.users is not None and self._owns_auth()
               else ("other" if ctx.options.proxyauth else "none")}
        if self.shared is not None:
            out["state"] = self.shared.stats()
        else:
            out["state"] = {"backend": "local"}
        return out


def _signature(path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino
