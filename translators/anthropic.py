"""Anthropic Messages API <-> canonical model: requests, whole responses and SSE streams.

Decoding accepts everything Claude Code sends (system as a string or text blocks, `role:
system` messages mid-conversation, cache_control anywhere, thinking signatures); request fields
without a canonical slot wait in `Request.extras` as "anthropic:<field>", so Anthropic ->
canonical -> Anthropic gives back an equal request. Choices a reader must know:
- One Text without cache_control is written as a plain string (message content, tool_result
  content, system); Anthropic reads both forms alike. Unknown block keys (citations) are not kept.
- `encode_request` drops thinking without a signature (another provider's reasoning): Anthropic
  rejects unsigned thinking with a 400.
- A ToolUse with `raw_arguments` (argument text that was not a JSON object) is written with input
  `{"_raw_arguments": "<text>"}`, so the model and client see what was produced and the tool's
  schema check fails visibly rather than a tool running without arguments; decoding reverses it.
- Anthropic rejects empty text blocks and empty messages: `encode_request` leaves out empty Text
  parts (a Chat assistant turn's `"content": ""` beside its tool_calls) and messages left with no
  content, and sends tool_choice only with tools. It needs at least one message: a request of
  only a system prompt (or leading system messages) sends it as the user turn; one with no content at all
  is a TranslationError.
- A mid-conversation system message is sent as `role: system` only to a client that sent it so
  (Claude Code, with its mid-conversation-system beta; decode_request marks such requests in
  extras). From any other client (a Chat system or developer message) it becomes user text in
  `<system-reminder>` tags, Claude Code's own convention, merged into the neighbouring user turn
  (after its tool_results, which Anthropic wants first), so roles still alternate.
- Anthropic has no response_format: a JSON answer is asked for as a forced call of a tool
  (canonical.answer_tool) whose input is the answer; canonical.AnswerShape makes it text again.
- Documents (PDF by base64 or URL, plain text) map to canonical Document parts and back.
- Anthropic requires max_tokens: without one, DEFAULT_MAX_TOKENS (above any thinking budget).
- Canonical stop reason "error" is sent as "end_turn"; Anthropic's
  "model_context_window_exceeded" is read as "max_tokens", unknown ones as "end_turn".
"""

import dataclasses
import json
from typing import Any

from . import canonical as c
from .canonical import dumps_compact, fail, need
from .sse import SSEParser

NAME = "anthropic"
STREAM_CONTENT_TYPE = "text/event-stream; charset=utf-8"
JSON_CONTENT_TYPE = "application/json"
EXTRAS_PREFIX = "anthropic:"
MESSAGE_ID_PREFIX = "msg_"
USER_FIELD = "metadata.user_id"
# Every current Claude model (4.x) allows 32000 output tokens; 4096 would cut coding answers.
DEFAULT_MAX_TOKENS = 32000

_P = EXTRAS_PREFIX
# Not top-level fields (a "/" cannot be in one): where custom tools' extra keys and server
# tools wait for encode_request, and the mark of a client that sends role=system messages.
_TOOL_FIELDS, _SERVER_TOOLS = _P + "tools/fields", _P + "tools/server"
_SYSTEM_MESSAGES = _P + "messages/system"
_KNOWN_FIELDS = frozenset({
    "model", "messages", "system", "tools", "tool_choice", "max_tokens", "temperature", "top_p",
    "top_k", "stop_sequences", "stream", "thinking", "output_config", "metadata",
})
_TOOL_KEYS = frozenset({"name", "description", "input_schema", "cache_control"})
_STOP_REASONS = frozenset(
    {"end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn"})
_RAW_ARGS = "_raw_arguments"


# ---------------------------------------------------------------- validation helpers
def _get(d: dict, key: str, t: type, path: str, optional: bool = False) -> Any:
    return need(d.get(key), t, f"{path}.{key}" if path else key, optional)


def _cache(block: dict, path: str) -> dict | None:
    return _get(block, "cache_control", dict, path, True)


def _with_cache(block: dict, cc: dict | None) -> dict:
    if cc is not None:
        block["cache_control"] = cc
    return block


