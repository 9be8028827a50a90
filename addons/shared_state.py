"""State several detour processes share through Redis (`state: redis://...` in config.yaml):
account rests, round-robin turns and users' limit counters.

Each process keeps serving from its own copies (the CooldownBook, the LocalCounters); Redis
keeps every process's copies in step:
- Rests. Every change of a rest here (`CooldownBook.watch`) is written to `detour:rest:<key>`
  (its TTL is the rest's end) and published on `detour:rests`; every process applies what
  the others publish at once. Nothing of it is on the request path: a background task
  publishes, another listens.
- Round-robin turns (`detour:turn:<provider>#<priority>`), least-recently-used positions
  (`detour:used:<provider>#<priority>`) and the limit counters
  (`detour:limit:<user>:<window>`) must be read and counted in the same step by every
  process, so they are one round trip on the request path, before routing: one Lua script
  checks the user's windows, counts the call, takes the route's turns and chooses in its LRU
  groups (redis.asyncio, bounded by ROUND_TRIP_TIMEOUT). Tokens and cost are added when the call ends, off the path.
- Redis away (a refused connection, a timeout): the process says so once (log,
  `detour.status` -> gateway.state) and serves on its own copies; what it changes meanwhile
  waits. When Redis is back, the process re-joins: it takes the rests Redis holds (the longer
  rest of a key wins), publishes its own, and adds what it counted meanwhile.
"""

import asyncio
import logging
import os
import socket
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from addons.routing import CooldownBook
from addons.user_limits import LocalCounters, Refusal, Windows, refusal
from addons.users import UserLimits

log = logging.getLogger(__name__)

PREFIX = "detour:"
REST_KEY = PREFIX + "rest:"
TURN_KEY = PREFIX + "turn:"
USED_KEY = PREFIX + "used:"
LIMIT_KEY = PREFIX + "limit:"
CHANNEL = PREFIX + "rests"
STATUS_DIR = "shared-state"  # in DETOUR_HOME: one file per process, written when it changes
ROUND_TRIP_TIMEOUT = 0.25  # seconds a call waits for Redis before deciding on its own
CONNECT_TIMEOUT = 1.0
RETRY_SECONDS = 1.0  # between attempts to reach Redis while it is away
SAMPLES = 2048  # round trips and propagation delays kept for the percentiles

# KEYS: the user's minute, day and month counters (or none), each turn to take, then each
# least-recently-used group's hash (account label -> when it was last chosen, as the group's
# own sequence number `#seq`).
# ARGV: rpm, tokens_per_day, usd_per_month ('' = no limit), the number of limit keys, the
# number of turn keys, then per LRU group: its number of ready accounts and their labels.
# Returns {refused limit or '', turn, turn, ..., then per LRU group each account's sequence
# number before this call (-1: never chosen)}: sorted by them, the caller asks first the one
# chosen here (the least recently, the first written on a tie), which has the group's newest
# number from now on. A refused call counts nothing.
_ADMIT = """
local nlimit = tonumber(ARGV[4])
if nlimit > 0 then
  if ARGV[3] ~= '' and tonumber(redis.call('GET', KEYS[3]) or '0') >= tonumber(ARGV[3]) then
    return {'usd_per_month'}
  end
  if ARGV[2] ~= '' and tonumber(redis.call('GET', KEYS[2]) or '0') >= tonumber(ARGV[2]) then
    return {'tokens_per_day'}
  end
  if ARGV[1] ~= '' then
    if tonumber(redis.call('GET', KEYS[1]) or '0') >= tonumber(ARGV[1]) then
      return {'rpm'}
    end
    redis.call('INCR', KEYS[1])
    redis.call('EXPIRE', KEYS[1], 120)
  end
end
local nturn = tonumber(ARGV[5])
local out = {''}
for i = nlimit + 1, nlimit + nturn do
  out[#out + 1] = redis.call('INCR', KEYS[i]) - 1
end
local a = 6
for i = nlimit + nturn + 1, #KEYS do
  local n = tonumber(ARGV[a])
  local seqs, best = {}, 1
  for j = 1, n do
    seqs[j] = tonumber(redis.call('HGET', KEYS[i], ARGV[a + j]) or '-1')
    if seqs[j] < seqs[best] then best = j end
  end
  redis.call('HSET', KEYS[i], ARGV[a + best], redis.call('HINCRBY', KEYS[i], '#seq', 1))
  redis.call('EXPIRE', KEYS[i], 40 * 86400)
  for j = 1, n do out[#out + 1] = seqs[j] end
  a = a + n + 1
end
return out
"""


