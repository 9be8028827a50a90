"""A loopback Code Assist API (`cloudcode-pa.googleapis.com/v1internal`), as Gemini CLI logged
in with Google (and detour's `kind: gemini-cli` providers) speak to it, its logins those of a
`FakeOAuth`:

    with FakeOAuth() as auth, FakeCodeAssist(auth) as fake:
        tokens = auth.grant(); fake.onboard(tokens["access_token"])   # an onboarded user

Every call needs `authorization: Bearer <access token>` that `auth` issued and has not revoked
or seen expire, else 401 UNAUTHENTICATED (Google's words). Each login (`auth.login_of`: the
tokens of one rotation chain) is one Google user with its own project.

- `POST /v1internal:loadCodeAssist`: an onboarded user gets `currentTier` (free-tier) and its
  `cloudaicompanionProject`; a new one only `allowedTiers` (free-tier the default).
- `POST /v1internal:onboardUser` `{tierId, metadata[, cloudaicompanionProject]}`: a
  long-running operation, `{"name": "operations/onboard-<n>", "done": false}`; it is done at
  its first poll (`GET /v1internal/operations/onboard-<n>`, or the same onboardUser POSTed
  again, as older Gemini CLIs poll) with `response.cloudaicompanionProject {id, name}`
  (`fake-project-<n>`). standard-tier without a project: 400 FAILED_PRECONDITION.
- `POST /v1internal:generateContent` and `:streamGenerateContent?alt=sse`: the envelope
  `{model, project, user_prompt_id?, enabled_credit_types?, request: <Gemini body>}`; an
  unknown envelope field -> 400 ("Unknown name"), a project that is not the user's (or none)
  -> 403 PERMISSION_DENIED, then the Gemini body checked and answered as `FakeGemini` does,
  each answer (whole, or each SSE chunk) wrapped as `{"response": ..., "traceId": ...}`. Errors
  are not wrapped.
- `POST /v1internal:countTokens` `{"request": {"model": "models/<m>", "contents"}}` ->
  `{"totalTokens": len(body) // 4}`.
- other `/v1internal:<method>` (listExperiments, retrieveUserQuota, ...): `{}`.

`FakeCodeAssist(auth, antigravity=True)` is Code Assist as Antigravity (Google's IDE) calls
it: the envelope `{model, project, userAgent: "antigravity", requestType: "agent", requestId:
"agent-<uuid>", request: <Gemini body + sessionId "-<digits>">}` (Gemini CLI's own fields are
unknown names), an `antigravity/<version> <os>/<arch>` user agent, and a Claude model's tools
only in the `VALIDATED` calling mode; else 400.

Counters: `load_calls`, `onboard_calls`, `polls`. `agent_reply` (for real CLIs) is
FakeGemini's agent on the envelope's Gemini body.
"""

from __future__ import annotations

import dataclasses
import json
import re

from . import gemini_provider
from .gemini_provider import FakeGemini, gemini_request_problem
from .oauth_server import AcceptedTokens, FakeOAuth
from .server import JSON_TYPE, Plan, Received, Stream, Whole, dumps

ENVELOPE_FIELDS = frozenset({"model", "project", "user_prompt_id", "request",
                             "enabled_credit_types"})
ANTIGRAVITY_ENVELOPE = frozenset({"model", "project", "userAgent", "requestType", "requestId",
                                  "request"})