# ---------------------------------------------------------------- requests: decode
def decode_request(body: dict) -> c.Request:
    """An Anthropic Messages request body -> canonical; TranslationError names a bad field."""
    need(body, dict, "")
    model, msgs = body.get("model"), body.get("messages")
    if not isinstance(model, str) or not model:
        fail("required: a non-empty string", "model")
    if not isinstance(msgs, list) or not msgs:
        fail("required: a non-empty list", "messages")
    messages = tuple(_decode_message(m, f"messages[{i}]") for i, m in enumerate(msgs))
    extras: dict[str, Any] = {}
    tools = _decode_tools(body.get("tools"), extras)
    max_tokens = _get(body, "max_tokens", int, "", True)
    if max_tokens is not None and max_tokens < 1:
        fail("must be a positive integer", "max_tokens")
    stop = _get(body, "stop_sequences", list, "", True) or ()
    stop = tuple(need(s, str, f"stop_sequences[{i}]") for i, s in enumerate(stop))
    stream = _get(body, "stream", bool, "", True)
    # output_config.effort and metadata.user_id have slots; their siblings wait in extras
    slots: dict[str, str | None] = {}
    for name, key in (("output_config", "effort"), ("metadata", "user_id")):
        if (d := _get(body, name, dict, "", True)) is not None:
            value = slots[name] = _get(d, key, str, name, True)
            rest = {k: v for k, v in d.items() if k != key or value is None}
            if rest or value is None:
                extras[_P + name] = rest
    for k, v in body.items():
        if k not in _KNOWN_FIELDS:
            extras[_P + k] = v
    if any(m.role == "system" for m in messages):
        extras[_SYSTEM_MESSAGES] = True
    system = body.get("system")
    return c.Request(
        model=model, messages=messages,
        system=() if system is None else _decode_content(system, "system", ("text",)),
        tools=tools, tool_choice=_decode_tool_choice(body.get("tool_choice")),
        max_tokens=max_tokens, temperature=_get(body, "temperature", c.NUMBER, "", True),
        top_p=_get(body, "top_p", c.NUMBER, "", True), top_k=_get(body, "top_k", int, "", True),
        stop=stop, stream=bool(stream), thinking=_get(body, "thinking", dict, "", True),
        reasoning_effort=slots.get("output_config"), user=slots.get("metadata"), extras=extras)


def _decode_message(m: Any, path: str) -> c.Message:
    role = need(m, dict, path).get("role")
    if role not in ("user", "assistant", "system"):
        fail(f"must be user, assistant or system, not {role!r}", path + ".role")
    return c.Message(role, _decode_content(m.get("content"), path + ".content"))


def _decode_content(content: Any, path: str, only: tuple[str, ...] = ()) -> tuple:
    """A string or a list of blocks; `only` restricts the block types allowed."""
    if isinstance(content, str):
        return (c.Text(content),)
    if not isinstance(content, list):
        fail("must be a string or a list of content blocks", path)
    for i, b in enumerate(content if only else ()):
        if isinstance(b, dict) and b.get("type") not in only:
            fail(f"only {', '.join(only)} blocks are allowed here", f"{path}[{i}].type")
    return tuple(_decode_block(b, f"{path}[{i}]") for i, b in enumerate(content))


def _decode_block(b: Any, path: str) -> c.Part:
    t = need(b, dict, path).get("type")
    if t == "text":
        return c.Text(_get(b, "text", str, path), _cache(b, path))
    if t == "image":
        src = _get(b, "source", dict, path)
        kind = src.get("type")
        if kind == "base64":
            return c.Image(media_type=_get(src, "media_type", str, path + ".source"),
                           data=_get(src, "data", str, path + ".source"),
                           cache_control=_cache(b, path))
        if kind == "url":
            return c.Image(url=_get(src, "url", str, path + ".source"),
                           cache_control=_cache(b, path))
        fail(f"unsupported image source type {kind!r}", path + ".source.type")
    if t == "document":
        return _decode_document(b, path)
    if t == "tool_use":
        inp = _get(b, "input", dict, path)
        raw = inp.get(_RAW_ARGS)
        if isinstance(raw, str):  # our own encoding of non-JSON arguments, see the docstring
            inp = {k: v for k, v in inp.items() if k != _RAW_ARGS}
        return c.ToolUse(_get(b, "id", str, path), _get(b, "name", str, path), inp,
                         raw if isinstance(raw, str) else None, _cache(b, path))
    if t == "tool_result":
        if not _get(b, "tool_use_id", str, path):
            fail("must not be empty", path + ".tool_use_id")
        content = b.get("content")
        parts = () if content is None else _decode_content(content, path + ".content",
                                                           ("text", "image"))
        return c.ToolResult(b["tool_use_id"], parts, bool(_get(b, "is_error", bool, path, True)),
                            _cache(b, path))
    if t == "thinking":
        return c.Thinking(_get(b, "thinking", str, path),
                          signature=_get(b, "signature", str, path, True) or None)
    if t == "redacted_thinking":
        return c.Thinking("", redacted=_get(b, "data", str, path))
    fail(f"unknown content block type {t!r}", path + ".type")


