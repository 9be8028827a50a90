"""Google Gemini API (`generateContent`, `streamGenerateContent?alt=sse`) <-> canonical:
requests, whole responses and streams, both directions.

Spoken by `generativelanguage.googleapis.com/v1beta/models/{model}:...`, the Google GenAI SDKs
and Gemini CLI (its Code Assist mode wraps these same bodies: `gemini_code_assist.py`).
Pure: dicts and bytes in, canonical objects out, and back.

The model is not in the body but in the URL: `decode_request` reads `model` only when a caller
put it there (the Code Assist envelope does), else it is "" and the proxy fills it in.

Requests. `systemInstruction` is the system prompt; `contents` turns (`user`, `model`) hold
parts: `text` (`thought: true` is model reasoning), `inlineData`/`fileData` (images, documents),
`functionCall`, `functionResponse`. Gemini matches a tool result to its call by the function's
name, its `id` being optional: decoding gives an unnamed call the id `<name>_<turn>_<n>` and a
result without id the oldest unanswered call of its name; encoding keeps the id -> name map of
the calls seen so far, so a result of any format goes back under its call's name.

`thoughtSignature` (Gemini's opaque reasoning state) may sit on any part. On a thought part it is
that Thinking's signature; on any other part it becomes an empty Thinking holding the signature
just before that part, and a Gemini target puts it back on the part that follows. So Claude
Code, say, keeps it through a turn and a Gemini provider gets it where it was.

Tool schemas are JSON Schema in canonical. Gemini's `parameters` takes an OpenAPI subset with
upper-case types: `clean_schema` keeps what Gemini accepts (drops `$schema`,
`additionalProperties`, `exclusiveMinimum`, unsupported string formats, ...; inlines local
`$ref`s; a `["string", "null"]` type becomes `nullable`). Decoding lower-cases Gemini's types,
so another format gets plain JSON Schema.

Usage: `promptTokenCount` includes `cachedContentTokenCount`; `thoughtsTokenCount` is outside
`candidatesTokenCount` (canonical output includes reasoning).
"""

import enum
import json
import uuid

from translators import canonical as c
from translators.canonical import dumps_compact, fail, need
from translators.sse import JsonArrayParser, SSEDecoder, SSEParser

NAME = "gemini"
STREAM_CONTENT_TYPE = "text/event-stream"
JSON_CONTENT_TYPE = "application/json"
EXTRAS_PREFIX = "gemini:"
MESSAGE_ID_PREFIX = ""  # Gemini's responseId is a bare token
USER_FIELD = "labels"  # Gemini requests carry no end-user id; never decoded into `user`
_P = EXTRAS_PREFIX

_SLOTS = frozenset({"model", "contents", "systemInstruction", "tools", "toolConfig",
                    "generationConfig"})
_GEN_SLOTS = frozenset({"maxOutputTokens", "temperature", "topP", "topK", "stopSequences",
                        "thinkingConfig", "responseMimeType", "responseSchema",
                        "responseJsonSchema"})
_MODES = {"AUTO": "auto", "ANY": "any", "NONE": "none", "VALIDATED": "auto"}
_FINISH_TO_STOP = {"STOP": "end_turn", "MAX_TOKENS": "max_tokens", "SAFETY": "refusal",
                   "RECITATION": "refusal", "BLOCKLIST": "refusal",
                   "PROHIBITED_CONTENT": "refusal", "SPII": "refusal",
                   "IMAGE_SAFETY": "refusal", "LANGUAGE": "refusal",
                   "MALFORMED_FUNCTION_CALL": "error", "UNEXPECTED_TOOL_CALL": "error"}
_STOP_TO_FINISH = {"end_turn": "STOP", "tool_use": "STOP", "stop_sequence": "STOP",
                   "max_tokens": "MAX_TOKENS", "refusal": "SAFETY", "pause_turn": "STOP",
                   "error": "OTHER"}


# ---------------------------------------------------------------- usage


def decode_usage(meta) -> c.Usage:
    """usageMetadata -> canonical (input excludes the cached tokens, output includes thoughts)."""
    if not isinstance(meta, dict):
        return c.Usage()
    prompt = c.token_count(meta.get("promptTokenCount"), "usageMetadata.promptTokenCount")
    cached = c.token_count(meta.get("cachedContentTokenCount"),
                           "usageMetadata.cachedContentTokenCount")
    tool_prompt = c.token_count(meta.get("toolUsePromptTokenCount"),
                                "usageMetadata.toolUsePromptTokenCount")
    out = c.token_count(meta.get("candidatesTokenCount"), "usageMetadata.candidatesTokenCount")
    thoughts = c.token_count(meta.get("thoughtsTokenCount"), "usageMetadata.thoughtsTokenCount")
    return c.Usage(max(prompt - cached, 0) + tool_prompt, out + thoughts, cached, 0, thoughts)


def encode_usage(usage: c.Usage) -> dict:
    out = {"promptTokenCount": usage.prompt_tokens,
           "candidatesTokenCount": max(usage.output_tokens - usage.reasoning_tokens, 0),
           "totalTokenCount": usage.prompt_tokens + usage.output_tokens}
    if usage.cache_read_tokens:
        out["cachedContentTokenCount"] = usage.cache_read_tokens
    if usage.reasoning_tokens:
        out["thoughtsTokenCount"] = usage.reasoning_tokens
    return out


# ---------------------------------------------------------------- JSON Schema <-> Gemini schema

