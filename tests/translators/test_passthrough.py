"""CheckedPassthrough: a same-format stream passes untouched, whole events only, and a broken
one stops at the event that broke it; whole buffer, byte by byte and in random chunks."""

import random

import pytest

from translators import anthropic, canonical as c, openai_chat
from translators.passthrough import _EVENT_END, CheckedPassthrough, event_ends

FORMATS = {"anthropic": anthropic, "openai-chat": openai_chat}


def good_events():
    return [c.MessageStart("msg_1", "m", c.Usage(3, 0)), c.Ping(), c.BlockStart(0, "text"),
            c.TextDelta(0, "Hello"), c.TextDelta(0, " world"), c.BlockStop(0),
            c.MessageDelta("end_turn", c.Usage(3, 2)), c.MessageStop()]


def wire_events(fmt: str) -> list[bytes]:
    """A sound stream of the format, one item per SSE event (Chat: one chunk per event)."""
    if fmt == "anthropic":
        enc = anthropic.StreamEncoder()
        return [enc.encode(ev) for ev in good_events()]
    enc = openai_chat.StreamEncoder(created=1, include_usage=True)
    out = []
    for ev in good_events():
        for piece in enc.encode(ev).split(b"\n\n"):
            if piece:
                out.append(piece + b"\n\n")
    return out


def checker(fmt: str) -> CheckedPassthrough:
    mod = FORMATS[fmt]
    return CheckedPassthrough(mod.StreamDecoder, mod.is_error_event, mod.may_follow_stop)


def chunkings(data: bytes):
    yield "whole", [data]
    yield "byte by byte", [data[i:i + 1] for i in range(len(data))]
    rnd = random.Random(len(data))
    cuts = sorted(rnd.sample(range(1, len(data)), min(12, len(data) - 1)))
    yield "random", [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]


def ends_an_event(data: bytes) -> bool:
    """`data` ends with a blank line (a CR at its end counts: the client's parser ends the
    event there too)."""
    return any(m.end() == len(data) for m in _EVENT_END.finditer(data))


def run(fmt: str, chunks: list[bytes]) -> tuple[CheckedPassthrough, bytes, list]:
    """Feed every chunk and close; every step passes only whole events."""
    chk = checker(fmt)
    passed, events = b"", []
    for chunk in chunks:
        out, evs = chk.feed(chunk)
        if out:
            # what is passed ends where an event ends
            assert ends_an_event(passed + out), (passed, out)
        passed += out
        events += evs
    out, evs = chk.close()
    return chk, passed + out, events + evs


FMTS = ["anthropic", "openai-chat"]


@pytest.mark.parametrize("fmt", FMTS)
def test_a_sound_stream_passes_untouched(fmt):
    data = b"".join(wire_events(fmt))
    for how, chunks in chunkings(data):
        chk, passed, events = run(fmt, chunks)
        assert passed == data, how
        assert chk.broken is None and chk.ended, how
        assert type(events[-1]) is c.MessageStop


@pytest.mark.parametrize("fmt", FMTS)
@pytest.mark.parametrize("bad", [
    b"data: {not json\n\n",
    b"data: garbage mid-stream\n\n",
    b"<html><body>oops</body></html>\ndata: x\n\n",
])
def test_garbage_mid_stream_stops_before_it(fmt, bad):
    events = wire_events(fmt)
    head = b"".join(events[:4])
    data = head + bad + b"".join(events[4:])
    for how, chunks in chunkings(data):
        chk, passed, _ = run(fmt, chunks)
        assert passed == head, how
        assert chk.broken is not None and chk.broken.kind == "api_error", how


def test_an_event_out_of_order_stops_before_it():
    events = wire_events("anthropic")
    head = b"".join(events[:4])  # message_start, ping, content_block_start 0, delta
    out_of_order = (b'event: content_block_start\ndata: {"type":"content_block_start","index":0,'
                    b'"content_block":{"type":"text","text":""}}\n\n')
    for how, chunks in chunkings(head + out_of_order + b"".join(events[4:])):
        chk, passed, _ = run("anthropic", chunks)
        assert passed == head, how
        assert "repeated" in chk.broken.message, how


@pytest.mark.parametrize("fmt", FMTS)
def test_a_stream_that_ends_without_its_final_event_is_broken(fmt):
    events = wire_events(fmt)
    head = b"".join(events[:3])
    for how, chunks in chunkings(head):
        chk, passed, _ = run(fmt, chunks)
        assert passed == head, how
        assert chk.broken is not None and "ended before" in chk.broken.message, how