def _decode_document(b: dict, path: str) -> c.Document:
    src = _get(b, "source", dict, path)
    kind, sp = src.get("type"), path + ".source"
    meta = {"title": _get(b, "title", str, path, True), "context": _get(b, "context", str, path, True),
            "citations": _get(b, "citations", dict, path, True), "cache_control": _cache(b, path)}
    if kind == "base64":
        return c.Document(media_type=_get(src, "media_type", str, sp),
                          data=_get(src, "data", str, sp), **meta)
    if kind == "url":
        return c.Document(url=_get(src, "url", str, sp), **meta)
    if kind == "text":
        return c.Document(media_type=_get(src, "media_type", str, sp, True),
                          text=_get(src, "data", str, sp), **meta)
    fail(f"unsupported document source type {kind!r}", sp + ".type")


def _encode_document(d: c.Document) -> dict:
    if d.data is not None:
        source = {"type": "base64", "media_type": d.media_type or "application/pdf",
                  "data": d.data}
    elif d.url is not None:
        source = {"type": "url", "url": d.url}
    else:
        source = {"type": "text", "media_type": d.media_type or "text/plain", "data": d.text}
    block = {"type": "document", "source": source}
    for key in ("title", "context", "citations"):
        if (value := getattr(d, key)) is not None:
            block[key] = value
    return _with_cache(block, d.cache_control)


def _decode_tools(tools: Any, extras: dict) -> tuple[c.Tool, ...]:
    out, fields, server = [], {}, []
    for i, t in enumerate(need(tools, list, "tools", True) or ()):
        path = f"tools[{i}]"
        if need(t, dict, path).get("type", "custom") not in ("custom", None):
            server.append([i, t])  # server tools (web_search_..., bash_...): no canonical form
            continue
        name = _get(t, "name", str, path)
        out.append(c.Tool(name, _get(t, "description", str, path, True),
                          _get(t, "input_schema", dict, path), _cache(t, path)))
        if extra := {k: v for k, v in t.items() if k not in _TOOL_KEYS}:
            fields[name] = extra  # type: custom, defer_loading, strict, input_examples, ...
    if fields:
        extras[_TOOL_FIELDS] = fields
    if server:
        extras[_SERVER_TOOLS] = server
    return tuple(out)


def _decode_tool_choice(tc: Any) -> c.ToolChoice | None:
    if tc is None:
        return None
    mode = need(tc, dict, "tool_choice").get("type")
    if mode not in ("auto", "any", "none", "tool"):
        fail(f"must be auto, any, none or tool, not {mode!r}", "tool_choice.type")
    name = _get(tc, "name", str, "tool_choice") if mode == "tool" else None
    disable = _get(tc, "disable_parallel_tool_use", bool, "tool_choice", True)
    return c.ToolChoice(mode, name, None if disable is None else not disable)


