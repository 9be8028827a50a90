"""A loopback Ollama server (its native API, as Ollama's API documentation shows it).

    with FakeOllama() as fake:                      # no key needed (check_auth=False default)
        base_url = fake.base_url                    # paths: /api/chat, /api/generate, ...

Endpoints:
- `POST /api/chat`: streamed unless the body says `"stream": false` (Ollama's default is to
  stream). With `validate` (the default) 400 `{"error": ...}` for what Ollama refuses: no
  `model`, `messages` not a list, a message whose `content` is not a string (Ollama takes no
  part arrays), a role other than system/user/assistant/tool, a tool call whose `arguments`
  are not an object; an unknown model (not in `models`) -> 404 `model "x" not found, try
  pulling it first`.
- `POST /api/generate`: the same, with `prompt`.
- `GET /api/tags` -> `{"models": [{name, model, modified_at, size, digest, details}]}`;
  `POST /api/show` -> the model's details and capabilities; `GET /api/version`.
- anything else: 404 (`404 page not found`, as Ollama's router answers).
A key is checked only with `check_auth=True` (Bearer, as a hosted Ollama takes it).

Rendering (NDJSON, `application/x-ndjson`, one object per line, each written on its own):
`{model, created_at, message: {role: "assistant", content, thinking?}, done: false}` per
reasoning piece (`thinking`) and text piece (`content`); the tool calls in one line, each whole
(`{id, function: {index, name, arguments: {...}}}`); then the `done` line with `done_reason`
(`stop`, also after tool calls, or `length`), the durations, `prompt_eval_count` (every prompt
token: Ollama reports no cache) and `eval_count`. Whole: one object with the message and the
same counts. `/api/generate` writes `response` (and `thinking`) at the top level instead of a
message. `StreamError`: a line `{"error": "..."}` after the first lines; not streamed: a 500.
"""

from __future__ import annotations

import itertools
import json
import sys
from collections.abc import Iterable, Iterator

from .replies import Answer, StreamError, Text, ToolCall, ToolCalls, resolve
from .server import JSON_TYPE, FakeServer, Plan, Received, Stream, Whole, dumps, run_cli

NDJSON_TYPE = "application/x-ndjson"
CREATED = "2025-08-16T21:50:45.146929735Z"
_ROLES = ("system", "user", "assistant", "tool")


def ollama_request_problem(body: dict, chat: bool) -> str | None:
    """What Ollama would refuse in a chat or generate body, or None."""
    if not isinstance(body.get("model"), str) or not body["model"]:
        return "model is required"
    if not chat:
        return None if isinstance(body.get("prompt", ""), str) else (
            "json: cannot unmarshal array into Go struct field GenerateRequest.prompt of "
            "type string")
    messages = body.get("messages", [])
    if not isinstance(messages, list):
        return "json: cannot unmarshal object into Go struct field ChatRequest.messages"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"json: cannot unmarshal messages[{i}]"
        if not isinstance(m.get("content", ""), str):
            return ("json: cannot unmarshal array into Go struct field "
                    "Message.messages.content of type string")
        if m.get("role") not in _ROLES:
            return f"invalid role: {m.get('role')!r}"
        for call in m.get("tool_calls") or ():
            args = ((call or {}).get("function") or {}).get("arguments")
            if not isinstance(args, dict):
                return ("json: cannot unmarshal string into Go struct field "
                        "ToolCallFunction.messages.tool_calls.function.arguments")
    return None


