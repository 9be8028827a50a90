"""OpenAI Chat Completions <-> canonical: requests, whole responses and streams, both directions.

Spoken by OpenAI, DeepSeek, OpenRouter, Qwen/DashScope and most "OpenAI-compatible" servers.
Pure: bytes and dicts in, canonical objects out, and back.

A document is sent as a `file` part (PDF, inline or by URL) or as text. Requests asking what the
canonical model cannot answer (n > 1, logprobs) are a TranslationError, not answered without.
Chat cannot carry, so encoding drops: Anthropic thinking signatures and redacted thinking,
ToolResult.is_error, top_k, the Anthropic `thinking` object, and (unless `content_parts=True`)
cache markers. Canonical cannot carry, so decoding drops: image `detail`, a message's `name`,
a function's `strict`, and the system/developer distinction (both become system).
"""

import enum
import json
import time
from dataclasses import dataclass, field

from translators import canonical as c
from translators.canonical import dumps_compact, fail, need
from translators.sse import SSEDecoder, SSEParser

NAME = "openai-chat"
STREAM_CONTENT_TYPE = "text/event-stream"
JSON_CONTENT_TYPE = "application/json"
EXTRAS_PREFIX = "openai_chat:"  # our keys in Request.extras
MESSAGE_ID_PREFIX = "chatcmpl-"
USER_FIELD = "user"
_EXTRA = EXTRAS_PREFIX


FINISH_TO_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
                  "function_call": "tool_use", "content_filter": "refusal"}
STOP_TO_FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
                  "tool_use": "tool_calls", "refusal": "content_filter"}


def _stop_reason(finish, has_tool_calls: bool) -> c.StopReason | None:
    if finish is None:
        return None
    reason = FINISH_TO_STOP.get(finish, "end_turn")
    # Some servers answer tool calls with finish_reason "stop"; a client told end_turn would
    # not run the tools (claude-code-router #129).
    return "tool_use" if has_tool_calls and reason == "end_turn" else reason


# ---------------------------------------------------------------- usage


def decode_usage(usage) -> c.Usage:
    """Chat usage -> canonical (Anthropic accounting: input excludes cached tokens). A figure
    that is not a count (inf, NaN, negative, beyond 2^53, a string) is a TranslationError."""
    if not isinstance(usage, dict):
        return c.Usage()
    details = usage.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    completion = usage.get("completion_tokens_details")
    completion = completion if isinstance(completion, dict) else {}

    def count(where: dict, key: str, path: str = "usage.") -> int:
        return c.token_count(where.get(key), path + key)

    # OpenAI, xAI, DashScope: prompt_tokens_details.cached_tokens; DeepSeek: prompt_cache_hit_tokens
    read = (count(details, "cached_tokens", "usage.prompt_tokens_details.")
            or count(usage, "prompt_cache_hit_tokens"))
    # OpenRouter: cache_write_tokens; DashScope explicit cache: cache_creation_input_tokens
    write = (count(details, "cache_write_tokens", "usage.prompt_tokens_details.")
             or count(details, "cache_creation_input_tokens", "usage.prompt_tokens_details."))
    reasoning = count(completion, "reasoning_tokens", "usage.completion_tokens_details.")
    prompt = count(usage, "prompt_tokens")
    return c.Usage(max(prompt - read - write, 0), count(usage, "completion_tokens"),
                   read, write, reasoning)


def encode_usage(usage: c.Usage) -> dict:
    details = {"cached_tokens": usage.cache_read_tokens}
    if usage.cache_write_tokens:
        details["cache_write_tokens"] = usage.cache_write_tokens
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.output_tokens,
            "total_tokens": usage.prompt_tokens + usage.output_tokens,
            "prompt_tokens_details": details,
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


# ---------------------------------------------------------------- request: Chat -> canonical

_REQUEST_FIELDS = frozenset({
    "model", "messages", "tools", "tool_choice", "parallel_tool_calls", "max_tokens",
    "max_completion_tokens", "temperature", "top_p", "stop", "stream", "stream_options",
    "reasoning_effort", "user", "response_format"})
# their values that the canonical model answers as asked (n=1, no logprobs): not extras
_ONE_CHOICE = frozenset({"n", "logprobs", "top_logprobs"})
_TOOL_CHOICE_MODES = {"auto": "auto", "none": "none", "required": "any"}


def _name(value, path: str) -> str:
    if not isinstance(value, str) or not value:
        fail("must be a non-empty string", path)
    return value


def _part(content: list, i: int, path: str, allowed: frozenset):
    p = f"{path}[{i}]"
    part = content[i]
    kind = part.get("type") if isinstance(part, dict) else None
    if not isinstance(kind, str) or kind not in allowed:  # a list would not even hash
        fail(f"unsupported content part type {kind!r}", p)
    cache = need(part.get("cache_control"), dict, p + ".cache_control", optional=True)
    if kind == "file":
        return _file_part(need(part.get("file"), dict, p + ".file"), p + ".file", cache)
    if kind != "image_url":  # {"type": "text", "text": ...} or {"type": "refusal", "refusal": ...}
        return c.Text(need(part.get(kind), str, f"{p}.{kind}"), cache)
    url = part.get("image_url")
    url = need(url.get("url") if isinstance(url, dict) else url, str, p + ".image_url.url")
    if url.startswith("data:"):
        header, sep, data = url[5:].partition(",")
        if sep and header.endswith(";base64"):
            return c.Image(media_type=header[:-7] or None, data=data, cache_control=cache)
    return c.Image(url=url, cache_control=cache)


