"""OpenAI Responses API <-> canonical: requests, whole responses and streams, both directions.

Spoken by OpenAI's `/v1/responses` and by Codex CLI (also through the ChatGPT backend).
Pure: bytes and dicts in, canonical objects out, and back.

Requests. `instructions` is the system prompt; `input` items become messages: user, assistant
and developer/system `message`s, `function_call` and `custom_tool_call` (assistant ToolUse),
`function_call_output` and `custom_tool_call_output` (user ToolResult), `reasoning` (assistant
Thinking holding the summary, never a signature: an encrypted reasoning item means nothing to
another provider, which drops unsigned thinking). A freeform `custom` tool (string input, Codex's
`exec` and `apply_patch`) is the function tool another provider can call, `{"input": string}`,
and its calls are ToolUse(input={"input": text}); `tools/custom` in extras names them so a
Responses target writes them back as custom tools and calls.

Lossless same-format round trips: what an item holds beyond what canonical carries (ids,
`status`, `encrypted_content`, Codex's `internal_chat_message_metadata_passthrough`, string
content) waits in extras as the difference between the item and the one encode_request would
write, applied back while the messages keep their decoded shape. Items canonical has no place for
(Codex's `additional_tools`) and tools other than function/custom (`web_search`, `tool_search`)
are kept at their index under keys naming them ("input[0] (additional_tools)"), so another target
names them as dropped. Cannot carry, so encoding drops: canonical `stop`, `top_k`, the Anthropic
`thinking` object, cache markers, and another format's thinking (no encrypted content to send).

Whole responses and streams: `reasoning` output items become Thinking with their
`encrypted_content` as the signature (what travels back unchanged); usage is Anthropic's
accounting (input excludes cached).
"""

import base64
import enum
import re
import time
import uuid

from translators import canonical as c
from translators import openai_chat
from translators.canonical import dumps_compact, fail, need
from translators.sse import SSEDecoder, SSEParser

NAME = "openai-responses"
STREAM_CONTENT_TYPE = "text/event-stream"
JSON_CONTENT_TYPE = "application/json"
EXTRAS_PREFIX = "openai_responses:"
MESSAGE_ID_PREFIX = "resp_"
USER_FIELD = "user"
_P = EXTRAS_PREFIX
# extras keys with a "/" are ours alone (canonical.foreign_fields does not name them)
_ITEM_FIELDS = _P + "input/fields"  # per item: what differs from the item as re-encoded
_UNITS = _P + "input/units"  # per item: its group and how many parts it became
_CUSTOM = _P + "tools/custom"  # custom tool name -> its tool object
_TOOL_FIELDS = _P + "tools/fields"  # function tool name -> fields beyond name/description/params
_ADDITIONAL = _P + "tools/additional"  # tools offered in an additional_tools item (kept there)
_KEPT = re.compile(r"(input|tools)\[(\d+)\]")  # an item or tool kept verbatim at its index

# Codex's remote compaction (v2): a turn whose input ends with a `compaction_trigger` item
# wants one `compaction` item back, whose opaque `encrypted_content` Codex sends again in
# later turns in place of the history. Another provider is asked for a handoff summary (in
# Codex's own words), and the item carries that summary, marked as detour's
COMPACTION_TRIGGER = "compaction_trigger"
COMPACTION_MARK = "detour-summary:v1:"
SUMMARY_PROMPT = (
    "You are performing a CONTEXT CHECKPOINT COMPACTION. Create a handoff summary for another "
    "LLM that will resume the task. Include the current progress and key decisions made, "
    "important context, constraints or user preferences, what remains to be done (clear next "
    "steps), and any critical data, examples or references needed to continue. Be concise, "
    "structured, and focused on helping the next LLM seamlessly continue the work.")
SUMMARY_PREFIX = (
    "Another language model started to solve this problem and produced a summary of its "
    "thinking process. Use this to build on the work that has already been done and avoid "
    "duplicating work. Here is the summary produced by the other language model:\n\n")

# the function schema a freeform custom tool is offered as to a provider without them
CUSTOM_INPUT_SCHEMA = {"type": "object", "properties": {"input": {"type": "string"}},
                       "required": ["input"], "additionalProperties": False}

_SLOTS = frozenset({"model", "instructions", "input", "tools", "tool_choice",
                    "parallel_tool_calls", "max_output_tokens", "temperature", "top_p",
                    "stream", "user"})
# objects whose one member has a canonical slot: their siblings wait in extras
_NESTED = {"reasoning": "effort", "text": "format"}
_TOOL_CHOICE_MODES = {"auto": "auto", "none": "none", "required": "any"}


# ---------------------------------------------------------------- usage


def decode_usage(usage) -> c.Usage:
    """Responses usage -> canonical (input excludes the cached tokens)."""
    if not isinstance(usage, dict):
        return c.Usage()
    details = usage.get("input_tokens_details")
    details = details if isinstance(details, dict) else {}
    out_details = usage.get("output_tokens_details")
    out_details = out_details if isinstance(out_details, dict) else {}
    read = c.token_count(details.get("cached_tokens"), "usage.input_tokens_details.cached_tokens")
    prompt = c.token_count(usage.get("input_tokens"), "usage.input_tokens")
    return c.Usage(max(prompt - read, 0),
                   c.token_count(usage.get("output_tokens"), "usage.output_tokens"), read, 0,
                   c.token_count(out_details.get("reasoning_tokens"),
                                 "usage.output_tokens_details.reasoning_tokens"))


def encode_usage(usage: c.Usage) -> dict:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cache_read_tokens},
            "output_tokens": usage.output_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.output_tokens}