@pytest.mark.parametrize("fmt", FMTS)
def test_a_half_event_at_the_end_is_never_passed(fmt):
    events = wire_events(fmt)
    head = b"".join(events[:4])
    chk, passed, _ = run(fmt, [head + events[4][:9]])
    assert passed == head and chk.broken is not None


@pytest.mark.parametrize("fmt,error", [
    ("anthropic", b'event: error\ndata: {"type":"error","error":{"type":"overloaded_error",'
                  b'"message":"Overloaded"}}\n\n'),
    ("openai-chat", b'data: {"error":{"message":"boom","type":"server_error"}}\n\n'),
])
def test_the_providers_own_error_event_passes_and_ends_the_stream(fmt, error):
    events = wire_events(fmt)
    head = b"".join(events[:4]) + error
    for how, chunks in chunkings(head + b"data: more after the error\n\n"):
        chk, passed, evs = run(fmt, chunks)
        assert passed == head, how
        assert chk.broken is None and chk.ended, how
        assert type(evs[-1]) is c.StreamError


def test_nothing_follows_message_stop():
    data = b"".join(wire_events("anthropic"))
    for how, chunks in chunkings(data + b"data: {garbage after the end\n\nevent: ping\n\n"):
        chk, passed, _ = run("anthropic", chunks)
        assert passed == data and chk.broken is None, how


def test_chat_done_and_usage_chunk_may_follow_an_ended_message():
    """A finish chunk carrying usage ends the message; the usage chunk and [DONE] still pass,
    whatever follows them does not."""
    head = (b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
            b'data: {"id":"c","model":"m","choices":[{"index":0,"delta":{},'
            b'"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n')
    tail = (b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}'
            b'\n\ndata: [DONE]\n\n')
    for how, chunks in chunkings(head + tail + b"data: nope\n\ndata: [DONE]\n\n"):
        chk, passed, _ = run("openai-chat", chunks)
        assert passed == head + tail and chk.broken is None, how


def test_crlf_streams_are_cut_at_their_own_event_ends():
    events = [e.replace(b"\n", b"\r\n") for e in wire_events("anthropic")]
    head = b"".join(events[:4])
    for how, chunks in chunkings(head + b"data: {bad\r\n\r\n" + b"".join(events[4:])):
        chk, passed, _ = run("anthropic", chunks)
        # byte by byte, the event ends at its last CR (as for the client's parser); the LF
        # after it comes with the broken event
        assert passed == (head[:-1] if how == "byte by byte" else head), how
        assert chk.broken is not None, how


def test_an_unended_last_event_is_ended_for_the_client():
    data = b"".join(wire_events("anthropic"))
    chk, passed, _ = run("anthropic", [data[:-2]])  # no blank line after message_stop
    assert passed == data and chk.broken is None


@pytest.mark.parametrize("fmt", FMTS)
def test_opened_reuses_the_decoder_that_read_the_head(fmt):
    """The head read while opening the candidate: its whole events pass, a partial one waits;
    the decoder that read it is kept."""
    mod = FORMATS[fmt]
    data = b"".join(wire_events(fmt))
    cut = len(b"".join(wire_events(fmt)[:4])) + 5
    dec = mod.StreamDecoder()
    head_events = dec.feed(data[:cut])
    chk = checker(fmt)
    passed, events = chk.opened(dec, data[:cut], head_events)
    assert chk.decoder is dec and events == head_events
    assert passed == b"".join(wire_events(fmt)[:4])
    rest, _ = chk.feed(data[cut:])
    assert passed + rest == data and chk.ended


def test_opened_replays_a_head_that_holds_a_break():
    events = wire_events("anthropic")
    head = b"".join(events[:4])
    data = head + b"data: {bad\n\n"
    dec = anthropic.StreamDecoder()
    chk = checker("anthropic")
    passed, evs = chk.opened(dec, data, dec.feed(data))
    assert passed == head and chk.broken is not None
    assert chk.decoder is not dec and type(evs[-1]) is c.StreamError


def test_event_ends():
    assert event_ends(b"a\n\nb\n\n") == [3, 6]
    assert event_ends(b"a\r\n\r\nb\r\rc\n\r\n") == [5, 8, 12]
    assert event_ends(b"a\r\nb\r\n") == []
    assert event_ends(b"a\r\n\r") == []  # maybe a CRLF: waits for the next byte