def _file_part(f: dict, path: str, cache: dict | None) -> c.Document:
    if f.get("file_id") is not None:
        fail("a file_id names a file stored at OpenAI: no other provider can read it", path)
    data = need(f.get("file_data"), str, path + ".file_data")
    title = need(f.get("filename"), str, path + ".filename", optional=True)
    header, sep, payload = data.partition(",")
    if data.startswith("data:") and sep and header.endswith(";base64"):
        return c.Document(media_type=header[5:-7] or "application/pdf", data=payload,
                          title=title, cache_control=cache)
    return c.Document(url=data, title=title, cache_control=cache)


def _parts(content, path: str, allowed: frozenset) -> tuple:
    """A content string or array -> Text/Image parts; `allowed` names the part types."""
    if isinstance(content, str):
        return (c.Text(content),)
    if not isinstance(content, list):
        fail("must be a string or an array of content parts", path)
    return tuple(_part(content, i, path, allowed) for i in range(len(content)))


_TEXT = frozenset({"text"})
_USER = frozenset({"text", "image_url", "file"})
_ASSISTANT = frozenset({"text", "refusal"})


def _tool_call(call, path: str) -> c.ToolUse:
    need(call, dict, path)
    if call.get("type", "function") != "function":
        fail(f"unsupported tool call type {call.get('type')!r}", path + ".type")
    ident = need(call.get("id"), str, path + ".id")
    fn = need(call.get("function"), dict, path + ".function")
    name, args = _name(fn.get("name"), path + ".function.name"), fn.get("arguments")
    if isinstance(args, dict):  # some clients send the object itself
        return c.ToolUse(ident, name, args)
    need(args, str, path + ".function.arguments", optional=True)
    return c.tool_use_from_arguments(ident, name, args or "")


def _assistant_parts(m: dict, path: str) -> tuple:
    parts: list = []
    reasoning = m.get("reasoning_content")  # DeepSeek, Qwen
    if reasoning is None:
        reasoning = m.get("reasoning")  # OpenRouter, vLLM
    if reasoning is not None:
        parts.append(c.Thinking(need(reasoning, str, path + ".reasoning_content")))
    if m.get("content") is not None:
        parts += _parts(m["content"], path + ".content", _ASSISTANT)
    if isinstance(m.get("refusal"), str) and m["refusal"]:
        parts.append(c.Text(m["refusal"]))
    if m.get("function_call") is not None:
        fail("the legacy function_call is not supported; use tool_calls", path + ".function_call")
    calls = need(m.get("tool_calls"), list, path + ".tool_calls", optional=True) or ()
    parts += [_tool_call(call, f"{path}.tool_calls[{i}]") for i, call in enumerate(calls)]
    return tuple(parts)


def _decode_messages(messages: list) -> tuple[list, list]:
    system: list[c.Text] = []
    out: list[c.Message] = []
    results: list | None = None  # the ToolResults of a run of consecutive tool messages
    for i, m in enumerate(messages):
        path = f"messages[{i}]"
        role = need(m, dict, path).get("role")
        if role == "tool":
            call_id = need(m.get("tool_call_id"), str, path + ".tool_call_id")
            content = m.get("content")
            content = () if content in (None, "") else _parts(content, path + ".content", _USER)
            if results is None:
                results = []
                out.append(c.Message("user", ()))
            results.append(c.ToolResult(call_id, content))
            out[-1] = c.Message("user", tuple(results))
            continue
        results = None
        if role in ("system", "developer"):
            texts = _parts(m.get("content"), path + ".content", _TEXT)
            if out:
                out.append(c.Message("system", texts))
            else:
                system += texts  # leading system messages are the request's system prompt
        elif role == "user":
            out.append(c.Message("user", _parts(m.get("content"), path + ".content", _USER)))
        elif role == "assistant":
            out.append(c.Message("assistant", _assistant_parts(m, path)))
        else:
            fail(f"unsupported role {role!r}", path + ".role")  # incl. the legacy "function"
    return system, out


def _tool(tool, path: str) -> c.Tool:
    if not isinstance(tool, dict) or tool.get("type", "function") != "function":
        fail("only function tools are supported", path)
    fn = need(tool.get("function"), dict, path + ".function")
    params = need(fn.get("parameters"), dict, path + ".function.parameters", optional=True)
    return c.Tool(_name(fn.get("name"), path + ".function.name"),
                  need(fn.get("description"), str, path + ".function.description", True),
                  {"type": "object", "properties": {}} if params is None else params,
                  need(tool.get("cache_control"), dict, path + ".cache_control", True))


def _decode_tool_choice(choice, parallel) -> c.ToolChoice | None:
    need(parallel, bool, "parallel_tool_calls", optional=True)
    if choice is None:
        return None if parallel is None else c.ToolChoice("auto", parallel=parallel)
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return c.ToolChoice(_TOOL_CHOICE_MODES[choice], parallel=parallel)
    if isinstance(choice, dict) and choice.get("type") == "function":
        fn = choice.get("function")
        name = _name(fn.get("name") if isinstance(fn, dict) else None, "tool_choice.function.name")
        return c.ToolChoice("tool", name, parallel)
    fail("must be auto, none, required or {type: function, function: {name}}", "tool_choice")


