"""Each Google account's Code Assist project, for `kind: gemini-cli` providers.

Code Assist (`cloudcode-pa.googleapis.com/v1internal`) wants every model call's envelope to
name the Google Cloud project of the login it is made with. A login made with `detour account
login gemini` found it then (logins.py); an imported one, or a config account's access token
(`file:`), has none yet: the first call finds it the way Gemini CLI does (`loadCodeAssist`,
onboarding a new user with `onboardUser`), once per account however many calls wait for it.
A stored login keeps it in its row (`project_id`, its tier as `plan`), so a restart does not ask
again; a config account's is kept in memory.
"""

import asyncio
import logging

import httpx

from addons.credentials.logins import CodeAssistRefused, LoginFailed, code_assist_project

log = logging.getLogger(__name__)


class ProjectUnknown(Exception):
    """No project could be found for the account (`status`: Code Assist's HTTP status when it
    refused, 401 for a token it does not take; None when it could not be asked)."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class CodeAssistProjects:
    def __init__(self):
        self._memory: dict[str, str] = {}  # config accounts' projects
        self._flights: dict[str, asyncio.Future] = {}
        self.discoveries = 0  # projects looked up (tests, status)

    @staticmethod
    def _key(provider: str, account) -> str:
        if account.stored_id is not None:
            return f"db:{account.stored_id}"
        # a label names where the token is (a file may get a newer one of the same login)
        return f"{provider}/{account.label}"

    def known(self, provider: str, account, creds) -> str | None:
        if creds is not None and creds.is_oauth(account):
            return creds.project_of(account)
        return self._memory.get(self._key(provider, account))

    async def discover(self, provider: str, account, creds, http: httpx.AsyncClient,
                       base_url: str, token: str) -> str:
        """The account's project, found now (one lookup per account in flight: the others
        wait for it); ProjectUnknown if Code Assist gives none."""
        key = self._key(provider, account)
        fut = self._flights.get(key)
        if fut is None:
            fut = asyncio.ensure_future(self._discover(key, account, creds, http, base_url,
                                                        token))
            self._flights[key] = fut
            fut.add_done_callback(lambda f: self._landed(key, f))
        # a caller that goes away (its client left) does not cancel the others' lookup
        return await asyncio.shield(fut)

    def _landed(self, key: str, fut: asyncio.Future) -> None:
        self._flights.pop(key, None)
        if not fut.cancelled():
            fut.exception()  # retrieved: the waiters have it

    async def _discover(self, key: str, account, creds, http, base_url: str, token: str) -> str:
        self.discoveries += 1
        try:
            project, tier = await code_assist_project(http, None, token, base_url=base_url)
        except CodeAssistRefused as e:
            raise ProjectUnknown(f"Code Assist project: {e}", e.status) from None
        except LoginFailed as e:
            raise ProjectUnknown(f"Code Assist project: {e}") from None
        if creds is not None and creds.is_oauth(account):
            await creds.save_project(account, project, tier)
        else:
            self._memory[key] = project
        log.info("detour: %s: Code Assist project found (tier %s)", account.label, tier)
        return project