class FakeOllama(FakeServer):
    """A fake Ollama server (see the module docstring). Extra constructor argument: `models`
    (what /api/tags lists and what chat accepts; None accepts any)."""

    default_text = "Hello from the fake Ollama"

    def __init__(self, *, models: Iterable[str] | None = ("llama3.2:latest", "qwen3:8b"),
                 check_auth: bool = False, **kwargs):
        super().__init__(check_auth=check_auth, **kwargs)
        self.models = None if models is None else tuple(models)

    def plan(self, received: Received) -> Plan:
        route, method = received.route, received.method
        if self.check_auth and (problem := self._auth_problem(received)):
            return problem
        if method == "POST" and route in ("/api/chat", "/api/generate"):
            return self._generate(received, route == "/api/chat")
        if method == "GET" and route == "/api/tags":
            return Whole(200, self.headers(JSON_TYPE), dumps({"models": [
                {"name": n, "model": n, "modified_at": CREATED, "size": 2019393189,
                 "digest": f"{i:064x}", "details": {"format": "gguf", "family": "llama",
                                                     "parameter_size": "3.2B",
                                                     "quantization_level": "Q4_K_M"}}
                for i, n in enumerate(self.models or ())]}))
        if method == "POST" and route == "/api/show":
            return Whole(200, self.headers(JSON_TYPE), dumps({
                "modelfile": "FROM llama3.2", "details": {"family": "llama"},
                "capabilities": ["completion", "tools"]}))
        if method == "GET" and route == "/api/version":
            return Whole(200, self.headers(JSON_TYPE), dumps({"version": "0.12.3"}))
        return Whole(404, self.headers("text/plain"), b"404 page not found")

    def _auth_problem(self, received: Received) -> Whole | None:
        auth = received.headers.get("authorization", "")
        if not auth.startswith("Bearer ") or auth[7:] not in self.keys:
            return self.error_plan(401, "unauthorized")
        return None

    def _known(self, model: str) -> bool:
        if self.models is None:
            return True
        return model in self.models or f"{model}:latest" in self.models

    def _generate(self, received: Received, chat: bool) -> Plan:
        body = received.json
        if body is None:
            return self.error_plan(400, "invalid character in request body")
        if self.validate and (problem := ollama_request_problem(body, chat)):
            return self.error_plan(400, problem)
        if not self._known(body["model"]):
            return self.error_plan(404, f"model \"{body['model']}\" not found, try pulling "
                                        "it first")
        stream = body.get("stream", True) is not False
        return self.plan_reply(self.take_reply(received), received, stream)

    def error_plan(self, status: int, message: str | None = None, **details) -> Whole:
        return Whole(status, self.headers(JSON_TYPE),
                     dumps({"error": message or f"request failed with status {status}"}))

    # --- rendering --------------------------------------------------------------------------

    def _line(self, received: Received, done: bool, **fields) -> dict:
        model = (received.json or {}).get("model", "")
        return {"model": model, "created_at": CREATED, **fields, "done": done}

    def _message(self, received: Received, content: str = "", **extra) -> dict:
        if received.route == "/api/generate":
            return {"response": content, **extra}  # no tools there
        return {"message": {"role": "assistant", "content": content, **extra}}

    @staticmethod
    def _calls(answer: Answer) -> list[dict]:
        return [{"id": call.id, "function": {"index": i, "name": call.name,
                                             "arguments": json.loads(call.arguments)}}
                for i, call in enumerate(answer.calls)]

    def _final(self, received: Received, answer: Answer, **message) -> dict:
        counts = answer.counts
        reason = "length" if answer.finish == "length" else "stop"
        return {**self._line(received, True, **self._message(received, **message)),
                "done_reason": reason, "total_duration": 4883583458, "load_duration": 1334875,
                "prompt_eval_count": counts.prompt, "prompt_eval_duration": 342546000,
                "eval_count": counts.completion, "eval_duration": 4535599000}

    def render(self, reply: Text | ToolCalls | StreamError, received: Received,
               stream: bool) -> Plan:
        if isinstance(reply, StreamError) and not stream:
            return self.error_plan(500, reply.message or "model runner has unexpectedly stopped")
        inner = reply.then if isinstance(reply, StreamError) else reply
        if isinstance(inner, ToolCall):
            inner = ToolCalls((inner,))
        answer = resolve(inner, len(received.body), lambda: self.new_id("call_"))
        if not stream:
            extra: dict = {}
            if answer.reasoning:
                extra["thinking"] = answer.reasoning
            if answer.calls and received.route == "/api/chat":
                extra["tool_calls"] = self._calls(answer)
            return Whole(200, self.headers(JSON_TYPE), dumps(self._final(
                received, answer, content=answer.text, **extra)))
        events: Iterable[bytes] = self._lines(received, answer)
        if isinstance(reply, StreamError):
            events = itertools.chain(itertools.islice(events, reply.after), (dumps(
                {"error": reply.message or "model runner has unexpectedly stopped"}) + b"\n",))
        return Stream(200, self.headers(NDJSON_TYPE), events, delay=answer.delay)

    def _lines(self, received: Received, answer: Answer) -> Iterator[bytes]:
        for piece in answer.reasoning_pieces:
            yield dumps(self._line(received, False, **self._message(
                received, thinking=piece))) + b"\n"
        pieces = list(answer.text_pieces)
        if answer.repeat:
            piece, n = answer.repeat
            pieces = itertools.repeat(piece, n)
        for piece in pieces:
            yield dumps(self._line(received, False, **self._message(received, piece))) + b"\n"
        if answer.calls and received.route == "/api/chat":
            yield dumps(self._line(received, False, **self._message(
                received, tool_calls=self._calls(answer)))) + b"\n"
        yield dumps(self._final(received, answer)) + b"\n"


if __name__ == "__main__":
    sys.exit(run_cli(FakeOllama))