def safe_url(url: str) -> str:
    """The URL without its credentials, for logs and status."""
    u = urlsplit(url)
    host = u.hostname or ""
    netloc = f"{host}:{u.port}" if u.port else host
    return f"{u.scheme}://{netloc}{u.path}"


class SharedState:
    def __init__(self, url: str, book: CooldownBook, counters: LocalCounters,
                 home: Path | None = None):
        self.url = url
        # where `detour status` reads how this process is with Redis (STATUS_DIR)
        self.status_file = (home / STATUS_DIR / f"{socket.gethostname()}-{os.getpid()}.json"
                            if home is not None else None)
        self.book = book
        self.counters = counters
        self.origin = f"{socket.gethostname()}:{os.getpid()}:{id(self):x}"
        self.up = False
        self.down_reason = "not connected yet"
        self._since = time.time()
        self._client: aioredis.Redis | None = None
        self._admit = None
        self._pending: set[str] = set()  # rests changed here, not yet published
        self._counts: dict[str, float] = {}  # counter increments not yet added in Redis
        self._wake = asyncio.Event()
        self._broken = asyncio.Event()
        self.tried = asyncio.Event()  # the first attempt to join is over (joined or not)
        self._tasks: list[asyncio.Task] = []
        self.round_trips: deque[float] = deque(maxlen=SAMPLES)  # ms, request path
        self.slow_round_trips = 0  # given up after ROUND_TRIP_TIMEOUT
        self.propagation: deque[float] = deque(maxlen=SAMPLES)  # ms, publish -> applied here
        # other users of the connection (addons/credentials/shared_tokens.py): their channels'
        # messages, and what they do each time this process joins
        self._channels: dict[bytes, Callable[[bytes], None]] = {}
        self._on_join: list[Callable[[], None]] = []
        book.watch(self._changed)

    # ------------------------------------------------------------ life cycle

    @property
    def started(self) -> bool:
        return bool(self._tasks)

    def start(self) -> None:
        from mitmproxy.utils.asyncio_utils import create_task
        self._tasks = [create_task(self._connection(), name="detour shared state",
                                   keep_ref=True),
                       create_task(self._publisher(), name="detour shared state publish",
                                   keep_ref=True)]

    async def stop(self) -> None:
        self.book.unwatch(self._changed)
        if self.status_file is not None:
            self.status_file.unlink(missing_ok=True)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001 - stopping
                pass
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def _down(self, error: BaseException | str) -> None:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        was = self.up or not self.tried.is_set()
        if self.up:
            log.warning("detour: shared state %s unreachable (%s); serving on this process's "
                        "own state until it is back", safe_url(self.url), reason)
            self._since = time.time()
        self.up = False
        self.down_reason = reason
        if was:
            self._write_status()
        self._broken.set()
        self.tried.set()

    async def _connection(self) -> None:
        """Join, listen for the others' rests, and join again whenever Redis comes back."""
        while True:
            self._broken.clear()
            try:
                await self._join_and_listen()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, asyncio.TimeoutError) as e:
                self._down(e)
            except Exception as e:  # noqa: BLE001 - a bug here must not stop the retries
                log.error("detour: shared state: internal error", exc_info=e)
                self._down(e)
            await asyncio.sleep(RETRY_SECONDS)

    async def _join_and_listen(self) -> None:
        if self._client is not None:
            await self._client.aclose()
        client = self._client = aioredis.Redis.from_url(
            self.url, socket_timeout=CONNECT_TIMEOUT, socket_connect_timeout=CONNECT_TIMEOUT,
            decode_responses=False)
        self._admit = client.register_script(_ADMIT)
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        try:
            # first: nothing published from now on is missed
            await pubsub.subscribe(CHANNEL, *self._channels)
            await self._sync(client)
            was = self.down_reason
            self.up = True
            self.tried.set()
            self.down_reason = ""
            self._since = time.time()
            self._wake.set()  # what waited is published now
            log.info("detour: shared state %s joined%s", safe_url(self.url),
                     "" if was == "not connected yet" else " again")
            self._write_status()
            for joined in self._on_join:
                joined()
            while not self._broken.is_set():
                message = await pubsub.get_message(timeout=1.0)
                if message is not None and message.get("type") == "message":
                    handler = self._channels.get(message["channel"], self._received)
                    handler(message["data"])
        finally:
            try:
                await pubsub.aclose()
            except (RedisError, OSError):
                pass

    async def _sync(self, client: aioredis.Redis) -> None:
        """On joining: take the rests Redis has, then publish every rest of ours (the longer
        rest of a key has won by then) and what was counted while away."""
        keys = [key async for key in client.scan_iter(match=REST_KEY + "*", count=500)]
        if keys:
            for key, value in zip(keys, await client.mget(keys)):
                if value is not None:
                    self.book.apply_shared(key.decode()[len(REST_KEY):], _rest(value))
        self._pending.update(self.book.resting())

    # ------------------------------------------------------------ other users

    @property
    def client(self) -> aioredis.Redis | None:
        """The connection while Redis is reachable, else None."""
        return self._client if self.up else None

    def listen(self, channel: str, handler: Callable[[bytes], None],
               on_join: Callable[[], None]) -> None:
        """`handler(data)` for each message on `channel`, `on_join()` each time this process
        joins (before start: the channel is subscribed at the next join)."""
        self._channels[channel.encode()] = handler
        self._on_join.append(on_join)

    def failed(self, error: BaseException) -> None:
        """A command of another user of the connection failed: Redis is away."""
        self._down(error)

    # ------------------------------------------------------------ rests

    def _changed(self, key: str) -> None:
        self._pending.add(key)
        self._wake.set()

    def _received(self, data: bytes) -> None:
        try:
            news = orjson.loads(data)
            if news.get("o") == self.origin:
                return
            self.book.apply_shared(news["k"], _rest_of(news.get("r")))
            self.propagation.append(max(0.0, (time.time() - news["t"]) * 1000))
        except (ValueError, KeyError, TypeError):
            log.warning("detour: shared state: unreadable message on %s", CHANNEL)

    async def _publisher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.up or (not self._pending and not self._counts):
                continue
            keys, self._pending = self._pending, set()
            counts, self._counts = self._counts, {}
            try:
                await self._publish(keys, counts)
            except (RedisError, OSError, asyncio.TimeoutError) as e:
                self._pending |= keys
                for key, amount in counts.items():
                    self._counts[key] = self._counts.get(key, 0) + amount
                self._down(e)

    async def _publish(self, keys: set[str], counts: dict[str, float]) -> None:
        now = time.time()
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            rest = self.book.snapshot(key)
            if rest is None or rest[0] <= now:
                pipe.delete(REST_KEY + key)
                rest = None
            else:
                pipe.set(REST_KEY + key, orjson.dumps(rest), px=max(1, int((rest[0] - now) * 1000)))
            pipe.publish(CHANNEL, orjson.dumps({"k": key, "r": rest, "o": self.origin, "t": now}))
        for key, amount in counts.items():
            if key.endswith(":usd"):
                pipe.incrbyfloat(key, amount)
            else:
                pipe.incrby(key, int(amount))
            pipe.expire(key, 40 * 86400)
        await pipe.execute()

    # ------------------------------------------------------------ on the request path

    async def admit(self, user: str, limits: UserLimits | None, groups: list[str],
                    lru: list[tuple[str, list[str]]] = ()
                    ) -> tuple[Refusal | None, list[int], list[list[int]]] | None:
        """Check and count `user`'s call against its limits, take the turns of `groups` and
        choose in each least-recently-used group of `lru` (group, ready account labels) the
        account asked longest ago, for every process at once: (refusal, turns, each LRU
        group's sequence numbers). None when Redis cannot say now (the caller decides on its
        own state)."""
        if not self.up:
            return None
        now = time.time()
        w = Windows.at(now)
        keys, args = [], ["", "", "", "0"]
        if limits:
            keys = [f"{LIMIT_KEY}{user}:{w.minute}:calls", f"{LIMIT_KEY}{user}:{w.day}:tokens",
                    f"{LIMIT_KEY}{user}:{w.month}:usd"]
            args = [_arg(limits.rpm), _arg(limits.tokens_per_day), _arg(limits.usd_per_month),
                    "3"]
        keys += [TURN_KEY + group for group in groups]
        args.append(str(len(groups)))
        for group, labels in lru:
            keys.append(USED_KEY + group)
            args += [str(len(labels)), *labels]
        t0 = time.perf_counter()
        try:
            async with asyncio.timeout(ROUND_TRIP_TIMEOUT):
                out = await self._admit(keys=keys, args=args)
        except TimeoutError:
            # slow, not gone (a busy moment here or there): this call decides on its own
            self.slow_round_trips += 1
            return None
        except (RedisError, OSError) as e:
            self._down(e)
            return None
        self.round_trips.append((time.perf_counter() - t0) * 1000)
        refused = out[0].decode() if isinstance(out[0], bytes) else out[0]
        if refused:
            return refusal(user, limits, refused, w, now), [], []
        numbers = [int(n) for n in out[1:]]
        turns, numbers = numbers[:len(groups)], numbers[len(groups):]
        chosen = []
        for _, labels in lru:
            chosen.append(numbers[:len(labels)])
            numbers = numbers[len(labels):]
        return None, turns, chosen

    def record(self, user: str, tokens: int, usd: float) -> None:
        """A call of `user` ended: its tokens and cost are added (off the request path)."""
        w = Windows.at(time.time())
        for key, amount in ((f"{LIMIT_KEY}{user}:{w.day}:tokens", tokens),
                            (f"{LIMIT_KEY}{user}:{w.month}:usd", usd)):
            if amount:
                self._counts[key] = self._counts.get(key, 0) + amount
        self._wake.set()

    # ------------------------------------------------------------ status

    def _write_status(self) -> None:
        """This process's side of `detour status` (only when it joins or loses Redis)."""
        if self.status_file is None:
            return
        record = {"pid": os.getpid(), "host": socket.gethostname(), **self.health()}
        try:
            self.status_file.parent.mkdir(exist_ok=True, mode=0o700)
            tmp = self.status_file.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(record))
            os.replace(tmp, self.status_file)
        except OSError as e:
            log.warning("detour: cannot write %s: %s", self.status_file, e)

    def health(self) -> dict:
        """The /healthz check: ok either way (no call fails for Redis being away), its detail
        says whether this process serves on the shared state or on its own."""
        since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._since))
        detail = (f"{safe_url(self.url)}: joined since {since}" if self.up else
                  f"{safe_url(self.url)} unreachable since {since} ({self.down_reason}): "
                  "serving on this process's own state")
        return {"ok": True, "connected": self.up, "detail": detail}

    def stats(self) -> dict:
        return {"backend": "redis", "url": safe_url(self.url), "connected": self.up,
                "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self._since)),
                **({"serving_on": "local state", "reason": self.down_reason}
                   if not self.up else {}),
                "rests_waiting": len(self._pending), "counts_waiting": len(self._counts),
                "round_trip_ms": _percentiles(self.round_trips),
                "round_trips_given_up": self.slow_round_trips,
                "propagation_ms": _percentiles(self.propagation)}


def _arg(value) -> str:
    return "" if value is None else repr(value) if isinstance(value, float) else str(value)


def _rest(value: bytes) -> tuple[float, str, str, int] | None:
    try:
        return _rest_of(orjson.loads(value))
    except ValueError:
        return None


def _rest_of(raw) -> tuple[float, str, str, int] | None:
    if not isinstance(raw, list) or len(raw) != 4:
        return None
    until, reason, cause, streak = raw
    return float(until), str(reason), str(cause or ""), int(streak or 0)


def _percentiles(samples) -> dict:
    if not samples:
        return {"n": 0}
    ordered = sorted(samples)
    pick = lambda q: round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3)  # noqa: E731
    return {"n": len(ordered), "p50": pick(0.5), "p99": pick(0.99), "max": round(ordered[-1], 3)}