# ---------------------------------------------------------------- items <-> canonical units
# A unit is what one input item becomes: (group, parts). Groups: "user", "system", "assistant"
# (assistant text, tool calls, reasoning) and "tool" (tool outputs, sent in a user message).


def _name(value, path: str) -> str:
    if not isinstance(value, str) or not value:
        fail("must be a non-empty string", path)
    return value


def _content_part(part, path: str):
    need(part, dict, path)
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return c.Text(need(part.get("text"), str, path + ".text"))
    if kind == "refusal":
        return c.Text(need(part.get("refusal"), str, path + ".refusal"))
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str):
            fail("an image needs its image_url (a file_id is stored at OpenAI only)", path)
        header, sep, data = url[5:].partition(",")
        if url.startswith("data:") and sep and header.endswith(";base64"):
            return c.Image(media_type=header[:-7] or None, data=data)
        return c.Image(url=url)
    fail(f"unsupported content part type {kind!r}", path + ".type")


def _content(value, path: str) -> tuple:
    if isinstance(value, str):
        return (c.Text(value),)
    if not isinstance(value, list):
        fail("must be a string or an array of content parts", path)
    return tuple(_content_part(p, f"{path}[{i}]") for i, p in enumerate(value))


def _output(value, path: str) -> tuple:
    """A tool output: a string or content parts (Codex sends input_text parts)."""
    if value is None or value == "":
        return ()
    return _content(value, path)


def _unit(item: dict, path: str, custom: dict) -> tuple[str, tuple] | None:
    """One input item as canonical parts, or None when canonical has no place for it."""
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            fail(f"unsupported role {role!r}", path + ".role")
        group = "system" if role == "developer" else role
        return group, _content(item.get("content"), path + ".content")
    if kind == "function_call":
        args = need(item.get("arguments"), str, path + ".arguments")
        return "assistant", (c.tool_use_from_arguments(
            need(item.get("call_id"), str, path + ".call_id"),
            _name(item.get("name"), path + ".name"), args),)
    if kind == "custom_tool_call":
        name = _name(item.get("name"), path + ".name")
        custom.setdefault(name, None)  # a call of a custom tool given elsewhere (additional_tools)
        return "assistant", (c.ToolUse(need(item.get("call_id"), str, path + ".call_id"), name,
                                       {"input": need(item.get("input"), str, path + ".input")}),)
    if kind in ("function_call_output", "custom_tool_call_output"):
        return "tool", (c.ToolResult(need(item.get("call_id"), str, path + ".call_id"),
                                     _output(item.get("output"), path + ".output")),)
    if kind == "reasoning":
        summary = need(item.get("summary", []), list, path + ".summary")
        texts = [need(s, dict, f"{path}.summary[{i}]").get("text") for i, s in enumerate(summary)]
        return "assistant", (c.Thinking("\n\n".join(t for t in texts if isinstance(t, str))),)
    if kind == COMPACTION_TRIGGER:
        return "user", (c.Text(SUMMARY_PROMPT),)
    if kind == "compaction":
        summary = detour_summary(item)
        return None if summary is None else ("user", (c.Text(SUMMARY_PREFIX + summary),))
    return None


