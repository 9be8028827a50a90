"""Ollama's native chat API (`POST /api/chat`) <-> canonical: requests, whole responses and
NDJSON streams, both directions. `/api/generate` is a thin variant of it (`ollama_generate.py`).

Spoken by Ollama's own clients (the `ollama` Python and JS libraries, the CLI, editors' Ollama
integrations) to a local server on :11434, and by detour's provider kind `ollama`.
Pure: dicts and bytes in, canonical objects out, and back.

Requests: `messages` of `system`, `user`, `assistant` and `tool` roles; content is one string,
images a list of base64 strings beside it; an assistant turn may carry `thinking` and
`tool_calls` (`{id?, function: {index?, name, arguments}}`, arguments a JSON object); a tool
result names its call by `tool_call_id` (newer clients) or only by `tool_name`, matched then to
the oldest unanswered call of that name. `options` holds the sampling parameters
(`num_predict` is the output cap); `format` is `"json"` or a JSON Schema; `think` is a bool or
an effort (`"low"`, `"medium"`, `"high"`). `stream` is true unless the body says false.

Streams are NDJSON (`application/x-ndjson`): one JSON object per line, each a
`{model, created_at, message: {role, content, thinking?, tool_calls?}, done: false}` delta; a
tool call arrives whole in one line; the last line has `done: true`, `done_reason`
(`stop`, `length`, `load`, `unload`) and the counts: `prompt_eval_count` (input tokens) and
`eval_count` (output tokens). Ollama says `stop` after a tool call too. An error is a line
`{"error": "..."}` (mid stream) or the whole body of a failed call.

Ollama has no cache counts and no reasoning count: usage is input and output only. Thinking
carries no signature: a signed Thinking from another provider goes as plain `thinking` text.
"""

import datetime
import uuid

from translators import canonical as c
from translators.canonical import dumps_compact, fail, need
from translators.sse import MAX_LINE

NAME = "ollama"
STREAM_CONTENT_TYPE = "application/x-ndjson"
JSON_CONTENT_TYPE = "application/json; charset=utf-8"
EXTRAS_PREFIX = "ollama:"
MESSAGE_ID_PREFIX = ""  # Ollama's answers have no id
USER_FIELD = "user"  # Ollama requests carry no end-user id; never decoded into `user`
_P = EXTRAS_PREFIX

_SLOTS = frozenset({"model", "messages", "tools", "format", "options", "stream", "think"})
# options with a canonical slot (the rest are Ollama's own: num_ctx, seed, ...)
_OPTION_SLOTS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k",
                 "num_predict": "max_tokens", "stop": "stop"}
_DONE_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "load": "end_turn",
                 "unload": "end_turn"}
_STOP_TO_DONE = {"max_tokens": "length"}
# the first bytes of a base64 image say its type (Ollama's images carry none)
_IMAGE_MAGIC = (("iVBOR", "image/png"), ("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"),
                ("UklGR", "image/webp"))


class NDJSONTooLarge(c.TranslationError):
    """A line beyond the parser's limit: the stream is broken off."""


class LineParser:
    """NDJSON framing, sans-IO: `feed(chunk) -> [line]`, `close() -> [line]`, whatever the
    chunk boundaries; blank lines are skipped, a CR before the LF is dropped, a line longer
    than `max_line` raises NDJSONTooLarge."""

    __slots__ = ("_partial", "_partial_len", "max_line")

    def __init__(self, max_line: int = MAX_LINE):
        self.max_line = max_line
        self._partial: list[bytes] = []  # pieces of the line not ended yet (joined once)
        self._partial_len = 0

    def feed(self, chunk: bytes) -> list[bytes]:
        if b"\n" not in chunk:
            if chunk:
                self._partial.append(chunk)
                self._partial_len += len(chunk)
                if self._partial_len > self.max_line:
                    raise NDJSONTooLarge(f"an NDJSON line longer than {self.max_line} bytes")
            return []
        if self._partial:
            self._partial.append(chunk)
            chunk = b"".join(self._partial)
        lines = chunk.split(b"\n")
        tail = lines.pop()
        if len(tail) > self.max_line:
            raise NDJSONTooLarge(f"an NDJSON line longer than {self.max_line} bytes")
        self._partial = [tail] if tail else []
        self._partial_len = len(tail)
        return [s for line in lines if (s := line.strip())]

    def close(self) -> list[bytes]:
        rest = b"".join(self._partial).strip()
        self._partial, self._partial_len = [], 0
        return [rest] if rest else []