# ---------------------------------------------------------------- requests: encode
def encode_request(req: c.Request, default_max_tokens: int = DEFAULT_MAX_TOKENS) -> dict:
    """Canonical -> an Anthropic Messages request body."""
    system = [_encode_part(t) for t in req.system if t.text]
    messages = list(req.messages)
    # System messages before the first turn belong in `system`: a leading role=system message
    # is not what the mid-conversation-system beta is for.
    # Turns with nothing to send are left out, so a system message after only such turns is
    # leading too (else a second pass would move it, and a round trip would not be stable).
    leading: list[dict] = []
    while messages:
        m = messages[0]
        if m.role == "system" and all(type(p) is c.Text for p in m.parts):
            leading.extend(_encode_part(t) for t in m.parts if t.text)
        elif any(_sendable(p) for p in m.parts):
            break
        messages.pop(0)
    turns = _encode_messages(messages, len(req.messages) - len(messages),
                             _SYSTEM_MESSAGES in req.extras)
    system += leading
    if not turns:
        if not system:
            fail("no message with content: Anthropic needs at least one", "messages")
        # only a system prompt (a Chat client may send just that): Anthropic needs a user
        # turn, and the instruction reaches the model as one
        turns, system = [{"role": "user", "content": _content_value(system)}], []
    out: dict[str, Any] = {"model": req.model, "messages": turns}
    if system:
        out["system"] = _content_value(system)
    if (answer := c.answer_tool(req)) is not None:
        req = _with_answer_tool(req, answer)
    if req.tools or _SERVER_TOOLS in req.extras:
        out["tools"] = _encode_tools(req)
        if (tc := req.tool_choice) is not None:  # Anthropic rejects a tool_choice without tools
            choice: dict[str, Any] = {"type": tc.mode}
            if tc.mode == "tool":
                choice["name"] = tc.name
            if tc.parallel is not None:
                choice["disable_parallel_tool_use"] = not tc.parallel
            out["tool_choice"] = choice
    max_tokens = req.max_tokens
    if max_tokens is None:
        budget = (req.thinking or {}).get("budget_tokens")
        max_tokens = default_max_tokens
        if isinstance(budget, int) and budget >= max_tokens:  # must exceed the budget
            max_tokens = budget + 4096
    out["max_tokens"] = max_tokens
    for key, value in (("temperature", req.temperature), ("top_p", req.top_p),
                       ("top_k", req.top_k), ("stop_sequences", list(req.stop) or None),
                       ("stream", req.stream or None), ("thinking", req.thinking)):
        if value is not None:
            out[key] = value
    for name, key, value in (("output_config", "effort", req.reasoning_effort),
                             ("metadata", "user_id", req.user)):
        if value is not None or _P + name in req.extras:  # siblings kept by decode_request
            out[name] = dict(req.extras.get(_P + name, {}))
            if value is not None:
                out[name][key] = value
    for key, value in req.extras.items():
        if key.startswith(_P) and "/" not in key:
            out.setdefault(key[len(_P):], value)
    return out


def _with_answer_tool(req: c.Request, answer: c.Tool) -> c.Request:
    """Anthropic has no response_format: the answer comes as a forced call of `answer` (which
    AnswerShape turns back into text). With tools of the client's own, any tool call will do,
    so the model can still use them; a tool the client forced stays forced."""
    choice = req.tool_choice
    mode = choice.mode if choice is not None else "auto"
    if not req.tools or mode == "none":
        choice = c.ToolChoice("tool", answer.name)
    elif mode == "auto":
        choice = c.ToolChoice("any", parallel=choice.parallel if choice is not None else None)
    return dataclasses.replace(req, tools=(*req.tools, answer), tool_choice=choice)


def _sendable(p: c.Part) -> bool:
    """Anthropic rejects empty text blocks, and thinking without a signature (another provider's
    reasoning)."""
    t = type(p)
    if t is c.Text:
        return bool(p.text)
    return t is not c.Thinking or p.redacted is not None or bool(p.signature)


def _encode_messages(messages: list[c.Message], offset: int, keep_system: bool) -> list[dict]:
    """The `messages` list; `offset` is the index of messages[0] in the request (for errors)."""
    turns: list[tuple[str, list[dict]]] = []  # role ("reminder": a system message to place)
    for i, m in enumerate(messages, offset):
        if m.role == "system" and not keep_system:
            if reminder := _system_reminder(m, f"messages[{i}]"):
                turns.append(("reminder", [reminder]))
        elif blocks := [_encode_part(p) for p in m.parts if _sendable(p)]:
            turns.append((m.role, blocks))  # a message left with nothing is left out
    out: list[dict] = []
    for k, (role, blocks) in enumerate(turns):
        if role == "reminder":
            if out and out[-1]["role"] == "user":  # at the end of the user turn before it
                out[-1]["content"] += blocks
                continue
            if k + 1 < len(turns) and turns[k + 1][0] == "user":  # or at the start of the next,
                after = turns[k + 1][1]  # after its tool_results (Anthropic wants those first)
                at = next((j for j, b in enumerate(after) if b["type"] != "tool_result"),
                          len(after))
                after[at:at] = blocks
                continue
            role = "user"  # between two assistant turns: a user turn of its own
        out.append({"role": role, "content": blocks})
    for m in out:
        m["content"] = _content_value(m["content"])
    return out