_ANTIGRAVITY_REQUEST_ID = re.compile(
    r"agent-[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
_ANTIGRAVITY_SESSION_ID = re.compile(r"-[1-9][0-9]{0,18}")
_ANTIGRAVITY_USER_AGENT = re.compile(r"antigravity/\d+\.\d+\.\d+ \w+/\w+")
_CALL = re.compile(r"/v1internal:(\w+)$")
_OPERATION = re.compile(r"/v1internal/(operations/[\w-]+)$")
TIERS = [{"id": "free-tier", "name": "Gemini Code Assist for individuals", "isDefault": True,
          "userDefinedCloudaicompanionProject": False},
         {"id": "standard-tier", "name": "Gemini Code Assist Standard",
          "userDefinedCloudaicompanionProject": True}]
UNAUTHENTICATED = ("Request had invalid authentication credentials. Expected OAuth 2 access "
                   "token, login cookie or other valid authentication credential.")


class FakeCodeAssist(FakeGemini):
    default_text = "Hello from the fake Code Assist"

    def __init__(self, auth: FakeOAuth, antigravity: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.auth = auth
        self.antigravity = antigravity
        self.keys = AcceptedTokens(auth)
        self.projects: dict[str, str] = {}  # login -> its project (onboarded users)
        self._operations: dict[str, dict] = {}  # name -> {"login", "project", "polled"}
        self.load_calls = self.onboard_calls = self.polls = 0

    def onboard(self, access_token: str, project: str | None = None) -> str:
        """The login of this token onboarded already (a Gemini CLI user); its project."""
        login = self.auth.login_of(access_token)
        with self._lock:
            project = self.projects[login] = project or self.new_id("fake-project-")
        return project

    # --- requests ---------------------------------------------------------------------------

    def _login(self, received: Received) -> str | None:
        """The Google user a call is made as: its Bearer token's login, if `auth` takes it."""
        token = received.headers.get("authorization", "").removeprefix("Bearer ")
        return self.auth.login_of(token) if token and token in self.keys else None

    def plan(self, received: Received) -> Plan:
        login = self._login(received)
        if login is None and self.check_auth:
            return self.error_plan(401, UNAUTHENTICATED)
        if received.method == "GET" and (m := _OPERATION.search(received.route)):
            return self._poll(login, m[1])
        m = _CALL.search(received.route)
        if received.method != "POST" or m is None:
            return self.error_plan(404, f"Not found: {received.method} {received.route}")
        body = received.json
        if body is None:
            return self.error_plan(400, "Invalid JSON payload received.")
        method = m[1]
        if method == "loadCodeAssist":
            return self._load(login)
        if method == "onboardUser":
            return self._onboard(login, body)
        if method == "countTokens":
            return Whole(200, self.headers(JSON_TYPE),
                         dumps({"totalTokens": max(1, len(received.body) // 4)}))
        if method in ("generateContent", "streamGenerateContent"):
            return self._generate_in_envelope(received, login, body,
                                              method == "streamGenerateContent")
        return Whole(200, self.headers(JSON_TYPE), b"{}")

    def _load(self, login: str) -> Whole:
        with self._lock:
            self.load_calls += 1
            project = self.projects.get(login)
        if project is None:
            return self._json({"allowedTiers": TIERS})
        return self._json({"currentTier": TIERS[0], "allowedTiers": TIERS,
                           "cloudaicompanionProject": project})

    def _onboard(self, login: str, body: dict) -> Whole:
        tier = body.get("tierId")
        if tier not in {t["id"] for t in TIERS}:
            return self.error_plan(400, f"Invalid tier: {tier!r}")
        if tier != "free-tier" and not body.get("cloudaicompanionProject"):
            return self.error_plan(400, "Precondition check failed: this tier needs a Google "
                                   "Cloud project", status_word="FAILED_PRECONDITION")
        with self._lock:
            self.onboard_calls += 1
            pending = next((n for n, op in self._operations.items()
                            if op["login"] == login and not op["polled"]), None)
        if pending is not None:  # an older client polling by asking again
            return self._poll(login, pending)
        name = self.new_id("operations/onboard-")
        with self._lock:
            self._operations[name] = {"login": login, "polled": False,
                                      "project": body.get("cloudaicompanionProject")
                                      or self.new_id("fake-project-")}
        return self._json({"name": name, "done": False})

    def _poll(self, login: str, name: str) -> Whole:
        with self._lock:
            self.polls += 1
            op = self._operations.get(name)
            if op is None or op["login"] != login:
                return self.error_plan(404, f"Operation {name} not found")
            op["polled"] = True
            self.projects[login] = op["project"]
        return self._json({"name": name, "done": True, "response": {
            "@type": "type.googleapis.com/google.internal.cloud.code.v1internal."
                     "OnboardUserResponse",
            "cloudaicompanionProject": {"id": op["project"], "name": op["project"]}}})

    def _generate_in_envelope(self, received: Received, login: str | None, body: dict,
                              stream: bool) -> Plan:
        unknown = sorted(set(body) - (ANTIGRAVITY_ENVELOPE if self.antigravity
                                      else ENVELOPE_FIELDS))
        if unknown:
            return self.error_plan(400, f'Invalid JSON payload received. Unknown name '
                                   f'"{unknown[0]}": Cannot find field.')
        inner = body.get("request")
        if not isinstance(inner, dict) or not isinstance(body.get("model"), str):
            return self.error_plan(400, "Request contains an invalid argument.")
        if self.antigravity and (problem := _antigravity_problem(received, body, inner)):
            return self.error_plan(400, problem)
        with self._lock:
            own = self.projects.get(login)
        if self.check_auth and (own is None or body.get("project") != own):
            return self.error_plan(403, f"Permission denied on resource project "
                                   f"{body.get('project') or ''}.")
        if self.validate and (problem := gemini_request_problem(inner, self.signatures)):
            return self.error_plan(400, problem)
        plan = self.plan_reply(self.take_reply(received), received, stream)
        return self._wrapped(plan)

    @staticmethod
    def model_of(received: Received) -> str:
        return (received.json or {}).get("model") or "gemini-fake"

    @staticmethod
    def prompt_parts(body: dict) -> list:
        return FakeGemini.prompt_parts(body.get("request") or {})

    def _wrapped(self, plan: Plan) -> Plan:
        """An answer in the Code Assist envelope (errors stay Google's own)."""
        if isinstance(plan, Whole):
            if plan.status != 200:
                return plan
            inner = json.loads(plan.body)
            return dataclasses.replace(plan, body=dumps(
                {"response": inner, "traceId": inner.get("responseId", "")}))
        if isinstance(plan, Stream):
            return dataclasses.replace(plan, events=(_wrap_event(e) for e in plan.events))
        return plan

    def error_plan(self, status: int, message: str | None = None, status_word: str = "",
                   **details) -> Whole:
        plan = super().error_plan(status, message)
        if not status_word:
            return plan
        body = json.loads(plan.body)
        body["error"]["status"] = status_word
        return dataclasses.replace(plan, body=dumps(body))

    def _json(self, obj: dict) -> Whole:
        return Whole(200, self.headers(JSON_TYPE), dumps(obj))


def _antigravity_problem(received: Received, body: dict, inner: dict) -> str | None:
    """What Antigravity's Code Assist would refuse in an envelope, if anything."""
    agent = received.headers.get("user-agent", "")
    if not _ANTIGRAVITY_USER_AGENT.fullmatch(agent):
        return f"Unsupported client: {agent!r}"
    if (body.get("userAgent"), body.get("requestType")) != ("antigravity", "agent"):
        return "Request contains an invalid argument: userAgent/requestType."
    if not _ANTIGRAVITY_REQUEST_ID.fullmatch(str(body.get("requestId"))):
        return "Request contains an invalid argument: requestId."
    if not _ANTIGRAVITY_SESSION_ID.fullmatch(str(inner.get("sessionId"))):
        return "Request contains an invalid argument: request.sessionId."
    if "session_id" in inner:
        return 'Invalid JSON payload received. Unknown name "session_id" at \'request\'.'
    mode = ((inner.get("toolConfig") or {}).get("functionCallingConfig") or {}).get("mode")
    if "claude" in body["model"] and inner.get("tools") and mode != "VALIDATED":
        return "Claude models take tools only in VALIDATED function calling mode."
    return None


def _wrap_event(event: bytes) -> bytes:
    data = event.strip()
    if not data.startswith(b"data: "):
        return event
    inner = json.loads(data[6:])
    if "error" in inner:
        return event
    return b"data: " + dumps({"response": inner, "traceId": inner.get("responseId", "")}) + (
        b"\r\n\r\n")


def agent_reply(received: Received):
    """FakeGemini's scripted agent, on the envelope's Gemini body."""
    inner = (received.json or {}).get("request")
    if not isinstance(inner, dict):
        return None
    return gemini_provider.agent_reply(dataclasses.replace(received, json=inner))