def now() -> str:
    """Ollama's `created_at`: RFC 3339 with fractional seconds, UTC."""
    return datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z")


# ---------------------------------------------------------------- usage


def decode_usage(body: dict) -> c.Usage:
    return c.Usage(c.token_count(body.get("prompt_eval_count"), "prompt_eval_count"),
                   c.token_count(body.get("eval_count"), "eval_count"))


def encode_usage(usage: c.Usage) -> dict:
    return {"prompt_eval_count": usage.prompt_tokens, "eval_count": usage.output_tokens}


# ---------------------------------------------------------------- request: Ollama -> canonical


def _image(data, path: str) -> c.Image:
    data = need(data, str, path)
    mime = next((m for magic, m in _IMAGE_MAGIC if data.startswith(magic)), "image/png")
    return c.Image(media_type=mime, data=data)


def _arguments(value, path: str) -> tuple[dict, str | None]:
    """A tool call's arguments: Ollama sends an object; a string is parsed (some clients send
    Chat's JSON text), kept raw when it is not an object."""
    if isinstance(value, dict):
        return value, None
    if value is None:
        return {}, None
    if isinstance(value, str):
        call = c.tool_use_from_arguments("", "", value)
        return call.input, call.raw_arguments
    fail("must be an object", path)


def _tool_calls(msg: dict, path: str) -> list[tuple[str | None, str, dict, str | None]]:
    """A message's tool calls: (id or None, name, arguments, raw argument text or None)."""
    out = []
    for j, tc in enumerate(need(msg.get("tool_calls"), list, path + ".tool_calls",
                                optional=True) or ()):
        at = f"{path}.tool_calls[{j}]"
        fn = need(need(tc, dict, at).get("function"), dict, at + ".function")
        name = need(fn.get("name"), str, at + ".function.name")
        args, raw = _arguments(fn.get("arguments"), at + ".function.arguments")
        ident = need(tc.get("id"), str, at + ".id", optional=True)
        out.append((ident or None, name, args, raw))
    return out


class _Calls:
    """Tool call ids of a conversation: Ollama may leave them out and name results only by
    their function's name."""

    __slots__ = ("pending",)

    def __init__(self):
        self.pending: dict[str, list[str]] = {}  # name -> ids of calls not yet answered

    def call(self, ident: str | None, name: str, turn: int, n: int) -> str:
        ident = ident or f"call_{turn}_{n}"
        self.pending.setdefault(name, []).append(ident)
        return ident

    def result(self, ident: str | None, name: str | None, turn: int) -> str:
        if ident:
            for waiting in self.pending.values():
                if ident in waiting:
                    waiting.remove(ident)
            return ident
        waiting = self.pending.get(name or "", [])
        if waiting:
            return waiting.pop(0)
        if len(self.pending) == 1 and name is None:  # one tool in play: its oldest call
            only = next(iter(self.pending.values()))
            if only:
                return only.pop(0)
        fail("a tool result that names no call (tool_call_id) and no tool the conversation "
             "called (tool_name)", f"messages[{turn}]")


def _decode_messages(messages) -> tuple[tuple[c.Text, ...], list[c.Message]]:
    calls = _Calls()
    system: list[c.Text] = []
    out: list[c.Message] = []
    opened = False  # a non-system message came: later system messages stay in place
    for i, m in enumerate(need(messages, list, "messages")):
        path = f"messages[{i}]"
        need(m, dict, path)
        role = m.get("role")
        content = need(m.get("content", ""), str, path + ".content", optional=True) or ""
        parts: list = []
        if role == "system":
            if not opened:
                system.append(c.Text(content))
            else:
                out.append(c.Message("system", (c.Text(content),)))
            continue
        opened = True
        if role == "user":
            if content:
                parts.append(c.Text(content))
            parts += [_image(d, f"{path}.images[{j}]") for j, d in enumerate(
                need(m.get("images"), list, path + ".images", optional=True) or ())]
            if parts:
                out.append(c.Message("user", tuple(parts)))
        elif role == "assistant":
            thinking = need(m.get("thinking"), str, path + ".thinking", optional=True)
            if thinking:
                parts.append(c.Thinking(thinking))
            if content:
                parts.append(c.Text(content))
            for j, (ident, name, args, raw) in enumerate(_tool_calls(m, path)):
                parts.append(c.ToolUse(calls.call(ident, name, i, j), name, args, raw))
            if parts:
                out.append(c.Message("assistant", tuple(parts)))
        elif role == "tool":
            ident = calls.result(
                need(m.get("tool_call_id"), str, path + ".tool_call_id", optional=True),
                need(m.get("tool_name"), str, path + ".tool_name", optional=True), i)
            result = c.ToolResult(ident, (c.Text(content),) if content else ())
            if out and out[-1].role == "user" and all(
                    type(p) is c.ToolResult for p in out[-1].parts):
                out[-1] = c.Message("user", out[-1].parts + (result,))  # results of one turn
            else:
                out.append(c.Message("user", (result,)))
        else:
            fail(f"unsupported role {role!r}", path + ".role")
    return tuple(system), out


