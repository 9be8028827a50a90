"""A loopback Google Gemini API provider (`generativelanguage.googleapis.com` shapes).

    with FakeGemini() as fake:                      # keys={"AIza-fake-provider-key"}
        base_url = fake.base_url                    # paths: /v1beta/models/{model}:...

Endpoints (any path prefix before `/models`):
- `POST .../models/{model}:generateContent` (whole) and `:streamGenerateContent` (`?alt=sse`:
  server-sent events; without it one JSON array written element by element, as Google does): the key in `x-goog-api-key` or
  `?key=`; none -> 403 PERMISSION_DENIED, an unknown one -> 400 INVALID_ARGUMENT "API key not
  valid", as Google answers. With `validate` (the default) also 400 for what Gemini refuses:
  no `contents`, a role other than user/model, a schema keyword Gemini's `parameters` does not
  know (`additionalProperties`, `$schema`, `exclusiveMinimum`, ...: "Invalid JSON payload
  received. Unknown name ..."), a `functionResponse` whose name answers no `functionCall` of
  the model turn before it, and (`signatures=True`, the default: Gemini 3) a model turn whose
  first functionCall carries no `thoughtSignature`.
- `POST .../models/{model}:countTokens` -> `{"totalTokens": len(body) // 4}`.
- `GET .../models` -> `{"models": [{"name": "models/<id>", ...}]}` (`models=`).
- anything else: 404.

Rendering, as the captures in tests/data/captures/gemini-cli.*.response.txt show:
- streamed: `data: <GenerateContentResponse>\\r\\n\\r\\n` chunks: thought parts
  (`{"text", "thought": true}`) for reasoning, one chunk per text piece, then the function
  calls, each whole (`{"functionCall": {"name", "args"}}`, no id, as Gemini sends them; the
  first one carries `thoughtSignature: "fake-signature-<n>"` when `signatures`); the last chunk
  has `finishReason` (STOP or MAX_TOKENS) and `usageMetadata` {promptTokenCount (cached
  included), candidatesTokenCount, thoughtsTokenCount, cachedContentTokenCount,
  totalTokenCount}; every earlier chunk carries the prompt's count only.
- whole: one response (the reasoning as one thought part, the text as one part, the calls) and
  the same usage.
- `StreamError`: `data: {"error": {"code": 500, "message", "status": "INTERNAL"}}` after the
  first chunks; not streamed: a 500.

`agent_reply` drives real CLIs (`--agent`): the last turn holds a functionResponse -> text
`"FAKE-TOOL-RESULT: " + its output`; else the last user text has `RUN: <command>` and a shell
tool is offered -> a call of it; else None (the default text).
"""

from __future__ import annotations

import itertools
import json
import re
import sys
from collections.abc import Iterable, Iterator

from .replies import (Answer, Reply, StreamError, Text, ToolCall, ToolCalls, requested_shell_call,
                      resolve)
from .server import (JSON_TYPE, SSE_TYPE, FakeServer, Plan, Received, Stream, Whole, dumps,
                     run_cli)

_STATUS_WORDS = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 403: "PERMISSION_DENIED",
                 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED", 500: "INTERNAL",
                 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
_METHOD = re.compile(r"/models/([^/:]+):(generateContent|streamGenerateContent|countTokens)$")
# what Gemini's Schema object knows; any other key is refused
SCHEMA_KEYS = frozenset({"type", "format", "title", "description", "nullable", "enum",
                         "maxItems", "minItems", "properties", "required", "minProperties",
                         "maxProperties", "minLength", "maxLength", "pattern", "example",
                         "anyOf", "propertyOrdering", "default", "items", "minimum", "maximum"})


def _schema_problem(schema, where: str) -> str | None:
    if not isinstance(schema, dict):
        return None
    for key, value in schema.items():
        if key not in SCHEMA_KEYS:
            return (f"Invalid JSON payload received. Unknown name \"{key}\" at '{where}': "
                    "Cannot find field.")
        if key == "properties" and isinstance(value, dict):
            for name, sub in value.items():
                if problem := _schema_problem(sub, f"{where}.properties[{name}].value"):
                    return problem
        elif key == "items" and (problem := _schema_problem(value, where + ".items")):
            return problem
        elif key == "anyOf" and isinstance(value, list):
            for i, sub in enumerate(value):
                if problem := _schema_problem(sub, f"{where}.any_of[{i}]"):
                    return problem
    return None


