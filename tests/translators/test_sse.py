"""SSE framing: the same events whatever the line endings and chunk boundaries."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from translators.sse import SSEEvent, SSEParser, SSETooLarge


def parse(*chunks: bytes) -> list[SSEEvent]:
    p = SSEParser()
    out = []
    for chunk in chunks:
        out += p.feed(chunk)
    return out + p.close()


def test_one_event():
    assert parse(b"event: ping\ndata: {}\n\n") == [SSEEvent("ping", "{}")]


def test_event_name_defaults_to_empty_and_resets_between_events():
    assert parse(b"event: a\ndata: 1\n\ndata: 2\n\n") == [SSEEvent("a", "1"), SSEEvent("", "2")]


def test_lf_crlf_and_cr_line_endings_are_equivalent():
    text = b"event: e\ndata: x\n\nevent: f\ndata: y\n\n"
    expected = [SSEEvent("e", "x"), SSEEvent("f", "y")]
    assert parse(text) == expected
    assert parse(text.replace(b"\n", b"\r\n")) == expected
    assert parse(text.replace(b"\n", b"\r")) == expected


def test_cr_at_chunk_end_then_lf_is_one_line_end():
    # counted twice, the CRLF would be a blank line and split this into two events
    assert parse(b"data: a\r", b"\ndata: b\r\n\r\n") == [SSEEvent("", "a\nb")]


def test_cr_at_chunk_end_then_cr_is_two_line_ends():
    assert parse(b"data: a\r", b"\rdata: b\r\r") == [SSEEvent("", "a"), SSEEvent("", "b")]


def test_lone_lf_chunk_after_cr():
    assert parse(b"data: a\r", b"\n", b"\r\n") == [SSEEvent("", "a")]


def test_comments_are_ignored():
    assert parse(b": keep-alive\n\n:another\ndata: x\n: mid\n\n") == [SSEEvent("", "x")]


def test_multi_line_data_joins_with_newline():
    assert parse(b"data: one\ndata:two\ndata:  three\n\n") == [SSEEvent("", "one\ntwo\n three")]


def test_field_without_colon_and_empty_data():
    assert parse(b"data\ndata\n\n") == [SSEEvent("", "\n")]


def test_id_retry_and_unknown_fields_are_ignored():
    assert parse(b"id: 7\nretry: 10\nfoo: bar\ndata: x\n\n") == [SSEEvent("", "x")]


def test_event_without_trailing_blank_line_is_dispatched_at_close():
    p = SSEParser()
    assert p.feed(b"event: message_stop\ndata: {}") == []
    assert p.close() == [SSEEvent("message_stop", "{}")]


def test_event_without_final_newline_only_dispatched_at_close():
    p = SSEParser()
    assert p.feed(b"data: 1\n\ndata: 2\n") == [SSEEvent("", "1")]
    assert p.close() == [SSEEvent("", "2")]


def test_close_on_empty_parser():
    assert SSEParser().close() == []


def test_utf8_multibyte_split_across_chunks():
    raw = "data: héllo 🌍 世界\n\n".encode()
    cut = raw.index("🌍".encode()) + 2  # inside the 4-byte emoji
    assert parse(raw[:cut], raw[cut:]) == [SSEEvent("", "héllo 🌍 世界")]
    assert parse(*[raw[i:i + 1] for i in range(len(raw))]) == [SSEEvent("", "héllo 🌍 世界")]


STREAM = (
    ": comment\r\nevent: one\r\ndata: {\"a\": \"é\"}\r\n\r\n"
    "data: line1\ndata: line2\n\n"
    "event: three\rdata: 3\r\r"
    "data: 世界 last"
).encode()


@settings(max_examples=300)
@given(st.lists(st.integers(0, len(STREAM)), max_size=20))
def test_any_chunking_gives_the_same_events(cuts):
    cuts = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0] + cuts, cuts + [len(STREAM)])]
    expected = [SSEEvent("one", '{"a": "é"}'), SSEEvent("", "line1\nline2"),
                SSEEvent("three", "3"), SSEEvent("", "世界 last")]
    assert parse(STREAM) == expected
    assert parse(*chunks) == expected


def test_a_long_line_in_tiny_chunks():
    """A 2 MB event (a big tool argument) arriving 64 bytes at a time comes out whole (the
    parser keeps the pieces and joins them once the line ends)."""
    payload = b"data: " + b"x" * 2_000_000 + b"\n\n"
    parser = SSEParser()
    events = []
    for i in range(0, len(payload), 64):
        events += parser.feed(payload[i:i + 64])
    assert len(events) == 1 and len(events[0].data) == 2_000_000


def test_a_line_that_never_ends_is_refused_not_buffered_forever():
    p = SSEParser(max_line=1000)
    p.feed(b"data: " + b"x" * 500)
    with pytest.raises(SSETooLarge):
        for _ in range(10):
            p.feed(b"x" * 100)  # no newline ever comes


def test_a_long_line_arriving_whole_without_its_end_is_refused():
    p = SSEParser(max_line=1000)
    with pytest.raises(SSETooLarge):
        p.feed(b"data: ok\n\ndata: " + b"y" * 2000)


def test_an_event_of_many_lines_beyond_the_limit_is_refused():
    p = SSEParser(max_line=1000, max_event=5000)
    with pytest.raises(SSETooLarge):
        for _ in range(100):
            p.feed(b"data: " + b"z" * 100 + b"\n")  # lines, but never the blank line


def test_events_within_the_limits_pass_and_the_counters_reset_per_event():
    p = SSEParser(max_line=1000, max_event=1000)
    out = []
    for _ in range(50):
        out += p.feed(b"data: " + b"a" * 500 + b"\n\n")
    assert len(out) == 50
