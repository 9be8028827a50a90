"""A loopback GitHub Copilot API (`api.githubcopilot.com` and the business/enterprise hosts a
Copilot token's `endpoints.api` names), as Copilot Chat in VS Code is answered.

    with FakeOAuth() as auth, FakeCopilot(auth) as copilot:
        auth.copilot_api = copilot.base_url      # the Copilot token sends clients here

Endpoints (any path prefix):
- `POST .../chat/completions`: OpenAI Chat, answered as `FakeOpenAI`;
- `POST .../responses`: the Responses API, answered as `FakeOpenAIResponses` (Copilot's codex
  models);
- `GET .../models`: as `FakeOpenAI`.
Copilot's own checks come first, in this order:
- `Authorization: Bearer <a Copilot token the OAuth fake issued and still accepts>`, else
  401 (a GitHub token is not a Copilot token: refused too);
- the editor headers: `editor-version`, `editor-plugin-version`, `copilot-integration-id`
  and a Copilot user agent, else 400 `missing Editor-Version header for IDE auth` as the real
  API says; `x-initiator` (`user` or `agent`) on model calls, else 400.
`initiators` lists the `x-initiator` of each model call in order.
"""

from __future__ import annotations

from .oauth_server import FakeOAuth
from .openai_provider import FakeOpenAI
from .openai_responses_provider import FakeOpenAIResponses
from .replies import Reply, StreamError, Text, ToolCalls, Events
from .server import Plan, Received

EDITOR_HEADERS = ("editor-version", "editor-plugin-version", "copilot-integration-id")


class CopilotTokens:
    """The Copilot tokens `auth` issued and still accepts (never its GitHub tokens)."""

    def __init__(self, auth: FakeOAuth):
        self.auth = auth

    def __contains__(self, token) -> bool:
        return isinstance(token, str) and "-copilot-" in token and self.auth.accepts(token)


class FakeCopilot(FakeOpenAIResponses):
    default_text = "Hello from the fake Copilot"

    def __init__(self, auth: FakeOAuth, **kwargs):
        super().__init__(**kwargs)
        self.keys = CopilotTokens(auth)
        self.initiators: list[str] = []

    def plan(self, received: Received) -> Plan:
        route = received.route
        model_call = received.method == "POST" and route.endswith(("/chat/completions",
                                                                   "/responses"))
        if problem := self._auth_problem(received) or self._editor_problem(received,
                                                                           model_call):
            return problem
        if model_call:
            self.initiators.append(received.headers["x-initiator"])
        if received.method == "POST" and route.endswith("/chat/completions"):
            return FakeOpenAI.plan(self, received)
        return super().plan(received)

    def _editor_problem(self, received: Received, model_call: bool) -> Plan | None:
        headers = received.headers
        if any(not headers.get(h) for h in EDITOR_HEADERS) or not headers.get(
                "user-agent", "").startswith("GitHubCopilotChat/"):
            return self.error_plan(400, "missing Editor-Version header for IDE auth")
        if model_call and headers.get("x-initiator") not in ("user", "agent"):
            return self.error_plan(400, "x-initiator must be user or agent")
        return None

    def prompt_parts(self, body: dict) -> list:
        chat = "messages" in body
        return (FakeOpenAI if chat else FakeOpenAIResponses).prompt_parts(body)

    def render(self, reply: Text | ToolCalls | Events | StreamError | Reply, received: Received,
               stream: bool) -> Plan:
        if received.route.endswith("/chat/completions"):
            return FakeOpenAI.render(self, reply, received, stream)
        return super().render(reply, received, stream)