def _response_format(value) -> c.ResponseFormat | None:
    if need(value, dict, "response_format", optional=True) is None:
        return None
    kind = value.get("type")
    spec = need(value.get("json_schema"), dict, "response_format.json_schema") \
        if kind == "json_schema" else {}
    return c.openai_response_format(kind, spec, "response_format", "response_format.json_schema.")


def _refuse_unanswerable(body: dict) -> None:
    """What detour cannot give a Chat client through another format, refused rather than
    silently answered without (the canonical model holds one choice, no token probabilities)."""
    n = body.get("n")
    if n is not None and n != 1:
        fail("only n=1 can be answered through a non-OpenAI provider (it gives one choice)", "n")
    if body.get("logprobs") not in (None, False):
        fail("logprobs cannot be answered through a non-OpenAI provider", "logprobs")
    if body.get("top_logprobs") not in (None, 0):
        fail("top_logprobs cannot be answered through a non-OpenAI provider", "top_logprobs")


def decode_request(body: dict) -> c.Request:
    """Chat body -> canonical. Refuses (TranslationError) what the canonical model cannot answer
    (n > 1, logprobs): such a request can only go to a Chat provider, untranslated."""
    need(body, dict, "")
    _refuse_unanswerable(body)
    messages = need(body.get("messages"), list, "messages")
    system, msgs = _decode_messages(messages)
    tools = need(body.get("tools"), list, "tools", optional=True) or ()
    max_tokens = need(body.get("max_completion_tokens"), int, "max_completion_tokens", True)
    if max_tokens is None:
        max_tokens = need(body.get("max_tokens"), int, "max_tokens", optional=True)
    stop = body.get("stop")
    if isinstance(stop, str):
        stop = (stop,)
    elif stop is not None and not (isinstance(stop, list)
                                   and all(isinstance(s, str) for s in stop)):
        fail("must be a string or an array of strings", "stop")

    def opt(key: str, kind):
        return need(body.get(key), kind, key, optional=True)

    return c.Request(
        model=_name(body.get("model"), "model"), messages=tuple(msgs), system=tuple(system),
        tools=tuple(_tool(t, f"tools[{i}]") for i, t in enumerate(tools)),
        tool_choice=_decode_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")),
        max_tokens=max_tokens, temperature=opt("temperature", c.NUMBER),
        top_p=opt("top_p", c.NUMBER), stop=tuple(stop or ()), stream=bool(opt("stream", bool)),
        reasoning_effort=opt("reasoning_effort", str), user=opt("user", str),
        response_format=_response_format(body.get("response_format")),
        extras={_EXTRA + k: v for k, v in body.items()
                if k not in _REQUEST_FIELDS and k not in _ONE_CHOICE})


# ---------------------------------------------------------------- request: canonical -> Chat


def _part_dict(p: c.Text | c.Image | c.Document, markers: bool) -> dict:
    if type(p) is c.Text:
        part = {"type": "text", "text": p.text}
    elif type(p) is c.Document:
        part = _document_part(p)
    else:
        url = p.url if p.url is not None else f"data:{p.media_type or 'image/png'};base64,{p.data}"
        part = {"type": "image_url", "image_url": {"url": url}}
    if markers and p.cache_control is not None:
        part["cache_control"] = p.cache_control
    return part


def _document_part(d: c.Document) -> dict:
    """A PDF (inline or by URL, which OpenRouter reads) as a `file` part; a text document as
    text, titled."""
    if d.text is not None:
        return {"type": "text", "text": f"{d.title}\n\n{d.text}" if d.title else d.text}
    data = d.url if d.url is not None else f"data:{d.media_type or 'application/pdf'};base64,{d.data}"
    return {"type": "file", "file": {"filename": d.title or "document.pdf", "file_data": data}}


def _content(parts, as_parts: bool, markers: bool):
    """Text-only content as one string unless `as_parts`; with images always as parts."""
    if not as_parts and all(type(p) is c.Text for p in parts):
        return "\n\n".join(p.text for p in parts)
    return [_part_dict(p, markers) for p in parts]


def _encode_assistant(parts, markers: bool, path: str, reasoning: bool = True) -> dict:
    texts, thinking, calls = [], [], []
    for i, p in enumerate(parts):
        t = type(p)
        if t is c.Text:
            texts.append(p)
        elif t is c.Thinking:
            if p.redacted is None:
                thinking.append(p.text)
        elif t is c.ToolUse:
            args = p.raw_arguments if p.raw_arguments is not None else dumps_compact(
                p.input).decode()
            calls.append({"id": p.id, "type": "function",
                          "function": {"name": p.name, "arguments": args}})
        else:
            fail(f"an assistant message cannot carry a {t.__name__} in Chat", f"{path}.parts[{i}]")
    marked = markers and any(t.cache_control is not None for t in texts)
    msg = {"role": "assistant", "content": _content(texts, marked, markers) if texts else None}
    if thinking and reasoning:  # DeepSeek wants its reasoning passed back (Dialect)
        msg["reasoning_content"] = "\n\n".join(thinking)
    if calls:
        msg["tool_calls"] = calls
    return msg


