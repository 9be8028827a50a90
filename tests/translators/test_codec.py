"""Every wire-format module satisfies the codec contract (translators/codec.py), and what the
contract adds (sniffing, same-format rewrite, the client's stream encoder, dialects) works."""

import json
import types

import pytest

from tests.captures import CAPTURES
from translators import anthropic, codec, openai_chat
from translators import canonical as c

CODECS = (anthropic, openai_chat)
CLAUDE_CODE = {p.name: json.loads(p.read_text())
               for p in sorted(CAPTURES.glob("claude-code.messages.*.request.json"))}

CHAT_REQUEST = {"model": "gpt-x", "messages": [
    {"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"},
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "t1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "tool_call_id": "t1", "content": "ok"}],
    "stream": True, "stream_options": {"include_usage": True}}


@pytest.mark.parametrize("module", CODECS, ids=lambda m: m.NAME)
def test_every_codec_has_every_member(module):
    assert codec.missing(module) == []


def test_a_module_lacking_a_member_is_named():
    partial = types.ModuleType("partial")
    for name in codec.members():
        setattr(partial, name, getattr(openai_chat, name))
    del partial.rewrite_request
    partial.NAME = 3  # the wrong kind of thing
    assert codec.missing(partial) == ["NAME", "rewrite_request"]
    assert "sniff_stream" in codec.members() and "StreamDecoder" in codec.members()


@pytest.mark.parametrize("module", CODECS, ids=lambda m: m.NAME)
def test_stream_factories_make_what_the_contract_says(module):
    assert isinstance(module.StreamDecoder(), codec.StreamDecoder)
    assert isinstance(module.StreamEncoder(), codec.StreamEncoder)
    assert isinstance(module.client_stream_encoder({}), codec.StreamEncoder)


def test_sniffing_tells_the_captured_requests_apart():
    for name, body in CLAUDE_CODE.items():
        assert anthropic.sniff_request(body), name
        assert not openai_chat.sniff_request(body), name
    assert openai_chat.sniff_request(CHAT_REQUEST)
    assert not anthropic.sniff_request(CHAT_REQUEST)
    for not_a_request in (None, [], {"model": "x"}, {"messages": "hi"}):
        assert not anthropic.sniff_request(not_a_request)
        assert not openai_chat.sniff_request(not_a_request)


def test_sniffing_tells_the_streams_apart():
    events = [c.MessageStart("m1", "x"), c.BlockStart(0, "text"), c.TextDelta(0, "hi"),
              c.BlockStop(0), c.MessageDelta("end_turn", c.Usage(1, 1)), c.MessageStop()]
    ant = anthropic.StreamEncoder().encode_all(events)
    chat = openai_chat.StreamEncoder().encode_all(events)
    assert anthropic.sniff_stream(ant) and not openai_chat.sniff_stream(ant)
    assert openai_chat.sniff_stream(chat) and not anthropic.sniff_stream(chat)
    openrouter = b': OPENROUTER PROCESSING\n\n' + chat
    assert openai_chat.sniff_stream(openrouter)
    error = b'data: {"error": {"message": "overloaded", "code": 502}}\n\n'
    assert openai_chat.sniff_stream(error)
    assert anthropic.sniff_stream(anthropic.StreamEncoder().encode(c.StreamError("api_error", "x")))
    for garbage in (b"", b"<html>", b"data: hello\n\n", b"event: nonsense\n"):
        assert not anthropic.sniff_stream(garbage) and not openai_chat.sniff_stream(garbage)


@pytest.mark.parametrize("module", CODECS, ids=lambda m: m.NAME)
def test_rewrite_changes_only_the_model_and_a_lower_cap(module):
    body = next(iter(CLAUDE_CODE.values())) if module is anthropic else CHAT_REQUEST
    assert module.rewrite_request(body, model=body["model"]) is body
    assert module.rewrite_request(body) is body
    out = module.rewrite_request(body, model="other")
    assert out == dict(body, model="other") and body["model"] != "other"
    capped = dict(body, max_tokens=64000)
    out = module.rewrite_request(capped, max_tokens=8192)
    assert out == dict(capped, max_tokens=8192)
    assert module.rewrite_request(dict(body, max_tokens=100), max_tokens=8192)["max_tokens"] == 100


def test_chat_rewrite_caps_max_completion_tokens_too():
    body = dict(CHAT_REQUEST, max_completion_tokens=50000)
    assert openai_chat.rewrite_request(body, max_tokens=4096)["max_completion_tokens"] == 4096


def test_chat_clients_get_the_usage_chunk_only_when_they_asked():
    events = [c.MessageStart("m1", "x"), c.MessageDelta("end_turn", c.Usage(1, 1)),
              c.MessageStop()]
    asked = openai_chat.client_stream_encoder(CHAT_REQUEST).encode_all(events)
    silent = openai_chat.client_stream_encoder({"stream": True}).encode_all(events)
    assert b'"choices":[],"usage"' in asked and b'"usage"' not in silent


def _with_reasoning() -> c.Request:
    return c.Request("m", (c.Message("user", (c.Text("q"),)),
                           c.Message("assistant", (c.Thinking("because"), c.Text("a"))),
                           c.Message("user", (c.Text("q2"),))), max_tokens=100)


@pytest.mark.parametrize("name", sorted(openai_chat.DIALECTS))
def test_dialects_write_what_their_vendor_documents(name):
    dialect = openai_chat.DIALECTS[name]
    body = openai_chat.encode_request(_with_reasoning(), dialect)
    assert (dialect.max_tokens_field in body) and body[dialect.max_tokens_field] == 100
    assistant = body["messages"][1]
    assert assistant["role"] == "assistant"
    assert ("reasoning_content" in assistant) is dialect.reasoning_content
    assert isinstance(body["messages"][0]["content"], list) is dialect.content_parts


def test_dialect_choices_and_overrides():
    d = openai_chat.DIALECTS
    assert d["deepseek"].reasoning_content and not d["openai"].reasoning_content
    assert d["dashscope"].content_parts and not d["compatible"].content_parts
    # without a dialect: what every OpenAI-compatible server took before dialects existed
    assert openai_chat.encode_request(_with_reasoning()) == openai_chat.encode_request(
        _with_reasoning(), openai_chat.COMPATIBLE)
    # the provider options override the dialect's own
    body = openai_chat.encode_request(_with_reasoning(), d["dashscope"], content_parts=False,
                                      max_tokens_field="max_completion_tokens")
    assert body["messages"][0]["content"] == "q" and body["max_completion_tokens"] == 100


AZURE_STREAM = b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in (
    {"id": "", "object": "", "created": 0, "model": "", "choices": [],
     "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": {}}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {"role": "assistant", "content": "hi"},
                  "finish_reason": None, "content_filter_results": {}}]},
    {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o",
     "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
     "usage": {"prompt_tokens": 3, "completion_tokens": 1}},
)) + b"data: [DONE]\n\n"


