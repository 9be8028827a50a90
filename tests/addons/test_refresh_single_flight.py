"""One token bought per expired token, whatever order the background loop and the request path
get to it: `refresh_due` lists the due logins first and refreshes them one after another, so a
login late in its list may have been refreshed by a request meanwhile (a flight started, its
tokens landed, the flight gone). Its turn then must not buy another token. The interleaving is
forced with events around the token purchase (a real store, the loopback OAuth fake): no
sleeps."""

import asyncio
import time

import pytest

from addons.credentials import oauth
from addons.credentials.provider import CredentialProvider
from addons.credentials.store import OAUTH, AccountStore
from addons.routing import Account
from tests.fakes.oauth_server import FakeOAuth


@pytest.fixture(scope="module")
def auth():
    with FakeOAuth() as a:
        yield a


@pytest.fixture
def store(tmp_path, auth, monkeypatch):
    monkeypatch.setenv("DETOUR_KEY_BACKEND", "file")
    monkeypatch.setenv("DETOUR_OAUTH_COPILOT_API_KEY_URL",
                       auth.url("/copilot_internal/v2/token"))
    store = AccountStore(tmp_path / "detour.db")
    yield store
    store.close()


def copilot_login(store, auth, name: str):
    """A Copilot login whose Copilot token expired a minute ago."""
    github = auth.grant()["access_token"]
    acct = store.add("copilot", name, OAUTH, {"github_token": github,
                                              "access_token": "spent-copilot-token"},
                     vendor="copilot", expires_at=time.time() - 60)
    return acct, github


class HeldPurchase:
    """`oauth.refresh` of one login waits at the token endpoint until released."""

    def __init__(self, monkeypatch, github_token: str):
        self.asked = asyncio.Event()
        self.release = asyncio.Event()
        real = oauth.refresh

        async def refresh(http, vendor, secrets):
            if secrets.get("github_token") == github_token:
                self.asked.set()
                await self.release.wait()
            return await real(http, vendor, secrets)

        monkeypatch.setattr(oauth, "refresh", refresh)


async def test_background_turn_after_a_request_refreshed_the_login_buys_nothing(
        store, auth, monkeypatch):
    first, first_github = copilot_login(store, auth, "a")  # first in refresh_due's list
    second, second_github = copilot_login(store, auth, "b")
    creds = CredentialProvider(store)
    loaded = {a.id: a for a in creds.load()}
    account = Account(loaded[second.id].label, loaded[second.id].current_secret, "b",
                      stored_id=second.id)
    held = HeldPurchase(monkeypatch, first_github)
    loop_turn = asyncio.ensure_future(creds.refresh_due())  # lists a and b as due
    await held.asked.wait()  # the loop is at a's token endpoint, b still listed as due
    await creds.fresh(account)  # a call on b: b's token bought, its flight landed and gone
    assert auth.copilot_asked.count(second_github) == 1
    bought = creds.token(account)
    held.release.set()
    assert await loop_turn == 2
    # b's turn in the loop came after its new token: nothing more bought
    assert auth.copilot_asked.count(second_github) == 1
    assert auth.copilot_asked.count(first_github) == 1
    assert creds.token(account) == bought == store.secrets_of(second.id)[0]["access_token"]
    await creds.aclose()


async def test_waiting_for_another_process_refresh_read_in_meanwhile_buys_nothing(
        store, auth, monkeypatch):
    """The tokens another process bought reach this one by a reload (the revision moved)
    after the loop listed the login as due: its turn adopts them, buying nothing."""
    first, first_github = copilot_login(store, auth, "a")
    second, second_github = copilot_login(store, auth, "b")
    creds, other = CredentialProvider(store), CredentialProvider(AccountStore(store.path))
    other.store.owner = "another-process"
    creds.load()
    loaded = {a.id: a for a in other.load()}
    account = Account(loaded[second.id].label, loaded[second.id].current_secret, "b",
                      stored_id=second.id)
    held = HeldPurchase(monkeypatch, first_github)
    loop_turn = asyncio.ensure_future(creds.refresh_due())
    await held.asked.wait()
    await other.fresh(account)  # the other process buys b's token
    assert auth.copilot_asked.count(second_github) == 1
    creds.load()  # this process reads the accounts again: b's new token held here too
    held.release.set()
    assert await loop_turn == 2
    assert auth.copilot_asked.count(second_github) == 1
    assert creds.token(account) == other.token(account)
    await creds.aclose()
    await other.aclose()
    other.store.close()