def _encode_user(m: c.Message, as_parts: bool, path: str) -> list[dict]:
    """Tool results first, one tool message each (Chat wants them right after the assistant's
    tool_calls); their images next (a tool message cannot hold one); then the rest of the turn."""
    out, images, rest = [], [], []
    for i, p in enumerate(m.parts):
        t = type(p)
        if t is c.ToolResult:
            texts = [x for x in p.content if type(x) is c.Text]
            images += [x for x in p.content if type(x) is c.Image]
            if as_parts and p.cache_control is not None and texts and (
                    texts[-1].cache_control is None):  # Anthropic marks the whole tool_result
                texts[-1] = c.Text(texts[-1].text, p.cache_control)
            content = _content(texts, as_parts, as_parts) if texts else ""
            out.append({"role": "tool", "tool_call_id": p.tool_use_id, "content": content})
        elif t is c.Text or t is c.Image or t is c.Document:
            rest.append(p)
        else:
            fail(f"a user message cannot carry a {t.__name__}", f"{path}.parts[{i}]")
    if images:
        out.append({"role": "user", "content": _content(images, True, as_parts)})
    if rest or not out:
        out.append({"role": "user", "content": _content(rest, as_parts, as_parts)})
    return out


def _encode_tool(tool: c.Tool, markers: bool) -> dict:
    fn = {"name": tool.name, "parameters": tool.input_schema}
    if tool.description is not None:
        fn["description"] = tool.description
    out = {"type": "function", "function": fn}
    if markers and tool.cache_control is not None:
        out["cache_control"] = tool.cache_control  # DashScope's place for it
    return out


@dataclass(frozen=True, slots=True)
class Dialect:
    """How one vendor's Chat Completions endpoint differs from plain OpenAI-compatible Chat, as
    data (only what the vendor documents). Requests are written per dialect; answers need none:
    the one StreamDecoder and decode_response read every dialect's quirks (DeepSeek's
    `reasoning_content` and `prompt_cache_hit_tokens`, OpenRouter's `reasoning`,
    `: OPENROUTER PROCESSING` comments, error chunks and `finish_reason: "error"`, Azure's
    empty-id first chunk with `choices: []` and content-filter fields, DashScope's
    `cache_creation_input_tokens`)."""

    name: str
    # where the output cap goes: OpenAI's reasoning models refuse max_tokens
    max_tokens_field: str = "max_tokens"
    # content as part arrays keeping cache_control (DashScope's explicit cache) vs plain strings
    content_parts: bool = False
    # earlier assistant reasoning sent back as `reasoning_content`: DeepSeek's thinking mode
    # answers 400 without it after a tool call; OpenAI's Chat does not take the field
    reasoning_content: bool = True


COMPATIBLE = Dialect("compatible")  # any other OpenAI-compatible server (vLLM, Ollama, ...)
OPENAI = Dialect("openai", reasoning_content=False)
DIALECTS = {d.name: d for d in (
    COMPATIBLE, OPENAI,
    Dialect("azure", reasoning_content=False),  # OpenAI's models; `api-key` (addons/formats.py)
    Dialect("deepseek"),
    Dialect("dashscope", content_parts=True),  # Qwen Code's own way with DashScope
    Dialect("openrouter"),
)}


def encode_request(req: c.Request, dialect: "Dialect | None" = None, *,
                   content_parts: bool | None = None,
                   max_tokens_field: str | None = None) -> dict:
    """canonical -> Chat body, as `dialect` (default: COMPATIBLE) wants it; `content_parts`
    and `max_tokens_field` override the dialect's own.

    `content_parts=False` (OpenAI's) writes text-only content as plain strings and drops cache
    markers: what every OpenAI-compatible server accepts (some reject content arrays for system
    messages or an unknown `cache_control`). `content_parts=True` writes user, system and tool
    content as part arrays carrying `cache_control`, as Qwen Code sends DashScope (OpenRouter
    takes the same). `max_tokens_field="max_completion_tokens"` for OpenAI's reasoning models."""
    dialect = dialect or COMPATIBLE
    if content_parts is None:
        content_parts = dialect.content_parts
    if max_tokens_field is None:
        max_tokens_field = dialect.max_tokens_field
    reasoning = dialect.reasoning_content
    messages: list[dict] = []
    if req.system:
        messages.append({"role": "system",
                         "content": _content(req.system, content_parts, content_parts)})
    for i, m in enumerate(req.messages):
        path = f"messages[{i}]"
        if m.role == "assistant":
            messages.append(_encode_assistant(m.parts, content_parts, path, reasoning))
        elif m.role == "user":
            messages += _encode_user(m, content_parts, path)
        else:
            if any(type(p) is not c.Text for p in m.parts):
                fail("a system message can only carry text", path)
            messages.append({"role": "system",
                             "content": _content(m.parts, content_parts, content_parts)})
    body: dict = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.stream:  # so the last chunk carries usage
        body["stream_options"] = {"include_usage": True}
    if req.tools:
        body["tools"] = [_encode_tool(t, content_parts) for t in req.tools]
        choice = req.tool_choice
        if choice is not None:  # OpenAI rejects tool_choice and parallel_tool_calls without tools
            body["tool_choice"] = ({"type": "function", "function": {"name": choice.name}}
                                   if choice.mode == "tool" else
                                   {"auto": "auto", "any": "required", "none": "none"}[choice.mode])
            if choice.parallel is not None:
                body["parallel_tool_calls"] = choice.parallel
    for key, value in ((max_tokens_field, req.max_tokens), ("temperature", req.temperature),
                       ("top_p", req.top_p), ("reasoning_effort", req.reasoning_effort),
                       ("user", req.user)):
        if value is not None:
            body[key] = value
    if req.stop:
        body["stop"] = list(req.stop)
    if (rf := req.response_format) is not None:
        body["response_format"] = _encode_response_format(rf)
    for key, value in req.extras.items():
        if key.startswith(_EXTRA):
            body.setdefault(key[len(_EXTRA):], value)
    return body