def _system_reminder(m: c.Message, path: str) -> dict | None:
    """A system message as a user turn's text block (None when it holds no text)."""
    if any(type(p) is not c.Text for p in m.parts):
        fail("a system message can only carry text", path)
    texts = [p for p in m.parts if p.text]
    if not texts:
        return None
    body = "\n\n".join(p.text for p in texts)
    return _with_cache({"type": "text", "text": f"<system-reminder>\n{body}\n</system-reminder>"},
                       texts[-1].cache_control)


def _content_value(blocks: list[dict]) -> str | list[dict]:
    if len(blocks) == 1 and blocks[0]["type"] == "text" and len(blocks[0]) == 2:
        return blocks[0]["text"]  # one plain text block: the string form
    return blocks


def _encode_part(p: c.Part) -> dict:
    t = type(p)
    if t is c.Text:
        return _with_cache({"type": "text", "text": p.text}, p.cache_control)
    if t is c.ToolUse:
        inp = p.input if p.raw_arguments is None else {**p.input, _RAW_ARGS: p.raw_arguments}
        return _with_cache({"type": "tool_use", "id": p.id, "name": p.name, "input": inp},
                           p.cache_control)
    if t is c.ToolResult:
        block: dict[str, Any] = {"type": "tool_result", "tool_use_id": p.tool_use_id}
        if p.content:
            block["content"] = _content_value([_encode_part(x) for x in p.content])
        block["is_error"] = p.is_error
        return _with_cache(block, p.cache_control)
    if t is c.Thinking:
        if p.redacted is not None:
            return {"type": "redacted_thinking", "data": p.redacted}
        return {"type": "thinking", "thinking": p.text, "signature": p.signature or ""}
    if t is c.Image:
        return _with_cache({"type": "image", "source": _image_source(p)}, p.cache_control)
    if t is c.Document:
        return _encode_document(p)
    raise c.TranslationError(f"cannot encode {t.__name__} as an Anthropic content block")


def _image_source(img: c.Image) -> dict:
    if img.data is not None:
        return {"type": "base64", "media_type": img.media_type or _sniff_media_type(img.data),
                "data": img.data}
    url = img.url
    if url.startswith("data:") and ";base64," in url:  # Anthropic's url source takes no data:
        head, _, data = url.partition(";base64,")
        return {"type": "base64", "media_type": head[5:] or _sniff_media_type(data),
                "data": data}
    return {"type": "url", "url": url}


_MAGIC = (("/9j/", "image/jpeg"), ("R0lGOD", "image/gif"), ("UklGR", "image/webp"))


def _sniff_media_type(data: str) -> str:
    return next((m for prefix, m in _MAGIC if data.startswith(prefix)), "image/png")


def _encode_tools(req: c.Request) -> list[dict]:
    fields = req.extras.get(_TOOL_FIELDS, {})
    out = []
    for t in req.tools:
        tool: dict[str, Any] = {"name": t.name}
        if t.description is not None:
            tool["description"] = t.description
        tool["input_schema"] = t.input_schema
        _with_cache(tool, t.cache_control)
        tool.update(fields.get(t.name, ()))
        out.append(tool)
    for index, tool in req.extras.get(_SERVER_TOOLS, ()):  # back at their original places
        out.insert(index, tool)
    return out


# ---------------------------------------------------------------- whole responses
_USAGE_KEYS = ("input_tokens", "output_tokens", "cache_read_input_tokens",
               "cache_creation_input_tokens")  # in canonical Usage's order
_RESPONSE_PARTS = (c.Text, c.Thinking, c.ToolUse)
_BLOCK_KINDS = frozenset({"text", "thinking", "redacted_thinking", "tool_use"})  # canonical ones


def _usage(u: Any) -> c.Usage:
    """A missing figure counts as 0; one that is not a count (inf, NaN, negative, beyond 2^53, a
    string) is a TranslationError: it would otherwise reach the client and the database."""
    u = u if isinstance(u, dict) else {}
    return c.Usage(*(c.token_count(u.get(key), f"usage.{key}") for key in _USAGE_KEYS))


def _encode_usage(u: c.Usage) -> dict:
    return {"input_tokens": u.input_tokens, "cache_creation_input_tokens": u.cache_write_tokens,
            "cache_read_input_tokens": u.cache_read_tokens, "output_tokens": u.output_tokens}


def _stop_reason(v: Any) -> c.StopReason | None:
    if v is None or v in _STOP_REASONS:
        return v
    return "max_tokens" if v == "model_context_window_exceeded" else "end_turn"


