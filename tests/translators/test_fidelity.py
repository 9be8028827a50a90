"""What a client asked for survives translation or is refused: response_format through
Anthropic (the answer tool and AnswerShape), refusals (n, logprobs), documents, empty ids."""

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.captures import anthropic_events
from tests.translators.test_openai_chat import grammar_checked
from translators import anthropic as a
from translators import canonical as c
from translators import openai_chat as oc

SCHEMA = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"],
          "additionalProperties": False}
FORMAT = {"type": "json_schema", "json_schema": {"name": "Weather", "schema": SCHEMA,
                                                 "strict": True}}


def chat(**fields) -> dict:
    return {"model": "m", "messages": [{"role": "user", "content": "hi"}], **fields}


def test_json_schema_becomes_a_forced_answer_tool_for_anthropic():
    req = oc.decode_request(chat(response_format=FORMAT))
    assert req.response_format == c.ResponseFormat("Weather", SCHEMA, None, True)
    assert oc.encode_request(req)["response_format"] == FORMAT  # Chat round trip
    out = a.encode_request(req)
    assert out["tools"][-1]["name"] == "Weather" and out["tools"][-1]["input_schema"] == SCHEMA
    assert out["tool_choice"] == {"type": "tool", "name": "Weather"}


def test_answer_tool_with_client_tools_lets_the_model_use_them():
    tool = {"type": "function", "function": {"name": "Weather", "parameters": {}}}
    req = oc.decode_request(chat(response_format=FORMAT, tools=[tool]))
    out = a.encode_request(req)
    assert [t["name"] for t in out["tools"]] == ["Weather", c.ANSWER_TOOL]  # no collision
    assert out["tool_choice"] == {"type": "any"}
    forced = a.encode_request(oc.decode_request(chat(
        response_format=FORMAT, tools=[tool],
        tool_choice={"type": "function", "function": {"name": "Weather"}})))
    assert forced["tool_choice"] == {"type": "tool", "name": "Weather"}


def test_json_object_asks_for_any_object():
    out = a.encode_request(oc.decode_request(chat(response_format={"type": "json_object"})))
    assert out["tools"][-1]["input_schema"] == {"type": "object"}
    assert oc.decode_request(chat(response_format={"type": "text"})).response_format is None
    with pytest.raises(c.TranslationError, match="response_format.type"):
        oc.decode_request(chat(response_format={"type": "yaml"}))


@pytest.mark.parametrize("fields, path", [({"n": 2}, "n"), ({"logprobs": True}, "logprobs"),
                                          ({"top_logprobs": 2}, "top_logprobs")])
def test_what_one_canonical_answer_cannot_give_is_refused(fields, path):
    with pytest.raises(c.TranslationError) as err:
        oc.decode_request(chat(**fields))
    assert err.value.path == path
    assert not oc.decode_request(chat(n=1, logprobs=False)).extras


def test_foreign_fields_are_named():
    req = oc.decode_request(chat(seed=1, presence_penalty=0.5, logit_bias={}))
    assert c.foreign_fields(req, "anthropic:") == ("seed", "presence_penalty", "logit_bias")
    assert c.foreign_fields(req, "openai_chat:") == ()


def anthropic_tool_stream(name: str, arguments: str, pieces: int) -> bytes:
    size = max(1, len(arguments) // pieces)
    frags = [arguments[i:i + size] for i in range(0, len(arguments), size)]

    def ev(kind, obj):
        return f"event: {kind}\ndata: {json.dumps(obj)}\n\n"

    return "".join([
        ev("message_start", {"type": "message_start", "message": {
            "id": "msg_1", "model": "claude", "usage": {"input_tokens": 5}}}),
        ev("content_block_start", {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "toolu_1", "name": name, "input": {}}}),
        *[ev("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": {
            "type": "input_json_delta", "partial_json": f}}) for f in frags],
        ev("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ev("message_delta", {"type": "message_delta", "delta": {"stop_reason": "tool_use"},
                             "usage": {"output_tokens": 9}}),
        ev("message_stop", {"type": "message_stop"})]).encode()


def shaped_chat_stream(upstream: bytes, cuts) -> bytes:
    dec = a.StreamDecoder()
    enc = c.ShapedEncoder(oc.StreamEncoder(created=1), c.AnswerShape("gpt-x", "Weather",
                                                                       "chatcmpl-"))
    out, start = b"", 0
    for cut in sorted(cuts) + [len(upstream)]:
        out += enc.encode_all(dec.feed(upstream[start:cut]))
        start = max(start, cut)
    return out + enc.encode_all(dec.close())


