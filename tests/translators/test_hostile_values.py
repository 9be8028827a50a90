"""The values that broke the proxy (integers beyond 64 bits, inf, NaN, lone surrogates, nesting
255-1023 deep) anywhere a client or a provider can put them: translating and writing the
result as the forwarder does gives JSON or a TranslationError, nothing else."""

import json
import math

import orjson
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from addons.forwarding import dump_json
from translators import anthropic, canonical as c, openai_chat as oc


def nested(depth: int):
    value: object = 1
    for i in range(depth):
        value = [value] if i % 2 else {"k": value}
    return value


hostile = st.one_of(
    st.integers(min_value=2**64, max_value=2**200), st.integers(max_value=-2**63 - 1),
    st.sampled_from([math.inf, -math.inf, math.nan]),
    st.sampled_from(["\ud800", "a\udfffb", "\udbff"]),
    st.integers(min_value=255, max_value=1023).map(nested),
)
values = st.recursive(hostile | st.text(max_size=5) | st.integers(),
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=3), inner, max_size=3), max_leaves=6)


def written(obj) -> bytes | None:
    """What the forwarder sends, read back as JSON (None: a TranslationError)."""
    try:
        data = dump_json(obj)
    except c.TranslationError:
        return None
    json.loads(data, parse_constant=lambda name: pytest.fail(f"{name} written as JSON"))
    return data


def translate(decode, encode, body) -> None:
    try:
        req = decode(body)
        written(encode(req))
    except c.TranslationError:
        pass


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@FUZZ
@given(args=values, tool_input=values)
def test_openai_history_with_hostile_tool_arguments(args, tool_input):
    try:
        arguments = json.dumps({"x": args})
    except (ValueError, RecursionError):
        arguments = "{}"
    body = {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "ok"}],
        "tools": [{"type": "function", "function": {"name": "f", "parameters": {
            "type": "object", "properties": {"x": tool_input}}}}]}
    translate(oc.decode_request, anthropic.encode_request, body)
    written(body)  # the same-format path writes the client's body as it came


@FUZZ
@given(tool_input=values, extra=values)
def test_anthropic_history_with_hostile_tool_input(tool_input, extra):
    body = {"model": "m", "max_tokens": 5, "metadata": {"user_id": "u"}, "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "f", "input": {"x": tool_input}}]},
        {"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "ok"}]}],
        "tools": [{"name": "f", "input_schema": {"type": "object", "x": extra}}]}
    translate(anthropic.decode_request, oc.encode_request, body)
    written(body)


@FUZZ
@given(tool_input=values)
def test_a_provider_answer_with_a_hostile_tool_input(tool_input):
    answer = {"id": "msg_1", "type": "message", "role": "assistant", "model": "x",
              "content": [{"type": "tool_use", "id": "t1", "name": "f",
                           "input": {"x": tool_input}}],
              "stop_reason": "tool_use", "usage": {"input_tokens": 1, "output_tokens": 1}}
    shape = c.AnswerShape("m", None, "chatcmpl-")
    try:
        resp = anthropic.decode_response(answer)
        written(oc.encode_response(shape.response(resp)))
        encoder = oc.StreamEncoder()
        encoder.encode_all(c.response_to_events(resp))
    except c.TranslationError:
        pass


@pytest.mark.parametrize("text", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_tool_arguments_json_cannot_hold_are_kept_verbatim(text):
    tool = c.tool_use_from_arguments("t1", "f", '{"x": %s}' % text)
    assert tool.input == {} and tool.raw_arguments == '{"x": %s}' % text


@pytest.mark.parametrize("value", [math.inf, math.nan, {"a": [-math.inf]}])
def test_inf_and_nan_are_never_written(value):
    with pytest.raises(c.TranslationError):
        c.dumps_compact(value)


@pytest.mark.parametrize("value", [2**70, -(2**70), "\ud800", nested(300)])
def test_what_orjson_refuses_but_json_holds_is_written(value):
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(value)
    assert json.loads(dump_json({"v": value}))["v"] == value