# what Gemini's Schema object holds (ai.google.dev/api/caching#Schema); anything else is refused
_SCHEMA_KEYS = frozenset({"type", "format", "title", "description", "nullable", "enum",
                          "maxItems", "minItems", "properties", "required", "minProperties",
                          "maxProperties", "minLength", "maxLength", "pattern", "example",
                          "anyOf", "propertyOrdering", "default", "items", "minimum",
                          "maximum"})
_STRING_FORMATS = frozenset({"enum", "date-time"})
_NUMBER_FORMATS = frozenset({"float", "double", "int32", "int64"})
_MAX_DEPTH = 64
# what Gemini takes instead of a signature on a call it did not make (history from another
# model); Gemini CLI puts it on its own unsigned calls. Means "no signature": never decoded.
SKIP_SIGNATURE = "skip_thought_signature_validator"


def clean_schema(schema) -> dict:
    """A JSON Schema as Gemini's `parameters` takes it (see the module docstring)."""
    if not isinstance(schema, dict):
        return {"type": "OBJECT", "properties": {}}
    return _clean(schema, schema.get("$defs") or schema.get("definitions") or {}, 0)


def _ref(schema: dict, defs: dict) -> dict:
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rpartition("/")[2]
        target = defs.get(name) if isinstance(defs, dict) else None
        if isinstance(target, dict):
            return {**target, **{k: v for k, v in schema.items() if k != "$ref"}}
    return schema


def _clean(schema, defs, depth: int):
    if not isinstance(schema, dict):
        return {}
    if depth > _MAX_DEPTH:  # a recursive $ref: Gemini's schemas cannot recurse
        return {"type": "OBJECT"}
    schema = _ref(schema, defs)
    out: dict = {}
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        if len(kinds) < len(kind):
            out["nullable"] = True
        kind = kinds[0] if kinds else None
    if "const" in schema and "enum" not in schema:
        schema = {**schema, "enum": [schema["const"]]}
    if isinstance(kind, str):
        out["type"] = kind.upper()
    for key, value in schema.items():
        if key not in _SCHEMA_KEYS or key == "type":
            continue
        if key == "properties":
            if isinstance(value, dict):  # anything else Gemini would refuse: left out
                out[key] = {k: _clean(v, defs, depth + 1) for k, v in value.items()}
        elif key == "items":
            out[key] = _clean(value, defs, depth + 1)
        elif key == "anyOf" and isinstance(value, list):
            options = [v for v in value if not (isinstance(v, dict) and v.get("type") == "null")]
            if len(options) < len(value):
                out["nullable"] = True
            if len(options) == 1:
                out.update(_clean(options[0], defs, depth + 1))
            elif options:
                out[key] = [_clean(v, defs, depth + 1) for v in options]
        elif key == "enum" and isinstance(value, list):
            out[key] = [v if isinstance(v, str) else json.dumps(v) for v in value
                        if v is not None]
            out.setdefault("type", "STRING")
        elif key == "format":
            allowed = _STRING_FORMATS if out.get("type") == "STRING" else _NUMBER_FORMATS
            if isinstance(value, str) and value in allowed:
                out[key] = value
        else:
            out[key] = value
    for key in ("oneOf", "allOf"):  # Gemini has anyOf only; oneOf means the same to a model
        options = schema.get(key)
        if isinstance(options, list) and "anyOf" not in out:
            cleaned = [_clean(v, defs, depth + 1) for v in options if isinstance(v, dict)]
            if key == "allOf":  # every part holds: their fields and requirements add up
                for part in cleaned:
                    for k, v in part.items():
                        if k == "properties" and isinstance(out.get(k), dict):
                            out[k] = {**v, **out[k]}
                        elif k == "required" and isinstance(out.get(k), list) \
                                and isinstance(v, list):
                            out[k] = out[k] + [r for r in v if r not in out[k]]
                        elif k not in out:
                            out[k] = v
            elif cleaned:
                out["anyOf"] = cleaned
    if isinstance(out.get("required"), list):
        props = out.get("properties") or {}
        out["required"] = [r for r in out["required"] if isinstance(r, str) and r in props]
        if not out["required"]:
            del out["required"]
    if out.get("type") == "OBJECT" and "properties" not in out and "anyOf" not in out:
        out["properties"] = {}
    return out


