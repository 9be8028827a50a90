"""Usage figures from a provider are counts or a typed error: never inf, NaN, a negative or a
number the database cannot hold (issue 12: one figure >= 2^63 stopped usage recording)."""

import json
import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from translators import anthropic
from translators import canonical as c
from translators import openai_chat as oc

MAX = 2**53 - 1  # the largest count (JSON clients read numbers as doubles)
BAD_FIGURES = [2**63, 2**64, 10**30, MAX + 1, -1, math.inf, -math.inf, math.nan, 1.5,
               "12", "\udc80", True, [], {}]

# what a provider could put where a count belongs: the values that broke the translators plus
# everything else JSON can carry
figures = st.one_of(
    st.sampled_from(BAD_FIGURES),
    st.none(),
    st.integers(min_value=-2**70, max_value=2**70),
    st.integers(min_value=0, max_value=10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF), max_size=2),
    st.text(max_size=5),
    st.booleans(),
)
OPENAI_KEYS = ["prompt_tokens", "completion_tokens", "total_tokens", "prompt_cache_hit_tokens"]
OPENAI_DETAIL_KEYS = ["cached_tokens", "cache_write_tokens", "cache_creation_input_tokens"]
ANTHROPIC_KEYS = ["input_tokens", "output_tokens", "cache_read_input_tokens",
                  "cache_creation_input_tokens"]


def usage_objects(keys, details=None):
    usage = st.dictionaries(st.sampled_from(keys), figures, max_size=len(keys))
    if details is None:
        return usage
    return st.tuples(usage, st.dictionaries(st.sampled_from(details), figures)).map(
        lambda pair: {**pair[0], "prompt_tokens_details": pair[1],
                      "completion_tokens_details": {"reasoning_tokens": pair[1].get(
                          "cached_tokens")}})


def dumps(value) -> str:
    # Python's json writes inf/NaN as Infinity/NaN, which its loads (the decoders') accepts;
    # a lone surrogate goes out as a \\udc80 escape, as upstream JSON can carry it
    return json.dumps(value)


def assert_valid(usage: c.Usage) -> None:
    for name in ("input_tokens", "output_tokens", "cache_read_tokens", "cache_write_tokens",
                 "reasoning_tokens"):
        value = getattr(usage, name)
        assert type(value) is int and 0 <= value <= MAX, (name, value)


def feed_all(decoder, data: bytes, split: int) -> list:
    """The stream whole and in `split`-byte pieces: only TranslationError may escape."""
    events = []
    try:
        for i in range(0, len(data), split):
            events += decoder.feed(data[i:i + split])
        events += decoder.close()
    except c.TranslationError:
        pass
    for ev in events:
        if isinstance(ev, (c.MessageStart, c.MessageDelta)):
            assert_valid(ev.usage)
    return events


def openai_stream(usage: dict) -> bytes:
    chunk = {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {"content": "hi"},
                                                    "finish_reason": None}]}
    last = {"id": "c1", "model": "m", "choices": [{"index": 0, "delta": {},
                                                   "finish_reason": "stop"}], "usage": usage}
    return f"data: {dumps(chunk)}\n\ndata: {dumps(last)}\n\ndata: [DONE]\n\n".encode()


def anthropic_stream(start_usage: dict, final_usage: dict) -> bytes:
    events = [
        ("message_start", {"type": "message_start", "message": {
            "id": "m1", "type": "message", "role": "assistant", "model": "x", "content": [],
            "stop_reason": None, "usage": start_usage}}),
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "hi"}}),
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                           "usage": final_usage}),
        ("message_stop", {"type": "message_stop"}),
    ]
    return "".join(f"event: {name}\ndata: {dumps(body)}\n\n" for name, body in events).encode()


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(usage=usage_objects(OPENAI_KEYS, OPENAI_DETAIL_KEYS), split=st.sampled_from([1, 7, 10**6]))
def test_openai_chat_stream_usage_fuzz_only_typed_errors(usage, split):
    decoder = oc.StreamDecoder()
    feed_all(decoder, openai_stream(usage), split)
    assert_valid(decoder.usage)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(start=usage_objects(ANTHROPIC_KEYS), final=usage_objects(ANTHROPIC_KEYS),
       split=st.sampled_from([1, 7, 10**6]))
