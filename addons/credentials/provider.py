"""What the request path asks of stored accounts: their current credential, put on a request
the way the provider wants it.

An OAuth account's access token is refreshed ahead of its expiry (`REFRESH_AHEAD`, by the
background `run` loop, off the request path); a request meets an expired token only when
that loop has not got to it (just started, clock jump), and then waits for the refresh.
Whatever the number of requests, one refresh per account is in flight (`_flights`), of the
tokens its caller found due (by generation: tokens replaced since, by a refresh that landed or
a reload, are not bought again), and across processes sharing detour.db one at a time (the
store's lease); with `state:
redis://...`, one across every process sharing it, on any host, its answer adopted by all
(shared_tokens.py). The order that makes a
crash harmless: the token answer is committed to the database (durably) before the new access
token is handed to anyone; a refresh token the server answered for is never sent again (if
the commit fails, the new tokens are kept in memory and committed at the next try, never
re-requested). `invalid_grant` marks the account `needs_login`: routing skips it and says so.

Some logins name their own API in the token answer (Qwen's `resource_url`, the Copilot
token's `endpoints.api`: a business Copilot seat has its own host); kept as the account's
project id, it is where that account's calls go (`base_url`).
"""

import asyncio
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from addons import formats
from addons.credentials import oauth
from addons.credentials.shared_tokens import SharedTokens, Undecryptable, chain_secret
from addons.credentials.shared_tokens import fingerprint as shared_fingerprint
from addons.credentials.store import (NEEDS_LOGIN, OAUTH, READY, AccountError,
                                      AccountStoreBase, StoredAccount, StoreUnavailable)
from addons.credentials.vault import VaultError
from addons.credentials.vendors import VENDORS

log = logging.getLogger(__name__)

REFRESH_AHEAD = 300.0  # seconds before expiry the background loop refreshes
EXPIRED_SKEW = 30.0  # a token this close to expiry counts as expired on the request path
LEASE_SECONDS = 60.0
LEASE_WAIT = 45.0  # how long to wait for another process's refresh of the same account
CHECK_SECONDS = 15.0  # the background loop's pace
JOIN_WAIT = 5.0  # a refresh waits this long for the shared state's first join
ANTHROPIC_OAUTH_BETA = "oauth-2025-04-20"
# logins whose project id is where their API lives
API_LOCATION_VENDORS = ("qwen", "copilot")


class NeedsLogin(Exception):
    """The account's login is spent: `detour account login` again."""


class RefreshFailed(Exception):
    """No new token now (the token endpoint unreachable or refusing): try another account."""


@dataclass
class Held:
    """An OAuth account's tokens as this process holds them."""

    account: StoredAccount
    secrets: dict
    generation: int
    pending: oauth.TokenSet | None = None  # answered by the server, not yet committed


def stored_secret(acct: StoredAccount) -> str:
    s = acct.secrets or {}
    return s.get("api_key") or s.get("access_token") or ""