def test_one_decoder_reads_every_dialects_stream_quirks():
    # Azure: an empty-id first chunk without choices
    events = openai_chat.StreamDecoder().feed(AZURE_STREAM)
    assert [e.text for e in events if type(e) is c.TextDelta] == ["hi"]
    assert type(events[-1]) is c.MessageStop
    # OpenRouter: comment lines while it waits, then an error chunk mid-stream
    dec = openai_chat.StreamDecoder()
    events = dec.feed(b": OPENROUTER PROCESSING\n\n" + AZURE_STREAM.split(b"data: [DONE]")[0][
        :AZURE_STREAM.index(b'data: {"id": "chatcmpl-1", "object": "chat.completion.chunk", '
                            b'"model": "gpt-4o", "choices": [{"index": 0, "delta": {}')]
        + b'data: {"error": {"message": "provider down", "code": 502}}\n\n')
    assert type(events[-1]) is c.StreamError and events[-1].message == "provider down"
    # DeepSeek: reasoning_content deltas and prompt_cache_hit_tokens
    dec = openai_chat.StreamDecoder()
    events = dec.feed(
        b'data: {"id":"d","model":"deepseek-reasoner","choices":[{"index":0,"delta":'
        b'{"reasoning_content":"think"},"finish_reason":null}]}\n\n'
        b'data: {"id":"d","model":"deepseek-reasoner","choices":[{"index":0,"delta":{},'
        b'"finish_reason":"stop"}],"usage":{"prompt_tokens":10,"completion_tokens":2,'
        b'"prompt_cache_hit_tokens":6}}\n\n')
    assert [e.text for e in events if type(e) is c.ThinkingDelta] == ["think"]
    assert (dec.usage.input_tokens, dec.usage.cache_read_tokens) == (4, 6)