def test_anthropic_stream_usage_fuzz_only_typed_errors(start, final, split):
    decoder = anthropic.StreamDecoder()
    feed_all(decoder, anthropic_stream(start, final), split)
    assert_valid(decoder.usage)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(openai_usage=usage_objects(OPENAI_KEYS, OPENAI_DETAIL_KEYS),
       anthropic_usage=usage_objects(ANTHROPIC_KEYS))
def test_whole_response_usage_fuzz_only_typed_errors(openai_usage, anthropic_usage):
    bodies = [
        (oc.decode_response, {"id": "c1", "model": "m", "choices": [
            {"index": 0, "message": {"role": "assistant", "content": "hi"},
             "finish_reason": "stop"}], "usage": openai_usage}),
        (anthropic.decode_response, {"id": "m1", "type": "message", "role": "assistant",
                                     "model": "x", "content": [{"type": "text", "text": "hi"}],
                                     "stop_reason": "end_turn", "usage": anthropic_usage}),
    ]
    for decode, body in bodies:
        try:
            resp = decode(json.loads(dumps(body)))
        except c.TranslationError:
            continue
        assert_valid(resp.usage)


@pytest.mark.parametrize("figure", BAD_FIGURES, ids=repr)
def test_a_bad_figure_ends_an_openai_stream_with_an_error_event(figure):
    decoder = oc.StreamDecoder()
    events = decoder.feed(openai_stream({"prompt_tokens": 3, "completion_tokens": figure}))
    events += decoder.close()
    assert isinstance(events[-1], c.StreamError)
    assert "usage.completion_tokens" in events[-1].message
    assert decoder.usage == c.Usage()


@pytest.mark.parametrize("figure", BAD_FIGURES, ids=repr)
def test_a_bad_figure_ends_an_anthropic_stream_with_an_error_event(figure):
    decoder = anthropic.StreamDecoder()
    events = decoder.feed(anthropic_stream({"input_tokens": 5}, {"output_tokens": figure}))
    events += decoder.close()
    assert isinstance(events[-1], c.StreamError)
    assert "usage.output_tokens" in events[-1].message
    assert decoder.usage == c.Usage(input_tokens=5)


def test_infinity_as_a_json_number_is_rejected_by_the_openai_decoder():
    # 1e999 is valid JSON that every parser reads as a float infinity
    last = ('data: {"id":"c1","model":"m","choices":[{"index":0,"delta":{"content":"hi"},'
            '"finish_reason":"stop"}],"usage":{"prompt_tokens":1e999}}\n\n').encode()
    events = oc.StreamDecoder().feed(last)
    assert isinstance(events[-1], c.StreamError)
    with pytest.raises(c.TranslationError, match="usage.prompt_tokens"):
        oc.decode_usage({"prompt_tokens": math.inf})


def test_integral_floats_and_nulls_are_counts():
    assert oc.decode_usage({"prompt_tokens": 12.0, "completion_tokens": None}) == c.Usage(12, 0)
    assert anthropic._usage({"input_tokens": 7.0, "output_tokens": None}) == c.Usage(7, 0)


@pytest.mark.parametrize("figure", BAD_FIGURES + [10**5000], ids=range(len(BAD_FIGURES) + 1))
def test_canonical_usage_rejects_what_is_not_a_count(figure):
    with pytest.raises(c.TranslationError, match="usage.cache_read_tokens"):
        c.Usage(cache_read_tokens=figure)
    assert c.Usage(1, 2, 3, 4, MAX).reasoning_tokens == MAX