def _encode_stop_reason(v: c.StopReason | None) -> str | None:
    return "end_turn" if v == "error" else v


def decode_response(body: dict) -> c.Response:
    """A non-streamed Anthropic Messages response -> canonical. Blocks without a canonical kind
    (server_tool_use, web_search_tool_result, ...) are skipped, as StreamDecoder skips them."""
    content = _get(need(body, dict, ""), "content", list, "")
    return c.Response(
        _get(body, "id", str, ""), _get(body, "model", str, ""),
        tuple(_decode_block(b, f"content[{i}]") for i, b in enumerate(content)
              if not (isinstance(b, dict) and isinstance(b.get("type"), str)
                      and b["type"] not in _BLOCK_KINDS)),
        _stop_reason(_get(body, "stop_reason", str, "", True)), _usage(body.get("usage")),
        _get(body, "stop_sequence", str, "", True))


def encode_response(resp: c.Response) -> dict:
    """Canonical -> a non-streamed Anthropic Messages response."""
    if any(type(p) not in _RESPONSE_PARTS for p in resp.parts):
        raise c.TranslationError("a response holds only text, thinking and tool_use blocks")
    return {"id": resp.id, "type": "message", "role": "assistant", "model": resp.model,
            "content": [_encode_part(p) for p in resp.parts],
            "stop_reason": _encode_stop_reason(resp.stop_reason),
            "stop_sequence": resp.stop_sequence, "usage": _encode_usage(resp.usage)}


# ---------------------------------------------------------------- streams: decode
_DELTAS = {"text_delta": (c.TextDelta, "text"), "thinking_delta": (c.ThinkingDelta, "thinking"),
           "input_json_delta": (c.ToolInputDelta, "partial_json"),
           "signature_delta": (c.SignatureDelta, "signature")}


def _s(v: Any) -> str:
    return need(v, str, "a stream event field")