def _encode_response_format(rf: c.ResponseFormat) -> dict:
    if rf.schema is None and rf.name is None:
        return {"type": "json_object"}
    spec = {"name": rf.name or c.ANSWER_TOOL}
    for key, value in (("description", rf.description), ("schema", rf.schema),
                       ("strict", rf.strict)):
        if value is not None:
            spec[key] = value
    return {"type": "json_schema", "json_schema": spec}


# ---------------------------------------------------------------- whole responses


def decode_response(body: dict) -> c.Response:
    if need(body, dict, "").get("error") and "choices" not in body:
        fail(_error_message(body["error"]), "error")
    choices = need(body.get("choices"), list, "choices")
    parts, stop = (), None
    if choices:  # n > 1 is not supported: choice 0 only
        choice = need(choices[0], dict, "choices[0]")
        parts = _assistant_parts(need(choice.get("message"), dict, "choices[0].message"),
                                 "choices[0].message")
        finish = need(choice.get("finish_reason"), str, "choices[0].finish_reason", True)
        stop = _stop_reason(finish, any(type(p) is c.ToolUse for p in parts))
    ident, model = body.get("id"), body.get("model")
    return c.Response(ident if isinstance(ident, str) else "",
                      model if isinstance(model, str) else "", parts, stop,
                      decode_usage(body.get("usage")))


def encode_response(resp: c.Response, *, created: int | None = None) -> dict:
    return {"id": resp.id, "object": "chat.completion",
            "created": int(time.time()) if created is None else created, "model": resp.model,
            "choices": [{"index": 0, "message": _encode_assistant(resp.parts, False, "parts"),
                         "logprobs": None,
                         "finish_reason": STOP_TO_FINISH.get(resp.stop_reason, "stop")}],
            "usage": encode_usage(resp.usage)}


# ---------------------------------------------------------------- errors

# canonical (Anthropic) error kind -> OpenAI (type, code); unlisted kinds keep their name
_KIND_TO_OPENAI = {"rate_limit_error": ("requests", "rate_limit_exceeded"),
                   "billing_error": ("insufficient_quota", "insufficient_quota"),
                   "api_error": ("server_error", None), "overloaded_error": ("server_error", None),
                   "timeout_error": ("server_error", None),
                   "not_found_error": ("invalid_request_error", None),
                   "request_too_large": ("invalid_request_error", None)}
# OpenAI error type or code -> canonical kind, beyond the kinds both share
_OPENAI_TO_KIND = {"rate_limit_exceeded": "rate_limit_error", "requests": "rate_limit_error",
                   "tokens": "rate_limit_error", "insufficient_quota": "billing_error",
                   "server_error": "api_error", "overloaded": "overloaded_error"}


def _error_object(kind: str, message: str) -> dict:
    """The OpenAI error object for a canonical kind (or an OpenAI type, kept as it is)."""
    typ, code = _KIND_TO_OPENAI.get(kind, (kind, None))
    return {"error": {"message": message, "type": typ, "param": None, "code": code}}


def error_body(status: int, message: str, kind: str | None = None) -> bytes:
    """An OpenAI error body. `kind`: a canonical (Anthropic) error kind or an OpenAI type;
    without one, canonical.error_kind of the status."""
    return dumps_compact(_error_object(kind or c.error_kind(status), message))


def _error_message(err) -> str:
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    if isinstance(err, str):
        return err
    try:
        return dumps_compact(err).decode()
    except c.TranslationError:  # inf or NaN, which the json module reads: shown, not written
        return repr(err)[:300]


def _error_kind(err) -> str:
    if not isinstance(err, dict):
        return "api_error"
    for key in ("type", "code"):
        value = err.get(key)
        if isinstance(value, str) and (value in c.ERROR_KINDS or value in _OPENAI_TO_KIND):
            return _OPENAI_TO_KIND.get(value, value)
        if type(value) is int and 400 <= value < 600:  # OpenRouter: the HTTP status as code
            return c.error_kind(value)
    return "api_error"


# ---------------------------------------------------------------- stream: Chat -> canonical


class _Phase(enum.Enum):
    IDLE = "idle"  # no chunk yet
    BETWEEN = "between"  # message started, no block open
    TEXT = "text"
    THINKING = "thinking"
    TOOL = "tool"  # one tool call streams live; later content is held until the message ends
    DONE = "done"  # MessageStop or StreamError emitted


class _Act(enum.Enum):
    APPEND = "append"  # delta into the open block
    OPEN = "open"  # close the open block (if any), open one of this kind
    HOLD = "hold"  # keep for later: a live tool block must stay open (see StreamDecoder)