def detour_summary(item: dict) -> str | None:
    """The summary a compaction item of detour's carries (None: OpenAI's own, encrypted)."""
    content = item.get("encrypted_content")
    if not (isinstance(content, str) and content.startswith(COMPACTION_MARK)):
        return None
    try:
        return base64.b64decode(content[len(COMPACTION_MARK):], validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        return None


def compaction_item(summary: str) -> dict:
    return {"type": "compaction", "id": _item_id("cmp_"), "encrypted_content":
            COMPACTION_MARK + base64.b64encode(summary.encode()).decode()}


def asks_compaction(body: dict) -> bool:
    items = body.get("input")
    return isinstance(items, list) and bool(items) and isinstance(items[-1], dict) and (
        items[-1].get("type") == COMPACTION_TRIGGER)


def _text_part(p, out_kind: str, path: str) -> dict:
    t = type(p)
    if t is c.Text:
        return {"type": out_kind, "text": p.text}
    if t is c.Image:
        url = p.url if p.url is not None else f"data:{p.media_type or 'image/png'};base64,{p.data}"
        return {"type": "input_image", "image_url": url}
    if t is c.Document and p.text is not None:
        return {"type": out_kind, "text": f"{p.title}\n\n{p.text}" if p.title else p.text}
    fail(f"a Responses message cannot carry a {t.__name__}", path)


def _encode_unit(group: str, parts: tuple, custom: dict, custom_calls: set, path: str) -> dict:
    """The input item for one unit (the inverse of `_unit`)."""
    if group in ("user", "system", "assistant") and all(
            type(p) in (c.Text, c.Image, c.Document) for p in parts):
        kind = "output_text" if group == "assistant" else "input_text"
        return {"type": "message", "role": "developer" if group == "system" else group,
                "content": [_text_part(p, kind, f"{path}[{i}]") for i, p in enumerate(parts)]}
    p = parts[0]
    t = type(p)
    if t is c.ToolUse:
        if p.name in custom:
            custom_calls.add(p.id)
            return {"type": "custom_tool_call", "call_id": p.id, "name": p.name,
                    "input": _custom_input(p)}
        args = p.raw_arguments if p.raw_arguments is not None else dumps_compact(
            p.input).decode()
        return {"type": "function_call", "call_id": p.id, "name": p.name, "arguments": args}
    if t is c.ToolResult:
        kind = "custom_tool_call_output" if p.tool_use_id in custom_calls else (
            "function_call_output")
        if all(type(x) is c.Text for x in p.content):
            output = "".join(x.text for x in p.content)
        else:
            output = [_text_part(x, "input_text", path) for x in p.content]
        return {"type": kind, "call_id": p.tool_use_id, "output": output}
    if t is c.Thinking:
        return {"type": "reasoning",
                "summary": [{"type": "summary_text", "text": p.text}] if p.text else []}
    fail(f"a Responses request cannot carry a {t.__name__} here", path)


def _custom_input(p: c.ToolUse) -> str:
    """A custom tool call's text: the `input` string its function form was called with."""
    value = p.input.get("input")
    if isinstance(value, str):
        return value
    if p.raw_arguments is not None:
        return p.raw_arguments
    return dumps_compact(p.input).decode() if p.input else ""


def _difference(original: dict, produced: dict) -> dict:
    """What turns `produced` back into `original`: changed or added keys, and "-" for keys to
    remove (no Responses key is called "-")."""
    diff = {k: v for k, v in original.items() if k not in produced or produced[k] != v}
    gone = [k for k in produced if k not in original]
    if gone:
        diff["-"] = gone
    return diff


def _apply(produced: dict, diff: dict) -> dict:
    out = {k: v for k, v in produced.items() if k not in diff.get("-", ())}
    out.update((k, v) for k, v in diff.items() if k != "-")
    return out


# ---------------------------------------------------------------- request: Responses -> canonical


def _decode_input(items, custom: dict, extras: dict) -> list[c.Message]:
    if isinstance(items, str):
        return [c.Message("user", (c.Text(items),))]
    need(items, list, "input")
    messages: list[c.Message] = []
    units: list[list] = []  # [group, number of parts] per item, for the round trip
    fields: list[dict] = []
    calls: set = set()  # custom tool call ids, as the encoder will know them
    last = None
    for i, item in enumerate(items):
        path = f"input[{i}]"
        unit = _unit(need(item, dict, path), path, custom)
        if unit is None:
            extras[f"{_P}input[{i}] ({item.get('type')})"] = item
            continue
        group, parts = unit
        fields.append(_difference(item, _encode_unit(group, parts, custom, calls, path)))
        units.append([group, len(parts)])
        role = "user" if group == "tool" else group
        if group == last and group in ("assistant", "tool"):
            messages[-1] = c.Message(role, messages[-1].parts + parts)
        else:
            messages.append(c.Message(role, parts))
        last = group
    extras[_UNITS] = units
    if any(fields):
        extras[_ITEM_FIELDS] = fields
    return messages


# the namespace whose tools Codex calls by their bare names (exec, wait, ...); tools of other
# namespaces are called with a `namespace` field another provider cannot give back
CALLED_BY_NAME = "functions"


def _additional_tools(items, custom: dict, extras: dict) -> tuple[c.Tool, ...]:
    """The tools Codex offers in `additional_tools` input items (its code mode: the custom
    `exec` and its companions, inside a `functions` namespace), as canonical tools; the items
    themselves stay in extras, so a Responses target gets them as they were."""
    if not isinstance(items, list):
        return ()
    offered: list = []
    for i, item in enumerate(items):
        if not (isinstance(item, dict) and item.get("type") == "additional_tools"):
            continue
        for tool in item.get("tools") if isinstance(item.get("tools"), list) else ():
            if not isinstance(tool, dict):
                continue
            if tool.get("type") == "namespace":
                if tool.get("name") == CALLED_BY_NAME and isinstance(tool.get("tools"), list):
                    offered += tool["tools"]
            else:
                offered.append(tool)
    tools = _decode_tools([t for t in offered if isinstance(t, dict) and t.get("type") in (
        "function", "custom")], custom, extras, "additional_tools.tools")
    if tools:
        extras[_ADDITIONAL] = [t.name for t in tools]
    return tools


def _decode_tools(tools, custom: dict, extras: dict,
                  where: str = "tools") -> tuple[c.Tool, ...]:
    out: list[c.Tool] = []
    fields: dict = extras.get(_TOOL_FIELDS, {})
    for i, tool in enumerate(need(tools, list, where, optional=True) or ()):
        path = f"{where}[{i}]"
        kind = need(tool, dict, path).get("type")
        if kind == "function":
            name = _name(tool.get("name"), path + ".name")
            params = need(tool.get("parameters"), dict, path + ".parameters", optional=True)
            out.append(c.Tool(name, need(tool.get("description"), str, path + ".description",
                                         optional=True),
                              {"type": "object", "properties": {}} if params is None else params))
            rest = {k: v for k, v in tool.items()
                    if k not in ("type", "name", "description", "parameters")}
            if rest or params is None:
                fields[name] = rest if params is not None else dict(rest, **{"-": True})
        elif kind == "custom":
            name = _name(tool.get("name"), path + ".name")
            custom[name] = tool
            out.append(c.Tool(name, need(tool.get("description"), str, path + ".description",
                                         optional=True), CUSTOM_INPUT_SCHEMA))
        else:  # web_search, tool_search, file_search, mcp, ...: OpenAI's own, kept in place
            extras[f"{_P}tools[{i}] ({kind})"] = tool
    if fields:
        extras[_TOOL_FIELDS] = fields
    return tuple(out)


def _decode_tool_choice(choice, parallel) -> c.ToolChoice | None:
    need(parallel, bool, "parallel_tool_calls", optional=True)
    if choice is None:
        return None if parallel is None else c.ToolChoice("auto", parallel=parallel)
    if isinstance(choice, str) and choice in _TOOL_CHOICE_MODES:
        return c.ToolChoice(_TOOL_CHOICE_MODES[choice], parallel=parallel)
    if isinstance(choice, dict) and choice.get("type") in ("function", "custom"):
        return c.ToolChoice("tool", _name(choice.get("name"), "tool_choice.name"), parallel)
    fail("must be auto, none, required or {type: function, name}", "tool_choice")


def _response_format(fmt) -> c.ResponseFormat | None:
    if need(fmt, dict, "text.format", optional=True) is None:
        return None
    return c.openai_response_format(fmt.get("type"), fmt, "text.format", "text.format.")


def decode_request(body: dict) -> c.Request:
    need(body, dict, "")
    extras: dict = {}
    custom: dict = {}  # custom tool name -> its tool object (None: only its calls were seen)
    tools = _decode_tools(body.get("tools"), custom, extras)
    tools += _additional_tools(body.get("input"), custom, extras)
    messages = _decode_input(body.get("input"), custom, extras)
    if custom:
        extras[_CUSTOM] = custom
    slots: dict = {}
    for name, member in _NESTED.items():
        value = need(body.get(name), dict, name, optional=True)
        if value is not None:
            slots[name] = value.get(member)
            extras[_P + name] = {k: v for k, v in value.items() if k != member}
    for k, v in body.items():
        if k not in _SLOTS and k not in _NESTED:
            extras[_P + k] = v
    instructions = need(body.get("instructions"), str, "instructions", optional=True)

    def opt(key: str, kind):
        return need(body.get(key), kind, key, optional=True)

    return c.Request(
        model=_name(body.get("model"), "model"), messages=tuple(messages),
        system=() if instructions is None else (c.Text(instructions),), tools=tools,
        tool_choice=_decode_tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls")),
        max_tokens=opt("max_output_tokens", int), temperature=opt("temperature", c.NUMBER),
        top_p=opt("top_p", c.NUMBER), stream=bool(opt("stream", bool)),
        reasoning_effort=need(slots.get("reasoning"), str, "reasoning.effort", optional=True),
        user=opt("user", str), response_format=_response_format(slots.get("text")),
        extras=extras)


# ---------------------------------------------------------------- request: canonical -> Responses


def _default_units(messages) -> list[tuple[str, tuple]]:
    """Each message cut into the items Responses sends it as."""
    out: list[tuple[str, tuple]] = []
    for m in messages:
        if m.role == "system":
            out.append(("system", m.parts))
            continue
        run: list = []
        for p in m.parts:
            t = type(p)
            if t in (c.Text, c.Image, c.Document):
                run.append(p)
                continue
            if run:
                out.append((m.role, tuple(run)))
                run = []
            out.append(("tool" if t is c.ToolResult else m.role, (p,)))
        if run or not m.parts:
            out.append((m.role, tuple(run)))
    return out


def _decoded_units(messages, units) -> list[tuple[str, tuple]] | None:
    """The items as decode_request found them, while the messages still have that shape."""
    parts = [p for m in messages for p in m.parts]
    if not isinstance(units, list) or sum(n for _, n in units) != len(parts):
        return None
    out, at = [], 0
    for group, n in units:
        out.append((group, tuple(parts[at:at + n])))
        at += n
    return out


def encode_request(req: c.Request) -> dict:
    custom = req.extras.get(_CUSTOM) or {}
    units = _decoded_units(req.messages, req.extras.get(_UNITS))
    fields = req.extras.get(_ITEM_FIELDS) if units is not None else None
    if units is None:
        units = _default_units(req.messages)
    if not isinstance(fields, list) or len(fields) != len(units):
        fields = None
    items: list[dict] = []
    calls: set = set()
    for i, (group, parts) in enumerate(units):
        item = _encode_unit(group, parts, custom, calls, f"messages[{i}]")
        if fields is not None:
            item = _apply(item, fields[i])
        elif item["type"] == "reasoning":
            continue  # another format's thinking: nothing OpenAI could read back
        items.append(item)
    tools: list[dict] = []
    tool_fields = req.extras.get(_TOOL_FIELDS, {})
    additional = frozenset(req.extras.get(_ADDITIONAL) or ())
    for t in req.tools:
        if t.name in additional:
            continue  # offered in its additional_tools item, which goes back in its place
        if t.name in custom and custom[t.name] is not None:
            tools.append(custom[t.name])
            continue
        tool = {"type": "function", "name": t.name}
        if t.description is not None:
            tool["description"] = t.description
        extra = tool_fields.get(t.name, {})
        if not extra.get("-"):
            tool["parameters"] = t.input_schema
        tools.extend([_apply(tool, {k: v for k, v in extra.items() if k != "-"})])
    kept: dict[str, dict[int, object]] = {"input": {}, "tools": {}}
    for key, value in req.extras.items():
        if key.startswith(_P) and (m := _KEPT.match(key[len(_P):])):
            kept[m[1]][int(m[2])] = value
    for where, out in (("input", items), ("tools", tools)):
        for index in sorted(kept[where]):  # back at their original places
            out.insert(index, kept[where][index])
    body: dict = {"model": req.model}
    if req.system:
        body["instructions"] = "\n\n".join(t.text for t in req.system)
    body["input"] = items
    if tools:
        body["tools"] = tools
    choice = req.tool_choice
    # OpenAI refuses a tool choice without tools; Codex's come in an additional_tools item
    if choice is not None and (tools or kept["input"]):
        if choice.mode == "tool":
            kind = "custom" if choice.name in custom else "function"
            body["tool_choice"] = {"type": kind, "name": choice.name}
        else:
            body["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.mode]
        if choice.parallel is not None:
            body["parallel_tool_calls"] = choice.parallel
    for key, value in (("max_output_tokens", req.max_tokens), ("temperature", req.temperature),
                       ("top_p", req.top_p), ("user", req.user)):
        if value is not None:
            body[key] = value
    body["stream"] = req.stream
    nested = {"reasoning": req.reasoning_effort,
              "text": None if req.response_format is None else _encode_format(
                  req.response_format)}
    for name, member in _NESTED.items():
        if nested[name] is not None or _P + name in req.extras:
            out = dict(req.extras.get(_P + name, {}))
            if nested[name] is not None:
                out[member] = nested[name]
            body[name] = out
    for key, value in req.extras.items():
        if key.startswith(_P) and "/" not in key[len(_P):] and not _KEPT.match(key[len(_P):]):
            body.setdefault(key[len(_P):], value)
    return body


def _encode_format(rf: c.ResponseFormat) -> dict:
    if rf.schema is None and rf.name is None:
        return {"type": "json_object"}
    out = {"type": "json_schema", "name": rf.name or c.ANSWER_TOOL}
    for key, value in (("description", rf.description), ("schema", rf.schema),
                       ("strict", rf.strict)):
        if value is not None:
            out[key] = value
    return out


# ---------------------------------------------------------------- whole responses


def _stop_reason(resp: dict, has_calls: bool) -> c.StopReason:
    if resp.get("status") == "incomplete":
        details = resp.get("incomplete_details")
        reason = details.get("reason") if isinstance(details, dict) else None
        return "refusal" if reason == "content_filter" else "max_tokens"
    return "tool_use" if has_calls else "end_turn"


def _output_parts(item: dict, path: str) -> tuple:
    kind = item.get("type")
    if kind == "message":
        return _content(need(item.get("content"), list, path + ".content"), path + ".content")
    if kind == "reasoning":
        (thinking,) = _unit(item, path, {})[1]
        sig = need(item.get("encrypted_content"), str, path + ".encrypted_content", True)
        return (c.Thinking(thinking.text, signature=sig),)
    if kind in ("function_call", "custom_tool_call"):
        return _unit(item, path, {})[1]
    return ()  # web_search_call and OpenAI's other server-side items: nothing to give back


def decode_response(body: dict) -> c.Response:
    if need(body, dict, "").get("status") == "failed" or (
            body.get("error") and "output" not in body):
        fail(openai_chat._error_message(body.get("error")), "error")
    output = need(body.get("output"), list, "output")
    parts = tuple(p for i, item in enumerate(output)
                  for p in _output_parts(need(item, dict, f"output[{i}]"), f"output[{i}]"))
    ident, model = body.get("id"), body.get("model")
    return c.Response(ident if isinstance(ident, str) else "",
                      model if isinstance(model, str) else "", parts,
                      _stop_reason(body, any(type(p) is c.ToolUse for p in parts)),
                      decode_usage(body.get("usage")))


def _item_id(prefix: str) -> str:
    return prefix + uuid.uuid4().hex[:24]


def _output_items(parts, custom) -> list[dict]:
    items: list[dict] = []
    for p in parts:
        t = type(p)
        if t is c.Text:
            if items and items[-1]["type"] == "message":
                items[-1]["content"].append({"type": "output_text", "text": p.text,
                                             "annotations": []})
                continue
            items.append({"type": "message", "id": _item_id("msg_"), "status": "completed",
                          "role": "assistant", "content": [
                              {"type": "output_text", "text": p.text, "annotations": []}]})
        elif t is c.Thinking:
            if p.redacted is None:
                items.append(_reasoning_item(_item_id("rs_"), p.text, p.signature))
        elif t is c.ToolUse:
            items.append(_call_item(_item_id("ctc_" if p.name in custom else "fc_"), p, custom))
    return items


def _reasoning_item(ident: str, text: str, encrypted: str | None) -> dict:
    item = {"type": "reasoning", "id": ident,
            "summary": [{"type": "summary_text", "text": text}] if text else []}
    if encrypted:
        item["encrypted_content"] = encrypted
    return item


def _call_item(ident: str, p: c.ToolUse, custom, status: str = "completed") -> dict:
    if p.name in custom:
        return {"type": "custom_tool_call", "id": ident, "status": status, "call_id": p.id,
                "name": p.name, "input": _custom_input(p)}
    args = p.raw_arguments if p.raw_arguments is not None else dumps_compact(p.input).decode()
    return {"type": "function_call", "id": ident, "status": status, "arguments": args,
            "call_id": p.id, "name": p.name}


def _response_object(ident, model, created, status, output, usage=None, stop=None) -> dict:
    out = {"id": ident, "object": "response", "created_at": created, "model": model,
           "status": status, "output": output}
    if stop in ("max_tokens", "refusal"):
        out["status"] = "incomplete"
        out["incomplete_details"] = {
            "reason": "content_filter" if stop == "refusal" else "max_output_tokens"}
    if usage is not None:
        out["usage"] = encode_usage(usage)
    return out


def encode_response(resp: c.Response, *, custom_tools=frozenset(),
                    created: int | None = None) -> dict:
    """`custom_tools`: the client's custom tool names (their calls go back as custom calls)."""
    return _response_object(resp.id, resp.model, int(time.time()) if created is None else created,
                            "completed", _output_items(resp.parts, custom_tools), resp.usage,
                            resp.stop_reason)


# ---------------------------------------------------------------- errors (OpenAI's, as Chat)

error_body = openai_chat.error_body


def is_error_event(name: str, data: str) -> bool:
    """`error` and `response.failed` end a Responses stream with an error."""
    if name in ("error", "response.failed"):
        return True
    event = c.json_object(data)
    return event is not None and event.get("type") in ("error", "response.failed")


def may_follow_stop(name: str, data: str) -> bool:
    """Some compatible servers send `data: [DONE]` after response.completed."""
    return data.strip() == "[DONE]"


# ---------------------------------------------------------------- stream: Responses -> canonical


class _Phase(enum.Enum):
    IDLE = "idle"  # no response.created yet
    BETWEEN = "between"  # message started, no block open
    TEXT = "text"
    THINKING = "thinking"
    TOOL = "tool"
    DONE = "done"


_OPEN_PHASE = {"text": _Phase.TEXT, "thinking": _Phase.THINKING, "tool_use": _Phase.TOOL}
_FINAL = frozenset({"response.completed", "response.incomplete"})


class StreamDecoder(SSEDecoder):
    """Responses SSE (`event: response.*`) -> canonical events, whatever the chunk boundaries.
    Output items come one after another; each text content part, reasoning item and tool call
    is one block. A custom tool call's text streams as the JSON of its function form
    (`{"input": "..."}`)."""

    __slots__ = ("_sse", "_phase", "_index", "_custom", "_args_seen", "_calls", "_usage")

    def __init__(self):
        self._sse = SSEParser()
        self._phase = _Phase.IDLE
        self._index = -1
        self._custom = False  # the open tool block is a custom call
        self._args_seen = False  # the open tool block got argument deltas
        self._calls = False
        self._usage = c.Usage()

    def _closed(self, out: list) -> None:
        if self._phase is not _Phase.DONE:
            self._error("api_error", "upstream stream ended before response.completed", out)

    def _event(self, name: str, data: str, out: list) -> None:
        if self._phase is _Phase.DONE or not data.strip() or data.strip() == "[DONE]":
            return
        ev = c.json_object(data)
        if ev is None:
            return self._error("api_error", f"malformed event from upstream: {data[:200]!r}", out)
        kind = ev.get("type") if isinstance(ev.get("type"), str) else name
        if kind in ("error", "response.failed"):
            resp = ev.get("response")
            err = resp.get("error") if isinstance(resp, dict) else ev.get("error", ev)
            return self._error(openai_chat._error_kind(err), openai_chat._error_message(err), out)
        if self._phase is _Phase.IDLE:
            if kind not in ("response.created", "response.in_progress") and kind not in _FINAL:
                return
            resp = ev.get("response") if isinstance(ev.get("response"), dict) else {}
            ident, model = resp.get("id"), resp.get("model")
            out.append(c.MessageStart(ident if isinstance(ident, str) else "",
                                      model if isinstance(model, str) else ""))
            self._phase = _Phase.BETWEEN
        handler = _HANDLERS.get(kind)
        if handler is not None:
            handler(self, ev, out)

    # -- blocks

    def _open(self, kind: str, out: list, **start) -> None:
        self._close(out)
        self._index += 1
        out.append(c.BlockStart(self._index, kind, **start))
        self._phase = _OPEN_PHASE[kind]

    def _close(self, out: list) -> None:
        if self._phase in (_Phase.TEXT, _Phase.THINKING, _Phase.TOOL):
            if self._phase is _Phase.TOOL and self._custom:
                out.append(c.ToolInputDelta(self._index, '"}'))
            out.append(c.BlockStop(self._index))
            self._phase = _Phase.BETWEEN

    def _item_added(self, ev: dict, out: list) -> None:
        item = ev.get("item")
        kind = item.get("type") if isinstance(item, dict) else None
        if kind == "reasoning":
            self._open("thinking", out)
        elif kind in ("function_call", "custom_tool_call"):
            call_id, name = item.get("call_id"), item.get("name")
            if not (isinstance(call_id, str) and isinstance(name, str) and name):
                return self._error("api_error", "a tool call arrived without call_id or name", out)
            self._open("tool_use", out, tool_id=call_id, tool_name=name)
            self._custom, self._args_seen, self._calls = kind == "custom_tool_call", False, True
            if self._custom:
                out.append(c.ToolInputDelta(self._index, '{"input":"'))

    def _text_delta(self, ev: dict, out: list) -> None:
        delta = ev.get("delta")
        if isinstance(delta, str) and delta:
            if self._phase is not _Phase.TEXT:
                self._open("text", out)
            out.append(c.TextDelta(self._index, delta))

    def _part_added(self, ev: dict, out: list) -> None:
        part = ev.get("part")
        if isinstance(part, dict) and part.get("type") in ("output_text", "refusal"):
            self._open("text", out)

    def _text_done(self, ev: dict, out: list) -> None:
        if self._phase is _Phase.TEXT:
            self._close(out)

    def _thinking_delta(self, ev: dict, out: list) -> None:
        delta = ev.get("delta")
        if isinstance(delta, str) and delta:
            if self._phase is not _Phase.THINKING:
                self._open("thinking", out)
            out.append(c.ThinkingDelta(self._index, delta))

    def _summary_part(self, ev: dict, out: list) -> None:
        index = ev.get("summary_index")
        if self._phase is _Phase.THINKING and isinstance(index, int) and index > 0:
            out.append(c.ThinkingDelta(self._index, "\n\n"))  # as decode_response joins them

    def _args_delta(self, ev: dict, out: list) -> None:
        delta = ev.get("delta")
        if self._phase is not _Phase.TOOL:
            return self._error("api_error", "tool call arguments outside a tool call", out)
        if isinstance(delta, str) and delta:
            self._args_seen = True
            text = dumps_compact(delta).decode()[1:-1] if self._custom else delta
            out.append(c.ToolInputDelta(self._index, text))

    def _item_done(self, ev: dict, out: list) -> None:
        item = ev.get("item") if isinstance(ev.get("item"), dict) else {}
        kind = item.get("type")
        if kind == "reasoning" and self._phase is _Phase.THINKING:
            if isinstance(item.get("encrypted_content"), str) and item["encrypted_content"]:
                out.append(c.SignatureDelta(self._index, item["encrypted_content"]))
        elif kind in ("function_call", "custom_tool_call") and self._phase is _Phase.TOOL:
            text = item.get("arguments" if kind == "function_call" else "input")
            if not self._args_seen and isinstance(text, str) and text:
                text = dumps_compact(text).decode()[1:-1] if self._custom else text
                out.append(c.ToolInputDelta(self._index, text))
        elif kind != "message":
            return
        self._close(out)

    def _final(self, ev: dict, out: list) -> None:
        resp = ev.get("response") if isinstance(ev.get("response"), dict) else {}
        try:
            self._usage = decode_usage(resp.get("usage"))
        except c.TranslationError as e:
            return self._error("api_error", f"bad usage from upstream: {e}", out)
        self._close(out)
        out += [c.MessageDelta(_stop_reason(resp, self._calls), self._usage), c.MessageStop()]
        self._phase = _Phase.DONE

    def _error(self, kind: str, message: str, out: list) -> None:
        out.append(c.StreamError(kind, message))
        self._phase = _Phase.DONE


_HANDLERS = {
    "response.output_item.added": StreamDecoder._item_added,
    "response.content_part.added": StreamDecoder._part_added,
    "response.output_text.delta": StreamDecoder._text_delta,
    "response.refusal.delta": StreamDecoder._text_delta,
    "response.content_part.done": StreamDecoder._text_done,
    "response.reasoning_summary_part.added": StreamDecoder._summary_part,
    "response.reasoning_summary_text.delta": StreamDecoder._thinking_delta,
    "response.reasoning_text.delta": StreamDecoder._thinking_delta,
    "response.function_call_arguments.delta": StreamDecoder._args_delta,
    "response.custom_tool_call_input.delta": StreamDecoder._args_delta,
    "response.output_item.done": StreamDecoder._item_done,
    "response.completed": StreamDecoder._final,
    "response.incomplete": StreamDecoder._final,
}


# ---------------------------------------------------------------- stream: canonical -> Responses


class StreamEncoder(c.EventEncoder):
    """Canonical events -> Responses SSE, as OpenAI sends it: numbered events, item ids, the
    whole response again in response.completed. Every event is checked against
    canonical.StreamGrammar first. `custom_tools`: the client's custom tool names, whose calls
    go back as custom_tool_call items (their text whole at the block's end)."""

    __slots__ = ("_grammar", "_seq", "_created", "_custom", "_resp", "_output", "_item",
                 "_chunks", "_stop", "_usage", "_tool", "_signatures", "_summary")

    def __init__(self, *, custom_tools=frozenset(), created: int | None = None,
                 signatures: bool = True, compaction: bool = False):
        """`signatures`: thinking signatures go out as the reasoning item's
        `encrypted_content`. `compaction`: the answer to Codex's compaction_trigger: its text
        is the summary, sent as the one `compaction` item Codex expects (nothing else)."""
        self._grammar = c.StreamGrammar()
        self._seq = 0
        self._created = int(time.time()) if created is None else created
        self._custom = frozenset(custom_tools)
        self._resp = ("", "")
        self._output: list[dict] = []
        self._item: dict | None = None  # the item being streamed
        self._chunks: list[str] = []
        self._tool: c.BlockStart | None = None
        self._stop: c.StopReason | None = None
        self._usage = c.Usage()
        self._signatures = signatures
        self._summary: list[str] | None = [] if compaction else None

    def _emit(self, kind: str, **fields) -> bytes:
        event = {"type": kind, "sequence_number": self._seq, **fields}
        self._seq += 1
        return b"event: %s\ndata: %s\n\n" % (kind.encode(), dumps_compact(event))

    def _at(self) -> dict:
        return {"item_id": self._item["id"], "output_index": len(self._output)}

    def _response(self, status: str, usage=None, stop=None) -> dict:
        return _response_object(*self._resp, self._created, status, list(self._output), usage,
                                stop)

    def encode(self, event: c.Event) -> bytes:
        self._grammar.check(event)
        t = type(event)
        if self._summary is not None and t in (c.BlockStart, c.BlockStop, c.TextDelta,
                                               c.ThinkingDelta, c.ToolInputDelta,
                                               c.SignatureDelta):
            if t is c.TextDelta:
                self._summary.append(event.text)
            return b""  # a compaction answers with its one item, at the end
        if t is c.MessageStop and self._summary is not None:
            self._item = compaction_item("".join(self._summary).strip())
            out = (self._emit("response.output_item.added", output_index=len(self._output),
                              item=self._item)
                   + self._emit("response.output_item.done", output_index=len(self._output),
                                item=self._item))
            self._output.append(self._item)
            self._item = None
            resp = self._response("completed", self._usage, self._stop)
            return out + self._emit("response.completed", response=resp)
        if t is c.TextDelta or t is c.ThinkingDelta:
            if not event.text or self._item is None:
                return b""
            self._chunks.append(event.text)
            if t is c.TextDelta:
                return self._emit("response.output_text.delta", **self._at(), content_index=0,
                                  delta=event.text, logprobs=[])
            out = b""
            if len(self._chunks) == 1:
                out = self._emit("response.reasoning_summary_part.added", **self._at(),
                                 summary_index=0, part={"type": "summary_text", "text": ""})
            return out + self._emit("response.reasoning_summary_text.delta", **self._at(),
                                    summary_index=0, delta=event.text)
        if t is c.ToolInputDelta:
            self._chunks.append(event.partial_json)
            if self._item["type"] == "custom_tool_call" or not event.partial_json:
                return b""  # a custom call's text is known whole at its end
            return self._emit("response.function_call_arguments.delta", **self._at(),
                              delta=event.partial_json)
        if t is c.SignatureDelta:
            if self._item is not None and self._signatures:
                self._item["encrypted_content"] = self._item.get(
                    "encrypted_content", "") + event.signature
            return b""
        if t is c.BlockStart:
            return self._start(event)
        if t is c.BlockStop:
            return self._stop_block()
        if t is c.MessageStart:
            self._resp = (event.id, event.model)
            return (self._emit("response.created", response=self._response("in_progress"))
                    + self._emit("response.in_progress", response=self._response("in_progress")))
        if t is c.MessageDelta:
            self._stop, self._usage = event.stop_reason, event.usage
            return b""
        if t is c.MessageStop:
            resp = self._response("completed", self._usage, self._stop)
            kind = "response.completed" if resp["status"] == "completed" else (
                "response.incomplete")
            return self._emit(kind, response=resp)
        if t is c.StreamError:
            typ = openai_chat._error_object(event.kind, event.message)["error"]
            resp = self._response("failed")
            resp["error"] = {"code": typ["code"] or typ["type"], "message": event.message}
            return self._emit("response.failed", response=resp)
        return b""  # Ping

    def _start(self, ev: c.BlockStart) -> bytes:
        self._chunks = []
        if ev.kind == "redacted_thinking":
            self._item = None
            return b""
        if ev.kind == "text":
            self._item = {"type": "message", "id": _item_id("msg_"), "status": "in_progress",
                          "role": "assistant", "content": []}
            return (self._emit("response.output_item.added", output_index=len(self._output),
                               item=self._item)
                    + self._emit("response.content_part.added", **self._at(), content_index=0,
                                 part={"type": "output_text", "text": "", "annotations": []}))
        if ev.kind == "thinking":
            self._item = _reasoning_item(_item_id("rs_"), "", None)
        else:
            call = c.ToolUse(ev.tool_id, ev.tool_name, {}, raw_arguments="")
            custom = ev.tool_name in self._custom
            self._item = _call_item(_item_id("ctc_" if custom else "fc_"), call, self._custom,
                                    "in_progress")
        return self._emit("response.output_item.added", output_index=len(self._output),
                          item=dict(self._item))

    def _stop_block(self) -> bytes:
        item, text = self._item, "".join(self._chunks)
        if item is None:
            return b""
        at, out = self._at(), b""
        kind = item["type"]
        if kind == "message":
            part = {"type": "output_text", "text": text, "annotations": []}
            item = dict(item, status="completed", content=[part])
            out = (self._emit("response.output_text.done", **at, content_index=0, text=text,
                              logprobs=[])
                   + self._emit("response.content_part.done", **at, content_index=0, part=part))
        elif kind == "reasoning":
            if text:
                part = {"type": "summary_text", "text": text}
                item = dict(item, summary=[part])
                out = (self._emit("response.reasoning_summary_text.done", **at, summary_index=0,
                                  text=text)
                       + self._emit("response.reasoning_summary_part.done", **at,
                                    summary_index=0, part=part))
        elif kind == "function_call":
            item = dict(item, status="completed", arguments=text)
            out = self._emit("response.function_call_arguments.done", **at, arguments=text)
        else:
            call = c.tool_use_from_arguments(item["call_id"], item["name"], text)
            value = _custom_input(call)
            item = dict(item, status="completed", input=value)
            out = (self._emit("response.custom_tool_call_input.delta", **at, delta=value)
                   + self._emit("response.custom_tool_call_input.done", **at, input=value))
        out += self._emit("response.output_item.done", output_index=len(self._output), item=item)
        self._output.append(item)
        self._item = None
        return out


def _custom_tool_names(body: dict) -> frozenset:
    """The custom tools a client offered: in `tools`, or (Codex) in additional_tools items,
    possibly inside namespaces."""
    names: set = set()

    def walk(tools) -> None:
        for t in tools if isinstance(tools, list) else ():
            if isinstance(t, dict):
                if t.get("type") == "custom" and isinstance(t.get("name"), str):
                    names.add(t["name"])
                walk(t.get("tools"))

    walk(body.get("tools"))
    for item in body.get("input") if isinstance(body.get("input"), list) else ():
        if isinstance(item, dict) and item.get("type") == "additional_tools":
            walk(item.get("tools"))
    return frozenset(names)


def client_stream_encoder(body: dict) -> StreamEncoder:
    """The encoder of a translated answer to a Responses client. Its thinking comes from
    another provider (a Responses provider's answer passes as its bytes), whose signature
    is not OpenAI's encrypted content: the client (Codex) would send it back every turn, and
    a Responses provider asked next (a fallback) would refuse it; no other provider can use
    it either (a reasoning item decodes without one). So it is left out."""
    return StreamEncoder(custom_tools=_custom_tool_names(body), signatures=False,
                         compaction=asks_compaction(body))


# ---------------------------------------------------------------- sniffing and same-format


def sniff_request(body: object) -> bool:
    """A Responses request: `input` (a string or items) and no Chat/Anthropic `messages`."""
    return isinstance(body, dict) and "messages" not in body and isinstance(
        body.get("input"), (str, list)) and isinstance(body.get("model"), str)


def sniff_stream(head: bytes) -> bool:
    """Responses streams name their events `response.*` (or open with an `error` event)."""
    for line in head.lstrip(b"\xef\xbb\xbf \t\r\n").splitlines():
        line = line.strip()
        if not line or line.startswith(b":"):
            continue
        if line.startswith(b"event:"):
            name = line[6:].strip()
            return name.startswith(b"response.") or name == b"error"
        return line.startswith(b"data:") and b'"type"' in line and b'"response.' in line
    return False


def rewrite_request(body: dict, *, model: str | None = None,
                    max_tokens: int | None = None) -> dict:
    """The client's Responses body with only the model and a lower max_output_tokens changed;
    `body` itself when nothing changes."""
    return c.rewrite_body(body, model, max_tokens, ("max_output_tokens",))
