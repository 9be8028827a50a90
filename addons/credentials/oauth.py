"""Token requests of the OAuth 2.0 grants detour speaks: refresh, authorization code (with
PKCE; iFlow's with its client secret), device authorization (RFC 8628), Copilot's token
exchange and iFlow's API key. authlib makes the PKCE pair, the authorization URL and reads the
callback; the requests themselves go through the caller's httpx client (never through the
proxy: `trust_env=False`), each vendor's body shape (form or JSON) as `vendors.py` says.

Errors: `InvalidGrant` (the refresh token or code is spent or revoked: only a new login
helps), `OAuthError` (the server said no otherwise), `TokenEndpointUnreachable` (no answer:
the request may or may not have reached the server).
"""

import base64
import json
import time
from dataclasses import dataclass, field
from urllib.parse import quote, urlencode

import httpx

from addons import formats
from addons.credentials.vendors import Vendor

TOKEN_TIMEOUT = 30.0


class OAuthError(Exception):
    def __init__(self, error: str, description: str = "", status: int | None = None):
        super().__init__(f"{error}: {description}" if description else error)
        self.error = error
        self.description = description
        self.status = status


class InvalidGrant(OAuthError):
    """The grant (refresh token, code) is no longer any good: the account needs a login."""


class TokenEndpointUnreachable(Exception):
    pass


@dataclass
class TokenSet:
    access_token: str
    refresh_token: str | None = None
    expires_at: float | None = None  # Unix seconds
    id_token: str | None = None
    extra: dict = field(default_factory=dict, repr=False)  # the rest of the answer, not secret
    api_key: str | None = field(default=None, repr=False)  # iFlow: what its API takes

    def secrets(self, previous: dict | None = None) -> dict:
        """The secret fields to store: a refresh answer without a refresh token keeps the one
        it was asked with."""
        out = dict(previous or {})
        out["access_token"] = self.access_token
        if self.refresh_token:
            out["refresh_token"] = self.refresh_token
        if self.id_token:
            out["id_token"] = self.id_token
        if self.api_key:
            out["api_key"] = self.api_key
        return out

    @property
    def api_location(self) -> str | None:
        """Where this login's API lives, when the answer says (Qwen's `resource_url`, the
        Copilot token's `endpoints.api`): kept as the account's project id."""
        where = self.extra.get("resource_url") or self.extra.get("api")
        return where if isinstance(where, str) and where else None

    @staticmethod
    def read(data: dict, now: float | None = None) -> "TokenSet":
        now = time.time() if now is None else now
        token = data.get("access_token") or data.get("token")
        if not isinstance(token, str) or not token:
            raise OAuthError("invalid_response", "the token answer has no access_token")
        expires_at = None
        if isinstance(data.get("expires_in"), (int, float)):
            expires_at = now + float(data["expires_in"])
        elif isinstance(data.get("expires_at"), (int, float)):  # Copilot: Unix seconds
            expires_at = float(data["expires_at"])
        extra = {k: v for k, v in data.items()
                 if k not in ("access_token", "refresh_token", "id_token", "token")}
        return TokenSet(token, data.get("refresh_token") or None, expires_at,
                        data.get("id_token") or None, extra)


# ---------------------------------------------------------------- PKCE and the authorize URL


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge)."""
    # authlib is imported by the logins that need it, not by the proxy (its start is slower)
    from authlib.common.security import generate_token
    from authlib.oauth2.rfc7636 import create_s256_code_challenge
    verifier = generate_token(64)
    return verifier, create_s256_code_challenge(verifier)


def authorize_url(v: Vendor, redirect_uri: str, state: str, challenge: str) -> str:
    if v.flow == "iflow":
        # iflow.cn's own parameters (`redirect`, its phone login page), no PKCE
        return (v.url("authorize_url") + "?loginMethod=phone&type=phone&redirect="
                + quote(redirect_uri, safe="") + f"&state={quote(state)}&client_id={v.client_id}")
    from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
    return prepare_grant_uri(v.url("authorize_url"), v.client_id, "code", redirect_uri,
                             " ".join(v.scopes), state, code_challenge=challenge,
                             code_challenge_method="S256", **dict(v.extra_authorize))


# ---------------------------------------------------------------- token endpoint


def json_object(resp: httpx.Response) -> dict | None:
    """The answer's JSON object, or None (not JSON, or not an object)."""
    try:
        data = resp.json()
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


