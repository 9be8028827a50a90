"""The canonical model every wire format converts to and from (hub and spoke).

Requests, whole responses and stream events are frozen, slotted dataclasses. A format module
(`anthropic.py`, `openai_chat.py`, ...) converts its own wire format to and from these; no format
ever converts directly into another. What a format cannot express but another can (thinking
signatures, cache markers, provider extras) has a slot here so a round trip loses nothing.

Usage follows Anthropic's accounting, because it is the only one that keeps every figure apart:
`input_tokens` are the prompt tokens that were neither read from nor written to a cache;
`cache_read_tokens` and `cache_write_tokens` are the cached ones; `output_tokens` include
`reasoning_tokens`. OpenAI's `prompt_tokens` is therefore input + cache_read + cache_write.

At the end, what every format module shares: field checks (`need`, `fail`), compact JSON
(`dumps_compact`) and the error kinds with their HTTP statuses (`ERROR_KINDS`, `error_kind`).
"""

import dataclasses
import enum
import json
import uuid
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn


class TranslationError(ValueError):
    """Input a translator cannot turn into valid output. `path` names the offending field."""

    def __init__(self, message: str, path: str = ""):
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.reason = message


class StreamProtocolError(TranslationError):
    """A stream event arrived that the target grammar forbids in the current state."""


# ---------------------------------------------------------------- content parts


@dataclass(frozen=True, slots=True)
class Text:
    text: str
    cache_control: dict | None = None


@dataclass(frozen=True, slots=True)
class Image:
    """An image given inline (`data`, base64, with `media_type`) or by `url`."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    cache_control: dict | None = None

    def __post_init__(self):
        if (self.data is None) == (self.url is None):
            raise TranslationError("an image needs exactly one of data or url")


@dataclass(frozen=True, slots=True)
class Document:
    """A file the model reads (Anthropic `document`, Chat `file`): inline base64 `data` with its
    `media_type` (application/pdf), a `url`, or plain `text`; exactly one of the three."""

    media_type: str | None = None
    data: str | None = None
    url: str | None = None
    text: str | None = None
    title: str | None = None
    context: str | None = None
    citations: dict | None = None
    cache_control: dict | None = None

    def __post_init__(self):
        if sum(x is not None for x in (self.data, self.url, self.text)) != 1:
            raise TranslationError("a document needs exactly one of data, url or text")


@dataclass(frozen=True, slots=True)
class Thinking:
    """Model reasoning. `signature` (Anthropic) must travel back unchanged; `redacted` holds
    Anthropic's opaque redacted_thinking data (then `text` is empty)."""

    text: str
    signature: str | None = None
    redacted: str | None = None


@dataclass(frozen=True, slots=True)
class ToolUse:
    """A tool call. `input` is the parsed argument object; `raw_arguments` keeps the provider's
    argument text when it was not a JSON object, so nothing is silently replaced."""

    id: str
    name: str
    input: dict[str, Any]
    raw_arguments: str | None = None
    cache_control: dict | None = None


@dataclass(frozen=True, slots=True)
class ToolResult:
    tool_use_id: str
    content: tuple["Text | Image", ...]
    is_error: bool = False
    cache_control: dict | None = None


Part = Text | Image | Document | Thinking | ToolUse | ToolResult
Role = Literal["user", "assistant", "system"]


@dataclass(frozen=True, slots=True)
class Message:
    """One turn. `role="system"` is an instruction given mid-conversation (a Chat system or
    developer message, or Claude Code's mid-conversation-system beta), besides the request's
    top-level `system`."""

    role: Role
    parts: tuple[Part, ...]


@dataclass(frozen=True, slots=True)
class Tool:
    name: str
    description: str | None
    input_schema: dict[str, Any]
    cache_control: dict | None = None


@dataclass(frozen=True, slots=True)
class ToolChoice:
    """auto: model decides; any: must call some tool; none: must not; tool: must call `name`.
    `parallel=False` forbids several calls in one turn (None: provider default)."""

    mode: Literal["auto", "any", "none", "tool"]
    name: str | None = None
    parallel: bool | None = None


@dataclass(frozen=True, slots=True)
class ResponseFormat:
    """The client wants its answer as JSON: matching `schema`, or (schema None) any JSON
    object. Chat's response_format json_schema / json_object."""

    name: str | None = None
    schema: dict | None = None
    description: str | None = None
    strict: bool | None = None