class StreamDecoder:
    """Anthropic SSE bytes -> canonical events, whatever the chunk boundaries.

    What it emits always satisfies StreamGrammar: an upstream that breaks the grammar, sends
    bad JSON or ends early yields one StreamError and nothing after it. Blocks without a
    canonical kind (server_tool_use, web_search_tool_result, ...) are skipped and later blocks
    renumbered, since canonical indexes must run 0, 1, 2, ...
    """

    __slots__ = ("_sse", "_grammar", "_index", "_skipped", "_finished", "usage")

    def __init__(self):
        self._sse = SSEParser()
        self._grammar = c.StreamGrammar()
        self._index: dict[int, int] = {}  # upstream block index -> canonical index
        self._skipped: set[int] = set()
        self._finished = False  # message_stop or an error emitted: the rest is ignored
        self.usage = c.Usage()

    def feed(self, chunk: bytes) -> list[c.Event]:
        return [] if self._finished else self._run(self._sse.feed(chunk))

    def close(self) -> list[c.Event]:
        out = [] if self._finished else self._run(self._sse.close())
        if not self._finished:
            self._error(out, "upstream stream ended before message_stop")
        return out

    def _run(self, sse_events) -> list[c.Event]:
        out: list[c.Event] = []
        for ev in sse_events:
            self._handle(ev.event, ev.data, out)
            if self._finished:
                break
        return out

    def _error(self, out: list, message: str, kind: str = "api_error") -> None:
        out.append(c.StreamError(kind, message))
        self._finished = True

    def _emit(self, out: list, event: c.Event) -> None:
        self._grammar.check(event)
        out.append(event)

    def _handle(self, name: str, data: str, out: list) -> None:
        try:
            payload = json.loads(data) if data else {}
        except (ValueError, RecursionError):  # RecursionError: nested too deeply for json
            return self._error(out, f"malformed JSON in upstream {name or 'SSE'} event")
        if not isinstance(payload, dict):
            return self._error(out, f"upstream {name or 'SSE'} event is not a JSON object")
        kind = payload.get("type") or name
        try:
            self._dispatch(kind, payload, out)
        except c.StreamProtocolError as e:
            self._error(out, f"upstream stream out of order: {e.reason}")
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            self._error(out, f"malformed upstream {kind} event: {e!r}")

    def _dispatch(self, kind: str, p: dict, out: list) -> None:
        if kind == "content_block_delta":  # the common case first
            idx = p["index"]
            if idx in self._skipped:
                return
            i, d = self._index[idx], p["delta"]
            # citations_delta and delta types added later carry nothing canonical
            if (known := _DELTAS.get(d["type"])) is not None:
                self._emit(out, known[0](i, _s(d[known[1]])))
        elif kind == "content_block_start":
            self._block_start(p["index"], p["content_block"], out)
        elif kind == "content_block_stop":
            idx = p["index"]
            if idx not in self._skipped:
                self._emit(out, c.BlockStop(self._index[idx]))
        elif kind == "ping":
            if self._grammar.state is not c.StreamState.IDLE:
                self._emit(out, c.Ping())
        elif kind == "message_start":
            msg = p["message"]
            usage = _usage(msg.get("usage"))
            self.usage = self.usage.merge(usage)
            self._emit(out, c.MessageStart(_s(msg.get("id") or ""), _s(msg.get("model") or ""),
                                           usage))
        elif kind == "message_delta":
            delta = p.get("delta") or {}
            self.usage = self.usage.merge(_usage(p.get("usage")))
            seq = delta.get("stop_sequence")
            self._emit(out, c.MessageDelta(_stop_reason(delta.get("stop_reason")), self.usage,
                                           None if seq is None else _s(seq)))
        elif kind == "message_stop":
            self._emit(out, c.MessageStop())
            self._finished = True
        elif kind == "error":
            err = p.get("error") or {}
            self._error(out, str(err.get("message") or "upstream error"),
                        str(err.get("type") or "api_error"))
        # other event types: Anthropic may add new ones; clients are told to ignore them

    def _block_start(self, idx: Any, block: dict, out: list) -> None:
        if not isinstance(idx, int) or idx in self._index or idx in self._skipped:
            raise ValueError(f"block index {idx!r} repeated or not an integer")
        bt = block["type"]
        if bt not in _BLOCK_KINDS:
            self._skipped.add(idx)
            return
        i = self._index[idx] = len(self._index)
        if bt == "tool_use":
            self._emit(out, c.BlockStart(i, bt, tool_id=_s(block["id"]),
                                         tool_name=_s(block["name"])))
            if inp := block.get("input"):  # always {} when streamed; kept if not
                self._emit(out, c.ToolInputDelta(i, dumps_compact(inp).decode()))
        elif bt == "redacted_thinking":
            self._emit(out, c.BlockStart(i, bt, redacted=_s(block["data"])))
        else:
            self._emit(out, c.BlockStart(i, bt))
            if text := block.get(bt):  # "text" / "thinking" start empty; kept if not
                self._emit(out, (c.TextDelta if bt == "text" else c.ThinkingDelta)(i, _s(text)))
            if bt == "thinking" and (sig := block.get("signature")):
                self._emit(out, c.SignatureDelta(i, _s(sig)))


def is_error_event(name: str, data: str) -> bool:
    """An Anthropic in-stream error event (`event: error`, `{"type": "error", "error": {...}}`):
    well-formed, a client reads it as the end of the stream (passed on as it is)."""
    try:
        payload = json.loads(data)
    except (ValueError, RecursionError):
        return False
    return isinstance(payload, dict) and (payload.get("type") or name) == "error"


def may_follow_stop(name: str, data: str) -> bool:
    """Nothing follows message_stop."""
    return False


# ---------------------------------------------------------------- sniffing and same-format


# top-level fields only Chat sends; content block types only Anthropic has
_CHAT_ONLY = frozenset({"max_completion_tokens", "stream_options", "response_format", "n",
                        "logprobs", "presence_penalty", "frequency_penalty", "seed",
                        "parallel_tool_calls"})
_OWN_BLOCKS = frozenset({"tool_use", "tool_result", "thinking", "redacted_thinking", "document"})
_EVENT_NAMES = (b"message_start", b"ping", b"error", b"content_block_start")


def sniff_request(body: object) -> bool:
    """A Messages request by its marks: `messages` beside `max_tokens` (required here), a
    top-level `system` or Anthropic's own block types, and nothing only Chat sends."""
    if not isinstance(body, dict) or not isinstance(messages := body.get("messages"), list):
        return False
    if not _CHAT_ONLY.isdisjoint(body):
        return False
    own = "max_tokens" in body or "system" in body
    for m in messages:
        if not isinstance(m, dict) or m.get("role") in ("tool", "developer") or "tool_calls" in m:
            return False
        content = m.get("content")
        if isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") in _OWN_BLOCKS for b in content):
            own = True
    return own