async def post_token(http: httpx.AsyncClient, url: str, params: dict, as_json: bool,
                     headers: dict | None = None) -> dict:
    """One token request; its JSON answer, or OAuthError / InvalidGrant /
    TokenEndpointUnreachable."""
    hdrs = {"accept": "application/json", **(headers or {})}
    try:
        if as_json:
            resp = await http.post(url, json=params, headers=hdrs, timeout=TOKEN_TIMEOUT)
        else:
            resp = await http.post(url, content=urlencode(params), headers={
                **hdrs, "content-type": "application/x-www-form-urlencoded"},
                timeout=TOKEN_TIMEOUT)
    except httpx.HTTPError as e:
        raise TokenEndpointUnreachable(f"{url}: {type(e).__name__}") from None
    data = json_object(resp)
    if data is None:
        raise OAuthError("invalid_response", f"HTTP {resp.status_code}, not a JSON object",
                         resp.status_code)
    error = data.get("error")
    if resp.status_code >= 400 or error:
        if isinstance(error, dict):  # some servers nest it
            error = error.get("type") or error.get("code") or "error"
        error = str(error or f"http_{resp.status_code}")
        desc = str(data.get("error_description") or data.get("message") or "")[:300]
        cls = InvalidGrant if error in ("invalid_grant", "refresh_token_reused",
                                        "refresh_token_expired", "refresh_token_invalidated",
                                        "expired_token", "access_denied") else OAuthError
        raise cls(error, desc, resp.status_code)
    return data


async def refresh(http: httpx.AsyncClient, v: Vendor, secrets: dict) -> TokenSet:
    """New tokens for stored `secrets` (refresh_token grant; Copilot: a new Copilot token
    for the GitHub token, which does not rotate)."""
    if v.name == "copilot":
        return await copilot_token(http, v, secrets["github_token"])
    params = {"grant_type": "refresh_token", "refresh_token": secrets["refresh_token"],
              "client_id": v.client_id}
    if v.client_secret:
        params["client_secret"] = v.client_secret
    if v.refresh_scope:
        params["scope"] = v.refresh_scope
    elif v.token_body == "json" and v.scopes:
        params["scope"] = " ".join(v.scopes)
    data = await post_token(http, v.url("token_url"), params,
                            v.token_body == "json" or v.refresh_json, _client_auth(v))
    tokens = TokenSet.read(data)
    if v.flow == "iflow":
        # the refresh token is spent by now: a user info that fails keeps the API key held
        # (it outlives the access token) rather than losing the new tokens
        try:
            tokens.api_key = await iflow_api_key(http, v, tokens.access_token)
        except (OAuthError, TokenEndpointUnreachable):
            pass
    return tokens


def _client_auth(v: Vendor) -> dict | None:
    if not v.basic_auth:
        return None
    pair = base64.b64encode(f"{v.client_id}:{v.client_secret}".encode()).decode()
    return {"authorization": f"Basic {pair}"}


async def exchange_code(http: httpx.AsyncClient, v: Vendor, code: str, verifier: str | None,
                        redirect_uri: str, state: str) -> TokenSet:
    params = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri,
              "client_id": v.client_id}
    if verifier:
        params["code_verifier"] = verifier
    if v.token_body == "json":
        params["state"] = state  # Anthropic's exchange takes it
    if v.client_secret:
        params["client_secret"] = v.client_secret
    data = await post_token(http, v.url("token_url"), params, v.token_body == "json",
                            _client_auth(v))
    return TokenSet.read(data)