@dataclass(frozen=True, slots=True)
class Request:
    model: str
    messages: tuple[Message, ...]
    system: tuple[Text, ...] = ()
    tools: tuple[Tool, ...] = ()
    tool_choice: ToolChoice | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    stop: tuple[str, ...] = ()
    stream: bool = False
    # Anthropic `thinking` object ({"type": "enabled", "budget_tokens": N} | adaptive | disabled)
    thinking: dict | None = None
    # "low" | "medium" | "high" ...: OpenAI reasoning_effort, Anthropic output_config.effort
    reasoning_effort: str | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    # Fields of the source format with no canonical slot, keyed "<format>:<field>"; a format
    # module re-emits only its own keys, so same-format round trips lose nothing.
    extras: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------- responses

StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "refusal", "pause_turn", "error"
]


# JavaScript clients (Claude Code) read JSON numbers as doubles, exact up to 2^53; the usage
# database stores signed 64-bit integers: a figure beyond this is a provider's bug, not a count
MAX_TOKENS = 2**53 - 1


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts: integers from 0 to MAX_TOKENS, checked on construction."""

    input_tokens: int = 0
    output_tokens: int = 0
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    reasoning_tokens: int = 0

    def __post_init__(self):
        for name in _USAGE_FIELDS:
            value = getattr(self, name)
            if type(value) is not int or not 0 <= value <= MAX_TOKENS:
                raise TranslationError(f"must be an integer from 0 to {MAX_TOKENS}, not "
                                       f"{_shown(value)}", f"usage.{name}")

    @property
    def prompt_tokens(self) -> int:
        """All prompt tokens, cached or not (OpenAI's prompt_tokens)."""
        return self.input_tokens + self.cache_read_tokens + self.cache_write_tokens

    def merge(self, newer: "Usage") -> "Usage":
        """Streams report usage piecemeal (start, then final): a later non-zero figure wins."""
        return Usage(
            newer.input_tokens or self.input_tokens,
            newer.output_tokens or self.output_tokens,
            newer.cache_read_tokens or self.cache_read_tokens,
            newer.cache_write_tokens or self.cache_write_tokens,
            newer.reasoning_tokens or self.reasoning_tokens,
        )


_USAGE_FIELDS = tuple(f.name for f in dataclasses.fields(Usage))


def token_count(value: Any, path: str) -> int:
    """A provider's usage figure as a count: absent or null is 0 (not reported); an integral
    number in range is the count; anything else (inf, NaN, 1.5, -3, 2^64, "12", true) is a
    TranslationError naming `path`, so a bad figure never reaches a client or the database."""
    if value is None:
        return 0
    if type(value) is float and value.is_integer():  # is_integer(): False for inf and NaN
        value = int(value)
    if type(value) is int and 0 <= value <= MAX_TOKENS:
        return value
    raise TranslationError(f"must be a token count from 0 to {MAX_TOKENS}, not {_shown(value)}",
                           path)


def _shown(value: Any) -> str:
    # repr() of an int beyond 4300 digits raises ValueError (CPython's int/str limit)
    if type(value) is int and value.bit_length() > 64:
        return f"a {value.bit_length()}-bit integer"
    return f"{value!r:.40}"


@dataclass(frozen=True, slots=True)
class Response:
    id: str
    model: str
    parts: tuple[Part, ...]
    stop_reason: StopReason | None
    usage: Usage
    stop_sequence: str | None = None


# ---------------------------------------------------------------- stream events
# Shaped after Anthropic's event grammar, the most explicit of the vendors':
#   MessageStart (BlockStart Delta* BlockStop)* MessageDelta MessageStop
# with Ping allowed anywhere after MessageStart and StreamError ending a stream at any point.

BlockKind = Literal["text", "thinking", "redacted_thinking", "tool_use"]


@dataclass(frozen=True, slots=True)
class MessageStart:
    id: str
    model: str
    usage: Usage = Usage()


@dataclass(frozen=True, slots=True)
class BlockStart:
    index: int
    kind: BlockKind
    tool_id: str | None = None  # tool_use only
    tool_name: str | None = None  # tool_use only
    redacted: str | None = None  # redacted_thinking only


@dataclass(frozen=True, slots=True)
class TextDelta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class ThinkingDelta:
    index: int
    text: str


@dataclass(frozen=True, slots=True)
class SignatureDelta:
    index: int
    signature: str


@dataclass(frozen=True, slots=True)
class ToolInputDelta:
    index: int
    partial_json: str


@dataclass(frozen=True, slots=True)
class BlockStop:
    index: int


@dataclass(frozen=True, slots=True)
class MessageDelta:
    stop_reason: StopReason | None
    usage: Usage  # cumulative: the final figures known when the message ends
    stop_sequence: str | None = None


@dataclass(frozen=True, slots=True)
class MessageStop:
    pass


@dataclass(frozen=True, slots=True)
class Ping:
    pass


@dataclass(frozen=True, slots=True)
class StreamError:
    """The stream failed after it began; `kind` is one of ERROR_KINDS (Anthropic's error types:
    api_error, overloaded_error, rate_limit_error, invalid_request_error, ...)."""

    kind: str
    message: str


Delta = TextDelta | ThinkingDelta | SignatureDelta | ToolInputDelta
Event = MessageStart | BlockStart | Delta | BlockStop | MessageDelta | MessageStop | Ping | StreamError

_DELTA_KINDS: dict[type, tuple[str, ...]] = {
    TextDelta: ("text",),
    ThinkingDelta: ("thinking",),
    SignatureDelta: ("thinking",),
    ToolInputDelta: ("tool_use",),
}


class StreamState(enum.Enum):
    IDLE = "idle"  # nothing yet
    IN_MESSAGE = "in_message"  # between blocks
    IN_BLOCK = "in_block"
    MESSAGE_ENDING = "message_ending"  # MessageDelta seen, MessageStop due
    DONE = "done"  # MessageStop or StreamError seen


# state -> event type -> next state. Anything absent is illegal.
_TRANSITIONS: dict[StreamState, dict[type, StreamState]] = {
    StreamState.IDLE: {MessageStart: StreamState.IN_MESSAGE, StreamError: StreamState.DONE},
    StreamState.IN_MESSAGE: {
        BlockStart: StreamState.IN_BLOCK,
        MessageDelta: StreamState.MESSAGE_ENDING,
        Ping: StreamState.IN_MESSAGE,
        StreamError: StreamState.DONE,
    },
    StreamState.IN_BLOCK: {
        TextDelta: StreamState.IN_BLOCK,
        ThinkingDelta: StreamState.IN_BLOCK,
        SignatureDelta: StreamState.IN_BLOCK,
        ToolInputDelta: StreamState.IN_BLOCK,
        BlockStop: StreamState.IN_MESSAGE,
        Ping: StreamState.IN_BLOCK,
        StreamError: StreamState.DONE,
    },
    StreamState.MESSAGE_ENDING: {
        MessageStop: StreamState.DONE,
        Ping: StreamState.MESSAGE_ENDING,
        StreamError: StreamState.DONE,
    },
    StreamState.DONE: {},
}


class StreamGrammar:
    """Checks a canonical event sequence: one message, blocks strictly sequential with indexes
    0, 1, 2, ..., each delta of its block's kind. Encoders run every event through `check`, so
    an out-of-order stream raises StreamProtocolError instead of reaching a client."""

    __slots__ = ("state", "block_index", "block_kind", "next_index")

    def __init__(self):
        self.state = StreamState.IDLE
        self.block_index = -1
        self.block_kind: str | None = None
        self.next_index = 0

    def check(self, event: Event) -> None:
        t = type(event)
        nxt = _TRANSITIONS[self.state].get(t)
        if nxt is None:
            raise StreamProtocolError(f"{t.__name__} is not allowed in state {self.state.value}")
        if t is BlockStart:
            if event.index != self.next_index:
                raise StreamProtocolError(
                    f"block {event.index} started, expected index {self.next_index}"
                )
            self.block_index, self.block_kind = event.index, event.kind
            self.next_index += 1
        elif t in _DELTA_KINDS:
            if event.index != self.block_index:
                raise StreamProtocolError(
                    f"{t.__name__} for block {event.index} while block {self.block_index} is open"
                )
            if self.block_kind not in _DELTA_KINDS[t]:
                raise StreamProtocolError(f"{t.__name__} inside a {self.block_kind} block")
        elif t is BlockStop:
            if event.index != self.block_index:
                raise StreamProtocolError(
                    f"block {event.index} stopped while block {self.block_index} is open"
                )
        self.state = nxt

    @property
    def done(self) -> bool:
        return self.state is StreamState.DONE


class EventEncoder:
    """Base of the format modules' StreamEncoders: `encode(event) -> bytes` is theirs."""

    __slots__ = ()

    def encode(self, event: Event) -> bytes:
        raise NotImplementedError

    def encode_all(self, events) -> bytes:
        return b"".join([self.encode(ev) for ev in events])


class _OpenBlock:
    """What collect_response knows of the block being streamed."""

    __slots__ = ("start", "chunks", "signature")

    def __init__(self, start: BlockStart):
        self.start = start
        self.chunks: list[str] = []  # text, thinking or tool argument pieces
        self.signature: str | None = None

    def part(self) -> Part:
        start, text = self.start, "".join(self.chunks)
        if start.kind == "text":
            return Text(text)
        if start.kind == "thinking":
            return Thinking(text, signature=self.signature)
        if start.kind == "redacted_thinking":
            return Thinking("", redacted=start.redacted)
        return tool_use_from_arguments(start.tool_id, start.tool_name, text)


def collect_response(events: list[Event]) -> Response:
    """Fold a complete canonical event stream into a Response (a non-streamed client served by a
    streaming provider, and the round-trip tests)."""
    msg_id, model, usage = "", "", Usage()
    stop_reason: StopReason | None = None
    stop_sequence = None
    parts: list[Part] = []
    block: _OpenBlock | None = None
    for ev in events:
        t = type(ev)
        if t is TextDelta or t is ThinkingDelta:
            block.chunks.append(ev.text)
        elif t is ToolInputDelta:
            block.chunks.append(ev.partial_json)
        elif t is SignatureDelta:
            block.signature = (block.signature or "") + ev.signature
        elif t is BlockStart:
            block = _OpenBlock(ev)
        elif t is BlockStop:
            parts.append(block.part())
            block = None
        elif t is MessageStart:
            msg_id, model, usage = ev.id, ev.model, usage.merge(ev.usage)
        elif t is MessageDelta:
            stop_reason, stop_sequence = ev.stop_reason, ev.stop_sequence
            usage = usage.merge(ev.usage)
        elif t is StreamError:
            raise TranslationError(f"{ev.kind}: {ev.message}")
    return Response(msg_id, model, tuple(parts), stop_reason, usage, stop_sequence)


def tool_use_from_arguments(tool_id: str, name: str, arguments: str) -> ToolUse:
    """A ToolUse from argument text as streamed; empty text is `{}` (a call without arguments),
    text that is not a JSON object is kept verbatim in `raw_arguments`."""
    if not arguments.strip():
        return ToolUse(tool_id, name, {})
    try:
        value = loads_json(arguments)
    except (ValueError, RecursionError):  # RecursionError: nested too deeply for json
        return ToolUse(tool_id, name, {}, raw_arguments=arguments)
    if not isinstance(value, dict):
        return ToolUse(tool_id, name, {}, raw_arguments=arguments)
    return ToolUse(tool_id, name, value)


def response_to_events(resp: Response) -> list[Event]:
    """A whole Response as the event stream that would have carried it (a provider that
    answered a streamed request in one piece still reaches a streaming client as a stream)."""
    # the prompt figures are known at the start, the output ones only at the end
    start_usage = dataclasses.replace(resp.usage, output_tokens=0, reasoning_tokens=0)
    events: list[Event] = [MessageStart(resp.id, resp.model, start_usage)]
    for i, part in enumerate(resp.parts):
        t = type(part)
        if t is Text:
            events += [BlockStart(i, "text"), TextDelta(i, part.text), BlockStop(i)]
        elif t is Thinking:
            if part.redacted is not None:
                events += [BlockStart(i, "redacted_thinking", redacted=part.redacted), BlockStop(i)]
                continue
            events += [BlockStart(i, "thinking"), ThinkingDelta(i, part.text)]
            if part.signature:
                events.append(SignatureDelta(i, part.signature))
            events.append(BlockStop(i))
        elif t is ToolUse:
            args = part.raw_arguments if part.raw_arguments is not None else dumps_compact(
                part.input).decode()
            events += [BlockStart(i, "tool_use", tool_id=part.id, tool_name=part.name),
                       ToolInputDelta(i, args), BlockStop(i)]
        else:
            raise TranslationError(f"a response cannot contain a {t.__name__} part")
    events += [MessageDelta(resp.stop_reason, resp.usage, resp.stop_sequence), MessageStop()]
    return events


# ---------------------------------------------------------------- what the client asked for

ANSWER_TOOL = "json_answer"


def answer_tool(req: Request) -> Tool | None:
    """For a target without response_format (Anthropic): the tool whose forced call carries the
    JSON answer, named after the client's schema unless one of its tools has that name."""
    rf = req.response_format
    if rf is None:
        return None
    taken = {t.name for t in req.tools}
    name = rf.name if rf.name and rf.name not in taken else ANSWER_TOOL
    while name in taken:
        name += "_"
    description = rf.description or (
        "Give your answer by calling this tool: its input is the answer, a JSON object"
        + (" matching the schema." if rf.schema else "."))
    return Tool(name, description, rf.schema or {"type": "object"})


def foreign_fields(req: Request, prefix: str) -> tuple[str, ...]:
    """The client's fields a target format (`prefix`, e.g. "anthropic:") will not send: top-level
    extras of other formats, and server tools (named by type)."""
    out = []
    for key, value in req.extras.items():
        if key.startswith(prefix):
            continue
        source, _, name = key.partition(":")
        if "/" not in name:
            out.append(name)
        elif name == "tools/server":
            out += [f"tools[{i}] ({t.get('type')})" for i, t in value if isinstance(t, dict)]
    return tuple(out)


class AnswerShape:
    """Fits a provider's answer to what the client asked (canonical -> canonical, events or a
    whole response): the answer tool's input (see `answer_tool`) becomes the message text and
    its stop reason end_turn; an empty message id is minted (Azure streams `id: ""`) and an
    empty model name becomes `model`."""

    __slots__ = ("model", "tool", "id_prefix", "_answers", "_other_call")

    def __init__(self, model: str, tool: str | None, id_prefix: str):
        self.model, self.tool, self.id_prefix = model, tool, id_prefix
        self._answers: set[int] = set()  # blocks of the answer tool, now text
        self._other_call = False  # a real tool was called: tool_use stays the stop reason

    def _ids(self, ident: str, model: str) -> tuple[str, str]:
        return ident or self.id_prefix + uuid.uuid4().hex[:24], model or self.model

    def event(self, ev: Event) -> Event:
        t = type(ev)
        if t is ToolInputDelta and ev.index in self._answers:
            return TextDelta(ev.index, ev.partial_json)
        if t is BlockStart and ev.kind == "tool_use":
            if ev.tool_name == self.tool:
                self._answers.add(ev.index)
                return BlockStart(ev.index, "text")
            self._other_call = True
        elif t is MessageStart and not (ev.id and ev.model):
            return MessageStart(*self._ids(ev.id, ev.model), ev.usage)
        elif t is MessageDelta and ev.stop_reason == "tool_use" and self._answers and (
                not self._other_call):
            return MessageDelta("end_turn", ev.usage, ev.stop_sequence)
        return ev

    def response(self, resp: Response) -> Response:
        parts = tuple(
            Text(p.raw_arguments if p.raw_arguments is not None else dumps_compact(
                p.input).decode()) if type(p) is ToolUse and p.name == self.tool else p
            for p in resp.parts)
        stop = resp.stop_reason
        if stop == "tool_use" and parts != resp.parts and not any(
                type(p) is ToolUse for p in parts):
            stop = "end_turn"
        ident, model = self._ids(resp.id, resp.model)
        return dataclasses.replace(resp, id=ident, model=model, parts=parts, stop_reason=stop)


class ShapedEncoder(EventEncoder):
    """A format's StreamEncoder fed through an AnswerShape."""

    __slots__ = ("inner", "shape")

    def __init__(self, inner: EventEncoder, shape: AnswerShape):
        self.inner, self.shape = inner, shape

    def encode(self, event: Event) -> bytes:
        return self.inner.encode(self.shape.event(event))


# ---------------------------------------------------------------- shared by the format modules


def fail(message: str, path: str) -> NoReturn:
    raise TranslationError(message, path)


NUMBER = (int, float)
_WHAT = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
         int: "an integer", NUMBER: "a number"}