def plain_schema(schema, depth: int = 0):
    """Gemini's schema (upper-case types, `nullable`) as plain JSON Schema."""
    if depth > _MAX_DEPTH:
        return schema
    if isinstance(schema, list):
        return [plain_schema(v, depth + 1) for v in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key == "type" and isinstance(value, str):
            out[key] = value.lower()
        elif key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            out[key] = {k: plain_schema(v, depth + 1) for k, v in value.items()}
        elif key in ("items", "anyOf", "oneOf", "allOf", "additionalProperties", "not"):
            out[key] = plain_schema(value, depth + 1)
        elif key != "nullable":
            out[key] = value
    if schema.get("nullable") is True and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


# ---------------------------------------------------------------- request: Gemini -> canonical


def _media(blob: dict, path: str, url_key: str | None):
    mime = need(blob.get("mimeType"), str, path + ".mimeType", optional=True)
    if url_key is None:
        data = need(blob.get("data"), str, path + ".data")
        if mime and mime.startswith("image/"):
            return c.Image(media_type=mime, data=data)
        return c.Document(media_type=mime or "application/octet-stream", data=data)
    url = need(blob.get(url_key), str, f"{path}.{url_key}")
    if mime and mime.startswith("image/"):
        return c.Image(media_type=mime, url=url)
    return c.Document(media_type=mime, url=url)


def _result_content(response, path: str) -> tuple[tuple, bool]:
    """A functionResponse's `response` as tool-result content, and whether it is an error."""
    if isinstance(response, dict) and len(response) == 1:
        (key, value), = response.items()
        if key in ("output", "content", "result", "error") and isinstance(value, str):
            return ((c.Text(value),) if value else ()), key == "error"
    return (c.Text(dumps_compact(response).decode()),), False


class _Calls:
    """Tool call ids of a conversation: Gemini may leave them out and match results by name."""

    __slots__ = ("pending", "names")

    def __init__(self):
        self.pending: dict[str, list[str]] = {}  # name -> ids of calls not yet answered
        self.names: dict[str, str] = {}  # id -> name

    def call(self, ident: str | None, name: str, turn: int, n: int) -> str:
        ident = ident or f"{name}_{turn}_{n}"
        self.pending.setdefault(name, []).append(ident)
        self.names[ident] = name
        return ident

    def result(self, ident: str | None, name: str, turn: int, n: int) -> str:
        waiting = self.pending.get(name, [])
        if ident and ident in waiting:
            waiting.remove(ident)
            return ident
        if ident:
            return ident
        return waiting.pop(0) if waiting else f"{name}_{turn}_{n}"


def _decode_parts(parts, path: str, calls: _Calls, turn: int) -> list:
    out: list = []
    for i, part in enumerate(need(parts, list, path)):
        at = f"{path}[{i}]"
        need(part, dict, at)
        sig = need(part.get("thoughtSignature"), str, at + ".thoughtSignature", optional=True)
        if sig == SKIP_SIGNATURE:
            sig = None
        if part.get("thought") is True:
            out.append(c.Thinking(need(part.get("text", ""), str, at + ".text"), signature=sig))
            continue
        if sig:  # the signature of the reasoning that led to this part
            out.append(c.Thinking("", signature=sig))
        if "text" in part:
            out.append(c.Text(need(part["text"], str, at + ".text")))
        elif "functionCall" in part:
            fc = need(part["functionCall"], dict, at + ".functionCall")
            name = need(fc.get("name"), str, at + ".functionCall.name")
            args = need(fc.get("args", {}), dict, at + ".functionCall.args", optional=True)
            ident = calls.call(need(fc.get("id"), str, at + ".functionCall.id", optional=True),
                               name, turn, i)
            out.append(c.ToolUse(ident, name, args or {}))
        elif "functionResponse" in part:
            fr = need(part["functionResponse"], dict, at + ".functionResponse")
            name = need(fr.get("name"), str, at + ".functionResponse.name")
            ident = calls.result(need(fr.get("id"), str, at + ".functionResponse.id",
                                      optional=True), name, turn, i)
            content, is_error = _result_content(fr.get("response"), at + ".functionResponse")
            out.append(c.ToolResult(ident, content, is_error))
        elif "inlineData" in part:
            out.append(_media(need(part["inlineData"], dict, at + ".inlineData"),
                              at + ".inlineData", None))
        elif "fileData" in part:
            out.append(_media(need(part["fileData"], dict, at + ".fileData"), at + ".fileData",
                              "fileUri"))
        elif sig:
            continue  # a part holding only a signature
        else:
            fail("unsupported part (executableCode, codeExecutionResult, videoMetadata: "
                 "Gemini's own)", at)
    return out


def _decode_contents(contents) -> list[c.Message]:
    calls = _Calls()
    messages: list[c.Message] = []
    for i, content in enumerate(need(contents, list, "contents")):
        path = f"contents[{i}]"
        need(content, dict, path)
        role = content.get("role", "user")
        if role not in ("user", "model", "function", "tool"):
            fail(f"unsupported role {role!r}", path + ".role")
        parts = _decode_parts(content.get("parts", []), path + ".parts", calls, i)
        messages.append(c.Message("assistant" if role == "model" else "user", tuple(parts)))
    return messages


def _decode_tools(tools, extras: dict) -> tuple[c.Tool, ...]:
    out: list[c.Tool] = []
    for i, tool in enumerate(need(tools, list, "tools", optional=True) or ()):
        path = f"tools[{i}]"
        need(tool, dict, path)
        decls = tool.get("functionDeclarations")
        for j, d in enumerate(need(decls, list, path + ".functionDeclarations", optional=True)
                              or ()):
            at = f"{path}.functionDeclarations[{j}]"
            need(d, dict, at)
            schema = d.get("parametersJsonSchema")
            if schema is None:
                schema = plain_schema(d.get("parameters"))
            need(schema, dict, at + ".parameters", optional=True)
            out.append(c.Tool(need(d.get("name"), str, at + ".name"),
                              need(d.get("description"), str, at + ".description",
                                   optional=True),
                              schema or {"type": "object", "properties": {}}))
        others = {k: v for k, v in tool.items() if k != "functionDeclarations"}
        if others:  # googleSearch, codeExecution, urlContext, ...: Gemini's own, kept in place
            extras[f"{_P}tools[{i}] ({', '.join(others)})"] = others
    return tuple(out)


def _decode_tool_choice(config) -> c.ToolChoice | None:
    fcc = need(config, dict, "toolConfig", optional=True)
    fcc = need((fcc or {}).get("functionCallingConfig"), dict,
               "toolConfig.functionCallingConfig", optional=True)
    if not fcc:
        return None
    mode = _MODES.get(str(fcc.get("mode", "AUTO")).upper())
    if mode is None:
        fail("must be AUTO, ANY, NONE or VALIDATED", "toolConfig.functionCallingConfig.mode")
    names = fcc.get("allowedFunctionNames")
    if mode == "any" and isinstance(names, list) and len(names) == 1 and isinstance(
            names[0], str):
        return c.ToolChoice("tool", names[0])
    return c.ToolChoice(mode)


def _decode_thinking(config, extras: dict) -> tuple[dict | None, str | None]:
    if config is None:
        return None, None
    need(config, dict, "generationConfig.thinkingConfig")
    budget = need(config.get("thinkingBudget"), int, "generationConfig.thinkingConfig."
                  "thinkingBudget", optional=True)
    level = need(config.get("thinkingLevel"), str, "generationConfig.thinkingConfig."
                 "thinkingLevel", optional=True)
    for k, v in config.items():
        if k not in ("thinkingBudget", "thinkingLevel"):
            extras[f"{_P}generationConfig.thinkingConfig.{k}"] = v
    thinking = None
    if budget is not None:
        thinking = ({"type": "disabled"} if budget == 0 else {"type": "adaptive"} if budget < 0
                    else {"type": "enabled", "budget_tokens": budget})
    return thinking, level.lower() if level else None


def _decode_format(gen: dict) -> c.ResponseFormat | None:
    if gen.get("responseMimeType") != "application/json":
        return None
    schema = gen.get("responseJsonSchema")
    if schema is None and gen.get("responseSchema") is not None:
        schema = gen["responseSchema"]
    need(schema, dict, "generationConfig.responseSchema", optional=True)
    return c.ResponseFormat(schema=plain_schema(schema) if schema is not None else None)


def _system(value) -> tuple[c.Text, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return (c.Text(value),)
    need(value, dict, "systemInstruction")
    out = []
    for i, p in enumerate(need(value.get("parts", []), list, "systemInstruction.parts")):
        out.append(c.Text(need(need(p, dict, f"systemInstruction.parts[{i}]").get("text"), str,
                               f"systemInstruction.parts[{i}].text")))
    return tuple(out)


def decode_request(body: dict) -> c.Request:
    need(body, dict, "")
    extras: dict = {}
    gen = need(body.get("generationConfig"), dict, "generationConfig", optional=True) or {}
    thinking, effort = _decode_thinking(gen.get("thinkingConfig"), extras)
    for k, v in gen.items():
        if k not in _GEN_SLOTS:
            extras[f"{_P}generationConfig.{k}"] = v
    for k, v in body.items():
        if k not in _SLOTS:
            extras[_P + k] = v
    stops = need(gen.get("stopSequences"), list, "generationConfig.stopSequences", True) or []

    def opt(key: str, kind):
        return need(gen.get(key), kind, "generationConfig." + key, optional=True)

    return c.Request(
        model=need(body.get("model"), str, "model", optional=True) or "",
        messages=tuple(_decode_contents(body.get("contents"))),
        system=_system(body.get("systemInstruction")),
        tools=_decode_tools(body.get("tools"), extras),
        tool_choice=_decode_tool_choice(body.get("toolConfig")),
        max_tokens=opt("maxOutputTokens", int), temperature=opt("temperature", c.NUMBER),
        top_p=opt("topP", c.NUMBER), top_k=opt("topK", int),
        stop=tuple(need(s, str, f"generationConfig.stopSequences[{i}]")
                   for i, s in enumerate(stops)),
        thinking=thinking, reasoning_effort=effort, response_format=_decode_format(gen),
        extras=extras)


# ---------------------------------------------------------------- request: canonical -> Gemini


def _media_part(p) -> dict:
    if p.url is not None:
        return {"fileData": {"mimeType": p.media_type or "application/octet-stream",
                             "fileUri": p.url}}
    return {"inlineData": {"mimeType": p.media_type or "application/octet-stream",
                           "data": p.data}}


def _result_response(p: c.ToolResult) -> dict:
    text = "".join(x.text for x in p.content if type(x) is c.Text)
    return {"error": text} if p.is_error else {"output": text}


def _encode_parts(parts, names: dict[str, str], path: str) -> list[dict]:
    out: list[dict] = []
    signature = None  # from an empty Thinking: goes on the part that follows
    for i, p in enumerate(parts):
        t = type(p)
        part: dict | None = None
        if t is c.Thinking:
            if p.redacted is not None or not (p.text or p.signature):
                continue
            if not p.text:
                signature = p.signature
                continue
            if not p.signature:
                continue  # another provider's reasoning: nothing Gemini can check
            part = {"thought": True, "text": p.text, "thoughtSignature": p.signature}
        elif t is c.Text:
            part = {"text": p.text}
        elif t is c.ToolUse:
            names[p.id] = p.name
            args = p.input if p.raw_arguments is None else {"input": p.raw_arguments}
            part = {"functionCall": {"id": p.id, "name": p.name, "args": args}}
            if signature is None:  # Gemini 3 refuses an unsigned call in the history
                signature = SKIP_SIGNATURE
        elif t is c.ToolResult:
            name = names.get(p.tool_use_id)
            if name is None:
                fail(f"a tool result whose call ({p.tool_use_id!r}) is not in the "
                     "conversation: Gemini matches results by the function's name", path)
            out.append({"functionResponse": {"id": p.tool_use_id, "name": name,
                                             "response": _result_response(p)}})
            out += [_media_part(x) for x in p.content if type(x) is c.Image]
            continue
        elif t is c.Image:
            part = _media_part(p)
        elif t is c.Document:
            part = {"text": f"{p.title}\n\n{p.text}" if p.title else p.text} if (
                p.text is not None) else _media_part(p)
        else:
            fail(f"a Gemini request cannot carry a {t.__name__}", f"{path}[{i}]")
        if signature is not None:
            part["thoughtSignature"] = signature
            signature = None
        out.append(part)
    return out


def _encode_thinking(req: c.Request) -> dict | None:
    out: dict = {}
    th = req.thinking if isinstance(req.thinking, dict) else None
    if th is not None:
        kind = th.get("type")
        if kind == "enabled" and isinstance(th.get("budget_tokens"), int):
            out["thinkingBudget"] = th["budget_tokens"]
        elif kind == "disabled":
            out["thinkingBudget"] = 0
        if kind in ("enabled", "adaptive"):
            out["includeThoughts"] = True
    if req.reasoning_effort and "thinkingBudget" not in out:
        effort = req.reasoning_effort.upper()
        out["thinkingLevel"] = "MINIMAL" if effort in ("NONE", "MINIMAL") else (
            "HIGH" if effort in ("XHIGH", "MAX") else effort)
        out["includeThoughts"] = True
    prefix = _P + "generationConfig.thinkingConfig."
    for key, value in req.extras.items():
        if key.startswith(prefix):
            out.setdefault(key[len(prefix):], value)
    return out or None


def encode_request(req: c.Request) -> dict:
    """The Gemini body (the model goes in the URL, not here)."""
    names: dict[str, str] = {}  # tool call id -> function name, as the calls go by
    contents = []
    for i, m in enumerate(req.messages):
        parts = _encode_parts(m.parts, names, f"messages[{i}]")
        if m.role == "system":
            parts = [{"text": p["text"]} for p in parts if "text" in p]
        if parts:
            contents.append({"role": "model" if m.role == "assistant" else "user",
                             "parts": parts})
    body: dict = {"contents": contents}
    if req.system:
        body["systemInstruction"] = {"role": "user",
                                     "parts": [{"text": t.text} for t in req.system]}
    tools: list[dict] = []
    if req.tools:
        tools.append({"functionDeclarations": [
            {"name": t.name, **({"description": t.description} if t.description else {}),
             "parameters": clean_schema(t.input_schema)} for t in req.tools]})
    for key, value in req.extras.items():
        if key.startswith(_P + "tools[") and isinstance(value, dict):
            tools.append(value)
    if tools:
        body["tools"] = tools
    choice = req.tool_choice
    if choice is not None and req.tools:
        fcc: dict = {"mode": {"auto": "AUTO", "any": "ANY", "none": "NONE", "tool": "ANY"}[
            choice.mode]}
        if choice.mode == "tool":
            fcc["allowedFunctionNames"] = [choice.name]
        body["toolConfig"] = {"functionCallingConfig": fcc}
    gen: dict = {}
    for key, value in (("maxOutputTokens", req.max_tokens), ("temperature", req.temperature),
                       ("topP", req.top_p), ("topK", req.top_k)):
        if value is not None:
            gen[key] = value
    if req.stop:
        gen["stopSequences"] = list(req.stop)
    thinking = _encode_thinking(req)
    if thinking:
        gen["thinkingConfig"] = thinking
    if req.response_format is not None:
        gen["responseMimeType"] = "application/json"
        if req.response_format.schema is not None:
            gen["responseSchema"] = clean_schema(req.response_format.schema)
    prefix = _P + "generationConfig."
    for key, value in req.extras.items():
        if key.startswith(prefix) and "." not in key[len(prefix):]:
            gen.setdefault(key[len(prefix):], value)
    if gen:
        body["generationConfig"] = gen
    for key, value in req.extras.items():
        if key.startswith(_P) and key[len(_P):] not in ("model",) and (
                "." not in key[len(_P):] and "[" not in key[len(_P):]):
            body.setdefault(key[len(_P):], value)
    return body


# ---------------------------------------------------------------- whole responses


def _stop_reason(finish, has_calls: bool) -> c.StopReason | None:
    if finish is None:
        return None
    stop = _FINISH_TO_STOP.get(finish, "end_turn") if isinstance(finish, str) else "end_turn"
    return "tool_use" if has_calls and stop == "end_turn" else stop


def _error_message(err) -> str:
    if isinstance(err, dict) and isinstance(err.get("message"), str):
        return err["message"]
    return str(err)[:300]


def decode_response(body: dict) -> c.Response:
    if isinstance(body, list) and len(body) > 1:
        return _fold_chunks(body)  # a whole streamGenerateContent answer without alt=sse
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # Gemini may answer an error in a list
    need(body, dict, "")
    if "error" in body and "candidates" not in body:
        fail(_error_message(body["error"]), "error")
    candidates = need(body.get("candidates", []), list, "candidates")
    parts: list = []
    finish = None
    if candidates:
        cand = need(candidates[0], dict, "candidates[0]")
        content = need(cand.get("content", {}), dict, "candidates[0].content")
        parts = _decode_parts(content.get("parts", []), "candidates[0].content.parts",
                              _Calls(), 0)
        finish = cand.get("finishReason")
    elif isinstance(body.get("promptFeedback"), dict) and body["promptFeedback"].get(
            "blockReason"):
        finish = "SAFETY"
    ident, model = body.get("responseId"), body.get("modelVersion")
    return c.Response(ident if isinstance(ident, str) else "",
                      model if isinstance(model, str) else "", tuple(parts),
                      _stop_reason(finish or "STOP", any(type(p) is c.ToolUse for p in parts)),
                      decode_usage(body.get("usageMetadata")))


def _fold_chunks(chunks: list) -> c.Response:
    """The chunks of a stream read whole (its JSON array) as one answer."""
    dec = StreamDecoder()
    events: list = []
    for i, chunk in enumerate(chunks):
        dec._event("", dumps_compact(need(chunk, dict, f"[{i}]")).decode(), events)
    if not dec._done:
        dec._closed(events)
    return c.collect_response(events)


def _response_parts(parts) -> list[dict]:
    """Canonical answer parts as Gemini parts (a signature-only Thinking on the next part)."""
    out: list[dict] = []
    signature = None
    for p in parts:
        t = type(p)
        if t is c.Thinking:
            if p.redacted is not None:
                continue
            if not p.text:
                signature = p.signature or signature
                continue
            part = {"text": p.text, "thought": True}
            if p.signature:
                part["thoughtSignature"] = p.signature
        elif t is c.Text:
            part = {"text": p.text}
        elif t is c.ToolUse:
            args = p.input if p.raw_arguments is None else {"input": p.raw_arguments}
            part = {"functionCall": {"id": p.id, "name": p.name, "args": args}}
        else:
            continue
        if signature is not None:
            part["thoughtSignature"] = signature
            signature = None
        out.append(part)
    if signature is not None:
        out.append({"text": "", "thoughtSignature": signature})
    return out


def encode_response(resp: c.Response) -> dict:
    return {"candidates": [{"content": {"role": "model", "parts": _response_parts(resp.parts)},
                            "finishReason": _STOP_TO_FINISH.get(resp.stop_reason or "end_turn",
                                                                "STOP"),
                            "index": 0}],
            "usageMetadata": encode_usage(resp.usage), "modelVersion": resp.model,
            "responseId": resp.id}


# ---------------------------------------------------------------- calls about models


def count_tokens_response(total: int) -> bytes:
    """A countTokens answer."""
    return dumps_compact({"totalTokens": total})


def model_list(names) -> bytes:
    """A models.list answer naming these models (what they can do: generate and count)."""
    return dumps_compact({"models": [
        {"name": f"models/{n}", "baseModelId": n, "version": "detour", "displayName": n,
         "supportedGenerationMethods": ["generateContent", "streamGenerateContent",
                                        "countTokens"]} for n in names]})


# ---------------------------------------------------------------- errors

# canonical error kind -> (HTTP status, Google's status word)
_KIND_STATUS = {"invalid_request_error": (400, "INVALID_ARGUMENT"),
                "authentication_error": (401, "UNAUTHENTICATED"),
                "permission_error": (403, "PERMISSION_DENIED"),
                "billing_error": (403, "PERMISSION_DENIED"),
                "not_found_error": (404, "NOT_FOUND"),
                "request_too_large": (413, "INVALID_ARGUMENT"),
                "rate_limit_error": (429, "RESOURCE_EXHAUSTED"),
                "timeout_error": (504, "DEADLINE_EXCEEDED"),
                "overloaded_error": (503, "UNAVAILABLE"),
                "api_error": (500, "INTERNAL")}
_STATUS_KIND = {"INVALID_ARGUMENT": "invalid_request_error", "FAILED_PRECONDITION":
                "invalid_request_error", "UNAUTHENTICATED": "authentication_error",
                "PERMISSION_DENIED": "permission_error", "NOT_FOUND": "not_found_error",
                "RESOURCE_EXHAUSTED": "rate_limit_error", "DEADLINE_EXCEEDED": "timeout_error",
                "UNAVAILABLE": "overloaded_error", "INTERNAL": "api_error"}


def _error_object(status: int, message: str, kind: str | None) -> dict:
    word = _KIND_STATUS.get(kind or c.error_kind(status), (0, "UNKNOWN"))[1]
    return {"error": {"code": status, "message": message, "status": word}}


def error_body(status: int, message: str, kind: str | None = None) -> bytes:
    """Google's error body: {"error": {"code", "message", "status"}}."""
    return dumps_compact(_error_object(status, message, kind))


def _error_kind(err) -> str:
    if isinstance(err, dict):
        if isinstance(err.get("status"), str) and err["status"] in _STATUS_KIND:
            return _STATUS_KIND[err["status"]]
        if type(err.get("code")) is int and 400 <= err["code"] < 600:
            return c.error_kind(err["code"])
    return "api_error"


def _json_object(data: str) -> dict | None:
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    if isinstance(obj, list) and obj and isinstance(obj[0], dict):
        obj = obj[0]
    return obj if isinstance(obj, dict) else None


def is_error_event(name: str, data: str) -> bool:
    obj = _json_object(data) if '"error"' in data else None
    return obj is not None and "error" in obj and "candidates" not in obj


def may_follow_stop(name: str, data: str) -> bool:
    """A chunk without content after the one with finishReason (usage only)."""
    obj = _json_object(data)
    if obj is None:
        return False
    return not any(isinstance(cand, dict) and (cand.get("content") or {}).get("parts")
                   for cand in obj.get("candidates") or ())


# ---------------------------------------------------------------- stream: Gemini -> canonical


class _Block(enum.Enum):
    NONE = "none"
    TEXT = "text"
    THINKING = "thinking"


class StreamDecoder(SSEDecoder):
    """Gemini SSE (`data: <GenerateContentResponse>` per chunk) -> canonical events. Text and
    thought parts stream as deltas into one open block each; a functionCall arrives whole and
    is one tool block; the chunk with `finishReason` ends the message (its usageMetadata is the
    final figure). A stream asked without `alt=sse` (one JSON array, element by element) is
    read alike: its first byte says which framing it is."""

    __slots__ = ("_sse", "_started", "_done", "_block", "_index", "_calls", "_usage",
                 "_n_calls", "_meta", "_framed")

    def feed(self, chunk: bytes) -> list:
        if not self._framed:
            head = chunk.lstrip(b"\xef\xbb\xbf \t\r\n")
            if not head:
                return []
            if head[:1] == b"[":
                self._sse = JsonArrayParser()
                chunk = head
            self._framed = True
        return super().feed(chunk)

    def __init__(self):
        self._framed = False  # which framing the stream has is known (its first byte)
        self._meta = None  # the last usageMetadata read (Gemini repeats it on every chunk)
        self._sse = SSEParser()
        self._started = False
        self._done = False
        self._block = _Block.NONE
        self._index = -1
        self._calls = False
        self._n_calls = 0
        self._usage = c.Usage()

    def _closed(self, out: list) -> None:
        if not self._done:
            self._fail("api_error", "upstream stream ended before its finishReason", out)

    @staticmethod
    def _unwrap(chunk: dict) -> dict:
        """The GenerateContentResponse a chunk carries (an envelope's decoder unwraps it)."""
        return chunk

    def _fail(self, kind: str, message: str, out: list) -> None:
        out.append(c.StreamError(kind, message))
        self._done = True

    def _open(self, kind: str, out: list, **start) -> None:
        self._close_block(out)
        self._index += 1
        out.append(c.BlockStart(self._index, kind, **start))
        if kind == "text":
            self._block = _Block.TEXT
        elif kind == "thinking":
            self._block = _Block.THINKING

    def _close_block(self, out: list) -> None:
        if self._block is not _Block.NONE:
            out.append(c.BlockStop(self._index))
            self._block = _Block.NONE

    def _event(self, name: str, data: str, out: list) -> None:
        if self._done or not data.strip():
            return
        chunk = _json_object(data)
        if chunk is None:
            return self._fail("api_error", f"malformed event from upstream: {data[:200]!r}",
                              out)
        if "error" in chunk and "candidates" not in chunk:
            err = chunk["error"]
            return self._fail(_error_kind(err), _error_message(err), out)
        chunk = self._unwrap(chunk)
        meta = chunk.get("usageMetadata")
        if meta is not None and meta != self._meta:
            try:
                self._usage = decode_usage(meta)
            except c.TranslationError as e:
                return self._fail("api_error", f"bad usage from upstream: {e}", out)
            self._meta = meta
        if not self._started:
            ident, model = chunk.get("responseId"), chunk.get("modelVersion")
            usage = self._usage
            out.append(c.MessageStart(ident if isinstance(ident, str) else "",
                                      model if isinstance(model, str) else "",
                                      c.Usage(usage.input_tokens, 0, usage.cache_read_tokens)))
            self._started = True
        candidates = chunk.get("candidates")
        cand = candidates[0] if isinstance(candidates, list) and candidates and isinstance(
            candidates[0], dict) else {}
        content = cand.get("content") if isinstance(cand.get("content"), dict) else {}
        parts = content.get("parts") if isinstance(content.get("parts"), list) else []
        for part in parts:
            if isinstance(part, dict):
                self._part(part, out)
        finish = cand.get("finishReason")
        if finish is None and not candidates and isinstance(chunk.get("promptFeedback"), dict) \
                and chunk["promptFeedback"].get("blockReason"):
            finish = "SAFETY"
        if finish is not None:
            self._close_block(out)
            out += [c.MessageDelta(_stop_reason(finish, self._calls), self._usage),
                    c.MessageStop()]
            self._done = True

    def _part(self, part: dict, out: list) -> None:
        sig = part.get("thoughtSignature") if isinstance(
            part.get("thoughtSignature"), str) and part["thoughtSignature"] != SKIP_SIGNATURE \
            else None
        text = part.get("text")
        if part.get("thought") is True:
            if self._block is not _Block.THINKING:
                self._open("thinking", out)
            if isinstance(text, str) and text:
                out.append(c.ThinkingDelta(self._index, text))
            if sig:
                out.append(c.SignatureDelta(self._index, sig))
            return
        if sig:  # the reasoning behind the part that follows: a block of its own
            self._open("thinking", out)
            out.append(c.SignatureDelta(self._index, sig))
            self._close_block(out)
        if isinstance(text, str):
            if text:
                if self._block is not _Block.TEXT:
                    self._open("text", out)
                out.append(c.TextDelta(self._index, text))
        elif isinstance(part.get("functionCall"), dict):
            fc = part["functionCall"]
            name = fc.get("name")
            if not isinstance(name, str) or not name:
                return self._fail("api_error", "a functionCall arrived without a name", out)
            ident = fc.get("id") if isinstance(fc.get("id"), str) and fc["id"] else (
                f"{name}_{uuid.uuid4().hex[:12]}_{self._n_calls}")
            self._n_calls += 1
            self._calls = True
            self._open("tool_use", out, tool_id=ident, tool_name=name)
            args = fc.get("args") if isinstance(fc.get("args"), dict) else {}
            out += [c.ToolInputDelta(self._index, dumps_compact(args).decode()),
                    c.BlockStop(self._index)]


# ---------------------------------------------------------------- stream: canonical -> Gemini


class StreamEncoder(c.EventEncoder):
    """Canonical events -> Gemini SSE: one chunk per text or thought delta, one per whole
    function call (its arguments are gathered until its block ends), and a last chunk with
    `finishReason` and the usage. Every event is checked against canonical.StreamGrammar."""

    __slots__ = ("_grammar", "_id", "_model", "_kind", "_tool", "_args", "_signature",
                 "_thought", "_frame")

    def __init__(self):
        self._frame: tuple[bytes, bytes] | None = None  # a delta chunk around its parts
        self._grammar = c.StreamGrammar()
        self._id = self._model = ""
        self._kind: str | None = None  # the open block's kind
        self._tool: c.BlockStart | None = None
        self._args: list[str] = []
        self._signature: str | None = None  # waiting for the part it belongs on
        self._thought = False  # the open thinking block streamed text

    def _delta(self, part: dict) -> bytes:
        """A chunk of one part and nothing else (most of a stream): the JSON around the part is
        written once per stream."""
        if self._frame is None:
            whole = self._chunk([{"text": "\x00"}])
            head, _, tail = whole.partition(b'{"text":"\\u0000"}')
            self._frame = (head, tail)
        head, tail = self._frame
        return head + dumps_compact(part) + tail

    def _chunk(self, parts: list[dict] | None = None, **candidate) -> bytes:
        cand = {"content": {"role": "model", "parts": parts or []}, **candidate, "index": 0}
        body = {"candidates": [cand]}
        if "usage" in candidate:
            body["usageMetadata"] = encode_usage(cand.pop("usage"))
        body["modelVersion"] = self._model
        body["responseId"] = self._id
        return b"data: " + dumps_compact(self._wrap(body)) + b"\r\n\r\n"

    @staticmethod
    def _wrap(body: dict) -> dict:
        """What a chunk is sent as (an envelope's encoder wraps it)."""
        return body

    def _part(self, part: dict) -> bytes:
        if self._signature is not None:
            part["thoughtSignature"] = self._signature
            self._signature = None
        return self._delta(part)

    def encode(self, event: c.Event) -> bytes:
        self._grammar.check(event)
        t = type(event)
        if t is c.TextDelta:
            return self._part({"text": event.text}) if event.text else b""
        if t is c.ThinkingDelta:
            if not event.text:
                return b""
            self._thought = True
            return self._delta({"text": event.text, "thought": True})
        if t is c.SignatureDelta:
            self._signature = (self._signature or "") + event.signature
            return b""
        if t is c.ToolInputDelta:
            self._args.append(event.partial_json)
            return b""
        if t is c.BlockStart:
            self._kind, self._args, self._thought = event.kind, [], False
            self._tool = event if event.kind == "tool_use" else None
            return b""
        if t is c.BlockStop:
            return self._stop_block()
        if t is c.MessageStart:
            self._id = event.id or uuid.uuid4().hex[:24]
            self._model = event.model
            return b""
        if t is c.MessageDelta:
            out = b""
            if self._signature is not None:  # a signature nothing followed: on an empty part
                out = self._part({"text": ""})
            return out + self._chunk(finishReason=_STOP_TO_FINISH.get(
                event.stop_reason or "end_turn", "STOP"), usage=event.usage)
        if t is c.StreamError:
            return b"data: " + dumps_compact(_error_object(
                _KIND_STATUS.get(event.kind, (500,))[0], event.message, event.kind)) + (
                b"\r\n\r\n")
        return b""  # Ping, MessageStop

    def _stop_block(self) -> bytes:
        kind, self._kind = self._kind, None
        if kind == "thinking" and self._thought and self._signature is not None:
            # a signed thought: the signature closes its own thought part
            sig, self._signature = self._signature, None
            return self._chunk([{"text": "", "thought": True, "thoughtSignature": sig}])
        if kind != "tool_use":
            return b""
        call = c.tool_use_from_arguments(self._tool.tool_id, self._tool.tool_name,
                                         "".join(self._args))
        args = call.input if call.raw_arguments is None else {"input": call.raw_arguments}
        return self._part({"functionCall": {"id": call.id, "name": call.name, "args": args}})


def client_stream_encoder(body: dict) -> StreamEncoder:
    return StreamEncoder()


# ---------------------------------------------------------------- sniffing and same-format


def sniff_request(body: object) -> bool:
    """A Gemini request: `contents` (a list), no `messages`/`input`."""
    return isinstance(body, dict) and isinstance(body.get("contents"), list) and (
        "messages" not in body)


def sniff_stream(head: bytes) -> bool:
    for line in head.lstrip(b"\xef\xbb\xbf \t\r\n").splitlines():
        line = line.strip()
        if not line or line.startswith(b":"):
            continue
        # (a Code Assist envelope holds the same keys inside its "response")
        return line.startswith(b"data:") and (b'"candidates"' in line or
                                              b'"usageMetadata"' in line) and not (
            line[5:].lstrip().startswith(b'{"response"'))
    return False


def rewrite_request(body: dict, *, model: str | None = None,
                    max_tokens: int | None = None) -> dict:
    """The client's Gemini body with only a lower maxOutputTokens (the model is in the URL);
    `body` itself when nothing changes."""
    gen = body.get("generationConfig")
    if max_tokens and isinstance(gen, dict):
        asked = gen.get("maxOutputTokens")
        if isinstance(asked, int) and asked > max_tokens:
            return dict(body, generationConfig=dict(gen, maxOutputTokens=max_tokens))
    return body