def gemini_request_problem(body: dict, signatures: bool) -> str | None:
    """What Gemini would refuse in a generateContent body, or None."""
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, tool in enumerate(body.get("tools") or []):
        for j, decl in enumerate((tool or {}).get("functionDeclarations") or []):
            where = f"tools[{i}].function_declarations[{j}].parameters"
            if problem := _schema_problem(decl.get("parameters"), where):
                return problem
    called: list[str] = []
    for i, content in enumerate(contents):
        if not isinstance(content, dict):
            return f"Invalid value at 'contents[{i}]'"
        role = content.get("role", "user")
        if role not in ("user", "model"):
            return f"Please use a valid role: user, model. (contents[{i}].role: {role})"
        parts = content.get("parts") or []
        calls = [p["functionCall"] for p in parts if isinstance(p, dict) and "functionCall" in p]
        if role == "model" and calls:
            first = next(p for p in parts if isinstance(p, dict) and "functionCall" in p)
            if signatures and not first.get("thoughtSignature"):
                return (f"Function call is missing a thought_signature in functionCall parts. "
                        f"This is required for tools to work correctly (contents[{i}].parts)")
            called = [c.get("name") for c in calls]
            continue
        for p in parts:
            if isinstance(p, dict) and "functionResponse" in p:
                name = (p["functionResponse"] or {}).get("name")
                if name not in called:
                    return (f"Please ensure that function response turn comes immediately "
                            f"after a function call turn (contents[{i}]: {name!r}).")
                called.remove(name)
        called = []
    return None


def usage_metadata(answer: Answer, prompt_only: bool = False) -> dict:
    counts = answer.counts
    if prompt_only:
        return {"promptTokenCount": counts.prompt, "totalTokenCount": counts.prompt}
    out = {"promptTokenCount": counts.prompt,
           "candidatesTokenCount": counts.completion - counts.reasoning,
           "totalTokenCount": counts.prompt + counts.completion}
    if counts.reasoning:
        out["thoughtsTokenCount"] = counts.reasoning
    if counts.cached:
        out["cachedContentTokenCount"] = counts.cached
    return out