async def iflow_api_key(http: httpx.AsyncClient, v: Vendor, access_token: str,
                        meta: dict | None = None) -> str:
    """iFlow's API key for an access token (its user info: `{"success": true, "data":
    {"apiKey", "email", "phone"}}`); iFlow's API takes that key, not the token. `meta`, if
    given, gets the account's email (or phone). Refused: InvalidGrant (the login is no
    good)."""
    url = v.url("api_key_url")
    try:
        resp = await http.get(url, params={"accessToken": access_token},
                              headers={"accept": "application/json"}, timeout=TOKEN_TIMEOUT)
    except httpx.HTTPError as e:
        raise TokenEndpointUnreachable(f"{url}: {type(e).__name__}") from None
    data = json_object(resp)
    if resp.status_code in (401, 403):
        raise InvalidGrant("iflow_user_info", f"HTTP {resp.status_code}", resp.status_code)
    info = (data or {}).get("data") if (data or {}).get("success") else None
    key = info.get("apiKey") if isinstance(info, dict) else None
    if resp.status_code >= 400 or not isinstance(key, str) or not key:
        raise OAuthError("iflow_user_info", f"HTTP {resp.status_code}, no API key in the "
                         "user info", resp.status_code)
    who = info.get("email") or info.get("phone")
    if meta is not None and isinstance(who, str) and who:
        meta["email"] = who
    return key


async def copilot_token(http: httpx.AsyncClient, v: Vendor, github_token: str) -> TokenSet:
    """GitHub's token -> a Copilot API token (about 30 minutes); 401/403: the GitHub login is
    gone or has no Copilot (a new login is needed)."""
    try:
        resp = await http.get(v.url("api_key_url"), timeout=TOKEN_TIMEOUT, headers={
            **dict(formats.COPILOT_HEADERS), "authorization": f"token {github_token}",
            "accept": "application/json"})
    except httpx.HTTPError as e:
        raise TokenEndpointUnreachable(f"{v.url('api_key_url')}: {type(e).__name__}") from None
    if resp.status_code in (401, 403, 404):
        raise InvalidGrant("copilot_unauthorized",
                           f"HTTP {resp.status_code}: no Copilot for this GitHub login",
                           resp.status_code)
    data = json_object(resp)
    if resp.status_code >= 400 or data is None:
        raise OAuthError("copilot_token", f"HTTP {resp.status_code}", resp.status_code)
    tokens = TokenSet.read(data)
    tokens.extra = {"api": (data.get("endpoints") or {}).get("api")}
    return tokens


# ---------------------------------------------------------------- device flow


@dataclass
class DeviceCode:
    device_code: str
    user_code: str
    verification_uri: str
    verification_uri_complete: str | None
    interval: float
    expires_at: float
    verifier: str | None = None


async def start_device(http: httpx.AsyncClient, v: Vendor) -> DeviceCode:
    params = {"client_id": v.client_id, "scope": " ".join(v.scopes)}
    verifier = None
    if v.device_pkce:
        verifier, challenge = pkce_pair()
        params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
    data = await post_token(http, v.url("device_url"), params, False)
    try:
        return DeviceCode(data["device_code"], data["user_code"],
                          data.get("verification_uri") or data["verification_url"],
                          data.get("verification_uri_complete"),
                          float(data.get("interval") or 5),
                          time.time() + float(data.get("expires_in") or 900), verifier)
    except KeyError as e:
        raise OAuthError("invalid_response", f"the device answer has no {e.args[0]}") from None


async def poll_device(http: httpx.AsyncClient, v: Vendor, dc: DeviceCode, sleep) -> TokenSet:
    """Poll the token endpoint at the server's pace until the user approved (RFC 8628 3.5:
    `authorization_pending` waits, `slow_down` adds 5 s to the interval)."""
    interval = dc.interval
    params = {"grant_type": "urn:ietf:params:oauth:grant-type:device_code",
              "device_code": dc.device_code, "client_id": v.client_id}
    if dc.verifier:
        params["code_verifier"] = dc.verifier
    while True:
        if time.time() > dc.expires_at:
            raise InvalidGrant("expired_token", "the device code expired before approval")
        await sleep(interval)
        try:
            data = await post_token(http, v.url("token_url"), params, False)
        except OAuthError as e:
            if e.error == "authorization_pending":
                continue
            if e.error == "slow_down":
                interval += 5
                continue
            raise
        return TokenSet.read(data)


def jwt_claims(token: str | None) -> dict:
    """The claims of a JWT (an id token), unverified: only read for the account's email,
    plan and ids, which the user sees; nothing is decided on them."""
    if not token or token.count(".") != 2:
        return {}
    payload = token.split(".")[1]
    try:
        return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        return {}
