"""A loopback Anthropic Messages API (the shapes Claude Code accepted, `clients/captures/`).

    with FakeAnthropic() as fake:                   # keys={"sk-ant-fake-vendor-key"}
        ANTHROPIC_BASE_URL = fake.base_url

Endpoints (any path prefix, query ignored, e.g. `/v1/messages?beta=true`):
- `POST .../messages`: the key in `x-api-key` or `Authorization: Bearer` must be in
  `fake.keys`, else 401 `{"type": "error", "error": {"type": "authentication_error",
  "message"}, "request_id"}`; a body that is not a JSON object -> 400 `invalid_request_error`;
  with `validate` (the default) also 400 for what Anthropic refuses: no `anthropic-version`
  header, no `model` / `messages` / `max_tokens`, a role other than user/assistant/system
  (Claude Code sends `system` messages mid-conversation), a `tool_use` without its
  `tool_result` in the next message, a `tool_result` for no `tool_use` of the previous one, a
  `thinking` block whose signature this fake did not make. None of these take a queued reply.
- `POST .../messages/count_tokens`: `{"input_tokens": max(1, len(body) // 4)}`.
- `GET .../models`: `{"data": [{"type": "model", "id", ...}], "has_more": false, ...}`.
- anything else: 404 `not_found_error`.

Default reply (queue empty): `Text(default_text)`, i.e. "Hello from the fake Anthropic vendor"
in 3 text deltas, stop_reason "end_turn"; or the constructor's `default_reply`. `agent_reply`
(for real CLIs, `--agent`): the last user/assistant message is a user turn with a
`tool_result` -> text `"FAKE-TOOL-RESULT: " + its text`; else its text has `RUN: <command>` and
the request offers a shell tool (Claude Code's `Bash`, Codex's `exec`/`exec_command`, ...:
`replies.shell_call`) -> a `tool_use` of it running <command> (stop_reason "tool_use"); else
None (the default text).

Rendering:
- whole: a `message` {id, type, role, model, content [thinking?, text?, tool_use...],
  stop_reason, stop_sequence, usage};
- streamed: `event: message_start` (usage: input_tokens, cache_creation_input_tokens,
  cache_read_input_tokens, cache_creation, output_tokens 1, service_tier), per block
  `content_block_start` / `content_block_delta` (`thinking_delta` then one `signature_delta`,
  `text_delta`, `input_json_delta` starting with an empty `partial_json`) /
  `content_block_stop`, a `ping` after the first block start, `message_delta` (stop_reason and
  cumulative usage: input, cache and output tokens), `message_stop`.
- `Usage` -> `input_tokens = prompt - cached - cache_write`, `cache_read_input_tokens = cached`,
  `cache_creation_input_tokens = cache_write`, `output_tokens = completion`.
- `StreamError`: `event: error` after the first events, then the end of the response;
  not streamed: 529 `overloaded_error` (or the status of `kind`).
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import sys
from collections.abc import Iterable, Iterator

from .replies import (Answer, Counts, Events, Reply, StreamError, Text, ToolCall, ToolCalls,
                      requested_shell_call, resolve)
from .server import (JSON_TYPE, SSE_TYPE, FakeServer, Plan, Received, Stream, Whole, dumps,
                     run_cli)

# status -> (error type, message) of Anthropic's own error bodies
_ERRORS = {
    400: ("invalid_request_error", "Invalid request."),
    401: ("authentication_error", "invalid x-api-key"),
    402: ("billing_error", "Your credit balance is too low to access the Anthropic API."),
    403: ("permission_error", "Your API key does not have permission to use the specified "
                              "resource."),
    404: ("not_found_error", "Not found"),
    413: ("request_too_large", "Request exceeds the maximum allowed number of bytes."),
    429: ("rate_limit_error", "This request would exceed your organization's rate limit. "
                              "Please try again later."),
    500: ("api_error", "Internal server error"),
    504: ("timeout_error", "Request timeout"),
    529: ("overloaded_error", "Overloaded"),
}
_STATUS_OF_KIND = {kind: status for status, (kind, _) in _ERRORS.items()}
_STOP_REASONS = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use"}
_ORGANIZATION = "00000000-0000-0000-0000-000000000000"


def sse(event: str, obj) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + dumps(obj) + b"\n\n"


def thinking_signature(thinking: str) -> str:
    """The signature this fake gives a thinking text (and expects back with it)."""
    digest = hashlib.sha256(b"detour-fake-anthropic\0" + thinking.encode()).digest()
    return base64.b64encode(b"\x12\x08fake-sig" + digest).decode()


def usage_object(counts: Counts, where: str) -> dict:
    """`where`: "message" (a whole message), "start" (message_start: output_tokens 1, as the
    API sends) or "delta" (message_delta: the cumulative figures, no cache breakdown)."""
    uncached = max(0, counts.prompt - counts.cached - counts.cache_write)
    usage = {"input_tokens": uncached, "cache_creation_input_tokens": counts.cache_write,
             "cache_read_input_tokens": counts.cached}
    if where != "delta":
        usage["cache_creation"] = {"ephemeral_5m_input_tokens": counts.cache_write,
                                   "ephemeral_1h_input_tokens": 0}
    usage["output_tokens"] = 1 if where == "start" else counts.completion
    if where != "delta":
        usage["service_tier"] = "standard"
    return usage


def _blocks(content) -> list:
    return [b for b in content if isinstance(b, dict)] if isinstance(content, list) else []


def messages_request_problem(body: dict) -> str | None:
    """What Anthropic would refuse in a Messages request (its error message), or None."""
    for name in ("model", "messages", "max_tokens"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a valid string"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
        return "max_tokens: Input should be a valid integer greater than or equal to 1"
    messages = body["messages"]
    if not isinstance(messages, list) or not messages:
        return "messages: at least one message is required"
    for i, tool in enumerate(body.get("tools") or []):
        if isinstance(tool, dict) and tool.get("type") in (None, "custom"):
            for name in ("name", "input_schema"):
                if name not in tool:
                    return f"tools.{i}.custom.{name}: Field required"
    turns = []  # (index, message) of the user and assistant messages
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in ("user", "assistant", "system"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        if not isinstance(message.get("content"), (str, list)):
            return f"messages.{i}.content: Field required"
        if role != "system":
            turns.append((i, message))
    for k, (i, message) in enumerate(turns):
        blocks = _blocks(message["content"])
        if message["role"] == "assistant":
            for j, block in enumerate(blocks):
                if block.get("type") == "thinking" and block.get("signature") != \
                        thinking_signature(block.get("thinking", "")):
                    return f"messages.{i}.content.{j}: Invalid `signature` in `thinking` block"
            uses = [b.get("id") for b in blocks if b.get("type") == "tool_use"]
            if uses and k + 1 < len(turns):
                answered = {b.get("tool_use_id") for b in _blocks(turns[k + 1][1]["content"])
                            if b.get("type") == "tool_result"}
                missing = [u for u in uses if u not in answered]
                if missing:
                    return (f"messages.{turns[k + 1][0]}: `tool_use` ids were found without "
                            f"`tool_result` blocks immediately after: {', '.join(missing)}. "
                            "Each `tool_use` block must have a corresponding `tool_result` "
                            "block in the next message.")
        else:
            previous = turns[k - 1][1] if k else None
            offered = {b.get("id") for b in _blocks(previous["content"])
                       if b.get("type") == "tool_use"} if previous and \
                previous["role"] == "assistant" else set()
            for j, block in enumerate(blocks):
                if block.get("type") == "tool_result" and block.get("tool_use_id") not in offered:
                    return (f"messages.{i}.content.{j}: unexpected `tool_use_id` found in "
                            f"`tool_result` blocks: {block.get('tool_use_id')}. Each "
                            "`tool_result` block must have a corresponding `tool_use` block "
                            "in the previous message.")
    return None


class FakeAnthropic(FakeServer):
    """A fake Anthropic Messages API (see the module docstring). Extra constructor argument:
    `models`, the ids `GET /v1/models` lists."""

    default_keys = frozenset({"sk-ant-fake-vendor-key"})
    default_text = "Hello from the fake Anthropic vendor"

    def __init__(self, *, models: Iterable[str] = ("claude-fake-sonnet", "claude-fake-haiku"),
                 **kwargs):
        super().__init__(**kwargs)
        self.models = tuple(models)

    def plan(self, received: Received) -> Plan:
        route = received.route
        if received.method == "POST" and route.endswith("/messages"):
            return self._messages(received)
        if received.method == "POST" and route.endswith("/messages/count_tokens"):
            return self._auth_problem(received) or Whole(
                200, self._headers(JSON_TYPE),
                dumps({"input_tokens": max(1, len(received.body) // 4)}))
        if received.method == "GET" and route.endswith("/models"):
            return self._auth_problem(received) or self._models()
        return self.error_plan(404)

    def _auth_problem(self, received: Received) -> Whole | None:
        if not self.check_auth:
            return None
        key = received.headers.get("x-api-key")
        if key is not None:
            return None if key in self.keys else self.error_plan(401, "invalid x-api-key")
        scheme, _, token = received.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token.strip():
            return None if token.strip() in self.keys else self.error_plan(
                401, "Invalid bearer token")
        return self.error_plan(401, "x-api-key header is required")

    def _messages(self, received: Received) -> Plan:
        if problem := self._auth_problem(received):
            return problem
        body = received.json
        if body is None:
            return self.error_plan(400, "There was an issue with your request body: it is not "
                                        "a valid JSON object.")
        if self.validate:
            if "anthropic-version" not in received.headers:
                return self.error_plan(400, "anthropic-version: header is required")
            if problem := messages_request_problem(body):
                return self.error_plan(400, problem)
        return self.plan_reply(self.take_reply(received), received, body.get("stream") is True)

    def _models(self) -> Whole:
        data = [{"type": "model", "id": m, "display_name": m,
                 "created_at": "2025-01-01T00:00:00Z"} for m in self.models]
        body = {"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None}
        return Whole(200, self._headers(JSON_TYPE), dumps(body))

    def _headers(self, content_type: str, extra=None, request_id: str | None = None):
        return self.headers(content_type, {"request-id": request_id or self.new_id("req_fake"),
                                           "anthropic-organization-id": _ORGANIZATION}, extra)

    def error_plan(self, status: int, message: str | None = None, *,
                   kind: str | None = None) -> Whole:
        default_kind, default_message = _ERRORS.get(status, (
            "api_error" if status >= 500 else "invalid_request_error",
            f"Request failed with status {status}."))
        request_id = self.new_id("req_fake")
        body = {"type": "error", "error": {"type": kind or default_kind,
                                           "message": message or default_message},
                "request_id": request_id}
        return Whole(status, self._headers(JSON_TYPE, request_id=request_id), dumps(body))

    def render(self, reply: Text | ToolCalls | Events | StreamError, received: Received,
               stream: bool) -> Plan:
        if isinstance(reply, StreamError) and not stream:
            kind = reply.kind or "overloaded_error"
            return self.error_plan(_STATUS_OF_KIND.get(kind, 500), reply.message, kind=kind)
        inner = reply.then if isinstance(reply, StreamError) else reply
        if isinstance(inner, ToolCall):
            inner = ToolCalls((inner,))
        answer = resolve(inner, len(received.body), lambda: self.new_id("toolu_fake"))
        model = (received.json or {}).get("model") or "claude-fake-sonnet"
        message_id = self.new_id("msg_fake")
        if not stream:
            return Whole(200, self._headers(JSON_TYPE),
                         dumps(self._message(answer, message_id, model)),
                         delay=answer.delay * max(1, len(answer.text_pieces)))
        events: Iterable[bytes] = self._events(answer, message_id, model)
        if isinstance(reply, StreamError):
            error = {"type": "error", "error": {
                "type": reply.kind or "overloaded_error",
                "message": reply.message or _ERRORS.get(
                    _STATUS_OF_KIND.get(reply.kind or "overloaded_error", 500))[1]}}
            events = itertools.chain(itertools.islice(events, reply.after),
                                     (sse("error", error),))
        return Stream(200, self._headers(SSE_TYPE, {"cache-control": "no-cache"}), events,
                      delay=answer.delay)

    @staticmethod
    def _message(answer: Answer, message_id: str, model: str) -> dict:
        content = []
        if answer.reasoning:
            content.append({"type": "thinking", "thinking": answer.reasoning,
                            "signature": thinking_signature(answer.reasoning)})
        if answer.text or not answer.calls:
            content.append({"type": "text", "text": answer.text})
        for call in answer.calls:
            content.append({"type": "tool_use", "id": call.id, "name": call.name,
                            "input": json.loads(call.arguments)})
        return {"id": message_id, "type": "message", "role": "assistant", "model": model,
                "content": content,
                "stop_reason": _STOP_REASONS.get(answer.finish, answer.finish),
                "stop_sequence": None, "usage": usage_object(answer.counts, "message")}

    @staticmethod
    def _events(answer: Answer, message_id: str, model: str) -> Iterator[bytes]:
        """The stream's events, made as they are sent (an Events reply repeats one prebuilt
        delta)."""
        yield sse("message_start", {"type": "message_start", "message": {
            "id": message_id, "type": "message", "role": "assistant", "model": model,
            "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": usage_object(answer.counts, "start")}})
        index = 0

        def start(block: dict) -> Iterator[bytes]:
            yield sse("content_block_start", {"type": "content_block_start", "index": index,
                                              "content_block": block})
            if index == 0:
                yield sse("ping", {"type": "ping"})

        def delta(body: dict) -> bytes:
            return sse("content_block_delta", {"type": "content_block_delta", "index": index,
                                               "delta": body})

        def stop() -> bytes:
            return sse("content_block_stop", {"type": "content_block_stop", "index": index})

        if answer.reasoning:
            yield from start({"type": "thinking", "thinking": "", "signature": ""})
            for piece in answer.reasoning_pieces:
                yield delta({"type": "thinking_delta", "thinking": piece})
            yield delta({"type": "signature_delta",
                         "signature": thinking_signature(answer.reasoning)})
            yield stop()
            index += 1
        if answer.text or answer.repeat or not answer.calls:
            yield from start({"type": "text", "text": ""})
            for piece in answer.text_pieces:
                yield delta({"type": "text_delta", "text": piece})
            if answer.repeat:
                piece, n = answer.repeat
                yield from itertools.repeat(delta({"type": "text_delta", "text": piece}), n)
            yield stop()
            index += 1
        for call in answer.calls:  # blocks cannot interleave: `interleave` does not apply
            yield from start({"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
            for fragment in ("",) + call.fragments:
                yield delta({"type": "input_json_delta", "partial_json": fragment})
            yield stop()
            index += 1
        yield sse("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": _STOP_REASONS.get(answer.finish, answer.finish),
                      "stop_sequence": None},
            "usage": usage_object(answer.counts, "delta")})
        yield sse("message_stop", {"type": "message_stop"})


def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    parts = []
    for block in _blocks(content):
        if block.get("type") == "text":
            parts.append(block.get("text", ""))
        elif block.get("type") == "tool_result":
            parts.append(_text_of(block.get("content", "")))
    return "".join(parts)


def agent_reply(received: Received) -> Reply | None:
    """The scripted agent for real CLIs (see the module docstring)."""
    body = received.json or {}
    turns = [m for m in body.get("messages") or []
             if isinstance(m, dict) and m.get("role") in ("user", "assistant")]
    if not turns or turns[-1]["role"] != "user":
        return None
    results = [b for b in _blocks(turns[-1].get("content")) if b.get("type") == "tool_result"]
    if results:
        return Text("FAKE-TOOL-RESULT: " + "".join(_text_of(b.get("content", ""))
                                                   for b in results))
    offered = {t.get("name") for t in body.get("tools") or [] if isinstance(t, dict)}
    return requested_shell_call(_text_of(turns[-1].get("content")), offered)


if __name__ == "__main__":
    sys.exit(run_cli(FakeAnthropic, agent=agent_reply))
