"""A loopback OAuth 2.0 authorization server, strict where the real ones are:

    with FakeOAuth() as auth:     # every vendor's URLs point here in tests
        DETOUR_OAUTH_CLAUDE_TOKEN_URL = auth.url("/v1/oauth/token")

- `GET /authorize?...`: the user's approval, at once: a 302 to `redirect_uri?code=..&state=..`
  (the code remembers client_id, redirect_uri and the PKCE challenge; `deny=True` answers
  `error=access_denied`).
- `POST /token` (form or JSON):
  - `authorization_code`: the code once, the same client and redirect_uri, and
    `S256(code_verifier) == code_challenge`, else `invalid_grant`;
  - `refresh_token`: rotation: a new access token and a new refresh token. The old refresh
    token stays good only until the new tokens are first used (`use`), as servers with a
    reuse grace do; presenting a refresh token that is spent (its successor was used) or
    unknown -> 400 `invalid_grant`;
  - device code: `authorization_pending` `pending_polls` times, `slow_down` if polled faster than
    the interval, then the tokens; the PKCE verifier checked when the device request had a
    challenge; `expired_token` when `expire_device` is set.
- `POST /device/code`: `device_code`, `user_code`, `verification_uri`, `interval`.
- `GET /copilot_internal/v2/token` with `authorization: token <github token>`: a Copilot
  token (`expires_at`, `refresh_in`, `endpoints.api`: `copilot_api`); `copilot_asked` lists
  the GitHub token of each call.
- iFlow: `GET /oauth?redirect=..&state=..&client_id=..` (its own authorize parameters, no
  PKCE) -> 302 with a code; a client in `client_secrets` must send its secret in the form
  and as HTTP Basic with every token request (else 401 `invalid_client`);
  `GET /api/oauth/getUserInfo?accessToken=<current access token>` -> `{"success": true,
  "data": {"apiKey": iflow_api_key, "email"}}` (`user_info_calls` counts), else 401.
- `access_claims`: access tokens are unsigned JWTs carrying these claims (a ChatGPT login's
  `chatgpt_account_id`), each with its own `jti`.
- Qwen: `resource_url` (if set) rides on every token answer.
- Code Assist (`/v1internal:loadCodeAssist`, `:onboardUser`, `/v1internal/operations/..`), with
  a Bearer access token: not onboarded, `allowedTiers` (free-tier the default); onboarding is
  an operation done at its first poll, giving project `fake-project-42`; then loads answer
  `currentTier` free-tier and that project.
- `GET /userinfo` with a Bearer access token: 200 when it is current (marks it used), else 401.

`tokens_issued`, `refresh_calls`, `code_calls`, `device_polls` count; `after_token` (if set)
is called with the token answer's JSON right after that answer was written (a crash test kills
its client there); `issued_access` is every access token handed out (a fake vendor accepts
those: `accepts(token)`).

`AcceptedTokens(auth)` is a set-like `keys` for a fake vendor: it accepts the access tokens
this server issued and has not revoked.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import threading
import time
from urllib.parse import parse_qs, urlencode, urlsplit

from .server import JSON_TYPE, FakeServer, Plan, Received, Whole, dumps, make_headers, run_cli


def s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(
        b"=").decode()


class FakeOAuth(FakeServer):
    def __init__(self, *, expires_in: int = 3600, prefix: str = "fake",
                 access_claims: dict | None = None, **kw):
        super().__init__(check_auth=False, **kw)
        self.access_claims = access_claims
        self.copilot_api = "https://api.githubcopilot.com"
        self.copilot_asked: list[str] = []
        self.user_info_calls = 0
        self.client_secrets: dict[str, str] = {}
        self.resource_url: str | None = None
        self.expires_in = expires_in
        self.prefix = prefix
        self.deny = False
        self.pending_polls = 2  # authorization_pending answers before a device code is approved
        self.expire_device = False
        self.after_token = None
        self.after_use = None  # called right after a /userinfo answer was written
        self.code_assist_project: str | None = None
        self.onboard_calls = 0
        self._ids = itertools.count(1)
        self.iflow_api_key = f"{prefix}-iflow-api-key-{next(self._ids):06d}"
        self._codes: dict[str, dict] = {}
        self._devices: dict[str, dict] = {}
        # refresh token -> {"access", "successor": the refresh token issued for it, "spent"}
        self._refresh: dict[str, dict] = {}
        self._access: dict[str, dict] = {}  # access token -> {"refresh": its refresh token}
        self.issued_access: list[str] = []
        self.issued_refresh: list[str] = []
        self.tokens_issued = self.refresh_calls = self.code_calls = self.device_polls = 0
        self.oauth_lock = threading.Lock()

    # --- what tests set up or read -----------------------------------------------------

    def grant(self, access: str | None = None, refresh: str | None = None) -> dict:
        """Tokens as if a login had happened (for a test that starts logged in)."""
        with self.oauth_lock:
            return self._issue(access, refresh)

    def accepts(self, access: str) -> bool:
        """Whether a resource server would take this access token now (and mark it used)."""
        with self.oauth_lock:
            info = self._access.get(access)
            if info is None or info["revoked"] or info["expires_at"] < time.time():
                return False
            self._use(access)
            return True

    def login_of(self, access: str) -> str | None:
        """Which login an access token belongs to (the first refresh token of its rotation
        chain: every token a login's refreshes hand out names the same one), or None."""
        with self.oauth_lock:
            info = self._access.get(access)
            refresh = info and info["refresh"]
            if refresh is None:
                return None
            while self._refresh[refresh]["parent"] is not None:
                refresh = self._refresh[refresh]["parent"]
            return refresh

    def refresh_valid(self, refresh: str) -> bool:
        with self.oauth_lock:
            info = self._refresh.get(refresh)
            return info is not None and not info["spent"]

    def revoke_access(self, access: str) -> None:
        """One access token refused from now on (the vendor revoked it early)."""
        with self.oauth_lock:
            self._access[access]["revoked"] = True

    def revoke_all(self) -> None:
        """Every refresh token refused from now on (the user logged out elsewhere)."""
        with self.oauth_lock:
            for info in self._refresh.values():
                info["spent"] = True

    # --- internals ---------------------------------------------------------------------

    def _new(self, what: str) -> str:
        return f"{self.prefix}-{what}-{next(self._ids):06d}-{hashlib.sha1(str(time.time_ns()).encode()).hexdigest()[:12]}"

    def _issue(self, access=None, refresh=None, parent: str | None = None) -> dict:
        if access is None and self.access_claims is not None:
            access = _jwt({**self.access_claims, "jti": self._new("access")})
        access = access or self._new("access")
        refresh = refresh or self._new("refresh")
        self._access[access] = {"refresh": refresh, "revoked": False,
                                "expires_at": time.time() + self.expires_in}
        self._refresh[refresh] = {"successor": None, "spent": False, "parent": parent}
        if parent is not None:
            self._refresh[parent]["successor"] = refresh
        self.issued_access.append(access)
        self.issued_refresh.append(refresh)
        self.tokens_issued += 1
        out = {"access_token": access, "refresh_token": refresh, "token_type": "Bearer",
               "expires_in": self.expires_in, "scope": "user:inference"}
        if self.resource_url:
            out["resource_url"] = self.resource_url
        return out

    def _use(self, access: str) -> None:
        """The first use of tokens from a rotation retires the refresh token they replaced."""
        refresh = self._access[access]["refresh"]
        if refresh is None:  # a Copilot token
            return
        parent = self._refresh[refresh]["parent"]
        if parent is not None:
            self._refresh[parent]["spent"] = True

    def _json(self, status: int, obj: dict) -> Whole:
        return Whole(status, make_headers(JSON_TYPE), dumps(obj))

    def _error(self, error: str, description: str = "", status: int = 400) -> Whole:
        return self._json(status, {"error": error, "error_description": description})

    @staticmethod
    def _params(received: Received) -> dict:
        if received.json is not None:
            return {k: str(v) for k, v in received.json.items()}
        return {k: v[-1] for k, v in parse_qs(received.body.decode()).items()}

    def plan(self, received: Received) -> Plan:
        route = received.route
        with self.oauth_lock:
            if received.method == "GET" and route.endswith("/authorize"):
                return self._authorize(received)
            if received.method == "GET" and route.endswith("/oauth"):
                return self._iflow_authorize(received)
            if route.endswith("/api/oauth/getUserInfo"):
                return self._iflow_user_info(received)
            if received.method == "POST" and route.endswith("/device/code"):
                return self._device(self._params(received))
            if received.method == "POST" and route.endswith("/token"):
                params = self._params(received)
                if problem := self._client_problem(params, received):
                    return problem
                return self._token(params)
            if route.endswith("/copilot_internal/v2/token"):
                return self._copilot(received)
            if "/v1internal" in route:
                return self._code_assist(received)
            if route.endswith("/userinfo"):
                token = received.headers.get("authorization", "").removeprefix("Bearer ")
                info = self._access.get(token)
                if info is None or info["revoked"]:
                    return self._error("invalid_token", status=401)
                self._use(token)
                return self._json(200, {"email": "user@example.com"})
        return self._error("not_found", route, 404)

    def _authorize(self, received: Received) -> Plan:
        q = {k: v[-1] for k, v in parse_qs(urlsplit(received.path).query).items()}
        redirect = q.get("redirect_uri", "")
        if self.deny:
            return Whole(302, make_headers(None, {"location": redirect + "?" + urlencode(
                {"error": "access_denied", "state": q.get("state", "")})}), b"")
        if q.get("response_type") != "code" or q.get("code_challenge_method") != "S256":
            return self._error("invalid_request", "response_type=code and S256 PKCE needed")
        code = self._new("code")
        self._codes[code] = {"client_id": q.get("client_id"), "redirect_uri": redirect,
                             "challenge": q.get("code_challenge"), "scope": q.get("scope")}
        return Whole(302, make_headers(None, {"location": redirect + "?" + urlencode(
            {"code": code, "state": q.get("state", "")})}), b"")

    def _iflow_authorize(self, received: Received) -> Plan:
        q = {k: v[-1] for k, v in parse_qs(urlsplit(received.path).query).items()}
        redirect = q.get("redirect", "")
        code = self._new("code")
        self._codes[code] = {"client_id": q.get("client_id"), "redirect_uri": redirect,
                             "challenge": None, "scope": None}
        return Whole(302, make_headers(None, {"location": redirect + "?" + urlencode(
            {"code": code, "state": q.get("state", "")})}), b"")

    def _client_problem(self, p: dict, received: Received) -> Plan | None:
        """A confidential client (iFlow's) proves itself with its secret, in the form and as
        HTTP Basic."""
        secret = self.client_secrets.get(p.get("client_id", ""))
        if secret is None:
            return None
        basic = "Basic " + base64.b64encode(f"{p['client_id']}:{secret}".encode()).decode()
        if p.get("client_secret") != secret or received.headers.get("authorization") != basic:
            return self._error("invalid_client", "client authentication failed", 401)
        return None

    def _iflow_user_info(self, received: Received) -> Plan:
        self.user_info_calls += 1
        q = {k: v[-1] for k, v in parse_qs(urlsplit(received.path).query).items()}
        info = self._access.get(q.get("accessToken", ""))
        if info is None or info["revoked"] or info["expires_at"] < time.time():
            return self._json(401, {"success": False, "message": "invalid access token"})
        self._use(q["accessToken"])
        return self._json(200, {"success": True, "data": {
            "apiKey": self.iflow_api_key, "email": "user@example.com", "phone": ""}})

    def _device(self, p: dict) -> Plan:
        device = self._new("device")
        self._devices[device] = {"client_id": p.get("client_id"), "polls": 0, "last": 0.0,
                                 "challenge": p.get("code_challenge"), "interval": 1}
        return self._json(200, {"device_code": device, "user_code": "WDJB-MJHT",
                                "verification_uri": self.url("/device"),
                                "verification_uri_complete": self.url("/device?code=WDJB"),
                                "expires_in": 600, "interval": 1})

    def _token(self, p: dict) -> Plan:
        grant = p.get("grant_type")
        if grant == "authorization_code":
            self.code_calls += 1
            code = self._codes.pop(p.get("code", ""), None)
            if code is None:
                return self._error("invalid_grant", "unknown or used code")
            if p.get("client_id") != code["client_id"] or p.get(
                    "redirect_uri") != code["redirect_uri"]:
                return self._error("invalid_grant", "client or redirect_uri mismatch")
            if code["challenge"] is None:  # no PKCE: a confidential client (checked above)
                if p.get("client_id") not in self.client_secrets:
                    return self._error("invalid_grant", "PKCE or a client secret needed")
            elif s256(p.get("code_verifier", "")) != code["challenge"]:
                return self._error("invalid_grant", "PKCE verification failed")
            return self._json(200, self._issue() | {"id_token": _id_token()})
        if grant == "refresh_token":
            self.refresh_calls += 1
            old = p.get("refresh_token", "")
            info = self._refresh.get(old)
            if info is None or info["spent"]:
                return self._error("invalid_grant", "refresh token is invalid or was reused")
            return self._json(200, self._issue(parent=old))
        if grant == "urn:ietf:params:oauth:grant-type:device_code":
            self.device_polls += 1
            dev = self._devices.get(p.get("device_code", ""))
            if dev is None or self.expire_device:
                return self._error("expired_token", "the device code expired")
            now = time.monotonic()
            too_fast = dev["last"] and now - dev["last"] < dev["interval"] * 0.5
            dev["last"] = now
            if too_fast:
                return self._error("slow_down", "polling too fast")
            if dev["polls"] < self.pending_polls:
                dev["polls"] += 1
                return self._error("authorization_pending", "waiting for the user")
            if dev["challenge"] and s256(p.get("code_verifier", "")) != dev["challenge"]:
                return self._error("invalid_grant", "PKCE verification failed")
            del self._devices[p["device_code"]]
            return self._json(200, self._issue())
        return self._error("unsupported_grant_type", str(grant))

    def _code_assist(self, received: Received) -> Plan:
        token = received.headers.get("authorization", "").removeprefix("Bearer ")
        if token not in self._access:
            return self._error("unauthenticated", status=401)
        route = received.route
        if route.endswith(":loadCodeAssist"):
            if self.code_assist_project:
                return self._json(200, {"currentTier": {"id": "free-tier"},
                                        "cloudaicompanionProject": self.code_assist_project})
            return self._json(200, {"allowedTiers": [
                {"id": "free-tier", "isDefault": True}, {"id": "standard-tier"}]})
        if route.endswith(":onboardUser"):
            self.onboard_calls += 1
            return self._json(200, {"name": "operations/onboard-1", "done": False})
        if route.endswith("/operations/onboard-1"):
            self.code_assist_project = "fake-project-42"
            return self._json(200, {"name": "operations/onboard-1", "done": True, "response": {
                "cloudaicompanionProject": {"id": self.code_assist_project}}})
        return self._error("not_found", route, 404)

    def _copilot(self, received: Received) -> Plan:
        token = received.headers.get("authorization", "").removeprefix("token ")
        self.copilot_asked.append(token)
        info = self._access.get(token)
        if info is None or info["revoked"]:
            return Whole(401, make_headers(JSON_TYPE), b'{"message":"Bad credentials"}')
        tok = self._new("copilot")
        self._access[tok] = {"refresh": None, "revoked": False,
                             "expires_at": time.time() + 1800}
        self.issued_access.append(tok)
        return self._json(200, {"token": tok, "expires_at": int(time.time()) + 1800,
                                "refresh_in": 1500,
                                "endpoints": {"api": self.copilot_api}})

    async def _exchange(self, link, received: Received) -> bool:
        out = await super()._exchange(link, received)
        hook = self.after_token
        if hook is not None and received.method == "POST" and received.route.endswith("/token"):
            hook()
        if self.after_use is not None and received.route.endswith("/userinfo"):
            self.after_use()
        return out


class AcceptedTokens:
    """`fake_vendor.keys = AcceptedTokens(auth)`: a key is good when `auth` issued it (or it
    is one of `extra`, plain API keys) and it is not revoked or expired."""

    def __init__(self, auth: FakeOAuth, extra=()):
        self.auth = auth
        self.extra = set(extra)

    def __contains__(self, token) -> bool:
        return token in self.extra or self.auth.accepts(token)

    def add(self, key) -> None:
        self.extra.add(key)

    def discard(self, key) -> None:
        self.extra.discard(key)


def _jwt(claims: dict) -> str:
    """An unsigned JWT like the vendors' (the claims are read, not verified)."""
    def part(obj):
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return ".".join((part({"alg": "none"}), part(claims), "sig"))


def _id_token() -> str:
    return _jwt({"email": "user@example.com",
                 "https://api.openai.com/auth": {"chatgpt_account_id": "acct-123",
                                                 "chatgpt_plan_type": "plus"}})


if __name__ == "__main__":
    run_cli(FakeOAuth)
