"""The login flows: authorization code + PKCE with a local callback (Claude, Codex, Gemini
CLI, Antigravity: then their Code Assist project, found or onboarded; iFlow's code with its
client secret, then its API key from the user info) and the device authorization grant (Qwen
with PKCE; GitHub Copilot, then its Copilot token exchange). They return what to store;
nothing is written until the login completed (the caller stores it in one transaction), so an
interrupted login leaves nothing.

`open_url` shows the user where to go (a browser, or a printed URL for another machine);
`notify` tells them what is happening (the device code to type).
"""

import asyncio
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from urllib.parse import parse_qs, urlsplit

import httpx

from addons.credentials import oauth
from addons.credentials.vendors import Vendor

LOGIN_TIMEOUT = 600.0  # seconds the user has to approve
ONBOARD_POLL_SECONDS = 5.0  # Code Assist onboarding: its long-running operation's pace
ONBOARD_POLLS = 36
CODE_ASSIST_METADATA = {"ideType": "IDE_UNSPECIFIED", "platform": "PLATFORM_UNSPECIFIED",
                        "pluginType": "GEMINI"}

PAGE = (b"<!doctype html><meta charset=utf-8><title>detour</title>"
        b"<p style='font-family:sans-serif'>%s You can close this tab.</p>")


class LoginFailed(Exception):
    pass