_JSON_NAMES = {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
               int: "an integer", float: "a number", type(None): "null"}


def need(value: Any, kind: type | tuple, path: str, optional: bool = False) -> Any:
    """`value` if it is a `kind` (or None, when optional), else a TranslationError naming `path`.
    JSON true/false are never numbers, though Python's bool is an int."""
    if (isinstance(value, kind) and (kind is bool or not isinstance(value, bool))) or (
            optional and value is None):
        return value
    fail(f"must be {_WHAT[kind]}, not {_JSON_NAMES.get(type(value), type(value).__name__)}",
         path)


def rewrite_body(body: dict, model: str | None, max_tokens: int | None,
                 cap_fields: tuple[str, ...]) -> dict:
    """A same-format request: the client's body with only the model and a lower output cap
    changed (each of `cap_fields` the client sent above `max_tokens`); `body` itself when
    nothing changes, so the client's bytes can go on as they are."""
    changes: dict = {}
    if model is not None and body.get("model") != model:
        changes["model"] = model
    if max_tokens:
        for key in cap_fields:
            asked = body.get(key)
            if isinstance(asked, int) and asked > max_tokens:
                changes[key] = max_tokens
    return dict(body, **changes) if changes else body


def openai_response_format(kind: Any, spec: dict, path: str, spec_path: str
                           ) -> "ResponseFormat | None":
    """OpenAI's structured-output request (Chat's `response_format`, Responses' `text.format`)
    as canonical: `text` is none, `json_object` any JSON object, `json_schema` the schema
    whose name, schema, description and strict are read from `spec` (at `spec_path`)."""
    if kind == "text":
        return None
    if kind == "json_object":
        return ResponseFormat()
    if kind != "json_schema":
        fail("must be of type text, json_object or json_schema", path + ".type")

    def opt(key: str, kind):
        return need(spec.get(key), kind, spec_path + key, optional=True)

    return ResponseFormat(opt("name", str), opt("schema", dict), opt("description", str),
                          opt("strict", bool))


