"""The canonical model's helpers: shared JSON encoding, validation, error kinds, folding streams."""

import json

import pytest

from translators import canonical as c


def test_dumps_compact_is_compact_utf8():
    out = c.dumps_compact({"a": [1, "é 🌍"], "b": None})
    assert out == '{"a":[1,"é 🌍"],"b":null}'.encode()


def test_dumps_compact_escapes_a_lone_surrogate_instead_of_failing():
    out = c.dumps_compact({"t": "a\ud83db é"})
    assert out == b'{"t":"a\\ud83db \\u00e9"}'
    assert json.loads(out) == {"t": "a\ud83db é"}


def test_dumps_compact_too_deep_is_a_translation_error():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(c.TranslationError):
        c.dumps_compact(deep)


@pytest.mark.parametrize("value, kind, message", [
    (None, str, "must be a string, not null"), ([1], dict, "must be an object, not an array"),
    (True, c.NUMBER, "must be a number, not a boolean"),
    ("1", int, "must be an integer, not a string"),
])
def test_need_names_the_field_and_both_types(value, kind, message):
    with pytest.raises(c.TranslationError) as e:
        c.need(value, kind, "a.b")
    assert e.value.path == "a.b" and e.value.reason == message
    assert c.need(None, kind, "a.b", optional=True) is None
    assert c.need(1.5, c.NUMBER, "x") == 1.5 and c.need(False, bool, "x") is False


@pytest.mark.parametrize("status, kind", [
    (400, "invalid_request_error"), (401, "authentication_error"), (402, "billing_error"),
    (403, "permission_error"), (404, "not_found_error"), (409, "invalid_request_error"),
    (413, "request_too_large"), (422, "invalid_request_error"), (429, "rate_limit_error"),
    (500, "api_error"), (503, "api_error"), (504, "timeout_error"), (529, "overloaded_error"),
])
def test_error_kind_follows_anthropic(status, kind):
    assert c.error_kind(status) == kind
    assert kind in c.ERROR_KINDS


def test_collect_response_folds_every_block_kind():
    events = [
        c.MessageStart("m1", "x", c.Usage(input_tokens=5)),
        c.BlockStart(0, "thinking"), c.ThinkingDelta(0, "hm"), c.SignatureDelta(0, "s1"),
        c.SignatureDelta(0, "s2"), c.BlockStop(0),
        c.BlockStart(1, "redacted_thinking", redacted="opaque"), c.BlockStop(1),
        c.BlockStart(2, "text"), c.TextDelta(2, "a"), c.Ping(), c.TextDelta(2, "b"), c.BlockStop(2),
        c.BlockStart(3, "tool_use", "t1", "Bash"), c.ToolInputDelta(3, '{"c":'),
        c.ToolInputDelta(3, "1}"), c.BlockStop(3),
        c.BlockStart(4, "tool_use", "t2", "Read"), c.ToolInputDelta(4, "[1"), c.BlockStop(4),
        c.MessageDelta("tool_use", c.Usage(output_tokens=9)), c.MessageStop()]
    assert c.collect_response(events) == c.Response(
        "m1", "x", (c.Thinking("hm", signature="s1s2"), c.Thinking("", redacted="opaque"),
                    c.Text("ab"), c.ToolUse("t1", "Bash", {"c": 1}),
                    c.ToolUse("t2", "Read", {}, raw_arguments="[1")),
        "tool_use", c.Usage(input_tokens=5, output_tokens=9))
    with pytest.raises(c.TranslationError):
        c.collect_response(events[:3] + [c.StreamError("overloaded_error", "busy")])


def test_response_to_events_round_trips_and_reports_output_usage_at_the_end():
    usage = c.Usage(1, 2, 3, 4, 5)
    resp = c.Response("m1", "x", (c.Thinking("hm", "sig"), c.Text("a"),
                                  c.ToolUse("t1", "f", {"k": "\ud800"})), "tool_use", usage)
    events = c.response_to_events(resp)
    grammar = c.StreamGrammar()
    for ev in events:
        grammar.check(ev)
    assert events[0] == c.MessageStart("m1", "x", c.Usage(1, 0, 3, 4, 0))
    assert events[-2] == c.MessageDelta("tool_use", usage)
    assert c.collect_response(events) == resp


def test_tool_arguments_nested_too_deeply_are_kept_raw():
    deep = "[" * 10_000 + "]" * 10_000
    assert c.tool_use_from_arguments("t", "f", deep) == c.ToolUse("t", "f", {}, deep)


def test_event_encoder_encode_all_joins_encode():
    class Names(c.EventEncoder):
        __slots__ = ()

        def encode(self, event):
            return type(event).__name__.encode()

    assert Names().encode_all([c.Ping(), c.MessageStop()]) == b"PingMessageStop"
    with pytest.raises(AttributeError):
        Names().x = 1  # slotted all the way down