@settings(max_examples=100)
@given(st.dictionaries(st.text(max_size=5), st.text(max_size=8), max_size=4),
       st.integers(1, 6), st.lists(st.integers(0, 2000), max_size=8))
def test_answer_tool_stream_becomes_content_whatever_the_chunking(answer, pieces, cuts):
    arguments = json.dumps(answer)
    upstream = anthropic_tool_stream("Weather", arguments, pieces)
    whole = shaped_chat_stream(upstream, [])
    assert shaped_chat_stream(upstream, cuts) == whole
    assert shaped_chat_stream(upstream, range(len(upstream))) == whole  # byte by byte
    chunks = [json.loads(line[6:]) for line in whole.decode().split("\n\n")
              if line.startswith("data: {") and '"choices":[]' not in line]
    assert json.loads("".join(ch["choices"][0]["delta"].get("content", "")
                              for ch in chunks)) == answer
    assert not any("tool_calls" in ch["choices"][0]["delta"] for ch in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    # and the Chat stream we wrote reads back as a grammatical canonical stream
    events = grammar_checked(oc.StreamDecoder().feed(whole))
    assert events[-2].stop_reason == "end_turn"


def test_other_tool_calls_stay_tool_calls():
    shape = c.AnswerShape("gpt-x", "Weather", "chatcmpl-")
    resp = c.Response("id", "m", (c.ToolUse("t1", "Weather", {"city": "Oslo"}),
                                  c.ToolUse("t2", "Bash", {})), "tool_use", c.Usage())
    shaped = shape.response(resp)
    assert shaped.parts[0] == c.Text('{"city":"Oslo"}') and shaped.stop_reason == "tool_use"
    alone = shape.response(c.Response("", "", resp.parts[:1], "tool_use", c.Usage()))
    assert alone.stop_reason == "end_turn" and alone.model == "gpt-x"
    assert alone.id.startswith("chatcmpl-") and len(alone.id) > 12


def test_an_empty_stream_id_and_model_are_filled_in():
    upstream = (b'data: {"id":"","model":"","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
                b'data: {"id":"","model":"","choices":[{"index":0,"delta":{},'
                b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    for pieces in ([upstream], [upstream[i:i + 1] for i in range(len(upstream))]):
        dec = oc.StreamDecoder()
        enc = c.ShapedEncoder(a.StreamEncoder(), c.AnswerShape("claude-x", None, "msg_"))
        body = b"".join(enc.encode_all(dec.feed(p)) for p in pieces) + enc.encode_all(dec.close())
        start = anthropic_events(body)[0]  # grammar-checked
        assert start.id.startswith("msg_") and start.model == "claude-x"


PDF_BLOCK = {"type": "document", "source": {"type": "base64", "media_type": "application/pdf",
                                            "data": "JVBERi0="}, "title": "a.pdf"}


@pytest.mark.parametrize("block, part", [
    (PDF_BLOCK, {"type": "file", "file": {"filename": "a.pdf",
                                          "file_data": "data:application/pdf;base64,JVBERi0="}}),
    ({"type": "document", "source": {"type": "url", "url": "https://x/a.pdf"}},
     {"type": "file", "file": {"filename": "document.pdf", "file_data": "https://x/a.pdf"}}),
    ({"type": "document", "source": {"type": "text", "media_type": "text/plain", "data": "hey"},
      "title": "Notes"}, {"type": "text", "text": "Notes\n\nhey"}),
])
def test_documents_map_to_chat_parts(block, part):
    body = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": [
        block, {"type": "text", "text": "read it"}]}]}
    req = a.decode_request(body)
    assert a.encode_request(req)["messages"] == body["messages"]  # Anthropic round trip
    content = oc.encode_request(req)["messages"][0]["content"]
    assert content == [part, {"type": "text", "text": "read it"}]
    if part["type"] == "file":  # and a Chat client's file part comes back the same
        assert oc.encode_request(oc.decode_request(
            {"model": "m", "messages": [{"role": "user", "content": content}]}
        ))["messages"][0]["content"] == content


def test_a_stored_file_cannot_be_translated():
    with pytest.raises(c.TranslationError, match="file_id"):
        oc.decode_request(chat(messages=[{"role": "user", "content": [
            {"type": "file", "file": {"file_id": "file-1"}}]}]))