# JSON has no inf or NaN: never written (a ValueError, made a TranslationError below)
_dumps_utf8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_dumps_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _no_constant(name: str):
    raise ValueError(f"{name} is not JSON")


def _finite(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValueError(f"{text} is beyond a float")
    return value


# built once: json.loads with hooks builds a decoder on every call (most of a small line's cost)
_STRICT_DECODER = json.JSONDecoder(parse_constant=_no_constant, parse_float=_finite)


def loads_json(text: str | bytes) -> Any:
    """Upstream JSON text parsed as JSON is (the json module also takes NaN and Infinity, and
    reads 1e999 as inf, none of which can be sent on): ValueError or RecursionError otherwise.
    Bytes are UTF-8 (a BOM is skipped)."""
    return _STRICT_DECODER.decode(text.decode("utf-8-sig") if isinstance(text, bytes) else text)


def json_object(data: str) -> dict | None:
    """An SSE event's data as a JSON object, or None (not JSON, too deep, not an object)."""
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def dumps_compact(value: Any) -> bytes:
    """Compact JSON as UTF-8 (every encoder's output, so the encoders are built once). A lone
    surrogate, which upstream JSON can carry ("\\ud83d") but UTF-8 cannot, falls back to \\u
    escapes; nesting too deep for the encoder is a TranslationError."""
    try:
        try:
            return _dumps_utf8(value).encode()
        except UnicodeEncodeError:
            return _dumps_ascii(value).encode()
    except RecursionError:
        raise TranslationError("a value nested too deeply to encode as JSON") from None
    except ValueError as e:  # inf or NaN
        raise TranslationError(f"a value JSON cannot hold: {e}") from None


# Canonical error kinds are Anthropic's error types. HTTP status -> kind, as Anthropic documents
# it (docs.anthropic.com/en/api/errors); 422 is a request the server could not use. Other 4xx are
# invalid_request_error, other 5xx api_error (Anthropic sends no 503; an OpenAI-compatible 503
# is a generic server failure, not Anthropic's overload).
ERROR_KINDS = frozenset({
    "invalid_request_error", "authentication_error", "billing_error", "permission_error",
    "not_found_error", "request_too_large", "rate_limit_error", "timeout_error", "api_error",
    "overloaded_error"})
_STATUS_KINDS = {
    400: "invalid_request_error", 401: "authentication_error", 402: "billing_error",
    403: "permission_error", 404: "not_found_error", 413: "request_too_large",
    422: "invalid_request_error", 429: "rate_limit_error", 500: "api_error",
    504: "timeout_error", 529: "overloaded_error"}


def error_kind(status: int) -> str:
    """The canonical error kind for an HTTP status."""
    return _STATUS_KINDS.get(status) or ("api_error" if status >= 500 else "invalid_request_error")