def _decode_tools(tools) -> tuple[c.Tool, ...]:
    out = []
    for i, t in enumerate(need(tools, list, "tools", optional=True) or ()):
        path = f"tools[{i}]"
        fn = need(need(t, dict, path).get("function"), dict, path + ".function")
        schema = need(fn.get("parameters"), dict, path + ".function.parameters", optional=True)
        out.append(c.Tool(need(fn.get("name"), str, path + ".function.name"),
                          need(fn.get("description"), str, path + ".function.description",
                               optional=True),
                          schema or {"type": "object", "properties": {}}))
    return tuple(out)


def _decode_format(value) -> c.ResponseFormat | None:
    if value is None or value == "":
        return None
    if value == "json":
        return c.ResponseFormat()
    return c.ResponseFormat(schema=need(value, dict, "format"))


def _decode_think(value) -> tuple[dict | None, str | None]:
    if value is None:
        return None, None
    if value is True:
        return {"type": "adaptive"}, None
    if value is False:
        return {"type": "disabled"}, None
    if isinstance(value, str) and value in ("low", "medium", "high"):
        return None, value
    fail("must be true, false, \"low\", \"medium\" or \"high\"", "think")


def _decode_options(options, extras: dict) -> dict:
    slots: dict = {}
    for key, value in (need(options, dict, "options", optional=True) or {}).items():
        slot = _OPTION_SLOTS.get(key)
        if slot is None:
            extras[f"{_P}options.{key}"] = value
        elif slot == "stop":
            stops = [value] if isinstance(value, str) else need(value, list, "options.stop")
            slots[slot] = tuple(need(s, str, f"options.stop[{i}]") for i, s in enumerate(stops))
        elif slot in ("top_k", "max_tokens"):
            slots[slot] = need(value, int, "options." + key)
        else:
            slots[slot] = need(value, c.NUMBER, "options." + key)
    return slots


def _request(body: dict, system: tuple[c.Text, ...], messages: list[c.Message],
             slots: frozenset) -> c.Request:
    extras: dict = {}
    for k, v in body.items():
        if k not in slots:
            extras[_P + k] = v
    if "think" in body:
        extras[_P + "think"] = body["think"]  # sent again as it was to an Ollama provider
    thinking, effort = _decode_think(body.get("think"))
    stream = body.get("stream", True)
    return c.Request(
        model=need(body.get("model"), str, "model", optional=True) or "",
        messages=tuple(messages), system=system, tools=_decode_tools(body.get("tools")),
        stream=need(stream, bool, "stream"), thinking=thinking, reasoning_effort=effort,
        response_format=_decode_format(body.get("format")),
        extras=extras, **_decode_options(body.get("options"), extras))


def decode_request(body: dict) -> c.Request:
    need(body, dict, "")
    system, messages = _decode_messages(body.get("messages", []))
    return _request(body, system, messages, _SLOTS)


# ---------------------------------------------------------------- request: canonical -> Ollama


def _text_of(parts, path: str) -> str:
    out = []
    for p in parts:
        if type(p) is c.Text:
            out.append(p.text)
        elif type(p) is c.Document and p.text is not None:
            out.append(f"{p.title}\n\n{p.text}" if p.title else p.text)
        elif type(p) is not c.Image:
            fail(f"Ollama cannot take a {type(p).__name__} here", path)
    return "".join(out)


