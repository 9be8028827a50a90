"""A same-format stream checked while it passes: the provider's SSE bytes go to the client
untouched, event by event, while the format's own StreamDecoder (which runs anyway, for usage)
checks them against the grammar. Sans-IO, like the decoders.

Only whole events are passed on (a partial event waits for its end, as a client could not use
it anyway). When the stream breaks (bytes that are not the format, an event out of order, an
end before the final event), the bytes before the broken event have been passed, nothing from
it on is, and `broken` says what happened: the caller ends the stream with an error event of
its own. A provider's own error event is well-formed: it is passed on, and ends the stream.
After the final event, only what the format allows to follow it is passed (Chat: `[DONE]`, a
usage chunk).
"""

import re
from collections.abc import Callable

from translators import canonical as c
from translators.sse import SSEParser

# a blank line ends an event; a line ends in CRLF, LF or CR (atomic: a CRLF is one line end)
_EVENT_END = re.compile(rb"(?>\r\n|\r|\n)(?>\r\n|\r|\n)")

# (name, data) of one SSE event -> bool
EventTest = Callable[[str, str], bool]


def event_ends(data: bytes, start: int = 0) -> list[int]:
    """The offsets just after each blank line in `data` (event boundaries), from `start`. A CR
    at the very end may be the first half of a CRLF: the event ends once the next byte is in."""
    if b"\r" in data:
        ends = [m.end() for m in _EVENT_END.finditer(data, start)]
        if ends and ends[-1] == len(data) and data.endswith(b"\r"):
            ends.pop()
        return ends
    ends = []
    i = data.find(b"\n\n", start)
    while i >= 0:
        ends.append(i + 2)
        i = data.find(b"\n\n", i + 2)
    return ends


