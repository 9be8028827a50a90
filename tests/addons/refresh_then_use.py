"""A process that refreshes a stored login and then uses the new access token (the crash
test kills it at either point): `python -m tests.addons.refresh_then_use HOME ACCOUNT_ID
USERINFO_URL`. Prints `used` once the token was accepted."""

import asyncio
import sys
from pathlib import Path

import httpx

from addons.credentials.provider import CredentialProvider
from addons.credentials.store import AccountStore
from addons.routing import Account


async def main(home: str, account_id: int, userinfo: str) -> None:
    creds = CredentialProvider(AccountStore(Path(home) / "detour.db"))
    acct = {a.id: a for a in creds.load()}[account_id]
    account = Account(acct.label, acct.current_secret, acct.name, stored_id=acct.id)
    await creds.fresh(account)
    async with httpx.AsyncClient(trust_env=False) as http:
        r = await http.get(userinfo, headers={"authorization": f"Bearer {creds.token(account)}"})
    print("used" if r.status_code == 200 else f"refused {r.status_code}", flush=True)
    await creds.aclose()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], int(sys.argv[2]), sys.argv[3]))