def sniff_stream(head: bytes) -> bool:
    """Anthropic streams name their events: `event: message_start` (or an error) first."""
    head = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    if not head.startswith(b"event:"):
        return False
    name = head[6:].lstrip(b" ").split(b"\n", 1)[0].strip()
    return name in _EVENT_NAMES


def rewrite_request(body: dict, *, model: str | None = None,
                    max_tokens: int | None = None) -> dict:
    """The client's Messages body with only the model and a lower max_tokens changed (`body`
    itself when neither changes): what a same-format provider is sent."""
    return c.rewrite_body(body, model, max_tokens, ("max_tokens",))


def client_stream_encoder(body: dict) -> "StreamEncoder":
    """Every Messages client gets the same stream."""
    return StreamEncoder()


# ---------------------------------------------------------------- streams: encode
def _event(name: str, payload: dict) -> bytes:
    return b"event: %s\ndata: %s\n\n" % (name.encode(), dumps_compact(payload))


def _delta(index: int, kind: bytes, field: bytes, value: str) -> bytes:
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"%s","%s":%s}}\n\n' % (index, kind, field, dumps_compact(value)))


_EMPTY_BLOCKS = {"text": {"type": "text", "text": ""},
                 "thinking": {"type": "thinking", "thinking": "", "signature": ""}}


def _block_start(ev: c.BlockStart) -> bytes:
    if ev.kind == "tool_use":
        if not ev.tool_id or not ev.tool_name:
            raise c.StreamProtocolError(f"tool_use block {ev.index} without tool_id or name")
        block = {"type": "tool_use", "id": ev.tool_id, "name": ev.tool_name, "input": {}}
    elif ev.kind == "redacted_thinking":
        block = {"type": "redacted_thinking", "data": ev.redacted or ""}
    else:
        block = _EMPTY_BLOCKS[ev.kind]
    return _event("content_block_start",
                  {"type": "content_block_start", "index": ev.index, "content_block": block})


_ENCODERS = {
    c.TextDelta: lambda ev: _delta(ev.index, b"text_delta", b"text", ev.text),
    c.ToolInputDelta: lambda ev: _delta(ev.index, b"input_json_delta", b"partial_json",
                                        ev.partial_json),
    c.ThinkingDelta: lambda ev: _delta(ev.index, b"thinking_delta", b"thinking", ev.text),
    c.SignatureDelta: lambda ev: _delta(ev.index, b"signature_delta", b"signature",
                                        ev.signature),
    c.BlockStart: _block_start,
    c.BlockStop: lambda ev: (b'event: content_block_stop\ndata: {"type":"content_block_stop",'
                             b'"index":%d}\n\n' % ev.index),
    c.Ping: lambda ev: b'event: ping\ndata: {"type":"ping"}\n\n',
    c.MessageStart: lambda ev: _event("message_start", {"type": "message_start", "message": {
        "id": ev.id, "type": "message", "role": "assistant", "model": ev.model, "content": [],
        "stop_reason": None, "stop_sequence": None, "usage": _encode_usage(ev.usage)}}),
    # Anthropic sends the cumulative usage here (Claude Code's status line reads it)
    c.MessageDelta: lambda ev: _event("message_delta", {
        "type": "message_delta",
        "delta": {"stop_reason": _encode_stop_reason(ev.stop_reason),
                  "stop_sequence": ev.stop_sequence},
        "usage": _encode_usage(ev.usage)}),
    c.MessageStop: lambda ev: b'event: message_stop\ndata: {"type":"message_stop"}\n\n',
    c.StreamError: lambda ev: _event("error", _error_object(ev.kind, ev.message)),
}


class StreamEncoder(c.EventEncoder):
    """Canonical events -> Anthropic SSE bytes. Every event is checked against StreamGrammar
    first: an illegal order raises StreamProtocolError instead of reaching the client."""

    __slots__ = ("_grammar",)

    def __init__(self):
        self._grammar = c.StreamGrammar()

    def encode(self, event: c.Event) -> bytes:
        self._grammar.check(event)
        return _ENCODERS[type(event)](event)


# ---------------------------------------------------------------- errors
def _error_object(kind: str, message: str) -> dict:
    return {"type": "error", "error": {"type": kind, "message": message}}


def error_body(status: int, message: str, kind: str | None = None) -> bytes:
    """An Anthropic error body; `kind` defaults from the status (canonical.error_kind)."""
    return dumps_compact(_error_object(kind or c.error_kind(status), message))