def _images(parts, path: str) -> list[str]:
    out = []
    for p in parts:
        if type(p) is c.Image:
            if p.data is None:
                fail("Ollama takes images inline (base64), not by URL", path)
            out.append(p.data)
    return out


def _encode_message(m: c.Message, names: dict[str, str], path: str) -> list[dict]:
    if m.role == "system":
        return [{"role": "system", "content": _text_of(m.parts, path)}]
    if m.role == "assistant":
        msg: dict = {"role": "assistant", "content": "".join(
            p.text for p in m.parts if type(p) is c.Text)}
        thinking = "".join(p.text for p in m.parts if type(p) is c.Thinking and p.text)
        if thinking:
            msg["thinking"] = thinking
        calls = []
        for p in m.parts:
            if type(p) is c.ToolUse:
                names[p.id] = p.name
                args = p.input if p.raw_arguments is None else {"input": p.raw_arguments}
                calls.append({"id": p.id, "function": {"index": len(calls), "name": p.name,
                                                       "arguments": args}})
        if calls:
            msg["tool_calls"] = calls
        return [msg]
    out: list[dict] = []
    rest = []
    for p in m.parts:
        if type(p) is c.ToolResult:
            text = "".join(x.text for x in p.content if type(x) is c.Text)
            result = {"role": "tool", "content": ("error: " + text) if p.is_error else text,
                      "tool_call_id": p.tool_use_id}
            if p.tool_use_id in names:
                result["tool_name"] = names[p.tool_use_id]
            images = _images(p.content, path)
            if images:
                result["images"] = images
            out.append(result)
        elif type(p) is not c.Thinking:
            rest.append(p)
    if rest:
        msg = {"role": "user", "content": _text_of(rest, path)}
        images = _images(rest, path)
        if images:
            msg["images"] = images
        out.append(msg)
    return out


def _encode_options(req: c.Request) -> dict:
    options: dict = {}
    for key, value in (("temperature", req.temperature), ("top_p", req.top_p),
                       ("top_k", req.top_k), ("num_predict", req.max_tokens)):
        if value is not None:
            options[key] = value
    if req.stop:
        options["stop"] = list(req.stop)
    prefix = _P + "options."
    for key, value in req.extras.items():
        if key.startswith(prefix):
            options.setdefault(key[len(prefix):], value)
    return options


def _encode_format(rf: c.ResponseFormat | None):
    if rf is None:
        return None
    return rf.schema if rf.schema is not None else "json"


def encode_request(req: c.Request) -> dict:
    """The /api/chat body. `stream` is always written: Ollama streams unless told not to.
    `think` goes only as an Ollama client sent it (a model without thinking refuses it)."""
    names: dict[str, str] = {}
    messages: list[dict] = []
    if req.system:
        messages.append({"role": "system", "content": "\n\n".join(t.text for t in req.system)})
    for i, m in enumerate(req.messages):
        messages += _encode_message(m, names, f"messages[{i}]")
    body: dict = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.tools:
        body["tools"] = [{"type": "function", "function": {
            "name": t.name, **({"description": t.description} if t.description else {}),
            "parameters": t.input_schema}} for t in req.tools]
    fmt = _encode_format(req.response_format)
    if fmt is not None:
        body["format"] = fmt
    options = _encode_options(req)
    if options:
        body["options"] = options
    for key, value in req.extras.items():
        if key.startswith(_P) and "." not in key[len(_P):]:
            body.setdefault(key[len(_P):], value)
    return body


# ---------------------------------------------------------------- whole responses


def _stop_reason(done_reason, has_calls: bool) -> c.StopReason:
    # a reason that is not a string (a peer's list, number, ...) is no known reason
    stop = _DONE_TO_STOP.get(done_reason, "end_turn") if isinstance(done_reason, str) \
        else "end_turn"
    return "tool_use" if has_calls and stop == "end_turn" else stop


def _error_message(body: dict) -> str:
    err = body.get("error")
    return err if isinstance(err, str) else str(err)[:300]