class CredentialProvider:
    def __init__(self, store: AccountStoreBase, on_change: Callable[[], None] | None = None,
                 http: httpx.AsyncClient | None = None):
        self.store = store
        self.on_change = on_change or (lambda: None)
        self._http = http
        self._held: dict[int, Held] = {}
        self._flights: dict[int, asyncio.Future] = {}
        self.refreshes = 0  # token requests made (tests, status)
        self.adopted = 0  # tokens taken from another process's refresh (shared state)
        # the refresh lease and rotated tokens shared with other processes (`state:`), set
        # by the gateway while it is configured
        self.shared: SharedTokens | None = None
        self.problem: str | None = None  # why stored accounts could not be read, if so
        # the outbound proxy of a provider's calls (forwarding.py `proxy_of`), if any: a
        # refresh goes that way too, where only the proxy reaches the vendor
        self.proxy_of: Callable[[str], str | None] = lambda provider: None
        self._proxied: dict[str, httpx.AsyncClient] = {}
        self.loaded: list[StoredAccount] = []  # as last read

    # ------------------------------------------------------------ loading

    def read(self) -> list[StoredAccount] | VaultError:
        """Every stored account with its secrets, or why they cannot be used: the store's
        part of `load`, which may run off the event loop (StoreUnavailable if the store
        cannot be reached)."""
        try:
            return self.store.accounts(secrets=True)
        except VaultError as e:
            return e

    def load(self, read: list[StoredAccount] | VaultError | None = None
             ) -> list[StoredAccount]:
        """Every stored account with its secrets (for the providers' lists), as `read()`
        gives them (read now if not given); OAuth ones are held for refresh. A wrong or
        lost key is logged (once per cause) and yields none."""
        accounts = self.read() if read is None else read
        if isinstance(accounts, VaultError):
            if self.problem != str(accounts):
                log.error("detour: stored accounts not used: %s", accounts)
            self.problem = str(accounts)
            return []
        self.problem = None
        self.loaded = accounts
        seen = set()
        for acct in accounts:
            acct.current_secret = stored_secret(acct)
            if acct.kind != OAUTH:
                continue
            seen.add(acct.id)
            held = self._held.get(acct.id)
            if held is None:
                self._held[acct.id] = Held(acct, acct.secrets, acct.generation)
            elif acct.generation >= held.generation:
                # updated in place: a refresh in flight (or waiting for another process's)
                # lands its tokens in this very Held, which the request path reads
                held.account, held.secrets, held.generation = acct, acct.secrets, acct.generation
            # else a read older than the tokens held (made before a refresh landed): kept out
        for gone in set(self._held) - seen:
            del self._held[gone]
        return accounts

    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            # never through the proxy (HTTPS_PROXY may point at this very process)
            self._http = httpx.AsyncClient(trust_env=False)
        return self._http

    def http_for(self, provider: str) -> httpx.AsyncClient:
        """The client for a provider's token endpoint: through its outbound proxy, if any."""
        proxy = self.proxy_of(provider)
        if proxy is None:
            return self.http()
        c = self._proxied.get(proxy)
        if c is None:
            c = self._proxied[proxy] = httpx.AsyncClient(trust_env=False, proxy=proxy)
        return c

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        for c in self._proxied.values():
            await c.aclose()
        self._proxied.clear()

    # ------------------------------------------------------------ what the request path asks

    def vendors(self) -> set[str]:
        """The logins (vendors) held now."""
        return {h.account.vendor for h in self._held.values()}

    def holds(self, account_id: int) -> bool:
        return account_id in self._held

    def token_answer(self, account, refresh_token: str) -> bytes:
        """A token endpoint's answer for a CLI asking to refresh a login detour holds: the
        current access token, and the CLI's own refresh token back (detour's chain is never
        handed out)."""
        held = self._held[account.stored_id]
        exp = held.account.expires_at
        out = {"access_token": held.secrets.get("access_token", ""), "token_type": "Bearer",
               "refresh_token": refresh_token,
               "expires_in": max(0, int(exp - time.time())) if exp else 3600}
        if held.secrets.get("id_token"):
            out["id_token"] = held.secrets["id_token"]
        if held.account.vendor == "qwen" and held.account.project_id:
            # Qwen Code reads its API's host from every token answer (none: DashScope's)
            out["resource_url"] = held.account.project_id
        return json.dumps(out).encode()

    def is_oauth(self, account) -> bool:
        return account is not None and account.stored_id in self._held

    def unusable(self, account) -> str | None:
        """Why a stored account must not be asked now (a login needed), else None."""
        held = self._held.get(account.stored_id) if account is not None else None
        if held is None:
            return None
        a = held.account
        if a.state == NEEDS_LOGIN:
            return (f"needs login: run `detour account login {a.vendor or a.provider} "
                    f"--name {a.name}`" + (f" ({a.last_error})" if a.last_error else ""))
        return None

    def generation(self, account) -> int:
        held = self._held.get(account.stored_id)
        return held.generation if held else 0

    def token(self, account) -> str:
        """What goes on the account's requests: the access token (iFlow: the API key its
        access token bought)."""
        held = self._held.get(account.stored_id)
        if held is None:
            return account.secret
        return held.secrets.get("api_key") or held.secrets.get("access_token", "")

    def base_url(self, account, spec) -> str:
        """Where the account's calls go: the provider's base_url, or the API the account's
        login named, when config left the kind's default base_url."""
        held = self._held.get(account.stored_id) if account is not None else None
        where = held.account.project_id if held is not None else None
        if (not where or held.account.vendor not in API_LOCATION_VENDORS
                or spec.base_url != formats.provider_kind(spec.kind).default_base_url):
            return spec.base_url
        return api_base(held.account.vendor, where)

    def put_on(self, account, kind: formats.ProviderKind, dialect: str | None,
               headers: dict[str, str], query: dict[str, str]) -> None:
        """The account's current credential, placed as its provider wants it: an OAuth token
        as a Bearer (Anthropic also needs its OAuth beta flag, and no x-api-key)."""
        if not self.is_oauth(account):
            if account.secret:
                formats.credential_of(kind, dialect).apply(account.secret, headers, query)
            return
        token = self.token(account)
        if kind.name == "anthropic":
            headers.pop("x-api-key", None)
            headers["authorization"] = f"Bearer {token}"
            betas = [b.strip() for b in headers.get("anthropic-beta", "").split(",")
                     if b.strip()]
            if ANTHROPIC_OAUTH_BETA not in betas:
                betas.append(ANTHROPIC_OAUTH_BETA)
            headers["anthropic-beta"] = ",".join(betas)
        else:
            formats.credential_of(kind, dialect).apply(token, headers, query)

    def project_of(self, account) -> str | None:
        """A Google login's Code Assist project, as stored (None: not found yet)."""
        held = self._held.get(account.stored_id)
        return held.account.project_id if held else None

    async def save_project(self, account, project: str, plan: str | None) -> None:
        """Keep a Code Assist project found for a login (the database first: a restart
        must not ask again)."""
        held = self._held.get(account.stored_id)
        if held is None:
            return
        await asyncio.to_thread(self.store.set_project, held.account.id, project, plan)
        held.account.project_id = project
        if plan:
            held.account.plan = plan

    async def fresh(self, account) -> None:
        """Make sure the account's token is not expired (waiting for the one refresh in
        flight if it is); NeedsLogin / RefreshFailed if none can be had."""
        held = self._held.get(account.stored_id)
        if held is None:
            return
        if held.account.state == NEEDS_LOGIN:
            raise NeedsLogin(self.unusable(account))
        exp = held.account.expires_at
        if held.pending is None and (exp is None or exp - time.time() > EXPIRED_SKEW):
            if exp is not None and exp - time.time() < REFRESH_AHEAD:
                self._start(held)  # due soon: refreshed in the background, not waited for
            return
        await self._start(held)

    async def after_unauthorized(self, account, generation: int) -> bool:
        """A 401 with the token of `generation`: refresh once (unless another refresh already
        replaced that token); True when a retry with a new token makes sense."""
        held = self._held.get(account.stored_id)
        if held is None:
            return False
        if held.generation == generation:
            try:
                await self._start(held, force=True)
            except (NeedsLogin, RefreshFailed):
                return False
        return held.generation != generation

    # ------------------------------------------------------------ refresh, single-flight

    def _start(self, held: Held, force: bool = False, seen: int | None = None
               ) -> asyncio.Future:
        """The refresh of `held`'s tokens of generation `seen` (the ones the caller found due;
        default: those held now), joined if one is in flight. Tokens replaced since the caller
        looked (a refresh landed and its flight ended, a reload brought another process's)
        are not bought again."""
        seen = held.generation if seen is None else seen
        fut = self._flights.get(held.account.id)
        if fut is None and seen != held.generation and held.pending is None:
            done = asyncio.get_running_loop().create_future()
            done.set_result(None)
            return done
        if fut is None:
            fut = asyncio.ensure_future(self._refresh(held, force, seen))
            self._flights[held.account.id] = fut
            fut.add_done_callback(lambda f, i=held.account.id: self._landed(i, f))
        return fut

    def _landed(self, account_id: int, fut: asyncio.Future) -> None:
        self._flights.pop(account_id, None)
        if not fut.cancelled() and fut.exception() is not None:
            fut.exception()  # retrieved: waiters see it; the background loop logs it

    async def _refresh(self, held: Held, force: bool, seen: int | None = None) -> None:
        try:
            await self._refresh_once(held, force, held.generation if seen is None else seen)
        except StoreUnavailable as e:
            # no lease can be taken, no answer committed before use: no refresh now
            raise RefreshFailed(f"no token refresh now: {e}") from None

    async def _refresh_once(self, held: Held, force: bool, seen: int) -> None:
        if self.shared is not None:
            await self.shared.settled(JOIN_WAIT)
        shared = self.shared if self.shared is not None and self.shared.ready else None
        if held.pending is not None:  # answered earlier, never committed: commit, not ask
            spent = held.secrets
            await self._commit(held, held.pending)
            if shared is not None:
                await shared.publish(spent, held.secrets, held.account.expires_at)
            return
        if shared is not None:
            try:
                await self._refresh_shared(held, shared, seen)
            except Undecryptable:
                raise RefreshFailed("another process refreshed this login and its tokens "
                                    "cannot be decrypted here (not the same credentials "
                                    "key)") from None
            return
        await self._refresh_here(held, seen)

    async def _refresh_shared(self, held: Held, shared: SharedTokens, seen: int) -> None:
        """One refresh for every process sharing `state:`: the tokens another process's
        refresh published are adopted; else the lease of the link, then a refresh here, its
        tokens published (addons/credentials/shared_tokens.py)."""
        if await self._follow(held, shared):
            return
        spent = held.secrets
        if not await shared.lease(spent, LEASE_SECONDS):
            nxt = await shared.wait(spent, held.account.expires_at, LEASE_WAIT)
            if nxt is not None:
                await self._adopt_successor(held, nxt)
            elif shared.ready:
                raise RefreshFailed("another process is refreshing this account's token")
            else:  # Redis went away meanwhile: this host's own lease decides
                await self._refresh_here(held, seen)
            return
        try:
            # the lease may follow a refresh that published and released just now
            if await self._follow(held, shared):
                return
            if await self._refresh_here(held, seen):
                await shared.publish(spent, held.secrets, held.account.expires_at)
        finally:
            await shared.release(spent)

    async def _follow(self, held: Held, shared: SharedTokens) -> bool:
        """Adopt the tokens other processes published after ours; True if there were any."""
        nxt = await shared.successor(held.secrets, held.account.expires_at)
        if nxt is None:
            return False
        await self._adopt_successor(held, nxt)
        return True

    async def _adopt_successor(self, held: Held, nxt) -> None:
        """Another process's refresh answer, committed here as if this process had asked."""
        s = nxt.secrets
        held.pending = oauth.TokenSet(s.get("access_token", ""), s.get("refresh_token"),
                                      nxt.expires_at, s.get("id_token"))
        await self._commit(held, held.pending)
        self.adopted += 1

    def rotated(self, fingerprint: str | None) -> None:
        """Another process spent a link (`fingerprint`; None: this process joined the shared
        state): the accounts holding it adopt its successor now, not at their next refresh."""
        shared = self.shared
        if shared is None:
            return
        for held in list(self._held.values()):
            if held.account.id in self._flights or (
                    fingerprint is not None
                    and shared_fingerprint(chain_secret(held.secrets)) != fingerprint):
                continue
            fut = asyncio.ensure_future(self._catch_up(held, shared))
            self._flights[held.account.id] = fut
            fut.add_done_callback(lambda f, i=held.account.id: self._landed(i, f))

    async def _catch_up(self, held: Held, shared: SharedTokens) -> None:
        """Adopt what another process published; a token still expired then is refreshed:
        a request that meets an expired token waits on this flight as on a refresh."""
        if await self._follow(held, shared):
            return
        exp = held.account.expires_at
        if held.pending is not None or (exp is not None and exp - time.time() <= EXPIRED_SKEW):
            await self._refresh(held, False)

    async def _refresh_here(self, held: Held, started: int) -> bool:
        """A refresh of the tokens of generation `started` under this database's lease; True
        when this process asked the token endpoint (False: they were replaced already, by
        another process sharing the database or a reload bringing its tokens; a reload may
        move `held` on meanwhile, in place)."""
        acct = held.account
        store = self.store
        if not await asyncio.to_thread(store.take_lease, acct.id, LEASE_SECONDS):
            await self._wait_for_other(held, started)
            return False
        try:
            # another process may have refreshed already: its tokens are the ones to use
            secrets, generation = await asyncio.to_thread(store.secrets_of, acct.id)
            row = await asyncio.to_thread(store.by_id, acct.id)
            if generation != started:
                self._adopt(held, row, secrets, generation)
                return False
            if row is not None and row.state == NEEDS_LOGIN:
                held.account = row
                raise NeedsLogin(self.unusable(AccountRef(acct.id)))
            vendor = VENDORS.get(acct.vendor)
            if vendor is None:
                raise RefreshFailed(f"{acct.provider}/{acct.name}: no refresh for login "
                                    f"{acct.vendor!r}")
            if not secrets.get("refresh_token") and not secrets.get("github_token"):
                await self._needs_login(held, "no refresh token stored")
            self.refreshes += 1
            try:
                tokens = await oauth.refresh(self.http_for(acct.provider), vendor, secrets)
            except oauth.InvalidGrant as e:
                await self._needs_login(held, f"refresh refused: {e}")
            except oauth.OAuthError as e:
                await asyncio.to_thread(store.mark, acct.id, None, f"refresh failed: {e}")
                raise RefreshFailed(f"token refresh failed: {e}") from None
            except oauth.TokenEndpointUnreachable as e:
                await asyncio.to_thread(store.mark, acct.id, None, f"refresh failed: {e}")
                raise RefreshFailed(f"token endpoint unreachable: {e}") from None
            # from here on the old refresh token may be spent: these tokens are the only
            # ones, committed before anyone uses them
            held.pending = tokens
            await self._commit(held, tokens)
            return True
        finally:
            await asyncio.to_thread(store.drop_lease, acct.id)

    async def _commit(self, held: Held, tokens: oauth.TokenSet) -> None:
        acct = held.account
        secrets = tokens.secrets(held.secrets)
        try:
            generation = await asyncio.to_thread(
                self.store.commit_tokens, acct.id, held.generation, secrets, tokens.expires_at,
                project_id=tokens.api_location)
        except AccountError:
            # replaced meanwhile by a login or import: the stored ones win
            held.pending = None
            secrets, generation = await asyncio.to_thread(self.store.secrets_of, acct.id)
            self._adopt(held, await asyncio.to_thread(self.store.by_id, acct.id), secrets,
                        generation)
            return
        except Exception as e:
            log.error("detour: cannot store the refreshed tokens of %s/%s (%s); kept in "
                      "memory, stored at the next try", acct.provider, acct.name, e)
            raise RefreshFailed(f"cannot store refreshed tokens: {type(e).__name__}") from None
        held.pending = None
        held.secrets, held.generation = secrets, generation
        acct = held.account  # a reload may have put a newer row object there meanwhile
        acct.expires_at, acct.state, acct.last_error = tokens.expires_at, READY, None
        acct.generation = generation
        if tokens.api_location:
            acct.project_id = tokens.api_location
        self.on_change()

    def _adopt(self, held: Held, row: StoredAccount | None, secrets: dict, generation: int):
        held.secrets, held.generation = secrets, generation
        if row is not None:
            held.account = row
        self.on_change()

    async def _wait_for_other(self, held: Held, started: int) -> None:
        """Another process holds the lease: wait for its tokens (their generation moves on
        from `started`; a reload may have brought them into `held` already)."""
        deadline = time.monotonic() + LEASE_WAIT
        while time.monotonic() < deadline:
            if held.generation != started:
                return
            await asyncio.sleep(0.2)
            secrets, generation = await asyncio.to_thread(self.store.secrets_of,
                                                          held.account.id)
            if generation != started:
                row = await asyncio.to_thread(self.store.by_id, held.account.id)
                self._adopt(held, row, secrets, generation)
                if row is not None and row.state == NEEDS_LOGIN:
                    raise NeedsLogin(self.unusable(AccountRef(row.id)))
                return
        raise RefreshFailed("another process is refreshing this account's token")

    async def _needs_login(self, held: Held, why: str):
        acct = held.account
        await asyncio.to_thread(self.store.mark, acct.id, NEEDS_LOGIN, why)
        acct.state, acct.last_error = NEEDS_LOGIN, why
        log.warning("detour: %s/%s needs a new login: %s", acct.provider, acct.name, why)
        self.on_change()
        raise NeedsLogin(self.unusable(AccountRef(acct.id)))

    # ------------------------------------------------------------ background

    async def run(self) -> None:
        """Refresh every OAuth token before it expires, off the request path."""
        while True:
            await self.refresh_due()
            await asyncio.sleep(CHECK_SECONDS)

    async def refresh_due(self) -> int:
        now = time.time()
        due = [h for h in list(self._held.values())
               if h.account.state == READY and h.account.enabled and (
                   h.pending is not None or (h.account.expires_at is not None
                                             and h.account.expires_at - now < REFRESH_AHEAD))]
        # the tokens found due now, by generation: a request may refresh one of them while
        # the ones before it are waited for
        seen = [held.generation for held in due]
        for held, generation in zip(due, seen):
            try:
                await self._start(held, seen=generation)
            except (NeedsLogin, RefreshFailed) as e:
                log.warning("detour: %s/%s: %s", held.account.provider, held.account.name, e)
        return len(due)


def api_base(vendor: str, where: str) -> str:
    """A login's API location as a base URL. Qwen's `resource_url` is usually a bare host, read
    as Qwen Code reads it (`portal.qwen.ai` -> https://portal.qwen.ai/v1); Copilot's
    `endpoints.api` is a URL already, its paths without a version prefix."""
    where = where.rstrip("/")
    if not where.startswith(("http://", "https://")):
        where = "https://" + where
    if vendor == "qwen" and not where.endswith("/v1"):
        where += "/v1"
    return where


@dataclass(frozen=True)
class AccountRef:
    """A stored account by its id, where no routing Account is at hand (messages, owner.py)."""

    stored_id: int
