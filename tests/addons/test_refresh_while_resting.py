"""A login that rests (its quota spent, so no call asks for its token) is still refreshed
ahead of its expiry by the background loop: a gateway that refreshed tokens only on use
found the login dead when its quota came back (CLIProxyAPI #2937)."""

import time

from addons.credentials.provider import REFRESH_AHEAD, CredentialProvider
# auth, store: the OAuth fake and an account store taking its tokens (fixtures)
from tests.account_stores import account_store  # noqa: F401 - store's engines (fixture)
from tests.addons.test_credentials import _env, auth, login, runtime_account, store  # noqa: F401
from tests.e2e.test_postgres_usage import postgres  # noqa: F401 - the Postgres engine's


async def test_a_resting_login_is_refreshed_without_any_call(store, auth):
    acct, old = login(store, auth, expires_in=REFRESH_AHEAD / 2)
    creds = CredentialProvider(store)
    account = runtime_account(creds, acct)
    # resting, the login gets no call: no request ever asks for its token
    before = auth.refresh_calls
    assert await creds.refresh_due() == 1  # the loop's pass, no request involved
    assert auth.refresh_calls == before + 1
    assert creds.token(account) != old["access_token"]
    assert store.by_id(acct.id).expires_at > time.time() + REFRESH_AHEAD
    await creds.aclose()