# phase -> delta kind -> (action, next phase). IDLE and DONE never see a delta: MessageStart
# comes first, and nothing is read after the end.
_ON_DELTA: dict[_Phase, dict[str, tuple[_Act, _Phase]]] = {
    _Phase.BETWEEN: {"text": (_Act.OPEN, _Phase.TEXT), "thinking": (_Act.OPEN, _Phase.THINKING),
                     "tool": (_Act.OPEN, _Phase.TOOL)},
    _Phase.TEXT: {"text": (_Act.APPEND, _Phase.TEXT), "thinking": (_Act.OPEN, _Phase.THINKING),
                  "tool": (_Act.OPEN, _Phase.TOOL)},
    _Phase.THINKING: {"text": (_Act.OPEN, _Phase.TEXT),
                      "thinking": (_Act.APPEND, _Phase.THINKING), "tool": (_Act.OPEN, _Phase.TOOL)},
    _Phase.TOOL: {"text": (_Act.HOLD, _Phase.TOOL), "thinking": (_Act.HOLD, _Phase.TOOL),
                  "tool": (_Act.HOLD, _Phase.TOOL)},
}
_DELTA_EVENT = {"text": c.TextDelta, "thinking": c.ThinkingDelta, "tool_use": c.ToolInputDelta}


@dataclass(slots=True)
class _Held:
    """Content not yet emitted: a tool call (named once its name arrives) or held text."""

    kind: str  # "text" | "thinking" | "tool_use"
    chunks: list[str] = field(default_factory=list)
    id: str | None = None
    name: str | None = None
    block: int | None = None  # its block index once emitted