class CheckedPassthrough:
    """`feed(chunk) -> (bytes to pass on, decoder events)`, `close() -> (bytes, events)`.

    `decoder`: the format's StreamDecoder, fresh or already fed `head` (the bytes read while
    the candidate was being opened, whose events are `head_events`); `new_decoder` makes a fresh
    one when the head has to be replayed event by event (it holds an error or the final event).
    `is_own_error(name, data)`: the event is the format's in-stream error; `may_follow(name,
    data)`: the event may come after the final one. `broken`: the StreamError that broke the
    stream (the decoder's own words), None while it is sound."""

    __slots__ = ("decoder", "_new_decoder", "_is_own_error", "_may_follow", "_pending",
                 "_pending_len", "ended", "_dropping", "broken")

    def __init__(self, new_decoder: Callable[[], object], is_own_error: EventTest,
                 may_follow: EventTest):
        self._new_decoder = new_decoder
        self.decoder = new_decoder()
        self._is_own_error = is_own_error
        self._may_follow = may_follow
        self._pending: list[bytes] = []  # the event not ended yet (already fed to the decoder)
        self._pending_len = 0
        self.ended = False  # the final event (or the provider's error event) was passed
        self._dropping = False  # something that may not follow the end came: nothing more
        self.broken: c.StreamError | None = None

    def opened(self, decoder, head: bytes, head_events: list) -> tuple[bytes, list]:
        """Take over a decoder that was fed `head` whole (its events `head_events`): reused as
        it is unless its events need placing event by event (an error or the final event)."""
        if any(type(ev) is c.StreamError or type(ev) is c.MessageStop for ev in head_events):
            return self.feed(head)  # a fresh decoder, replayed event by event
        self.decoder = decoder
        ends = event_ends(head)
        cut = ends[-1] if ends else 0
        if cut < len(head):
            self._pending = [head[cut:]]
            self._pending_len = len(head) - cut
        return head[:cut], head_events

    def feed(self, chunk: bytes) -> tuple[bytes, list]:
        if self.broken is not None or not chunk:
            return b"", []
        if self.ended:
            return self._after_end(chunk), []
        # a boundary may straddle the pending bytes and the chunk: look back two bytes
        lead = self._pending[-1][-2:] if self._pending else b""
        ends = event_ends(lead + chunk if lead else chunk)
        if not ends:
            return self._partial(b"", chunk)
        shift = len(lead)
        if len(ends) == 1 and ends[0] - shift == len(chunk):
            # the common case: the chunk ends the pending event (or is one whole event)
            events = self.decoder.feed(chunk)
            out = self._take(chunk)
            if not events:
                return out, events
            return self._judge(b"", out, events, chunk, len(chunk))
        out, events, start = [], [], 0
        for end in ends:
            end -= shift
            if end <= start:
                continue
            piece = chunk[start:end]
            new = self.decoder.feed(piece)
            passed = self._take(piece)
            if new:
                done, new = self._judge(b"".join(out), passed, new, chunk, end)
                events += new
                if self.broken is not None or self.ended:
                    return done, events
                out = [done]
            else:
                out.append(passed)
            start = end
        if start < len(chunk):
            done, new = self._partial(b"".join(out), chunk[start:])
            return done, events + new
        return b"".join(out), events

    def close(self) -> tuple[bytes, list]:
        if self.broken is not None:
            return b"", []
        if self.ended:
            return self._after_end(b"", closing=True), []
        events = self.decoder.close()
        last = self._take(b"")
        if last and not last.endswith((b"\n", b"\r")):
            last += b"\n"
        if last:
            last += b"\n"  # the client's parser dispatches an event only at its blank line
        return self._judge(b"", last, events, b"", 0)

    # -- internals

    def _partial(self, before: bytes, piece: bytes) -> tuple[bytes, list]:
        """`piece` does not end an event: held, unless the decoder already took a CR at its
        end for the blank line (a CRLF's second half may still follow: the client's parser
        swallows it as we do)."""
        events = self.decoder.feed(piece)
        self._hold(piece)
        if not events:
            return before, events
        return self._judge(before, self._take(b""), events, b"", 0)

    def _hold(self, piece: bytes) -> None:
        self._pending.append(piece)
        self._pending_len += len(piece)

    def _take(self, piece: bytes) -> bytes:
        """The pending bytes and `piece`: one whole event (or several), to pass or drop."""
        if not self._pending:
            return piece
        self._pending.append(piece)
        whole = b"".join(self._pending)
        self._pending, self._pending_len = [], 0
        return whole

    def _judge(self, before: bytes, event: bytes, events: list, chunk: bytes,
               end: int) -> tuple[bytes, list]:
        """`event`'s bytes (one or more whole events that gave `events`) after `before`:
        passed if sound; the rest of `chunk` from `end` is for after the end."""
        for ev in events:
            t = type(ev)
            if t is c.StreamError:
                if self._own_error(event):
                    self.ended = True
                    return before + event, events
                self.broken = ev
                return before, events
            if t is c.MessageStop:
                self.ended = True
        if self.ended:
            return before + event + self._after_end(chunk[end:]), events
        return before + event, events

    def _own_error(self, event: bytes) -> bool:
        parsed = SSEParser()
        found = parsed.feed(event) + parsed.close()
        return bool(found) and self._is_own_error(found[-1].event, found[-1].data)

    def _after_end(self, chunk: bytes, closing: bool = False) -> bytes:
        """After the final event: what the format allows to follow it is passed whole; at the
        first thing that does not, it and everything later are dropped (the client has its
        whole answer already: nothing to report to it)."""
        if self._dropping:
            return b""
        if chunk:
            self._hold(chunk)
        data = self._take(b"")
        ends = event_ends(data)
        if closing and data.strip() and (not ends or ends[-1] < len(data)):
            data += b"\n\n"  # an unended last event: ended for the client's parser
            ends.append(len(data))
        out, start = [], 0
        for end in ends:
            piece = data[start:end]
            parsed = SSEParser()
            if not all(self._may_follow(ev.event, ev.data)
                       for ev in parsed.feed(piece) + parsed.close()):
                self._dropping = True
                return b"".join(out)
            out.append(piece)
            start = end
        if start < len(data):
            self._hold(data[start:])
        return b"".join(out)
