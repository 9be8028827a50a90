"""The Gemini codec against Gemini CLI's captured requests and answers, whole and in any
chunking, and what it must get right for other formats: tool results matched by name over a
multi-turn conversation, schemas Gemini accepts, thought signatures back where they came from,
exact usage."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.captures import CAPTURES, checked_events
from tests.fakes.gemini_provider import _schema_problem, gemini_request_problem
from translators import anthropic, codec, openai_chat
from translators import canonical as c
from translators import gemini as g

REQUESTS = {p.name: json.loads(p.read_text())
            for p in sorted(CAPTURES.glob("gemini-cli.*.request.json"))}
STREAMS = {p.name: p.read_bytes()
           for p in sorted(CAPTURES.glob("gemini-cli.streamGenerateContent.*.response.txt"))}
CLASSIFIER = json.loads((CAPTURES / "gemini-cli.generateContent.router-classifier"
                                    ".response.txt").read_text())


def decode_stream(data: bytes, pieces=None) -> list:
    dec = g.StreamDecoder()
    out = []
    for piece in pieces if pieces is not None else [data]:
        out += dec.feed(piece)
    return out + dec.close()


def unnamed(events: list) -> list:
    """Events with the ids minted for calls Gemini sent without one left out (random)."""
    return [ev if type(ev) is not c.BlockStart else c.BlockStart(ev.index, ev.kind,
                                                                 tool_name=ev.tool_name)
            for ev in events]


def test_the_codec_contract():
    assert codec.missing(g) == []
    assert isinstance(g.StreamDecoder(), codec.StreamDecoder)
    assert isinstance(g.client_stream_encoder({}), codec.StreamEncoder)


# ---------------------------------------------------------------- the captures


@pytest.mark.parametrize("name", sorted(REQUESTS))
def test_captured_requests_decode_and_encode_back(name):
    body = REQUESTS[name]
    assert g.sniff_request(body)
    assert not anthropic.sniff_request(body) and not openai_chat.sniff_request(body)
    req = g.decode_request(body)
    assert req.model == "" and req.system and req.messages
    again = g.encode_request(req)
    back = g.decode_request(again)
    # tool schemas come back as Gemini takes them (cleaned), the rest as it was
    assert back.messages == req.messages and back.system == req.system
    assert back.extras == req.extras and back.reasoning_effort == req.reasoning_effort
    assert [(t.name, t.description) for t in back.tools] == [
        (t.name, t.description) for t in req.tools]
    assert all(_schema_problem(d["parameters"], "parameters") is None
               for t in again.get("tools", []) for d in t["functionDeclarations"])
    assert [t["role"] for t in again["contents"]] == [t["role"] for t in body["contents"]]
    # and any other format can take it
    anthropic.encode_request(req)
    openai_chat.encode_request(req)


def test_the_tool_result_capture_pairs_the_result_with_its_call():
    req = g.decode_request(REQUESTS["gemini-cli.streamGenerateContent.tool-result.request.json"])
    _, model, result = req.messages
    # Gemini CLI's placeholder signature means "none": not decoded as reasoning
    (call,) = model.parts
    assert (call.id, call.name) == ("run_shell_command_1795572015511_0", "run_shell_command")
    (res,) = result.parts
    assert res.tool_use_id == call.id and "Output: hi" in res.content[0].text
    chat = openai_chat.encode_request(req)
    assert chat["messages"][-1]["tool_call_id"] == call.id


def test_the_router_classifier_asks_for_json_with_a_schema():
    req = g.decode_request(REQUESTS["gemini-cli.generateContent.router-classifier.request.json"])
    schema = req.response_format.schema
    assert schema["type"] == "object"
    assert schema["properties"]["complexity_score"] == {
        "type": "integer", "description": "Complexity score from 1-100."}
    assert req.reasoning_effort == "high"
    resp = g.decode_response(CLASSIFIER)
    assert resp.usage == c.Usage(12, 6) and resp.stop_reason == "end_turn"
    assert json.loads(resp.parts[0].text)["complexity_score"] == 1


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_captured_streams_whole_and_byte_by_byte(name):
    data = STREAMS[name]
    whole = checked_events(g, data)
    assert type(whole[-1]) is c.MessageStop
    assert unnamed(decode_stream(data, [data[i:i + 1] for i in range(len(data))])) == \
        unnamed(whole)
    resp = c.collect_response(whole)
    assert resp.usage == c.Usage(12, 6) and resp.parts
    assert g.sniff_stream(data) and not openai_chat.sniff_stream(data)


@given(st.sampled_from(sorted(STREAMS)), st.data())
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
def test_any_chunking_gives_the_same_events(name, data):
    body = STREAMS[name]
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=30)))
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    assert unnamed(decode_stream(body, pieces)) == unnamed(decode_stream(body))


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_streams_encode_back_to_what_decodes_the_same(name):
    events = decode_stream(STREAMS[name])
    encoded = g.client_stream_encoder({}).encode_all(events)
    back = c.collect_response(checked_events(g, encoded))
    expected = c.collect_response(events)
    assert back.parts == expected.parts and back.usage == expected.usage
    assert back.stop_reason == expected.stop_reason


# ---------------------------------------------------------------- thought signatures


SIGNED = {"contents": [
    {"role": "user", "parts": [{"text": "go"}]},
    {"role": "model", "parts": [
        {"text": "let me think", "thought": True, "thoughtSignature": "sig-thought"},
        {"functionCall": {"name": "f", "args": {"a": 1}}, "thoughtSignature": "sig-call"},
        {"functionCall": {"name": "f", "args": {"a": 2}}}]},
    {"role": "user", "parts": [
        {"functionResponse": {"name": "f", "response": {"output": "one"}}},
        {"functionResponse": {"name": "f", "response": {"output": "two"}}}]}]}


def test_signatures_on_any_part_round_trip():
    req = g.decode_request(SIGNED)
    parts = req.messages[1].parts
    assert parts[0] == c.Thinking("let me think", signature="sig-thought")
    assert parts[1] == c.Thinking("", signature="sig-call")
    back = g.encode_request(req)["contents"][1]["parts"]
    assert back[0]["thoughtSignature"] == "sig-thought"
    assert back[1]["thoughtSignature"] == "sig-call" and back[1]["functionCall"]["name"] == "f"
    # an unsigned call after a signed one: Gemini wants the signature on the first only
    assert "thoughtSignature" not in back[2] or back[2]["thoughtSignature"] == g.SKIP_SIGNATURE


def test_signatures_travel_through_an_anthropic_client():
    resp = c.Response("r1", "gemini-x", (
        c.Thinking("", signature="sig-call"), c.ToolUse("call_1", "f", {"a": 1})),
        "tool_use", c.Usage(10, 5))
    # to Claude Code and back, as an Anthropic thinking block
    ant = anthropic.encode_response(resp)
    assert ant["content"][0] == {"type": "thinking", "thinking": "", "signature": "sig-call"}
    req = anthropic.decode_request({"model": "m", "max_tokens": 10, "messages": [
        {"role": "user", "content": "go"}, {"role": "assistant", "content": ant["content"]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "call_1",
                                      "content": "done"}]}]})
    body = g.encode_request(req)
    assert body["contents"][1]["parts"] == [{"functionCall": {
        "id": "call_1", "name": "f", "args": {"a": 1}}, "thoughtSignature": "sig-call"}]
    assert gemini_request_problem(body, signatures=True) is None


def test_a_stream_keeps_signatures_in_place():
    data = (b'data: {"candidates":[{"content":{"role":"model","parts":[{"text":"hm",'
            b'"thought":true}]}}],"usageMetadata":{"promptTokenCount":9}}\r\n\r\n'
            b'data: {"candidates":[{"content":{"role":"model","parts":[{"functionCall":'
            b'{"name":"f","args":{}},"thoughtSignature":"sig"}]},"finishReason":"STOP"}],'
            b'"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":3,'
            b'"thoughtsTokenCount":4}}\r\n\r\n')
    events = checked_events(g, data)
    resp = c.collect_response(events)
    assert [type(p) for p in resp.parts] == [c.Thinking, c.Thinking, c.ToolUse]
    assert resp.parts[1].signature == "sig" and resp.stop_reason == "tool_use"
    assert resp.usage == c.Usage(9, 7, 0, 0, 4)
    again = g.StreamEncoder().encode_all(events)
    chunks = [json.loads(line[6:]) for line in again.decode().splitlines()
              if line.startswith("data: ")]
    call_parts = [p for ch in chunks for p in ch["candidates"][0]["content"]["parts"]
                  if "functionCall" in p]
    assert call_parts[0]["thoughtSignature"] == "sig"


# ---------------------------------------------------------------- tool ids <-> names


def test_results_find_their_calls_by_name_over_three_turns():
    """Gemini without ids: two calls of one name in a turn, three turns; every result gets
    the id of its own call, so a Chat provider sees each tool_call_id answered once."""
    contents = [{"role": "user", "parts": [{"text": "go"}]}]
    for turn in range(3):
        contents += [
            {"role": "model", "parts": [{"functionCall": {"name": "read", "args": {"n": 1}}},
                                        {"functionCall": {"name": "read", "args": {"n": 2}}},
                                        {"functionCall": {"name": "ls", "args": {}}}]},
            {"role": "user", "parts": [
                {"functionResponse": {"name": "ls", "response": {"output": f"ls{turn}"}}},
                {"functionResponse": {"name": "read", "response": {"output": f"r1-{turn}"}}},
                {"functionResponse": {"name": "read", "response": {"output": f"r2-{turn}"}}}]}]
    req = g.decode_request({"contents": contents})
    ids = [p.id for m in req.messages for p in m.parts if type(p) is c.ToolUse]
    assert len(set(ids)) == 9
    for call_turn, result_turn in zip(req.messages[1::2], req.messages[2::2]):
        calls = {p.id: p for p in call_turn.parts}
        results = {p.tool_use_id: p.content[0].text for p in result_turn.parts}
        assert set(results) == set(calls)
        read1 = next(i for i, p in calls.items() if p.input == {"n": 1})
        assert results[read1].startswith("r1-")
    chat = openai_chat.encode_request(req)
    answered = [m["tool_call_id"] for m in chat["messages"] if m["role"] == "tool"]
    assert sorted(answered) == sorted(ids)


def test_the_encoder_names_results_of_any_format():
    """An Anthropic conversation of three tool turns to Gemini: each functionResponse carries
    the name of the call its id answers."""
    messages = [{"role": "user", "content": "go"}]
    for turn, name in enumerate(("Bash", "Read", "Bash")):
        messages += [
            {"role": "assistant", "content": [{"type": "tool_use", "id": f"toolu_{turn}",
                                               "name": name, "input": {"x": turn}}]},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": f"toolu_{turn}",
                                          "content": f"out {turn}", "is_error": turn == 1}]}]
    req = anthropic.decode_request({"model": "m", "max_tokens": 5, "messages": messages})
    body = g.encode_request(req)
    results = [p["functionResponse"] for t in body["contents"] for p in t["parts"]
               if "functionResponse" in p]
    assert [(r["id"], r["name"], r["response"]) for r in results] == [
        ("toolu_0", "Bash", {"output": "out 0"}), ("toolu_1", "Read", {"error": "out 1"}),
        ("toolu_2", "Bash", {"output": "out 2"})]
    assert gemini_request_problem(body, signatures=True) is None
    # a result whose call is gone cannot be named: refused, naming the id
    orphan = anthropic.decode_request({"model": "m", "max_tokens": 5, "messages": [
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x",
                                      "content": "?"}]}]})
    with pytest.raises(c.TranslationError, match="toolu_x"):
        g.encode_request(orphan)


# ---------------------------------------------------------------- schemas


MESSY = {
    "$schema": "http://json-schema.org/draft-07/schema#", "type": "object",
    "additionalProperties": False, "$defs": {"Pos": {"type": "object", "properties": {
        "line": {"type": "integer", "exclusiveMinimum": 0}}, "required": ["line", "gone"]}},
    "properties": {
        "url": {"type": "string", "format": "uri"},
        "when": {"type": "string", "format": "date-time"},
        "mode": {"const": "fast"},
        "maybe": {"type": ["string", "null"], "default": None},
        "either": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "pos": {"$ref": "#/$defs/Pos"},
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1},
                 "uniqueItems": True},
        "level": {"type": "integer", "enum": [1, 2]},
    },
    "required": ["url", "missing"]}


def test_schemas_are_cleaned_to_what_gemini_takes():
    out = g.clean_schema(MESSY)
    assert _schema_problem(out, "parameters") is None  # what the fake (Gemini's rules) checks
    assert _schema_problem(MESSY, "parameters") is not None
    p = out["properties"]
    assert out["type"] == "OBJECT" and out["required"] == ["url"]
    assert p["url"] == {"type": "STRING"} and p["when"]["format"] == "date-time"
    assert p["mode"] == {"type": "STRING", "enum": ["fast"]}
    assert p["maybe"]["nullable"] is True and p["maybe"]["type"] == "STRING"
    assert p["either"] == {"type": "STRING", "nullable": True}
    assert p["pos"] == {"type": "OBJECT", "properties": {"line": {"type": "INTEGER"}},
                        "required": ["line"]}
    assert p["tags"] == {"type": "ARRAY", "items": {"type": "STRING", "minLength": 1}}
    assert p["level"]["enum"] == ["1", "2"]
    recursive = {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}},
                 "$defs": {"N": {"type": "object", "properties": {"next": {"$ref": "#/$defs/N"}}}}}
    assert _schema_problem(g.clean_schema(recursive), "parameters") is None


def test_gemini_schemas_become_plain_json_schema():
    tool = {"functionDeclarations": [{"name": "f", "parameters": {
        "type": "OBJECT", "properties": {"a": {"type": "STRING", "nullable": True},
                                         "b": {"type": "ARRAY", "items": {"type": "NUMBER"}}}}}]}
    (t,) = g.decode_request({"contents": [{"role": "user", "parts": [{"text": "x"}]}],
                             "tools": [tool]}).tools
    assert t.input_schema == {"type": "object", "properties": {
        "a": {"type": ["string", "null"]}, "b": {"type": "array", "items": {"type": "number"}}}}


# ---------------------------------------------------------------- usage and errors


def test_usage_is_exact_both_ways():
    meta = {"promptTokenCount": 1000, "cachedContentTokenCount": 600,
            "candidatesTokenCount": 40, "thoughtsTokenCount": 10, "totalTokenCount": 1050}
    usage = g.decode_usage(meta)
    assert usage == c.Usage(400, 50, 600, 0, 10)
    assert g.encode_usage(usage) == meta
    with pytest.raises(c.TranslationError, match="promptTokenCount"):
        g.decode_usage({"promptTokenCount": -1})


def test_errors_in_googles_shape():
    body = json.loads(g.error_body(429, "slow down"))
    assert body == {"error": {"code": 429, "message": "slow down",
                              "status": "RESOURCE_EXHAUSTED"}}
    stream = (b'data: {"candidates":[{"content":{"parts":[{"text":"a"}]}}]}\r\n\r\n'
              b'data: {"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}'
              b'\r\n\r\n')
    events = checked_events(g, stream)
    assert events[-1] == c.StreamError("overloaded_error", "overloaded")
    assert g.is_error_event("", '{"error": {"code": 500}}')
    assert not g.is_error_event("", '{"candidates": []}')
    cut = checked_events(g, stream.split(b"data: {\"error")[0])
    assert type(cut[-1]) is c.StreamError
    encoded = g.StreamEncoder().encode_all(events)
    assert decode_stream(encoded)[-1] == events[-1]


def test_rewrite_lowers_only_the_output_cap():
    body = {"contents": [], "generationConfig": {"maxOutputTokens": 64000, "topK": 5}}
    assert g.rewrite_request(body, model="other") is body
    assert g.rewrite_request(body, max_tokens=8192)["generationConfig"] == {
        "maxOutputTokens": 8192, "topK": 5}


@given(st.binary(max_size=300))
@settings(max_examples=200)
def test_garbage_streams_end_in_a_stream_error_or_stop(data):
    events = decode_stream(data)
    assert type(events[-1]) in (c.StreamError, c.MessageStop)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4), max_leaves=20)
part_keys = st.sampled_from(["text", "thought", "thoughtSignature", "functionCall",
                             "functionResponse", "inlineData", "fileData", "name", "args", "id",
                             "response", "mimeType", "data"])
parts = st.dictionaries(part_keys, json_values, max_size=4)
turns = st.fixed_dictionaries({"role": st.sampled_from(["user", "model", "system"]),
                               "parts": st.lists(parts, max_size=4)})
bodies = st.fixed_dictionaries({"contents": st.lists(turns, max_size=4)},
                               optional={"tools": json_values, "toolConfig": json_values,
                                         "generationConfig": json_values,
                                         "systemInstruction": json_values})


@given(st.one_of(json_values, bodies))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_requests_only_raise_translation_errors(body):
    try:
        req = g.decode_request(body)
    except c.TranslationError:
        return
    try:
        again = g.encode_request(req)
    except c.TranslationError:
        return  # e.g. a result answering no call: named, not sent
    # what detour writes, it reads back to the same (empty turns and unsigned reasoning of
    # other providers are not written: Gemini refuses them)
    assert g.encode_request(g.decode_request(again)) == again
