"""Scripted replies shared by the fake vendors: what the next model call gets, vendor-neutral.

Each fake renders a reply in its own wire format (`FakeOpenAI`: Chat Completions JSON or
`chat.completion.chunk` SSE; `FakeAnthropic`: a `message` or Messages SSE), streamed or whole as
the request asked (`"stream": true`). Queue them with `fake.enqueue(reply, ...)`.

| reply | streamed | not streamed |
|---|---|---|
| `Text` | optional reasoning deltas, then content deltas | one message |
| `ToolCall` / `ToolCalls` | optional text, then one block / tool_call per call | one message |
| `Events(n)` | n content deltas of one prebuilt piece (benchmarks) | one message |
| `Status(code)` | an error response in the vendor's error format | same |
| `Garbage` | neither JSON nor SSE, under the content-type it claims | same |
| `CutAfter(n, then)` | `then`'s first n events, then the TCP close | head, half the body, close |
| `StreamError(after, then)` | `then`'s first events, then an in-stream error | an error status |
| `Stall(seconds, then)` | nothing for `seconds` (no status line), then `then` or a close | same |
| `Linger(seconds, then)` | `then`'s events, then `seconds` before the end of the response | `then` |
| `Raw(body or pieces)` | the bytes as given: a whole body, or pieces `delay` apart (endless ok) | same |

Token usage nobody set is computed deterministically (see `Usage`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

DEFAULT_PIECES = 3


@dataclass(frozen=True, slots=True)
class Usage:
    """Token counts to report; a `None` is computed: `prompt = max(1, len(request body) // 4)`,
    `completion = max(1, len(generated text, reasoning and tool arguments) // 4)` (`Events(n)`: n),
    `reasoning = len(reasoning text) // 4` (at least 1 when there is reasoning).

    `prompt` counts every input token, cached ones included (OpenAI's `prompt_tokens`);
    Anthropic's `input_tokens` is the uncached rest: `prompt - cached - cache_write`.
    `reasoning` is a part of `completion`, as both vendors count it."""

    prompt: int | None = None
    completion: int | None = None
    cached: int = 0  # OpenAI prompt_tokens_details.cached_tokens, Anthropic cache_read_input_tokens
    reasoning: int | None = None  # OpenAI completion_tokens_details.reasoning_tokens
    cache_write: int = 0  # Anthropic cache_creation_input_tokens (OpenAI has no such field)


@dataclass(frozen=True, slots=True)
class Counts:
    """Usage with every figure resolved (what a fake reports)."""

    prompt: int
    completion: int
    cached: int
    reasoning: int
    cache_write: int


def resolve_usage(usage: Usage | None, request_size: int, generated_chars: int,
                  reasoning_chars: int, completion: int | None = None) -> Counts:
    usage = usage or Usage()
    reasoning = usage.reasoning
    if reasoning is None:
        reasoning = max(1, reasoning_chars // 4) if reasoning_chars else 0
    if usage.completion is not None:
        completion = usage.completion
    elif completion is None:
        completion = max(1, (generated_chars + reasoning_chars) // 4)
    prompt = usage.prompt if usage.prompt is not None else max(1, request_size // 4)
    return Counts(prompt, completion, usage.cached, reasoning, usage.cache_write)


def split_pieces(text: str, pieces: int) -> tuple[str, ...]:
    """`text` cut into at most `pieces` non-empty parts of near-equal length ("" -> no parts)."""
    if not text:
        return ()
    n = max(1, min(pieces, len(text)))
    size, extra = divmod(len(text), n)
    out, start = [], 0
    for i in range(n):
        end = start + size + (1 if i < extra else 0)
        out.append(text[start:end])
        start = end
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Text:
    """An assistant text answer. `pieces`: how many content deltas (an int), or the exact
    pieces (a sequence; then `text` may be left out, it is their concatenation). `reasoning`:
    thinking text streamed before the answer (OpenAI-compatible `reasoning_content`, Anthropic
    `thinking` block with a signature), cut into as many pieces. `delay`: seconds between two
    events (not streamed: the response waits `delay` per piece). `finish`: "stop" or "length"
    (mapped to the vendor's own words), or a vendor-specific value passed through."""

    text: str = ""
    pieces: int | Sequence[str] = DEFAULT_PIECES
    usage: Usage | None = None
    delay: float = 0.0
    reasoning: str | None = None
    finish: str = "stop"

    def __post_init__(self):
        if not isinstance(self.pieces, int):
            pieces = tuple(self.pieces)
            joined = "".join(pieces)
            if self.text and self.text != joined:
                raise ValueError(f"Text: pieces join to {joined!r}, not {self.text!r}")
            object.__setattr__(self, "pieces", pieces)
            object.__setattr__(self, "text", joined)

    def text_pieces(self) -> tuple[str, ...]:
        if isinstance(self.pieces, tuple):
            return tuple(p for p in self.pieces if p)
        return split_pieces(self.text, self.pieces)

    def reasoning_pieces(self) -> tuple[str, ...]:
        n = self.pieces if isinstance(self.pieces, int) else len(self.pieces)
        return split_pieces(self.reasoning or "", n)


@dataclass(frozen=True, slots=True)
class ToolCall:
    """One function call; its JSON arguments (compact `json.dumps`) stream in `pieces` fragments.
    `id`: None -> the fake makes one (`call_...` / `toolu_...`). Enqueued alone it is
    `ToolCalls((call,))`."""

    name: str
    arguments: Mapping = field(default_factory=dict)
    id: str | None = None
    pieces: int = DEFAULT_PIECES


@dataclass(frozen=True, slots=True)
class ToolCalls:
    """One or more (parallel) tool calls, after an optional `text` preamble. `interleave`: OpenAI
    streams the calls' deltas round-robin (call 0 and 1 headers, then fragment 1 of each, ...),
    as some providers do; Anthropic content blocks cannot interleave, so the Anthropic fake
    ignores it."""

    calls: Sequence[ToolCall]
    text: str = ""
    interleave: bool = False
    usage: Usage | None = None
    delay: float = 0.0
    reasoning: str | None = None

    def __post_init__(self):
        calls = (self.calls,) if isinstance(self.calls, ToolCall) else tuple(self.calls)
        if not calls:
            raise ValueError("ToolCalls needs at least one ToolCall")
        object.__setattr__(self, "calls", calls)


@dataclass(frozen=True, slots=True)
class Events:
    """A stream of `n` content deltas, each `piece` (prebuilt once: for benchmarks)."""

    n: int
    piece: str = "x"
    delay: float = 0.0
    usage: Usage | None = None


@dataclass(frozen=True, slots=True)
class Status:
    """An HTTP error: `body` None -> the vendor's error JSON for `code` (with `message` if given);
    bytes are sent as they are; a dict/list is JSON-encoded. `headers` are added (e.g.
    `{"retry-after": "2"}`)."""

    code: int
    body: bytes | Mapping | list | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    message: str | None = None


@dataclass(frozen=True, slots=True)
class Garbage:
    """A body that is neither JSON nor SSE. `content_type` None claims what the vendor would
    (`text/event-stream` for a stream request, else `application/json`)."""

    status: int = 200
    body: bytes = b"<html><body>oops</body></html>"
    content_type: str | None = None


@dataclass(frozen=True, slots=True)
class CutAfter:
    """Serve `then`, but close the TCP connection right after its first `n_events` SSE events
    (counted from the first: OpenAI's role chunk, Anthropic's `message_start`) were written; not
    streamed: after the headers and half the body. `reset`: close with a TCP RST instead of a
    FIN."""

    n_events: int
    then: Text | ToolCall | ToolCalls | Events = field(
        default_factory=lambda: Text("one two three four five six seven eight", pieces=8))
    reset: bool = False


@dataclass(frozen=True, slots=True)
class StreamError:
    """Status 200 and `then`'s first `after` events, then the vendor's in-stream error event
    (Anthropic `event: error`, OpenAI `data: {"error": ...}`) and the end of the response.
    `kind`: the vendor error type (default Anthropic `overloaded_error`, OpenAI `server_error`).
    Not streamed: a 529 (Anthropic) / 500 (OpenAI) error response."""

    after: int = 1
    kind: str | None = None
    message: str | None = None
    then: Text | ToolCall | ToolCalls | Events = field(
        default_factory=lambda: Text("one two three four", pieces=4))


@dataclass(frozen=True, slots=True)
class Stall:
    """Read the request, then send nothing for `seconds` (no status line: time-to-headers
    tests); then serve `then`, or close the connection when `then` is None. A client that gives
    up earlier ends the stall."""

    seconds: float
    then: Reply | None = None


@dataclass(frozen=True, slots=True)
class Linger:
    """Serve `then` streamed, but end the response only `seconds` after its last event (a
    provider slow to close: its final event came, its end of stream has not). A client that
    leaves earlier ends it at once."""

    seconds: float
    then: Text | ToolCall | ToolCalls | Events = field(default_factory=lambda: Text("lingering"))


@dataclass(frozen=True, slots=True)
class Raw:
    """Bytes written as they are, whatever the request asked (misbehaving providers): `body`
    whole with a Content-Length, or, when `pieces` is given, each piece written on its own
    (chunked), `delay` seconds apart; `pieces` may be an endless iterator (a trickle, a line
    that never ends), which the fake writes until the client goes. `headers` (content-type,
    content-encoding, ...) are sent as given."""

    status: int = 200
    headers: Mapping[str, str] = field(default_factory=lambda: {"content-type": "application/json"})
    body: bytes = b""
    pieces: Iterable[bytes] | None = None
    delay: float = 0.0


Reply = (Text | ToolCall | ToolCalls | Events | Status | Garbage | CutAfter | StreamError | Stall
         | Linger | Raw)


# the shell tools of the real CLIs, in the order an agent prefers them, with their arguments
SHELL_TOOLS = ("Bash", "run_shell_command", "exec_command", "shell", "exec")


def shell_call(offered, command: str) -> ToolCall | None:
    """A call running `command` with the first shell tool `offered` (tool names), in the
    arguments that CLI's tool takes: Claude Code's `Bash`, Gemini CLI's and Qwen Code's
    `run_shell_command`, Codex's `exec_command` ({cmd}) and, in its code mode, the custom
    `exec` tool (JavaScript, offered to other providers as a function taking {input})."""
    for name in SHELL_TOOLS:
        if name not in offered:
            continue
        if name == "exec_command":
            return ToolCall(name, {"cmd": command})
        if name == "exec":
            script = (f"const r = await tools.exec_command({{cmd: {json.dumps(command)}}});\n"
                      "text(r.output);")
            return ToolCall(name, {"input": script})
        arguments = {"command": command, "description": "run the requested command"}
        if name == "run_shell_command":
            arguments["is_background"] = False
        return ToolCall(name, arguments)
    return None


_RUN = re.compile(r"RUN:[ \t]*([^\r\n]+)")


def requested_shell_call(user_text: str, offered) -> ToolCall | None:
    """The call of an offered shell tool running the last `RUN: <command>` of the user's
    text (how a test asks a fake agent for a tool round trip), or None."""
    found = _RUN.findall(user_text)
    return shell_call(offered, found[-1].strip()) if found else None


# --- what the fakes render: a content reply with every figure resolved ---------------------

@dataclass(frozen=True, slots=True)
class ResolvedCall:
    id: str
    name: str
    arguments: str  # compact JSON
    fragments: tuple[str, ...]  # arguments, cut for streaming


@dataclass(frozen=True, slots=True)
class Answer:
    """A `Text`, `ToolCalls` or `Events` reply made concrete for one request."""

    reasoning: str
    reasoning_pieces: tuple[str, ...]
    text: str
    text_pieces: tuple[str, ...]  # empty for Events: see `repeat`
    repeat: tuple[str, int] | None  # Events: (piece, n)
    calls: tuple[ResolvedCall, ...]
    interleave: bool
    finish: str  # "stop", "length", "tool_calls" or a vendor value
    counts: Counts
    delay: float


def resolve(reply: Text | ToolCalls | Events, request_size: int,
            new_call_id: Callable[[], str]) -> Answer:
    if isinstance(reply, Events):
        counts = resolve_usage(reply.usage, request_size, 0, 0, completion=max(1, reply.n))
        return Answer("", (), reply.piece * reply.n, (), (reply.piece, reply.n), (), False,
                      "stop", counts, reply.delay)
    if isinstance(reply, Text):
        counts = resolve_usage(reply.usage, request_size, len(reply.text),
                               len(reply.reasoning or ""))
        return Answer(reply.reasoning or "", reply.reasoning_pieces(), reply.text,
                      reply.text_pieces(), None, (), False, reply.finish, counts, reply.delay)
    calls = []
    for call in reply.calls:
        arguments = json.dumps(dict(call.arguments), separators=(",", ":"), ensure_ascii=False)
        calls.append(ResolvedCall(call.id or new_call_id(), call.name, arguments,
                                  split_pieces(arguments, call.pieces)))
    reasoning = reply.reasoning or ""
    counts = resolve_usage(reply.usage, request_size,
                           len(reply.text) + sum(len(c.arguments) for c in calls), len(reasoning))
    n = max(1, max(c.pieces for c in reply.calls))
    return Answer(reasoning, split_pieces(reasoning, n), reply.text,
                  split_pieces(reply.text, DEFAULT_PIECES), None, tuple(calls), reply.interleave,
                  "tool_calls", counts, reply.delay)
