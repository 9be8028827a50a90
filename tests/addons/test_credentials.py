"""The credential provider against a loopback OAuth server (tests/fakes/oauth_server.py):
100 concurrent requests on an expired token make one refresh call; the rotated refresh token
is stored before the new access token is handed out; invalid_grant marks the account
needs_login; a token due soon is refreshed in the background, not on the request path; a 401
leads to one refresh unless another already replaced the token; a wrong key keeps the stored
accounts out, with the reason. Each on both account stores (detour.db and Postgres)."""

import asyncio
import time

import pytest

from addons.credentials.provider import CredentialProvider, NeedsLogin
from addons.credentials.store import NEEDS_LOGIN, OAUTH
from addons.routing import Account
from tests.account_stores import account_store, another  # noqa: F401 - fixture
from tests.e2e.test_postgres_usage import postgres  # noqa: F401 - fixture
from tests.addons.test_shared_tokens import redis_server  # noqa: F401 - fixture
from tests.fakes.oauth_server import FakeOAuth


@pytest.fixture(autouse=True)
def _env(monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth() as a:
        yield a


@pytest.fixture
def store(account_store, auth, monkeypatch):  # noqa: F811
    monkeypatch.setenv("DETOUR_OAUTH_CLAUDE_TOKEN_URL", auth.url("/v1/oauth/token"))
    return account_store


def login(store, auth, expires_in: float, name="main"):
    tokens = auth.grant()
    acct = store.add("claude", name, OAUTH, tokens, vendor="claude",
                     expires_at=time.time() + expires_in)
    return acct, tokens


def runtime_account(creds, acct) -> Account:
    loaded = {a.id: a for a in creds.load()}[acct.id]
    return Account(loaded.label, loaded.current_secret, loaded.name, stored_id=loaded.id)


async def test_hundred_requests_on_an_expired_token_make_one_refresh(store, auth):
    acct, old = login(store, auth, expires_in=-10)
    creds = CredentialProvider(store)
    account = runtime_account(creds, acct)
    before = auth.refresh_calls
    await asyncio.gather(*(creds.fresh(account) for _ in range(100)))
    assert auth.refresh_calls - before == 1
    token = creds.token(account)
    assert token != old["access_token"] and auth.accepts(token)
    stored, generation = store.secrets_of(acct.id)
    assert stored["access_token"] == token and generation == 1
    assert stored["refresh_token"] != old["refresh_token"]
    assert store.by_id(acct.id).expires_at > time.time() + 3000
    # the old refresh token is spent now that its successor was used: never sent again
    assert not auth.refresh_valid(old["refresh_token"])
    await creds.aclose()


async def test_invalid_grant_marks_needs_login(store, auth):
    acct, _ = login(store, auth, expires_in=-10)
    auth.revoke_all()
    creds = CredentialProvider(store)
    account = runtime_account(creds, acct)
    with pytest.raises(NeedsLogin, match="detour account login claude --name main"):
        await creds.fresh(account)
    row = store.by_id(acct.id)
    assert row.state == NEEDS_LOGIN and "invalid_grant" in row.last_error
    assert "needs login" in creds.unusable(account)
    calls = auth.refresh_calls
    with pytest.raises(NeedsLogin):  # never asked again with a spent token
        await creds.fresh(account)
    assert auth.refresh_calls == calls
    await creds.aclose()


async def test_due_soon_is_refreshed_in_the_background(store, auth):
    acct, old = login(store, auth, expires_in=120)  # inside the 5 minute margin
    creds = CredentialProvider(store)
    account = runtime_account(creds, acct)
    changed = []
    creds.on_change = lambda: changed.append(1)
    before = auth.refresh_calls
    await creds.fresh(account)  # not waited for: the current token still serves
    assert creds.token(account) == old["access_token"]
    for _ in range(100):
        if changed:
            break
        await asyncio.sleep(0.05)
    assert auth.refresh_calls - before == 1 and creds.token(account) != old["access_token"]
    # far from expiry now: the background loop has nothing to do
    assert await creds.refresh_due() == 0
    await creds.aclose()


async def test_401_refreshes_once_unless_already_replaced(store, auth):
    acct, _ = login(store, auth, expires_in=3600)
    creds = CredentialProvider(store)
    account = runtime_account(creds, acct)
    first = creds.generation(account)
    before = auth.refresh_calls
    assert await creds.after_unauthorized(account, first)
    assert auth.refresh_calls - before == 1
    # a second request refused with the same old token: the token is already new
    assert await creds.after_unauthorized(account, first)
    assert auth.refresh_calls - before == 1
    await creds.aclose()


async def test_refresh_in_another_process_is_adopted(store, auth):
    acct, _ = login(store, auth, expires_in=-10)
    a, b = CredentialProvider(store), CredentialProvider(another(store))
    b.store.owner = "another-process"
    acc_a, acc_b = runtime_account(a, acct), runtime_account(b, acct)
    before = auth.refresh_calls
    await asyncio.gather(a.fresh(acc_a), b.fresh(acc_b))
    assert auth.refresh_calls - before == 1  # the lease: one process refreshes, one adopts
    assert a.token(acc_a) == b.token(acc_b)
    await a.aclose()
    await b.aclose()
    b.store.close()


async def test_tokens_read_while_waiting_for_another_process_end_the_wait(store, auth):
    """A process waits for the refresh another holds the lease for; its accounts are read
    again meanwhile (the revision moved) and bring the new tokens: the wait ends there, with
    no refresh of its own (it used to wait for a change it had already taken in)."""
    acct, _ = login(store, auth, expires_in=-10)
    creds = CredentialProvider(store)
    account = runtime_account(creds, acct)
    holder = another(store)
    holder.owner = "the-refreshing-process"
    assert holder.take_lease(acct.id, 60)
    before = auth.refresh_calls
    waiting = asyncio.ensure_future(creds.fresh(account))
    await asyncio.sleep(0.05)  # its flight has started and meets the lease
    new = auth.grant()  # what the holder's refresh got
    holder.commit_tokens(acct.id, 0, new, time.time() + 3600)
    creds.load()  # the reload a moved revision brings
    async with asyncio.timeout(5):
        await waiting
    assert creds.token(account) == new["access_token"]
    assert auth.refresh_calls == before
    holder.drop_lease(acct.id)
    holder.close()
    await creds.aclose()


def test_a_wrong_key_keeps_stored_accounts_out(store, auth):
    login(store, auth, expires_in=3600)
    from cryptography.fernet import Fernet
    store.vault.key_path.write_bytes(Fernet.generate_key())
    other = another(store)
    other.vault = type(store.vault)(store.vault.home)  # reads the key file anew
    creds = CredentialProvider(other)
    assert creds.load() == []
    assert "does not decrypt" in creds.problem
    other.close()


@pytest.mark.parametrize("redis", ["away", "up"])
async def test_one_refresh_across_processes_with_redis_away_or_up(store, auth, redis,
                                                                  request):
    """Three processes (three hosts, with Postgres) configured with `state:`: with Redis up,
    its lease and published tokens make it one refresh; with Redis away, the lease in the
    account store they share does."""
    from addons.credentials.shared_tokens import SharedTokens
    from addons.routing import CooldownBook
    from addons.shared_state import SharedState
    from addons.user_limits import LocalCounters
    from tests.harness import free_port

    if redis == "up":
        server = request.getfixturevalue("redis_server")
        server.client().flushdb()
        url = server.url
    else:
        url = f"redis://127.0.0.1:{free_port()}/0"
    acct, _ = login(store, auth, expires_in=-10)
    stores = [store, another(store), another(store)]
    processes, states = [], []
    for i, s in enumerate(stores):
        s.owner = f"process-{i}"
        creds = CredentialProvider(s)
        state = SharedState(url, CooldownBook(), LocalCounters())
        creds.shared = SharedTokens(state, s.vault, creds.rotated)
        state.start()
        processes.append((creds, runtime_account(creds, acct)))
        states.append(state)
    for state in states:
        async with asyncio.timeout(15):
            await state.tried.wait()
    before = auth.refresh_calls
    await asyncio.gather(*(creds.fresh(account) for _ in range(34)
                           for creds, account in processes))
    assert auth.refresh_calls - before == 1
    assert len({creds.token(account) for creds, account in processes}) == 1
    assert [creds.shared.ready for creds, _ in processes] == [redis == "up"] * 3
    for (creds, _), state, s in zip(processes, states, stores):
        await state.stop()
        await creds.aclose()
        if s is not store:
            s.close()
