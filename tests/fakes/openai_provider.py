"""A loopback OpenAI Chat Completions provider (OpenAI, DeepSeek, Qwen/DashScope, ... shapes).

    with FakeOpenAI() as fake:                      # keys={"sk-fake-provider-key"}
        base_url = fake.base_url + "/v1"            # any prefix works: /compatible-mode/v1, ...

Endpoints (any path prefix):
- `POST .../chat/completions`: `Authorization: Bearer <key>` with a key in `fake.keys`, else 401
  `{"error": {"message", "type": "invalid_request_error", "param": null,
  "code": "invalid_api_key"}}`; a body that is not a JSON object -> 400; with `validate` (the
  default) also 400 for what OpenAI refuses: no `model`, no `messages`, an unknown role, a
  `tool` message answering no preceding `tool_calls`, `tool_calls` left unanswered, arguments
  that are not a string, a malformed tool or tool name, `stream_options` without `stream`.
  None of these take a queued reply. Otherwise the next queued reply, else the default reply.
- `GET .../models`: `{"object": "list", "data": [{"id", "object": "model", ...}]}` (`models=`).
- anything else: 404 `Invalid URL (METHOD PATH)`.

Default reply (queue empty): `Text(default_text)`, i.e. "Hello from the fake provider" in 3
content deltas, finish "stop"; or the constructor's `default_reply` (a reply, or a callable
`(Received) -> reply | None`). `agent_reply` is such a callable, for real CLIs (`--agent`):
- the last message is a `tool` message -> text `"FAKE-TOOL-RESULT: " + its text`;
- else the last user message has `RUN: <command>` (to the end of its line) and the request
  offers a shell tool (`Bash`, `run_shell_command`, `exec_command`, `shell` or Codex's `exec`:
  `replies.shell_call` gives each its own arguments) -> one call of it running <command>,
  finish "tool_calls";
- else None: the default text.

Rendering:
- whole: `chat.completion` with `choices[0].message` {role, content (null when there are only
  tool calls), refusal, annotations, tool_calls?, reasoning_content?} and `usage`
  {prompt_tokens, completion_tokens, total_tokens, prompt_tokens_details.cached_tokens,
  completion_tokens_details.reasoning_tokens, ...};
- streamed (`"stream": true`): `data: <chat.completion.chunk>\\n\\n` events: delta
  {"role": "assistant", "content": "", "refusal": null}; reasoning deltas
  {"content": null, "reasoning_content": ...} (DeepSeek/Qwen style); content deltas; per tool
  call a delta {index, id, type, function: {name, arguments: ""}} then argument fragments
  {index, function: {arguments}}; a chunk with `finish_reason` and an empty delta; with
  `stream_options.include_usage` every chunk carries `"usage": null` and a last chunk has
  `"choices": []` and the usage; then `data: [DONE]`.
- `StreamError`: `data: {"error": {...}}` after the first events, then the end (no [DONE]).
"""

from __future__ import annotations

import itertools
import re
import sys
import time
from collections.abc import Iterable, Iterator

from .replies import (Answer, Counts, Events, Reply, StreamError, Text, ToolCall, ToolCalls,
                      requested_shell_call, resolve)
from .server import (JSON_TYPE, SSE_TYPE, FakeServer, Plan, Received, Stream, Whole, dumps,
                     run_cli)

FINGERPRINT = "fp_fake"
_UNSET = "<the status's own code>"
DONE = b"data: [DONE]\n\n"

# status -> (type, code, message) of OpenAI's own error bodies
_ERRORS = {
    400: ("invalid_request_error", None, "Invalid request."),
    401: ("invalid_request_error", "invalid_api_key", "Incorrect API key provided."),
    403: ("invalid_request_error", "unsupported_country_region_territory",
          "Country, region, or territory not supported"),
    404: ("invalid_request_error", "model_not_found",
          "The model does not exist or you do not have access to it."),
    429: ("requests", "rate_limit_exceeded",
          "Rate limit reached for requests. Please try again in 1s."),
    500: ("server_error", None,
          "The server had an error while processing your request. Sorry about that!"),
    503: ("server_error", None, "The engine is currently overloaded, please try again later."),
}