def _message_parts(msg: dict, path: str, n_calls: int = 0) -> list:
    parts: list = []
    thinking = msg.get("thinking")
    if isinstance(thinking, str) and thinking:
        parts.append(c.Thinking(thinking))
    content = msg.get("content")
    if isinstance(content, str) and content:
        parts.append(c.Text(content))
    for j, (ident, name, args, raw) in enumerate(_tool_calls(msg, path)):
        parts.append(c.ToolUse(ident or _call_id(n_calls + j), name, args, raw))
    return parts


def _call_id(n: int) -> str:
    """An id for a call Ollama sent without one (older servers)."""
    return f"call_{uuid.uuid4().hex[:12]}_{n}"


def decode_response(body: dict) -> c.Response:
    need(body, dict, "")
    if "error" in body and "message" not in body:
        fail(_error_message(body), "error")
    msg = need(body.get("message", {}), dict, "message")
    parts = _message_parts(msg, "message")
    model = body.get("model")
    return c.Response("", model if isinstance(model, str) else "", tuple(parts),
                      _stop_reason(body.get("done_reason"),
                                   any(type(p) is c.ToolUse for p in parts)),
                      decode_usage(body))


def _answer(resp_parts, stop: c.StopReason | None) -> tuple[dict, str]:
    content = "".join(p.text for p in resp_parts if type(p) is c.Text)
    msg: dict = {"role": "assistant", "content": content}
    thinking = "".join(p.text for p in resp_parts if type(p) is c.Thinking and p.text)
    if thinking:
        msg["thinking"] = thinking
    calls = [{"id": p.id, "function": {"index": i, "name": p.name, "arguments": p.input if (
        p.raw_arguments is None) else {"input": p.raw_arguments}}}
        for i, p in enumerate(x for x in resp_parts if type(x) is c.ToolUse)]
    if calls:
        msg["tool_calls"] = calls
    return msg, _STOP_TO_DONE.get(stop or "end_turn", "stop")


def encode_response(resp: c.Response) -> dict:
    msg, reason = _answer(resp.parts, resp.stop_reason)
    return {"model": resp.model, "created_at": now(), "message": msg, "done": True,
            "done_reason": reason, "total_duration": 0, "load_duration": 0,
            **encode_usage(resp.usage), "prompt_eval_duration": 0, "eval_duration": 0}


# ---------------------------------------------------------------- calls about models


def _idle_reason(body: dict) -> str:
    return "unload" if body.get("keep_alive") in (0, "0", "0s", "0m") else "load"


def idle_answer(body: dict) -> bytes | None:
    """A chat that asks the model nothing (no messages: how Ollama's clients load a model, or
    unload it with `keep_alive: 0`) answered as Ollama does, one object; None for any other.
    Sent to a provider of another format, it would be an empty conversation it refuses."""
    if body.get("messages"):
        return None
    return dumps_compact({"model": body.get("model", ""), "created_at": now(),
                          "message": {"role": "assistant", "content": ""},
                          "done_reason": _idle_reason(body), "done": True})



def model_list(names) -> bytes:
    """/api/tags naming these models (what Ollama's clients list and pick from)."""
    stamp = "1970-01-01T00:00:00Z"
    return dumps_compact({"models": [
        {"name": n, "model": n, "modified_at": stamp, "size": 0,
         "digest": uuid.uuid5(uuid.NAMESPACE_URL, "detour:" + n).hex + "0" * 32,
         "details": {"parent_model": "", "format": "detour", "family": "detour",
                     "families": ["detour"], "parameter_size": "", "quantization_level": ""}}
        for n in names]})


# what /api/version says when detour answers it (clients check for a recent enough server)
VERSION = "0.12.0"


def setup_answer(method: str) -> bytes:
    """The calls around model calls, answered when models are routed away from Ollama:
    `version`, and `show` (a model's details and capabilities: completion and tools, what a
    client checks before chatting)."""
    if method == "version":
        return dumps_compact({"version": VERSION})
    return dumps_compact({
        "modelfile": "# served by detour\n", "parameters": "", "template": "",
        "details": {"parent_model": "", "format": "detour", "family": "detour",
                    "families": ["detour"], "parameter_size": "", "quantization_level": ""},
        "model_info": {}, "capabilities": ["completion", "tools"],
        "modified_at": "1970-01-01T00:00:00Z"})


# ---------------------------------------------------------------- errors


def error_body(status: int, message: str, kind: str | None = None) -> bytes:
    """Ollama's error body: {"error": "<message>"}."""
    return dumps_compact({"error": message})


