"""The OAuth refresh lease and the rotated tokens, shared through Redis (`state: redis://...`),
so that detour processes on several hosts, each with its own detour.db holding the same login,
make one refresh between them and all use its answer.

A refresh spends a link of a login's chain: the refresh token (Copilot: the GitHub token,
which does not rotate). Both keys are named after that secret's fingerprint (SHA-256, never
the secret), so they name exactly what is being spent:
- `detour:oauth-lease:<fp>` (SET NX, a TTL): the one process that may spend it now. The others
  wait for its answer instead of refreshing themselves.
- `detour:oauth-next:<fp>`: the tokens the refresh gave (the successor), encrypted with the
  credentials key (addons/credentials/vault.py: every process sharing `state:` needs the same
  key), kept for 30 days, and announced on `detour:oauth-rotated` with `<fp>`: every process
  holding that link adopts the successor at once (committed to its own detour.db first),
  without a token request of its own. A process that was away follows the links when it
  joins again, and before any refresh.
The refreshing process commits the new tokens to its own database before it publishes them
(a crash between the two loses nothing: the lease ends and the next holder finds the chain
spent only if the crash came after the token answer, as with one process). While Redis is
away, each host falls back to its own database's lease (one refresh per host).
"""

import asyncio
import hashlib
import logging
import os
import socket
import time

from redis.exceptions import RedisError

from addons.credentials.vault import VaultError

log = logging.getLogger(__name__)

LEASE_KEY = "detour:oauth-lease:"
NEXT_KEY = "detour:oauth-next:"
CHANNEL = "detour:oauth-rotated"
KEEP_SECONDS = 30 * 86400
POLL_SECONDS = 0.1  # a waiter's pace, between the announcements that wake it
MAX_LINKS = 16  # followed at once (a process away for many rotations)
# delete the lease only while it is still ours (it may have expired and gone to another)
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def chain_secret(secrets: dict) -> str:
    """The secret a refresh spends (or presents, for a login whose token does not rotate)."""
    return secrets.get("refresh_token") or secrets.get("github_token") or ""


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:40]


class Successor:
    """Tokens another process's refresh gave for a link of a chain."""

    __slots__ = ("secrets", "expires_at")

    def __init__(self, secrets: dict, expires_at: float | None):
        self.secrets = secrets
        self.expires_at = expires_at


class SharedTokens:
    def __init__(self, state, vault, on_rotated):
        """`state`: the addons.shared_state.SharedState whose connection this uses; `vault`:
        the credentials key; `on_rotated(fp)`: a link was spent by another process (or this
        process joined: fp None), holders of it adopt the successor."""
        self.state = state
        self.vault = vault
        self.on_rotated = on_rotated
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}".encode()
        self._announced = asyncio.Event()
        self._undecryptable: set[str] = set()
        self.adopted = 0  # successors taken from other processes (tests, status)
        state.listen(CHANNEL, self._received, lambda: on_rotated(None))

    @property
    def ready(self) -> bool:
        return self.state.client is not None

    async def settled(self, seconds: float) -> None:
        """Wait (at most `seconds`) for the first attempt to join: a process just started
        must not refresh on its own what another process may be refreshing."""
        if not self.state.tried.is_set():
            try:
                async with asyncio.timeout(seconds):
                    await self.state.tried.wait()
            except TimeoutError:
                pass

    def _received(self, data: bytes) -> None:
        self._announced.set()
        self.on_rotated(data.decode(errors="replace"))

    async def _call(self, coro):
        """One Redis command; None (and Redis marked away) when it cannot be done."""
        try:
            return await coro
        except (RedisError, OSError, asyncio.TimeoutError) as e:
            self.state.failed(e)
            return None

    # ------------------------------------------------------------ links

    async def successor(self, secrets: dict, expires_at: float | None) -> Successor | None:
        """The newest tokens published for the chain `secrets` (expiring at `expires_at`) is
        on, after it (following every link spent meanwhile); None when no other process moved
        it. Undecryptable when one exists that this process cannot read."""
        found = None
        for _ in range(MAX_LINKS):
            secret = chain_secret(secrets)
            client = self.state.client
            if not secret or client is None:
                break
            raw = await self._call(client.get(NEXT_KEY + fingerprint(secret)))
            nxt = self._open(raw, fingerprint(secret)) if raw else None
            if nxt is None or not _newer(nxt, secrets, expires_at):
                break
            found, secrets, expires_at = nxt, nxt.secrets, nxt.expires_at
        return found

    def _open(self, raw: bytes, fp: str) -> Successor | None:
        try:
            data = self.vault.decrypt(raw.decode())
        except (VaultError, UnicodeDecodeError):
            if fp not in self._undecryptable:
                self._undecryptable.add(fp)
                log.error("detour: tokens another process published in the shared state "
                          "cannot be decrypted with this process's credentials key: every "
                          "process sharing `state:` needs the same key (%s)",
                          self.vault.where())
            raise Undecryptable() from None
        return Successor(data.get("secrets") or {}, data.get("expires_at"))

    async def lease(self, secrets: dict, seconds: float) -> bool:
        """The right to spend this link now, for every process; False while another has it."""
        client = self.state.client
        if client is None:
            return False
        key = LEASE_KEY + fingerprint(chain_secret(secrets))
        return bool(await self._call(client.set(key, self.owner, nx=True,
                                                px=int(seconds * 1000))))

    async def release(self, secrets: dict) -> None:
        client = self.state.client
        if client is not None:
            key = LEASE_KEY + fingerprint(chain_secret(secrets))
            await self._call(client.eval(_RELEASE, 1, key, self.owner))

    async def publish(self, spent: dict, secrets: dict, expires_at: float | None) -> None:
        """The tokens a refresh of link `spent` gave, for every other process."""
        client = self.state.client
        if client is None:
            return
        fp = fingerprint(chain_secret(spent))
        value = self.vault.encrypt({"secrets": secrets, "expires_at": expires_at})
        pipe = client.pipeline(transaction=False)
        pipe.set(NEXT_KEY + fp, value, ex=KEEP_SECONDS)
        pipe.publish(CHANNEL, fp)
        await self._call(pipe.execute())

    async def wait(self, secrets: dict, expires_at: float | None, seconds: float
                   ) -> Successor | None:
        """Another process holds the lease of this link: its successor once published (None
        if none came within `seconds`, or Redis went away meanwhile)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and self.ready:
            nxt = await self.successor(secrets, expires_at)
            if nxt is not None:
                return nxt
            self._announced.clear()
            try:
                async with asyncio.timeout(POLL_SECONDS):
                    await self._announced.wait()
            except TimeoutError:
                pass
        return None


class Undecryptable(Exception):
    """A successor exists but this process's key cannot read it: the link is spent."""


def _newer(nxt: Successor, held: dict, expires_at: float | None) -> bool:
    """Whether `nxt` moves the chain on from `held` (a rotated link, or for a login that does
    not rotate, a later expiry)."""
    if chain_secret(nxt.secrets) != chain_secret(held):
        return True
    if nxt.secrets.get("access_token") == held.get("access_token"):
        return False
    return nxt.expires_at is not None and (expires_at is None or nxt.expires_at > expires_at)