class StreamDecoder(SSEDecoder):
    """Chat completion chunks (SSE bytes) -> canonical events, whatever the chunk boundaries.

    Parallel tool calls: the first tool call streams live; every later delta (other tool calls,
    text, thinking) is held and emitted as whole blocks when the message ends. Tool calls may
    interleave their argument fragments (0, 1, 0, ...) and a closed block cannot be reopened, so
    closing a live tool block early could lose text; holding never does. A delta for a tool call
    after finish_reason closed it is a provider fault: StreamError, never silent loss.
    Only choice 0 is read (n > 1 is not supported)."""

    __slots__ = ("_sse", "_phase", "_index", "_live", "_held", "_calls", "_stop", "_usage")

    def __init__(self):
        self._sse = SSEParser()
        self._phase = _Phase.IDLE
        self._index = -1  # index of the last block started
        self._live: _Held | None = None  # the tool call streaming live
        self._held: list[_Held] = []
        self._calls: dict = {}  # tool call key -> _Held
        self._stop: c.StopReason | None = None
        self._usage = c.Usage()

    def _closed(self, out: list) -> None:
        if self._phase is not _Phase.DONE:
            self._end(out)

    # -- one SSE event

    def _event(self, name: str, data: str, out: list) -> None:
        if self._phase is _Phase.DONE:
            return
        if data[:1] != "{":  # not a chunk: blank, [DONE], or garbage (JSON may start with space)
            stripped = data.strip()
            if not stripped:
                return
            if stripped == "[DONE]":
                return self._end(out, done_marker=True)
        try:
            chunk = json.loads(data)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply for json
            chunk = None
        if not isinstance(chunk, dict):
            return self._error("api_error", f"malformed chunk from upstream: {data[:200]!r}", out)
        if chunk.get("error") or name == "error":
            err = chunk.get("error") or chunk
            return self._error(_error_kind(err), _error_message(err), out)
        if self._phase is _Phase.IDLE:
            ident, model = chunk.get("id"), chunk.get("model")
            out.append(c.MessageStart(ident if isinstance(ident, str) else "",
                                      model if isinstance(model, str) else ""))
            self._phase = _Phase.BETWEEN
        finish = None
        choices = chunk.get("choices")
        for choice in choices if isinstance(choices, list) else ():
            if isinstance(choice, dict) and choice.get("index", 0) == 0:
                delta = choice.get("delta")
                if isinstance(delta, dict):
                    self._delta(delta, out)  # content before finish_reason (same chunk)
                finish = choice.get("finish_reason")
                break
        if self._phase is _Phase.DONE:
            return
        usage = chunk.get("usage")
        if isinstance(usage, dict):  # null on all but the last chunk (OpenAI)
            try:
                self._usage = decode_usage(usage)
            except c.TranslationError as e:
                return self._error("api_error", f"bad usage from upstream: {e}", out)
        if isinstance(finish, str):
            if finish == "error":  # OpenRouter: a provider failed mid-stream
                return self._error("api_error", "upstream finished with an error", out)
            self._stop = _stop_reason(finish, bool(self._calls))
            self._flush(out)
            if isinstance(usage, dict) and self._phase is not _Phase.DONE:
                self._end(out)  # nothing more is due

    def _delta(self, delta: dict, out: list) -> None:
        reasoning = delta.get("reasoning_content")
        if not isinstance(reasoning, str) or not reasoning:
            reasoning = delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            self._content("thinking", reasoning, out)
        for key in ("content", "refusal"):
            if isinstance(delta.get(key), str) and delta[key]:
                self._content("text", delta[key], out)
        calls = delta.get("tool_calls")
        for i, call in enumerate(calls if isinstance(calls, list) else ()):
            if isinstance(call, dict):
                self._tool_delta(call, i, out)
                if self._phase is _Phase.DONE:
                    return

    def _content(self, kind: str, text: str, out: list) -> None:
        act, nxt = _ON_DELTA[self._phase][kind]  # the phase is never IDLE or DONE here
        if act is _Act.APPEND:
            out.append(_DELTA_EVENT[kind](self._index, text))
        elif act is _Act.OPEN:
            self._close_block(out)
            self._start(kind, out)
            out.append(_DELTA_EVENT[kind](self._index, text))
        elif self._held and self._held[-1].kind == kind:
            self._held[-1].chunks.append(text)
        else:
            self._held.append(_Held(kind, [text]))
        self._phase = nxt

    def _tool_delta(self, call: dict, position: int, out: list) -> None:
        ident, index = call.get("id"), call.get("index")
        ident = ident if isinstance(ident, str) and ident else None
        if isinstance(index, int) and not isinstance(index, bool):
            key = index
        elif ident is not None:
            key = ("id", ident)
        else:  # neither index nor id: the latest call continues (or the first one starts)
            key = next(reversed(self._calls)) if self._calls else ("at", position)
        tc = self._calls.get(key)
        if tc is None or (ident is not None and tc.id is not None and ident != tc.id):
            # a new id under a known index is a new call (some servers reuse index 0)
            tc = self._calls[key] = _Held("tool_use")
            self._held.append(tc)
        fn = call.get("function") if isinstance(call.get("function"), dict) else {}
        if tc.id is None and ident is not None:
            tc.id = ident
        if tc.name is None and isinstance(fn.get("name"), str) and fn["name"]:
            tc.name = fn["name"]
        args = fn.get("arguments")
        args = args if isinstance(args, str) else ""
        if tc is self._live:
            if args:
                out.append(c.ToolInputDelta(self._index, args))
            return
        if tc.block is not None:
            return self._error("api_error",
                               f"tool call {key!r} got arguments after finish_reason", out)
        if args:
            tc.chunks.append(args)
        act, nxt = _ON_DELTA[self._phase]["tool"]
        if act is _Act.OPEN and tc.name is not None and self._held[0] is tc:
            self._held.pop(0)
            self._close_block(out)
            self._emit_call(tc, out, close=False)
            self._live = tc
            self._phase = nxt

    # -- blocks

    def _start(self, kind: str, out: list, tc: _Held | None = None) -> None:
        self._index += 1
        if tc is None:
            out.append(c.BlockStart(self._index, kind))
            return
        tc.block = self._index
        out.append(c.BlockStart(self._index, "tool_use", tool_id=tc.id or f"call_{self._index}",
                                tool_name=tc.name))

    def _close_block(self, out: list) -> None:
        if self._phase in (_Phase.TEXT, _Phase.THINKING, _Phase.TOOL):
            out.append(c.BlockStop(self._index))
            self._phase = _Phase.BETWEEN

    def _emit_call(self, tc: _Held, out: list, close: bool) -> None:
        self._start("tool_use", out, tc)
        if tc.chunks:
            out.append(c.ToolInputDelta(self._index, "".join(tc.chunks)))
            tc.chunks = []
        if close:
            out.append(c.BlockStop(self._index))

    def _flush(self, out: list) -> None:
        """Close the open block and emit everything held, each as a whole block."""
        self._close_block(out)
        self._live = None
        held, self._held = self._held, []
        for item in held:
            if item.kind != "tool_use":
                self._start(item.kind, out)
                out += [_DELTA_EVENT[item.kind](self._index, "".join(item.chunks)),
                        c.BlockStop(self._index)]
            elif item.name is None:
                return self._error("api_error", "a tool call arrived without a function name", out)
            else:
                self._emit_call(item, out, close=True)

    def _end(self, out: list, done_marker: bool = False) -> None:
        if self._phase is _Phase.IDLE:
            return self._error("api_error", "upstream stream ended before any chunk", out)
        if self._stop is None and done_marker:
            # [DONE] without a finish_reason: the server ended the stream on purpose
            self._stop = _stop_reason("stop", bool(self._calls))
        if self._stop is None:
            return self._error("api_error", "upstream stream ended before finish_reason", out)
        self._flush(out)
        if self._phase is not _Phase.DONE:
            out += [c.MessageDelta(self._stop, self._usage), c.MessageStop()]
            self._phase = _Phase.DONE

    def _error(self, kind: str, message: str, out: list) -> None:
        out.append(c.StreamError(kind, message))
        self._phase = _Phase.DONE


def is_error_event(name: str, data: str) -> bool:
    """A Chat in-stream error: `data: {"error": {...}}` (OpenAI-compatible servers), an
    `event: error`, or OpenRouter's `finish_reason: "error"` chunk. Well-formed: a client reads
    it as the end of the stream (passed on as it is)."""
    chunk = c.json_object(data)
    if chunk is None:
        return False
    if chunk.get("error") or name == "error":
        return True
    choices = chunk.get("choices")
    return isinstance(choices, list) and any(
        isinstance(ch, dict) and ch.get("finish_reason") == "error" for ch in choices)


