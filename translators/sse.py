"""Server-sent events framing, sans-IO: bytes in, events out, whatever the chunk boundaries.

Follows the WHATWG event-stream rules: lines end in CRLF, LF or CR; a blank line dispatches;
`data:` lines join with "\\n"; a line starting with ":" is a comment; one space after the colon
is dropped. A CR at the very end of a chunk may be the first half of a CRLF, so it waits for the
next chunk (as httpx's LineDecoder does). `id` and `retry` lines are ignored: no translator
resumes a stream.
"""

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SSEEvent:
    event: str  # "" when the server sent no `event:` line (the spec's default "message")
    data: str


class SSEParser:
    """`feed(chunk) -> [SSEEvent]`, `close() -> [SSEEvent]` (a final event the server did not end
    with a blank line is still dispatched: some providers omit it before closing)."""

    __slots__ = ("_partial", "_event", "_data", "_pending_cr")

    def __init__(self):
        # pieces of a line not ended yet: joined only once its end arrives, so a long line fed
        # in small chunks costs linear time, not quadratic
        self._partial: list[bytes] = []
        self._event = ""
        self._data: list[str] = []
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
        self._partial = [tail] if tail else []
        out: list[SSEEvent] = []
        for raw in lines:
            self._line(raw, out)
        return out

    def close(self) -> list[SSEEvent]:
        out: list[SSEEvent] = []
        if self._partial:
            self._line(b"".join(self._partial), out)
            self._partial = []
        self._line(b"", out)
        return out

    def _line(self, raw: bytes, out: list[SSEEvent]) -> None:
        if not raw:
            if self._data or self._event:
                out.append(SSEEvent(self._event, "\n".join(self._data)))
            self._event, self._data = "", []
            return
        line = raw.decode("utf-8", "replace")
        if line[0] == ":":
            return
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        # "id", "retry" and unknown fields: nothing here needs them