_ROLES = ("system", "developer", "user", "assistant", "tool", "function")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")


def sse(obj) -> bytes:
    return b"data: " + dumps(obj) + b"\n\n"


def usage_object(counts: Counts) -> dict:
    return {
        "prompt_tokens": counts.prompt,
        "completion_tokens": counts.completion,
        "total_tokens": counts.prompt + counts.completion,
        "prompt_tokens_details": {"cached_tokens": counts.cached, "audio_tokens": 0},
        "completion_tokens_details": {"reasoning_tokens": counts.reasoning, "audio_tokens": 0,
                                      "accepted_prediction_tokens": 0,
                                      "rejected_prediction_tokens": 0},
    }


def chat_request_problem(body: dict) -> tuple[str, str | None] | None:
    """What OpenAI would refuse in a chat request: (message, param), or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "you must provide a model parameter", None
    messages = body.get("messages")
    if not isinstance(messages, list):
        return "Missing required parameter: 'messages'.", "messages"
    if not messages:
        return "[] is too short - 'messages'", "messages"
    if body.get("stream_options") is not None and not body.get("stream"):
        return ("The 'stream_options' parameter is only allowed when 'stream' is enabled.",
                "stream_options")
    for i, tool in enumerate(body.get("tools") or []):
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict):
            return f"Missing required parameter: 'tools[{i}].function'.", f"tools[{i}].function"
        name = function.get("name")
        if not isinstance(name, str) or not _TOOL_NAME.match(name):
            return (f"Invalid 'tools[{i}].function.name': string does not match pattern. "
                    f"Expected a string that matches the pattern '^[a-zA-Z0-9_-]+$'.",
                    f"tools[{i}].function.name")
    awaiting: dict[str, int] = {}  # tool_call_id -> index of the assistant message
    for i, message in enumerate(messages):
        role = message.get("role") if isinstance(message, dict) else None
        if role not in _ROLES:
            return (f"Invalid value: '{role}'. Supported values are: "
                    + ", ".join(f"'{r}'" for r in _ROLES) + ".", f"messages[{i}].role")
        if role == "tool":
            if message.get("tool_call_id") not in awaiting:
                return ("Invalid parameter: messages with role 'tool' must be a response to a "
                        "preceeding message with 'tool_calls'.", f"messages.[{i}].role")
            del awaiting[message["tool_call_id"]]
            continue
        if awaiting:
            break
        calls = message.get("tool_calls") if role == "assistant" else None
        for j, call in enumerate(calls or []):
            function = call.get("function") if isinstance(call, dict) else None
            if not isinstance(function, dict):
                return (f"Missing required parameter: 'messages[{i}].tool_calls[{j}].function'.",
                        f"messages[{i}].tool_calls[{j}].function")
            if not isinstance(function.get("arguments"), str):
                return (f"Invalid type for 'messages[{i}].tool_calls[{j}].function.arguments': "
                        "expected a string, but got an object instead.",
                        f"messages[{i}].tool_calls[{j}].function.arguments")
            awaiting[call.get("id")] = i
    if awaiting:
        return ("An assistant message with 'tool_calls' must be followed by tool messages "
                "responding to each 'tool_call_id'. The following tool_call_ids did not have "
                "response messages: " + ", ".join(map(str, awaiting)),
                f"messages.[{min(awaiting.values())}].role")
    return None


class FakeOpenAI(FakeServer):
    """A fake OpenAI Chat Completions provider (see the module docstring). Extra constructor
    argument: `models`, the ids `GET /v1/models` lists."""

    default_keys = frozenset({"sk-fake-provider-key"})
    default_text = "Hello from the fake provider"

    def __init__(self, *, models: Iterable[str] = ("gpt-fake-1", "gpt-fake-mini"), **kwargs):
        super().__init__(**kwargs)
        self.models = tuple(models)

    def plan(self, received: Received) -> Plan:
        route = received.route
        if received.method == "POST" and route.endswith("/chat/completions"):
            return self._chat(received)
        if received.method == "GET" and route.endswith("/models"):
            return self._auth_problem(received) or self._models()
        return self.error_plan(404, f"Invalid URL ({received.method} {route})", code=None)

    @staticmethod
    def prompt_parts(body: dict) -> list:
        """Leading system messages, tools, then the other messages (a chat template's order)."""
        messages = list(body.get("messages") or [])
        lead = next((i for i, m in enumerate(messages)
                     if not isinstance(m, dict) or m.get("role") not in ("system", "developer")),
                    len(messages))
        return messages[:lead] + list(body.get("tools") or []) + messages[lead:]

    def _auth_problem(self, received: Received) -> Whole | None:
        if not self.check_auth:
            return None
        scheme, _, key = received.headers.get("authorization", "").partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            message = ("You didn't provide an API key. You need to provide your API key in an "
                       "Authorization header using Bearer auth (i.e. Authorization: Bearer "
                       "YOUR_KEY).")
        elif key not in self.keys:
            shown = f"{key[:3]}{'*' * 8}{key[-4:]}" if len(key) > 8 else "*" * len(key)
            message = (f"Incorrect API key provided: {shown}. You can find your API key at "
                       "https://platform.openai.com/account/api-keys.")
        else:
            return None
        return self.error_plan(401, message)

    def _chat(self, received: Received) -> Plan:
        if problem := self._auth_problem(received):
            return problem
        body = received.json
        if body is None:
            return self.error_plan(400, (
                "We could not parse the JSON body of your request. (HINT: This likely means "
                "you aren't using your HTTP library correctly. The OpenAI API expects a JSON "
                "payload, but what was sent was not valid JSON."), code=None)
        if self.validate and (problem := chat_request_problem(body)):
            message, param = problem
            return self.error_plan(400, message, param=param, code=None)
        return self.plan_reply(self.take_reply(received), received, body.get("stream") is True)

    def _models(self) -> Whole:
        data = [{"id": m, "object": "model", "created": 1700000000, "owned_by": "fake-provider"}
                for m in self.models]
        return Whole(200, self._headers(JSON_TYPE), dumps({"object": "list", "data": data}))

    def _headers(self, content_type: str, extra=None):
        return self.headers(content_type, {"x-request-id": self.new_id("req_fake")}, extra)

    def error_plan(self, status: int, message: str | None = None, *, kind: str | None = None,
                   code: str | None = _UNSET, param: str | None = None) -> Whole:
        default_kind, default_code, default_message = _ERRORS.get(status, (
            "server_error" if status >= 500 else "invalid_request_error", None,
            f"Request failed with status {status}."))
        error = {"message": message or default_message, "type": kind or default_kind,
                 "param": param, "code": default_code if code is _UNSET else code}
        return Whole(status, self._headers(JSON_TYPE), dumps({"error": error}))

    def answer_of(self, reply: Text | ToolCalls | Events | StreamError,
                  received: Received) -> Answer:
        """A content reply (a StreamError's `then`) made concrete, call ids `call_fake...`."""
        inner = reply.then if isinstance(reply, StreamError) else reply
        if isinstance(inner, ToolCall):
            inner = ToolCalls((inner,))
        return resolve(inner, len(received.body), lambda: self.new_id("call_fake"))

    def render(self, reply: Text | ToolCalls | Events | StreamError, received: Received,
               stream: bool) -> Plan:
        if isinstance(reply, StreamError) and not stream:
            return self.error_plan(500, reply.message, kind=reply.kind)
        answer = self.answer_of(reply, received)
        body = received.json or {}
        model = body.get("model") or "gpt-fake-1"
        completion_id = self.new_id("chatcmpl-fake")
        created = int(time.time())
        if not stream:
            return Whole(200, self._headers(JSON_TYPE),
                         dumps(self._completion(answer, completion_id, created, model)),
                         delay=answer.delay * max(1, len(answer.text_pieces)))
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        events: Iterable[bytes] = self._chunks(answer, completion_id, created, model,
                                               include_usage)
        if isinstance(reply, StreamError):
            error = {"message": reply.message or _ERRORS[500][2],
                     "type": reply.kind or "server_error", "param": None, "code": None}
            events = itertools.chain(itertools.islice(events, reply.after),
                                     (sse({"error": error}),))
        return Stream(200, self._headers(SSE_TYPE, {"cache-control": "no-cache"}), events,
                      delay=answer.delay)

    @staticmethod
    def _completion(answer: Answer, completion_id: str, created: int, model: str) -> dict:
        message = {"role": "assistant",
                   "content": answer.text if answer.text or not answer.calls else None,
                   "refusal": None, "annotations": []}
        if answer.reasoning:
            message["reasoning_content"] = answer.reasoning
        if answer.calls:
            message["tool_calls"] = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}} for c in answer.calls]
        return {
            "id": completion_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": answer.finish}],
            "usage": usage_object(answer.counts),
            "service_tier": "default", "system_fingerprint": FINGERPRINT,
        }

    @staticmethod
    def _chunks(answer: Answer, completion_id: str, created: int, model: str,
                include_usage: bool) -> Iterator[bytes]:
        """The stream's events, made as they are sent (an Events reply repeats one prebuilt
        chunk)."""
        head = {"id": completion_id, "object": "chat.completion.chunk", "created": created,
                "model": model, "system_fingerprint": FINGERPRINT}

        def chunk(delta: dict, finish: str | None = None) -> bytes:
            obj = {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                        "finish_reason": finish}]}
            if include_usage:
                obj["usage"] = None
            return sse(obj)

        yield chunk({"role": "assistant", "content": "", "refusal": None})
        for piece in answer.reasoning_pieces:
            yield chunk({"content": None, "reasoning_content": piece})
        for piece in answer.text_pieces:
            yield chunk({"content": piece})
        if answer.repeat:
            piece, n = answer.repeat
            yield from itertools.repeat(chunk({"content": piece}), n)
        per_call = [
            [chunk({"tool_calls": [{"index": i, "id": c.id, "type": "function",
                                    "function": {"name": c.name, "arguments": ""}}]})]
            + [chunk({"tool_calls": [{"index": i, "function": {"arguments": f}}]})
               for f in c.fragments]
            for i, c in enumerate(answer.calls)]
        if answer.interleave:
            for group in itertools.zip_longest(*per_call):
                yield from (event for event in group if event is not None)
        else:
            for events in per_call:
                yield from events
        yield chunk({}, answer.finish)
        if include_usage:
            yield sse({**head, "choices": [], "usage": usage_object(answer.counts)})
        yield DONE




def _text_of(content) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content
                       if isinstance(part, dict) and part.get("type") in ("text", "input_text"))
    return ""


def agent_reply(received: Received) -> Reply | None:
    """The scripted agent for real CLIs (see the module docstring)."""
    body = received.json or {}
    messages = [m for m in body.get("messages") or [] if isinstance(m, dict)]
    if not messages:
        return None
    if messages[-1].get("role") == "tool":
        return Text("FAKE-TOOL-RESULT: " + _text_of(messages[-1].get("content")))
    users = [m for m in messages if m.get("role") == "user"]
    offered = {(t.get("function") or {}).get("name") for t in body.get("tools") or []
               if isinstance(t, dict)}
    return requested_shell_call(_text_of(users[-1].get("content")) if users else "", offered)


if __name__ == "__main__":
    sys.exit(run_cli(FakeOpenAI, agent=agent_reply))