def may_follow_stop(name: str, data: str) -> bool:
    """After the end of the message (finish_reason with usage): `[DONE]`, or a usage chunk
    (`choices: []`)."""
    if data.strip() == "[DONE]":
        return True
    chunk = c.json_object(data)
    return chunk is not None and chunk.get("choices") == [] and not chunk.get("error")


# ---------------------------------------------------------------- stream: canonical -> Chat


class StreamEncoder(c.EventEncoder):
    """Canonical events -> Chat completion chunks (SSE bytes). Every event is checked against
    canonical.StreamGrammar first, so an out-of-order stream raises instead of reaching a client.
    `include_usage=False` leaves out the final usage chunk (`choices: []`) for clients that did
    not ask for it with stream_options."""

    __slots__ = ("_grammar", "_head", "_tool", "_created", "_include_usage", "_usage_head")

    def __init__(self, *, created: int | None = None, include_usage: bool = True):
        self._grammar = c.StreamGrammar()
        self._created = int(time.time()) if created is None else created
        self._include_usage = include_usage
        self._head = self._usage_head = b""
        self._tool = -1  # index among tool calls only

    def _chunk(self, delta: bytes, finish: bytes = b"null") -> bytes:
        return b'%s%s,"finish_reason":%s}]}\n\n' % (self._head, delta, finish)

    def encode(self, event: c.Event) -> bytes:
        self._grammar.check(event)
        t = type(event)
        if t is c.TextDelta:
            return self._chunk(b'{"content":%s}' % dumps_compact(event.text)) if event.text else b""
        if t is c.ToolInputDelta:
            if not event.partial_json:
                return b""
            return self._chunk(b'{"tool_calls":[{"index":%d,"function":{"arguments":%s}}]}'
                               % (self._tool, dumps_compact(event.partial_json)))
        if t is c.ThinkingDelta:
            return (self._chunk(b'{"reasoning_content":%s}' % dumps_compact(event.text))
                    if event.text else b"")
        if t is c.BlockStart:
            if event.kind != "tool_use":
                return b""
            self._tool += 1
            call = {"index": self._tool, "id": event.tool_id, "type": "function",
                    "function": {"name": event.tool_name, "arguments": ""}}
            return self._chunk(b'{"tool_calls":[%s]}' % dumps_compact(call))
        if t is c.MessageStart:
            prefix = b'data: {"id":%s,"object":"chat.completion.chunk","created":%d,"model":%s,' % (
                dumps_compact(event.id), self._created, dumps_compact(event.model))
            self._head = prefix + b'"choices":[{"index":0,"delta":'
            self._usage_head = prefix + b'"choices":[],"usage":'
            return self._chunk(b'{"role":"assistant","content":""}')
        if t is c.MessageDelta:
            out = self._chunk(b"{}", b'"%s"' % STOP_TO_FINISH.get(event.stop_reason,
                                                                   "stop").encode())
            if self._include_usage:
                out += b"%s%s}\n\n" % (self._usage_head, dumps_compact(encode_usage(event.usage)))
            return out
        if t is c.MessageStop:
            return b"data: [DONE]\n\n"
        if t is c.StreamError:
            return b"data: %s\n\n" % dumps_compact(_error_object(event.kind, event.message))
        return b""  # BlockStop, Ping, SignatureDelta: nothing to say in Chat


# ---------------------------------------------------------------- sniffing and same-format

_ANTHROPIC_ONLY = frozenset({"system", "stop_sequences", "top_k", "thinking"})
_ANTHROPIC_BLOCKS = frozenset({"tool_use", "tool_result", "thinking", "redacted_thinking"})


def sniff_request(body: object) -> bool:
    """A Chat request by its marks: `messages` of role-tagged dicts, no top-level `system` (Chat
    puts it in a message) and none of Anthropic's own fields or block types."""
    if not isinstance(body, dict) or not isinstance(messages := body.get("messages"), list):
        return False
    if not _ANTHROPIC_ONLY.isdisjoint(body):
        return False
    for m in messages:
        if not isinstance(m, dict):
            return False
        content = m.get("content")
        if isinstance(content, list) and any(
                isinstance(b, dict) and b.get("type") in _ANTHROPIC_BLOCKS for b in content):
            return False
    return True


def sniff_stream(head: bytes) -> bool:
    """Chat streams are bare `data:` chunks (after any `:` comment lines, as OpenRouter sends)
    holding `choices` or an `error`."""
    for line in head.lstrip(b"\xef\xbb\xbf \t\r\n").splitlines():
        line = line.strip()
        if not line or line.startswith(b":"):
            continue
        return line.startswith(b"data:") and (b'"choices"' in line or b'"error"' in line
                                              or line[5:].strip() == b"[DONE]")
    return False


def rewrite_request(body: dict, *, model: str | None = None,
                    max_tokens: int | None = None) -> dict:
    """The client's Chat body with only the model and a lower output cap changed (whichever
    of max_tokens / max_completion_tokens it sent); `body` itself when nothing changes."""
    return c.rewrite_body(body, model, max_tokens, ("max_tokens", "max_completion_tokens"))


def client_stream_encoder(body: dict) -> StreamEncoder:
    """The usage chunk (empty `choices`) only for clients that asked for it with
    stream_options.include_usage: others read choices[0] of every chunk."""
    options = body.get("stream_options")
    return StreamEncoder(include_usage=isinstance(options, dict)
                         and options.get("include_usage") is True)