def is_error_event(name: str, data: str) -> bool:
    obj = c.json_object(data) if '"error"' in data else None
    return obj is not None and "error" in obj and "done" not in obj


def may_follow_stop(name: str, data: str) -> bool:
    return False  # the done line is the last


# ---------------------------------------------------------------- stream: Ollama -> canonical


class StreamDecoder:
    """Ollama NDJSON -> canonical events: thinking and content deltas stream into one open
    block each; each tool call is a whole block; the `done` line ends the message with the
    counts. Reads /api/generate's lines too (`response`, `thinking` at the top level)."""

    __slots__ = ("_lines", "_started", "_done", "_kind", "_index", "_calls", "_usage")

    def __init__(self):
        self._lines = LineParser()
        self._started = False
        self._done = False
        self._kind: str | None = None  # the open block's kind
        self._index = -1
        self._calls = 0
        self._usage = c.Usage()

    @property
    def usage(self) -> c.Usage:
        return self._usage

    def feed(self, chunk: bytes) -> list[c.Event]:
        out: list[c.Event] = []
        for line in self._lines.feed(chunk):
            self._line(line, out)
        return out

    def close(self) -> list[c.Event]:
        out: list[c.Event] = []
        for line in self._lines.close():
            self._line(line, out)
        if not self._done:
            self._fail("api_error", "upstream stream ended before its done line", out)
        return out

    def _fail(self, kind: str, message: str, out: list) -> None:
        out.append(c.StreamError(kind, message))
        self._done = True

    def _open(self, kind: str, out: list, **start) -> None:
        self._close_block(out)
        self._index += 1
        out.append(c.BlockStart(self._index, kind, **start))
        self._kind = kind

    def _close_block(self, out: list) -> None:
        if self._kind is not None:
            out.append(c.BlockStop(self._index))
            self._kind = None

    def _delta(self, kind: str, text, out: list) -> None:
        if isinstance(text, str) and text:
            if self._kind != kind:
                self._open(kind, out)
            out.append(c.TextDelta(self._index, text) if kind == "text"
                       else c.ThinkingDelta(self._index, text))

    def _line(self, line: bytes, out: list) -> None:
        if self._done:
            return
        try:
            obj = c.loads_json(line)
        except (ValueError, RecursionError):
            obj = None
        if not isinstance(obj, dict):
            return self._fail("api_error", f"malformed line from upstream: {line[:200]!r}", out)
        if "error" in obj and "done" not in obj:
            return self._fail("api_error", _error_message(obj), out)
        if not self._started:
            model = obj.get("model")
            out.append(c.MessageStart("", model if isinstance(model, str) else ""))
            self._started = True
        msg = obj.get("message") if isinstance(obj.get("message"), dict) else obj
        self._delta("thinking", msg.get("thinking"), out)
        self._delta("text", msg.get("content") if msg is not obj else obj.get("response"), out)
        calls = msg.get("tool_calls") if msg is not obj else None
        if calls:
            try:
                parts = _message_parts({"tool_calls": calls}, "message", self._calls)
            except c.TranslationError as e:
                return self._fail("api_error", f"bad tool call from upstream: {e}", out)
            for p in parts:
                self._calls += 1
                self._open("tool_use", out, tool_id=p.id, tool_name=p.name)
                args = p.raw_arguments if p.raw_arguments is not None else dumps_compact(
                    p.input).decode()
                out.append(c.ToolInputDelta(self._index, args))
                self._close_block(out)
        if obj.get("done") is True:
            try:
                self._usage = decode_usage(obj)
            except c.TranslationError as e:
                return self._fail("api_error", f"bad usage from upstream: {e}", out)
            self._close_block(out)
            out += [c.MessageDelta(_stop_reason(obj.get("done_reason"), self._calls > 0),
                                   self._usage), c.MessageStop()]
            self._done = True


# ---------------------------------------------------------------- stream: canonical -> Ollama


