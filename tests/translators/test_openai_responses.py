"""The OpenAI Responses codec against Codex's captured requests and streams: lossless
same-format round trips, any chunking, fuzzed input, the codec contract."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from addons import formats
from tests.captures import CAPTURES
from translators import canonical as c
from translators import codec
from translators import openai_responses as r

REQUESTS = {p.name: json.loads(p.read_text())
            for p in sorted(CAPTURES.glob("codex*.responses.*.request.json"))}
STREAMS = {p.name: p.read_bytes() for p in sorted(CAPTURES.glob("codex*.responses.*.response.txt"))}


def checked(events):
    grammar = c.StreamGrammar()
    for ev in events:
        grammar.check(ev)
    return events


def decode_stream(data: bytes, pieces=None):
    dec = r.StreamDecoder()
    out = []
    for piece in pieces if pieces is not None else (data,):
        out += dec.feed(piece)
    return checked(out + dec.close())


def test_the_captures_are_here():
    assert len(REQUESTS) == 9 and len(STREAMS) == 9


def test_contract_and_registry():
    assert codec.missing(r) == []
    assert formats.CODECS[r.NAME] is r
    assert isinstance(r.StreamDecoder(), codec.StreamDecoder)
    assert isinstance(r.client_stream_encoder({}), codec.StreamEncoder)


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_captured_requests_round_trip_exactly(name):
    body = REQUESTS[name]
    req = r.decode_request(body)
    assert r.encode_request(req) == body
    assert r.sniff_request(body)
    assert req.model == body["model"] and req.stream and req.reasoning_effort
    # what another provider sees: Codex's items canonical has no place for are named
    dropped = c.foreign_fields(req, "anthropic:")
    assert "prompt_cache_key" in dropped and "include" in dropped


def test_custom_tool_call_and_output_are_function_shaped_for_others():
    req = r.decode_request(REQUESTS["codex.responses.tool-result.request.json"])
    call = req.messages[-2].parts[0]
    assert type(call) is c.ToolUse and call.name == "exec" and set(call.input) == {"input"}
    result = req.messages[-1].parts[0]
    assert type(result) is c.ToolResult and result.tool_use_id == call.id
    assert "hi\n" in "".join(p.text for p in result.content)
    five = r.decode_request(REQUESTS["codex-gpt-5.5.responses.tool-result.request.json"])
    patch = next(t for t in five.tools if t.name == "apply_patch")
    assert patch.input_schema == r.CUSTOM_INPUT_SCHEMA
    assert "tools[8] (tool_search)" in c.foreign_fields(five, "anthropic:")


def test_reasoning_items_round_trip_and_are_dropped_for_others():
    item = {"type": "reasoning", "id": "rs_1", "summary": [
        {"type": "summary_text", "text": "a"}, {"type": "summary_text", "text": "b"}],
        "encrypted_content": "gAAAA-opaque"}
    body = {"model": "gpt-5", "input": [{"role": "user", "content": "q"}, item,
                                        {"type": "message", "role": "assistant",
                                         "content": [{"type": "output_text", "text": "x"}]}],
            "stream": False}
    req = r.decode_request(body)
    assert r.encode_request(req) == body
    thinking = req.messages[1].parts[0]
    assert thinking == c.Thinking("a\n\nb")  # no signature: another provider drops it
    bare = c.Request("gpt-5", req.messages)  # the same turns from another format
    assert all(i.get("type") != "reasoning" for i in r.encode_request(bare)["input"])


def test_request_fields_have_their_slots():
    body = {"model": "m", "instructions": "sys", "input": "hi", "max_output_tokens": 99,
            "temperature": 0.5, "top_p": 0.9, "reasoning": {"effort": "high", "summary": "auto"},
            "text": {"format": {"type": "json_schema", "name": "a", "schema": {"type": "object"},
                                "strict": True}},
            "tools": [{"type": "function", "name": "f", "description": "d",
                       "parameters": {"type": "object"}, "strict": True}],
            "tool_choice": {"type": "function", "name": "f"}, "parallel_tool_calls": False,
            "store": False, "prompt_cache_key": "k", "include": ["reasoning.encrypted_content"],
            "stream": True, "metadata": {"x": "y"}}
    req = r.decode_request(body)
    assert req.system == (c.Text("sys"),) and req.max_tokens == 99
    assert req.reasoning_effort == "high" and req.response_format.schema == {"type": "object"}
    assert req.tool_choice == c.ToolChoice("tool", "f", False)
    assert r.encode_request(req) == dict(body, input=[{"type": "message", "role": "user",
                                                       "content": [{"type": "input_text",
                                                                    "text": "hi"}]}])
    assert r.rewrite_request(body, model="n", max_tokens=10) == dict(body, model="n",
                                                                       max_output_tokens=10)
    assert r.rewrite_request(body, model="m") is body


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_captured_streams_whole_and_byte_by_byte(name):
    data = STREAMS[name]
    whole = decode_stream(data)
    assert type(whole[-1]) is c.MessageStop
    one = decode_stream(data, [data[i:i + 1] for i in range(len(data))])
    assert one == whole
    resp = c.collect_response(whole)
    assert resp.usage == c.Usage(12, 6) and resp.parts
    assert r.sniff_stream(data)


@given(st.sampled_from(sorted(STREAMS)), st.data())
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_any_chunking_gives_the_same_events(name, data):
    body = STREAMS[name]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=30)))
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    assert decode_stream(body, pieces) == decode_stream(body)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_streams_encode_back_to_what_decodes_the_same(name):
    events = decode_stream(STREAMS[name])
    request = REQUESTS[name.replace("response.txt", "request.json")]
    encoded = r.client_stream_encoder(request).encode_all(events)
    assert c.collect_response(decode_stream(encoded)) == c.collect_response(events)
    numbers = [json.loads(line[6:])["sequence_number"]
               for line in encoded.decode().splitlines() if line.startswith("data: ")]
    assert numbers == list(range(len(numbers)))
    if "tool-call" in name and "gpt-5.5" not in name:  # Codex's exec: a custom call again
        assert b'"type":"custom_tool_call"' in encoded


def test_stream_with_reasoning_and_function_call():
    events = [c.MessageStart("resp_1", "m", c.Usage(5)), c.BlockStart(0, "thinking"),
              c.ThinkingDelta(0, "hmm"), c.SignatureDelta(0, "gAAAA-enc"), c.BlockStop(0),
              c.BlockStart(1, "tool_use", tool_id="call_1", tool_name="f"),
              c.ToolInputDelta(1, '{"a":'), c.ToolInputDelta(1, "1}"), c.BlockStop(1),
              c.MessageDelta("tool_use", c.Usage(5, 7, 3, 0, 2)), c.MessageStop()]
    data = r.StreamEncoder().encode_all(events)
    back = decode_stream(data)
    expected = c.collect_response(events)
    assert c.collect_response(back) == c.Response("resp_1", "m", expected.parts, "tool_use",
                                                  c.Usage(5, 7, 3, 0, 2))
    whole = r.encode_response(expected)
    assert r.decode_response(whole) == expected


def test_errors_in_openai_format_and_stream_errors():
    assert json.loads(r.error_body(429, "slow down"))["error"]["code"] == "rate_limit_exceeded"
    failed = (b'event: response.created\ndata: {"type":"response.created","response":{"id":"x",'
              b'"model":"m"}}\n\nevent: response.failed\ndata: {"type":"response.failed",'
              b'"response":{"status":"failed","error":{"code":"rate_limit_exceeded",'
              b'"message":"too many"}}}\n\n')
    events = decode_stream(failed)
    assert events[-1] == c.StreamError("rate_limit_error", "too many")
    assert r.is_error_event("response.failed", "{}")
    encoded = r.StreamEncoder().encode_all(events)
    assert decode_stream(encoded)[-1] == c.StreamError("rate_limit_error", "too many")
    cut = decode_stream(failed.split(b"event: response.failed")[0])
    assert type(cut[-1]) is c.StreamError


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4), max_leaves=20)
item_keys = st.sampled_from(["type", "role", "content", "call_id", "name", "arguments", "input",
                             "output", "summary", "id", "text"])
items = st.dictionaries(item_keys, json_values | st.sampled_from(
    ["message", "user", "assistant", "developer", "function_call", "custom_tool_call",
     "function_call_output", "reasoning", "input_text"]), max_size=6)
bodies = st.fixed_dictionaries({"model": st.just("m"), "input": st.lists(items, max_size=5)},
                               optional={"tools": json_values, "tool_choice": json_values,
                                         "reasoning": json_values, "text": json_values,
                                         "max_output_tokens": json_values})


@given(st.one_of(json_values, bodies))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_requests_only_raise_translation_errors(body):
    try:
        req = r.decode_request(body)
    except c.TranslationError:
        return
    assert r.encode_request(req) == body or isinstance(body.get("input"), list)
    assert r.decode_request(r.encode_request(req)).messages == req.messages


@given(st.binary(max_size=300))
@settings(max_examples=300)
def test_garbage_streams_end_in_a_stream_error_or_stop(data):
    events = decode_stream(data)
    assert type(events[-1]) in (c.StreamError, c.MessageStop)