class CodeAssistRefused(LoginFailed):
    """Code Assist answered a setup call with an HTTP error (`status`: 401 for a token it
    does not take)."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


@dataclass
class Login:
    """A completed login: the secrets to store and what the user may see of the account."""

    secrets: dict
    expires_at: float | None
    meta: dict = field(default_factory=dict)  # email, plan, account_id, project_id


def _meta(v: Vendor, tokens: oauth.TokenSet) -> dict:
    meta: dict = {}
    claims = oauth.jwt_claims(tokens.id_token)
    if claims.get("email"):
        meta["email"] = claims["email"]
    openai_auth = claims.get("https://api.openai.com/auth") or {}
    if openai_auth.get("chatgpt_plan_type"):
        meta["plan"] = openai_auth["chatgpt_plan_type"]
    if openai_auth.get("chatgpt_account_id"):
        meta["account_id"] = openai_auth["chatgpt_account_id"]
    account = tokens.extra.get("account")
    if isinstance(account, dict):  # Anthropic's token answer names the account
        meta.setdefault("email", account.get("email_address"))
        meta.setdefault("account_id", account.get("uuid"))
    if tokens.api_location:  # Qwen: where this login's API lives
        meta["project_id"] = tokens.api_location
    return {k: v for k, v in meta.items() if v}


class _Callback:
    """The local HTTP server the browser is sent back to: one GET with code and state."""

    def __init__(self, path: str):
        self.path = path
        self.result: asyncio.Future = asyncio.get_running_loop().create_future()
        self.server: asyncio.Server | None = None

    async def start(self, port: int) -> int:
        try:
            self.server = await asyncio.start_server(self._serve, "127.0.0.1", port)
        except OSError as e:
            raise LoginFailed(f"cannot listen on 127.0.0.1:{port} for the login's callback "
                              f"({e.strerror}); is another login running?") from None
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)) not in (b"\r\n", b"\n", b""):
                pass
            parts = line.decode("latin-1").split()
            target = parts[1] if len(parts) >= 2 else "/"
            url = urlsplit(target)
            if url.path != self.path:
                await self._answer(writer, 404, b"Not the login callback.")
                return
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            ok = "code" in query
            await self._answer(writer, 200, b"Logged in to detour." if ok
                               else b"The login was not completed.")
            if not self.result.done():
                self.result.set_result(query)
        except (TimeoutError, ConnectionError, OSError):
            pass
        finally:
            writer.close()

    @staticmethod
    async def _answer(writer, status: int, text: bytes) -> None:
        body = PAGE % text
        writer.write(b"HTTP/1.1 %d OK\r\ncontent-type: text/html; charset=utf-8\r\n"
                     b"content-length: %d\r\nconnection: close\r\n\r\n" % (status, len(body))
                     + body)
        await writer.drain()

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def login_pkce(v: Vendor, http: httpx.AsyncClient,
                     open_url: Callable[[str], Awaitable[None]],
                     timeout: float = LOGIN_TIMEOUT) -> Login:
    verifier, challenge = oauth.pkce_pair()
    state = secrets.token_urlsafe(24)
    callback = _Callback(v.callback_path)
    port = await callback.start(v.port)
    try:
        redirect_uri = f"http://{v.callback_host}:{port}{v.callback_path}"
        await open_url(oauth.authorize_url(v, redirect_uri, state, challenge))
        try:
            query = await asyncio.wait_for(callback.result, timeout)
        except TimeoutError:
            raise LoginFailed(f"no answer from the browser within {timeout:.0f}s") from None
    finally:
        callback.close()
    if query.get("state") != state:
        raise LoginFailed("the callback's state does not match this login (a stale tab?)")
    if "error" in query:
        raise LoginFailed(f"the login was refused: {query['error']} "
                          f"{query.get('error_description', '')}".strip())
    code = query.get("code", "")
    # Anthropic's callback page may hand over `code#state`
    code = code.partition("#")[0]
    pkce = v.flow != "iflow"  # iFlow's client proves itself with its secret instead
    tokens = await oauth.exchange_code(http, v, code, verifier if pkce else None, redirect_uri,
                                       state)
    if not tokens.refresh_token:
        raise LoginFailed("the token answer has no refresh token (offline access refused)")
    meta = _meta(v, tokens)
    if v.flow == "iflow":
        tokens.api_key = await oauth.iflow_api_key(http, v, tokens.access_token, meta)
    return Login(tokens.secrets(), tokens.expires_at, meta)


async def login_device(v: Vendor, http: httpx.AsyncClient,
                       notify: Callable[[oauth.DeviceCode], Awaitable[None]],
                       sleep=asyncio.sleep) -> Login:
    dc = await oauth.start_device(http, v)
    await notify(dc)
    tokens = await oauth.poll_device(http, v, dc, sleep)
    if v.name == "copilot":
        # GitHub's token does not expire; the Copilot token it buys does (about 30 min)
        copilot = await oauth.copilot_token(http, v, tokens.access_token)
        secrets_ = {"github_token": tokens.access_token, "access_token": copilot.access_token}
        return Login(secrets_, copilot.expires_at,
                     {"project_id": copilot.extra.get("api")} if copilot.extra.get("api")
                     else {})
    if not tokens.refresh_token:
        raise LoginFailed("the token answer has no refresh token")
    return Login(tokens.secrets(), tokens.expires_at, _meta(v, tokens))


async def code_assist_project(http: httpx.AsyncClient, v: Vendor | None, access_token: str,
                              project: str | None = None, base_url: str | None = None
                              ) -> tuple[str, str | None]:
    """A Google login's Code Assist project and tier, as Gemini CLI finds them after a
    login: `loadCodeAssist`; a user not yet onboarded is onboarded on the default tier
    (`onboardUser`, a long-running operation polled until done). `project`: the Google Cloud
    project a paid tier needs. `base_url`: where Code Assist is (a provider's), else the
    vendor's."""
    base = (base_url or v.url("code_assist_url")).rstrip("/") + "/v1internal"
    headers = {"authorization": f"Bearer {access_token}", "content-type": "application/json"}
    meta = dict(CODE_ASSIST_METADATA, **({"duetProject": project} if project else {}))

    async def call(method: str, url: str, body: dict | None = None) -> dict:
        try:
            resp = await http.request(method, url, json=body, headers=headers, timeout=30)
        except httpx.HTTPError as e:
            raise LoginFailed(f"Code Assist unreachable ({url}): {type(e).__name__}") from None
        data = oauth.json_object(resp)
        if resp.status_code >= 300 or data is None:
            raise CodeAssistRefused(f"Code Assist answered HTTP {resp.status_code} at {url}",
                                    resp.status_code)
        return data

    load = await call("POST", f"{base}:loadCodeAssist",
                      {"cloudaicompanionProject": project, "metadata": meta})
    if load.get("currentTier"):
        tier = (load.get("paidTier") or {}).get("id") or load["currentTier"].get("id")
        found = _project_id(load.get("cloudaicompanionProject")) or project
        if not found:
            raise LoginFailed("this Google account's Code Assist tier needs a Google Cloud "
                              "project: log in again with --project PROJECT_ID")
        return found, tier
    tier = next((t for t in load.get("allowedTiers") or [] if t.get("isDefault")),
                {"id": "legacy-tier"})
    request = {"tierId": tier.get("id"), "metadata": meta if project else CODE_ASSIST_METADATA}
    if tier.get("id") != "free-tier":
        request["cloudaicompanionProject"] = project
    op = await call("POST", f"{base}:onboardUser", request)
    for _ in range(ONBOARD_POLLS):
        if op.get("done") or not op.get("name"):
            break
        await asyncio.sleep(ONBOARD_POLL_SECONDS)
        op = await call("GET", f"{base}/{op['name']}")
    found = _project_id((op.get("response") or {}).get("cloudaicompanionProject")) or project
    if not found:
        raise LoginFailed("Code Assist onboarding gave no project; log in again with "
                          "--project PROJECT_ID")
    return found, tier.get("id")


def _project_id(value) -> str | None:
    if isinstance(value, dict):
        value = value.get("id")
    return value if isinstance(value, str) and value else None


async def login(v: Vendor, http: httpx.AsyncClient, open_url, notify, sleep=asyncio.sleep,
                project: str | None = None) -> Login:
    if v.flow == "device":
        return await login_device(v, http, notify, sleep)
    done = await login_pkce(v, http, open_url)
    if v.code_assist_url:
        found, tier = await code_assist_project(http, v, done.secrets["access_token"], project)
        done.meta["project_id"] = found
        if tier:
            done.meta["plan"] = tier
    return done