class FakeGemini(FakeServer):
    """A fake Gemini API (see the module docstring). Extra constructor arguments: `models`
    (what GET .../models lists), `signatures` (Gemini 3's thought signatures on calls)."""

    default_keys = frozenset({"AIza-fake-provider-key"})
    default_text = "Hello from the fake Gemini"

    def __init__(self, *, models: Iterable[str] = ("gemini-fake-pro", "gemini-fake-flash"),
                 signatures: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.models = tuple(models)
        self.signatures = signatures

    @staticmethod
    def prompt_parts(body: dict) -> list:
        system = body.get("systemInstruction")
        return ([] if system is None else [system]) + list(body.get("tools") or []) + list(
            body.get("contents") or [])

    def plan(self, received: Received) -> Plan:
        route = received.route
        m = _METHOD.search(route)
        if received.method == "POST" and m:
            if problem := self._auth_problem(received):
                return problem
            if m[2] == "countTokens":
                return Whole(200, self.headers(JSON_TYPE),
                             dumps({"totalTokens": max(1, len(received.body) // 4)}))
            return self._generate(received, m[1], m[2] == "streamGenerateContent")
        if received.method == "GET" and route.endswith("/models"):
            return self._auth_problem(received) or Whole(200, self.headers(JSON_TYPE), dumps({
                "models": [{"name": f"models/{n}", "displayName": n,
                            "supportedGenerationMethods": ["generateContent", "countTokens"]}
                           for n in self.models]}))
        return self.error_plan(404, f"Not found: {received.method} {route}")

    def _auth_problem(self, received: Received) -> Whole | None:
        if not self.check_auth:
            return None
        key = received.headers.get("x-goog-api-key")
        if key is None:
            query = dict(p.partition("=")[::2] for p in received.path.partition("?")[2].split("&"))
            key = query.get("key")
        if not key:
            return self.error_plan(403, "Method doesn't allow unregistered callers (callers "
                                   "without established identity). Please use API Key or "
                                   "other form of API consumer identity to call this API.")
        if key not in self.keys:
            return self.error_plan(400, "API key not valid. Please pass a valid API key.")
        return None

    def _generate(self, received: Received, model: str, stream: bool) -> Plan:
        body = received.json
        if body is None:
            return self.error_plan(400, "Invalid JSON payload received.")
        if self.validate and (problem := gemini_request_problem(body, self.signatures)):
            return self.error_plan(400, problem)
        sse = stream and "alt=sse" in received.path
        plan = self.plan_reply(self.take_reply(received), received, stream)
        if stream and not sse and isinstance(plan, Stream):
            # without alt=sse Google streams one JSON array, element by element
            return Stream(200, self.headers(JSON_TYPE), _array_pieces(plan.events),
                          delay=plan.delay)
        return plan

    def error_plan(self, status: int, message: str | None = None, **details) -> Whole:
        word = _STATUS_WORDS.get(status, "UNKNOWN")
        return Whole(status, self.headers(JSON_TYPE), dumps({"error": {
            "code": status, "message": message or f"Request failed with status {status}.",
            "status": word}}))

    def render(self, reply: Text | ToolCalls | StreamError, received: Received,
               stream: bool) -> Plan:
        if isinstance(reply, StreamError) and not stream:
            return self.error_plan(500, reply.message or "Internal error encountered.")
        inner = reply.then if isinstance(reply, StreamError) else reply
        if isinstance(inner, ToolCall):
            inner = ToolCalls((inner,))
        answer = resolve(inner, len(received.body), lambda: "")
        model = self.model_of(received)
        head = {"modelVersion": model, "responseId": self.new_id("fake-gemini-")}
        finish = {"stop": "STOP", "length": "MAX_TOKENS", "tool_calls": "STOP"}.get(
            answer.finish, answer.finish)
        if not stream:
            parts = ([{"text": answer.reasoning, "thought": True}] if answer.reasoning
                     else []) + ([{"text": answer.text}] if answer.text else [])
            parts += [p for chunk in self._parts(answer) for p in chunk if "functionCall" in p]
            return Whole(200, self.headers(JSON_TYPE), dumps({
                "candidates": [{"content": {"role": "model", "parts": parts},
                                "finishReason": finish, "index": 0}],
                "usageMetadata": usage_metadata(answer), **head}))
        events: Iterable[bytes] = self._chunks(answer, head, finish)
        if isinstance(reply, StreamError):
            events = itertools.chain(itertools.islice(events, reply.after), (
                b"data: " + dumps({"error": {"code": 500, "message": reply.message or
                                             "Internal error encountered.",
                                             "status": "INTERNAL"}}) + b"\r\n\r\n",))
        return Stream(200, self.headers(SSE_TYPE), events, delay=answer.delay)

    @staticmethod
    def model_of(received: Received) -> str:
        """The model a call names (the Gemini API: in its path)."""
        return _METHOD.search(received.route)[1]

    def _parts(self, answer: Answer) -> Iterator[list[dict]]:
        """The answer's parts, grouped as they are streamed (one group per chunk)."""
        for piece in answer.reasoning_pieces:
            yield [{"text": piece, "thought": True}]
        for piece in answer.text_pieces:
            yield [{"text": piece}]
        if answer.repeat:
            piece, n = answer.repeat
            yield from itertools.repeat([{"text": piece}], n)
        calls = []
        for i, call in enumerate(answer.calls):
            part: dict = {"functionCall": {"name": call.name,
                                           "args": json.loads(call.arguments)}}
            if i == 0 and self.signatures:
                part["thoughtSignature"] = self.new_id("fake-signature-")
            calls.append(part)
        if calls:
            yield calls

    def _chunks(self, answer: Answer, head: dict, finish: str) -> Iterator[bytes]:
        groups = list(self._parts(answer)) or [[{"text": ""}]]
        for i, parts in enumerate(groups):
            last = i == len(groups) - 1
            cand = {"content": {"role": "model", "parts": parts}, "index": 0}
            if last:
                cand["finishReason"] = finish
            yield b"data: " + dumps({"candidates": [cand],
                                     "usageMetadata": usage_metadata(answer, not last),
                                     **head}) + b"\r\n\r\n"


def _array_pieces(events: Iterable[bytes]) -> Iterator[bytes]:
    """SSE chunks (`data: <json>\\r\\n\\r\\n`) as the pieces of one JSON array, as Google
    writes it: `[{...}`, then `\\n,\\r\\n{...}` each, then `\\n]`."""
    first = True
    for event in events:
        element = event.strip().removeprefix(b"data: ")
        yield (b"[" if first else b"\n,\r\n") + element
        first = False
    yield b"\n]" if not first else b"[]"


def _user_text(content: dict) -> str:
    return "".join(p.get("text", "") for p in content.get("parts") or []
                   if isinstance(p, dict) and isinstance(p.get("text"), str))


def agent_reply(received: Received) -> Reply | None:
    """The scripted agent for real CLIs (see the module docstring)."""
    contents = [c for c in (received.json or {}).get("contents") or [] if isinstance(c, dict)]
    if not contents:
        return None
    results = [p["functionResponse"] for p in contents[-1].get("parts") or []
               if isinstance(p, dict) and isinstance(p.get("functionResponse"), dict)]
    if results:
        response = results[-1].get("response") or {}
        output = response.get("output", response.get("content", response))
        return Text("FAKE-TOOL-RESULT: " + (output if isinstance(output, str)
                                            else json.dumps(output)))
    users = [c for c in contents if c.get("role", "user") == "user"]
    offered = {d.get("name") for t in (received.json or {}).get("tools") or []
               for d in (t or {}).get("functionDeclarations") or [] if isinstance(d, dict)}
    return requested_shell_call(_user_text(users[-1]) if users else "", offered)


if __name__ == "__main__":
    sys.exit(run_cli(FakeGemini, agent=agent_reply))