class StreamEncoder(c.EventEncoder):
    """Canonical events -> Ollama NDJSON: one line per text or thinking delta, one per whole
    tool call (its arguments gathered until its block ends), and the `done` line with the
    counts. Every event is checked against canonical.StreamGrammar."""

    __slots__ = ("_grammar", "_model", "_created", "_tool", "_args", "_calls", "_frame")

    def __init__(self):
        self._frame: tuple[bytes, bytes] | None = None  # a text delta's line around its text
        self._grammar = c.StreamGrammar()
        self._model = ""
        self._created = ""
        self._tool: c.BlockStart | None = None
        self._args: list[str] = []
        self._calls = 0

    def _line(self, fields: dict) -> bytes:
        return dumps_compact({"model": self._model, "created_at": self._created, **fields}) + (
            b"\n")

    def _delta(self, text: str | None = None, thinking: str | None = None,
               calls: list | None = None) -> bytes:
        msg: dict = {"role": "assistant", "content": text or ""}
        if thinking:
            msg["thinking"] = thinking
        if calls:
            msg["tool_calls"] = calls
        return self._line({"message": msg, "done": False})

    def _text(self, text: str) -> bytes:
        """A text delta's line (most of a stream): the JSON around the text is written once."""
        if self._frame is None:
            head, _, tail = self._delta(text="\x00").partition(b'"\\u0000"')
            self._frame = (head, tail)
        head, tail = self._frame
        return head + dumps_compact(text) + tail

    def _final(self, reason: str, usage: c.Usage) -> bytes:
        return self._line({"message": {"role": "assistant", "content": ""}, "done": True,
                           "done_reason": reason, "total_duration": 0, "load_duration": 0,
                           **encode_usage(usage), "prompt_eval_duration": 0,
                           "eval_duration": 0})

    def encode(self, event: c.Event) -> bytes:
        self._grammar.check(event)
        t = type(event)
        if t is c.TextDelta:
            return self._text(event.text) if event.text else b""
        if t is c.ThinkingDelta:
            return self._delta(thinking=event.text) if event.text else b""
        if t is c.ToolInputDelta:
            self._args.append(event.partial_json)
            return b""
        if t is c.BlockStart:
            self._tool = event if event.kind == "tool_use" else None
            self._args = []
            return b""
        if t is c.BlockStop:
            if self._tool is None:
                return b""
            call = c.tool_use_from_arguments(self._tool.tool_id, self._tool.tool_name,
                                             "".join(self._args))
            self._tool = None
            args = call.input if call.raw_arguments is None else {"input": call.raw_arguments}
            self._calls += 1
            return self._delta(calls=[{"id": call.id, "function": {
                "index": self._calls - 1, "name": call.name, "arguments": args}}])
        if t is c.MessageStart:
            self._model, self._created = event.model, now()
            return b""
        if t is c.MessageDelta:
            return self._final(_STOP_TO_DONE.get(event.stop_reason or "end_turn", "stop"),
                               event.usage)
        if t is c.StreamError:
            return dumps_compact({"error": event.message}) + b"\n"
        return b""  # Ping, MessageStop, SignatureDelta (Ollama keeps no signature)


def client_stream_encoder(body: dict) -> StreamEncoder:
    return StreamEncoder()


# ---------------------------------------------------------------- sniffing and same-format


def sniff_request(body: object) -> bool:
    """An Ollama chat request: `messages` whose contents are all strings, and Ollama's own
    marks (`options`, `think`, `keep_alive`, `format`) or a message with `images` or
    `tool_name`. A bare {model, messages} passes for Chat too."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        return False
    if not all(isinstance(m, dict) and isinstance(m.get("content", ""), str)
               for m in body["messages"]):
        return False
    return any(k in body for k in ("options", "think", "keep_alive", "format")) or any(
        "images" in m or "tool_name" in m for m in body["messages"])


def sniff_stream(head: bytes) -> bool:
    line = head.lstrip().split(b"\n", 1)[0]
    return line.startswith(b"{") and b'"done"' in line and b'"created_at"' in line


def rewrite_request(body: dict, *, model: str | None = None,
                    max_tokens: int | None = None) -> dict:
    """The client's body with only the model and a lower `options.num_predict` changed (set
    when the client gave none: Ollama's default is unbounded); `body` itself when nothing
    changes."""
    out = c.rewrite_body(body, model, None, ())
    options = body.get("options") if isinstance(body.get("options"), dict) else None
    if max_tokens:
        asked = (options or {}).get("num_predict")
        if not isinstance(asked, int) or asked < 0 or asked > max_tokens:
            out = dict(out, options=dict(options or {}, num_predict=max_tokens))
    return out

