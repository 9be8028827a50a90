"""A loopback ChatGPT backend as Codex logged in with ChatGPT sees it (`chatgpt.com/backend-api`):
the model endpoint of a `kind: codex` provider, and the account calls Codex makes first.

    with FakeCodexBackend(token=jwt, account_id="acct-1") as fake:
        base_url = fake.base_url + "/backend-api/codex"

Endpoints:
- `POST .../codex/responses`: the Responses API of `FakeOpenAIResponses`, with the backend's
  own checks first: `Authorization: Bearer <token>` (one of `fake.keys`) and
  `chatgpt-account-id: <account_id>`, else 401; `"stream": true` and `"store": false`
  required, `max_output_tokens` refused (400, as the backend words them).
- `GET .../wham/accounts/check`: the account list Codex needs before its first prompt
  (`workspace_backend_origin` https://chatgpt.com, so Codex keeps calling chatgpt.com).
- `GET .../codex/models`: `{"models": []}` (Codex then keeps its bundled list).
- anything else under /backend-api: 404 `{"detail": "Not Found"}`.
"""

from __future__ import annotations

import base64
import json
import sys

from .openai_responses_provider import FakeOpenAIResponses
from .server import JSON_TYPE, Plan, Received, Whole, dumps, run_cli

ACCOUNT_ID = "acct-fake-chatgpt-account"


def fake_jwt(claims: dict) -> str:
    """An unsigned JWT carrying `claims` (Codex and detour read the claims, never verify)."""
    def part(obj) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}.sig"


def chatgpt_token(account_id: str = ACCOUNT_ID, email: str = "user@example.com") -> str:
    """An access/id token of the shape ChatGPT logins carry (account id in its auth claim)."""
    return fake_jwt({"email": email, "exp": 4102444800,
                     "https://api.openai.com/auth": {"chatgpt_account_id": account_id,
                                                     "chatgpt_plan_type": "plus"}})


class FakeCodexBackend(FakeOpenAIResponses):
    default_text = "Hello from the fake ChatGPT backend"

    def __init__(self, *, account_id: str = ACCOUNT_ID, **kwargs):
        kwargs.setdefault("keys", {chatgpt_token(account_id)})
        super().__init__(**kwargs)
        self.account_id = account_id

    def plan(self, received: Received) -> Plan:
        route = received.route
        if received.method == "GET" and route.endswith("/wham/accounts/check"):
            return Whole(200, self._headers(JSON_TYPE), dumps({"accounts": [{
                "id": self.account_id, "workspace_backend_origin": "https://chatgpt.com",
                "account_routing_override": "NO_CONSTRAINT"}]}))
        if received.method == "GET" and route.endswith("/codex/models"):
            return Whole(200, self._headers(JSON_TYPE), dumps({"models": []}))
        if received.method == "POST" and route.endswith("/codex/responses"):
            return self._backend_problem(received) or super().plan(received)
        return Whole(404, self._headers(JSON_TYPE), dumps({"detail": "Not Found"}))

    def _backend_problem(self, received: Received) -> Whole | None:
        if problem := self._auth_problem(received):
            return problem
        if received.headers.get("chatgpt-account-id") != self.account_id:
            return self.error_plan(401, "chatgpt-account-id does not match the token's account")
        body = received.json or {}
        if body.get("stream") is not True:
            return Whole(400, self._headers(JSON_TYPE),
                         dumps({"detail": "Stream must be set to true"}))
        if body.get("store") is not False:
            return Whole(400, self._headers(JSON_TYPE),
                         dumps({"detail": "Store must be set to false"}))
        if "max_output_tokens" in body:
            return Whole(400, self._headers(JSON_TYPE),
                         dumps({"detail": "Unsupported parameter: max_output_tokens"}))
        return None


if __name__ == "__main__":
    sys.exit(run_cli(FakeCodexBackend))
