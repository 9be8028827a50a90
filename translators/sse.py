"""Server-sent events framing, sans-IO: bytes in, events out, whatever the chunk boundaries.

Follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; a blank line dispatches;
`data:` lines join with "\\n"; a line starting with ":" is a comment; one space after the colon
is dropped. A CR at the very end of a chunk may be the first half of a CRLF, so it waits for the
next chunk (as httpx's LineDecoder does). `id` and `retry` lines are ignored: no translator
resumes a stream.
"""

from dataclasses import dataclass

from translators.canonical import MessageStop, StreamError, TranslationError

# A peer that never ends a line or an event must not grow our memory without bound. Real
# events are far smaller (a streamed delta is a few hundred bytes; the largest real ones, a
# whole tool input or an inline image, stay within a few MB).
MAX_LINE = 16 * 1024 * 1024
MAX_EVENT = 32 * 1024 * 1024


class SSETooLarge(TranslationError):
    """A line or an event beyond the parser's limit: the stream is broken off."""


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str  # "" when the server sent no `event:` line (the spec's default "message")
    data: str


class SSEParser:
    """`feed(chunk) -> [SSEEvent]`, `close() -> [SSEEvent]` (a final event the server did not end
    with a blank line is still dispatched: some providers omit it before closing)."""

    __slots__ = ("_partial", "_partial_len", "_event", "_data", "_data_len", "_pending_cr",
                 "max_line", "max_event")

    def __init__(self, max_line: int = MAX_LINE, max_event: int = MAX_EVENT):
        self.max_line = max_line
        self.max_event = max_event
        # pieces of a line not ended yet: joined only once its end arrives, so a long line fed
        # in small chunks costs linear time, not quadratic
        self._partial: list[bytes] = []
        self._partial_len = 0
        self._event = ""
        self._data: list[str] = []
        self._data_len = 0
        self._pending_cr = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        if not chunk:
            return []
        if self._pending_cr:
            self._pending_cr = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        if b"\n" not in chunk and b"\r" not in chunk:
            self._partial.append(chunk)
            self._partial_len += len(chunk)
            if self._partial_len > self.max_line:
                raise SSETooLarge(f"an event-stream line longer than {self.max_line} bytes")
            return []
        if self._partial:
            self._partial.append(chunk)
            buf = b"".join(self._partial)
        else:
            buf = chunk
        if b"\r" in buf:
            if buf.endswith(b"\r"):
                # maybe half of a CRLF: handle the CR now as a line end, swallow a leading LF later
                self._pending_cr = True
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        lines = buf.split(b"\n")
        tail = lines.pop()
        if len(tail) > self.max_line:
            raise SSETooLarge(f"an event-stream line longer than {self.max_line} bytes")
        self._partial = [tail] if tail else []
        self._partial_len = len(tail)
        out: list[SSEEvent] = []
        for raw in lines:
            self._line(raw, out)
        return out

    def close(self) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._partial:
            self._line(b"".join(self._partial), out)
            self._partial = []
            self._partial_len = 0
        self._line(b"", out)
        return out

    def _line(self, raw: bytes, out: list[SSEEvent]) -> None:
        if not raw:
            if self._data or self._event:
                out.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event, self._data, self._data_len = "", [], 0
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data_len += len(raw)
            if self._data_len > self.max_event:
                raise SSETooLarge(f"an event larger than {self.max_event} bytes")
            self._data.append(value)
        elif name == "event":
            self._event = value
        # "id", "retry" and unknown fields: nothing here needs them



class SSEDecoder:
    """The shared half of a stream decoder for a format framed as server-sent events: `feed`
    and `close` hand each event to the subclass's `_event(name, data, out)`; at the end of the
    stream `close` calls its `_closed(out)`. A subclass sets `_sse` (an SSEParser) and
    `_usage` (what the stream reported so far)."""

    __slots__ = ()

    @property
    def usage(self):
        return self._usage

    def feed(self, chunk: bytes) -> list:
        out: list = []
        for ev in self._sse.feed(chunk):
            self._event(ev.event, ev.data, out)
        return out

    def close(self) -> list:
        out: list = []
        for ev in self._sse.close():
            self._event(ev.event, ev.data, out)
        self._closed(out)
        return out


class JsonArrayParser:
    """The other framing of a streamed answer: one JSON array whose elements arrive one by one
    (Gemini's `streamGenerateContent` without `alt=sse`: `[{...}\\n,\\r\\n{...}\\n]`). Yields each
    element's text as an SSEEvent's data as soon as the element is complete, so a decoder
    written for SSE reads both framings alike. Strings are tracked (a bracket or brace inside
    one is text); an element beyond `max_event` raises SSETooLarge."""

    __slots__ = ("_buf", "_depth", "_in_string", "_escape", "max_event")

    def __init__(self, max_event: int = MAX_EVENT):
        self.max_event = max_event
        self._buf = bytearray()  # the element being read, from its opening brace
        self._depth = 0
        self._in_string = False
        self._escape = False

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        for byte in chunk:
            if self._depth == 0:
                # between elements: "[", ",", "]" and whitespace carry nothing
                if byte == 0x7B:  # "{": an element begins
                    self._buf = bytearray(b"{")
                    self._depth = 1
                continue
            self._buf.append(byte)
            if len(self._buf) > self.max_event:
                raise SSETooLarge(f"an array element larger than {self.max_event} bytes")
            if self._in_string:
                if self._escape:
                    self._escape = False
                elif byte == 0x5C:  # backslash
                    self._escape = True
                elif byte == 0x22:  # quote
                    self._in_string = False
            elif byte == 0x22:
                self._in_string = True
            elif byte in b"{[":
                self._depth += 1
            elif byte in b"}]":
                self._depth -= 1
                if self._depth == 0:
                    out.append(SSEEvent("", self._buf.decode("utf-8", "replace")))
                    self._buf = bytearray()
        return out

    def close(self) -> list[SSEEvent]:
        if self._depth:  # an element cut off: handed on as it is, its decoder says it broke
            data, self._buf, self._depth = self._buf.decode("utf-8", "replace"), bytearray(), 0
            return [SSEEvent("", data)]
        return []


class JsonArrayFraming:
    """An SSE stream encoder's output as the elements of one JSON array, written as they come:
    `[` before the first element, `\\n,` between elements, `\\n]` after the last one (at the
    encoder's final event, or its error). Wraps any encoder whose events are `data: <JSON>`
    frames (Gemini's, Code Assist's)."""

    __slots__ = ("inner", "_open", "_closed")

    def __init__(self, inner):
        self.inner = inner
        self._open = False
        self._closed = False

    def encode(self, event) -> bytes:
        frames = self.inner.encode(event)
        out = bytearray()
        if frames.startswith(b"data: ") and frames.endswith(b"\r\n\r\n") and (
                frames.count(b"\n") == 2):  # one frame (most events): no line split
            out += (b"\n," if self._open else b"[") + frames[6:-4]
            self._open = True
            frames = b""
        for line in frames.split(b"\n") if frames else ():
            line = line.rstrip(b"\r")
            if line.startswith(b"data:"):
                out += (b"\n," if self._open else b"[") + line[5:].lstrip(b" ")
                self._open = True
        end = type(event) is MessageStop or type(event) is StreamError
        if end and not self._closed:
            out += (b"\n]" if self._open else b"[]")
            self._open = self._closed = True
        return bytes(out)

    def encode_all(self, events) -> bytes:
        return b"".join([self.encode(ev) for ev in events])
