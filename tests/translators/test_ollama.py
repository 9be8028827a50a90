"""Ollama's native API codecs (translators/ollama.py, ollama_generate.py): NDJSON streams
whole, byte by byte and cut anywhere (hypothesis), requests and answers both ways, and the
JSON-array framing of Gemini's streams asked without alt=sse (translators/sse.py)."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.captures import checked_events
from translators import canonical as c
from translators import codec, gemini, ollama, ollama_generate
from translators.sse import JsonArrayFraming, JsonArrayParser


def lines(*objs) -> bytes:
    return b"".join(json.dumps(o).encode() + b"\n" for o in objs)


def chat_line(**message) -> dict:
    return {"model": "qwen3:8b", "created_at": "2025-08-16T21:50:45.146929735Z",
            "message": {"role": "assistant", "content": "", **message}, "done": False}


DONE = {"model": "qwen3:8b", "created_at": "2025-08-16T21:50:46.1Z",
        "message": {"role": "assistant", "content": ""}, "done": True, "done_reason": "stop",
        "total_duration": 4883583458, "load_duration": 1334875, "prompt_eval_count": 26,
        "prompt_eval_duration": 342546000, "eval_count": 282, "eval_duration": 4535599000}
# as Ollama's docs show them: thinking deltas, content deltas, a tool call whole in one line
# (no id: older servers), the done line with the counts
STREAMS = {
    "text": lines(chat_line(content="The"), chat_line(content=" sky"),
                  chat_line(content=" is blue."), DONE),
    "thinking-and-tool": lines(
        chat_line(thinking="The user"), chat_line(thinking=" asks"),
        chat_line(content="Let me look."),
        chat_line(tool_calls=[{"function": {"name": "get_current_weather", "arguments": {
            "format": "celsius", "location": "Paris, FR"}}}]), DONE),
    "generate": lines(
        {"model": "llama3.2", "created_at": "2023-08-04T08:52:19.38Z", "response": "",
         "thinking": "Hm", "done": False},
        {"model": "llama3.2", "created_at": "2023-08-04T08:52:19.38Z", "response": "The",
         "done": False},
        {"model": "llama3.2", "created_at": "2023-08-04T19:22:45.49Z", "response": "",
         "done": True, "done_reason": "length", "context": [1, 2, 3],
         "prompt_eval_count": 26, "eval_count": 259}),
}


def decode(data: bytes, pieces=None) -> list:
    dec = ollama.StreamDecoder()
    events = []
    for piece in pieces if pieces is not None else [data]:
        events += dec.feed(piece)
    return events + dec.close()


def unnamed(events):
    """Events with generated call ids blanked (an id Ollama did not send is made up)."""
    return [c.BlockStart(e.index, e.kind, "<id>", e.tool_name) if type(e) is c.BlockStart
            and e.kind == "tool_use" else e for e in events]


@pytest.mark.parametrize("module", [ollama, ollama_generate], ids=lambda m: m.NAME)
def test_the_codecs_have_every_member_of_the_contract(module):
    assert codec.missing(module) == []
    assert isinstance(module.StreamDecoder(), codec.StreamDecoder)
    assert isinstance(module.client_stream_encoder({}), codec.StreamEncoder)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_documented_streams_whole_and_byte_by_byte(name):
    data = STREAMS[name]
    whole = checked_events(ollama, data)
    assert type(whole[-1]) is c.MessageStop
    assert unnamed(decode(data, [data[i:i + 1] for i in range(len(data))])) == unnamed(whole)


def test_a_stream_reads_as_ollama_says_it():
    resp = c.collect_response(checked_events(ollama, STREAMS["thinking-and-tool"]))
    assert [type(p) for p in resp.parts] == [c.Thinking, c.Text, c.ToolUse]
    assert resp.parts[0].text == "The user asks" and resp.parts[1].text == "Let me look."
    call = resp.parts[2]
    assert (call.name, call.input) == ("get_current_weather",
                                       {"format": "celsius", "location": "Paris, FR"})
    # Ollama says "stop" after a tool call too
    assert resp.stop_reason == "tool_use"
    assert resp.usage == c.Usage(26, 282) and resp.model == "qwen3:8b"
    gen = c.collect_response(checked_events(ollama, STREAMS["generate"]))
    assert [p.text for p in gen.parts] == ["Hm", "The"] and gen.stop_reason == "max_tokens"
    assert gen.usage == c.Usage(26, 259)


@given(st.sampled_from(sorted(STREAMS)), st.data())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_any_chunking_gives_the_same_events(name, data):
    body = STREAMS[name]
    if data.draw(st.booleans()):
        body = body.replace(b"\n", b"\r\n")  # a CRLF server
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=30)))
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    assert unnamed(decode(body, pieces)) == unnamed(decode(STREAMS[name]))


@pytest.mark.parametrize("module", [ollama, ollama_generate], ids=lambda m: m.NAME)
@pytest.mark.parametrize("name", ["text", "generate"])
def test_streams_encode_back_to_what_decodes_the_same(module, name):
    events = decode(STREAMS[name])
    encoded = module.client_stream_encoder({}).encode_all(events)
    assert all(json.loads(line)["model"] for line in encoded.splitlines())
    back = c.collect_response(checked_events(module, encoded))
    expected = c.collect_response(events)
    assert back.parts == expected.parts and back.usage == expected.usage
    assert back.stop_reason == expected.stop_reason


def test_the_encoder_writes_tool_calls_whole_and_the_done_line_last():
    events = c.response_to_events(c.Response(
        "msg_1", "claude-x", (c.Thinking("hm", signature="sig"), c.Text("hi"),
                              c.ToolUse("toolu_1", "Bash", {"command": "ls"})),
        "tool_use", c.Usage(100, 20, cache_read_tokens=50)))
    out = [json.loads(line) for line in ollama.StreamEncoder().encode_all(events).splitlines()]
    assert [o["done"] for o in out] == [False, False, False, True]
    assert out[0]["message"]["thinking"] == "hm" and "signature" not in json.dumps(out)
    assert out[2]["message"]["tool_calls"] == [{"id": "toolu_1", "function": {
        "index": 0, "name": "Bash", "arguments": {"command": "ls"}}}]
    # every prompt token is a prompt token to Ollama, cached or not
    assert (out[3]["prompt_eval_count"], out[3]["eval_count"]) == (150, 20)
    assert out[3]["done_reason"] == "stop"


def test_errors_and_cut_streams_end_in_a_stream_error():
    cut = decode(lines(chat_line(content="Hi")))
    assert type(cut[-1]) is c.StreamError and "done" in cut[-1].message
    failed = decode(lines(chat_line(content="Hi"), {"error": "model runner has crashed"}))
    assert failed[-1] == c.StreamError("api_error", "model runner has crashed")
    assert ollama.is_error_event("", '{"error":"x"}')
    encoded = ollama.StreamEncoder().encode(c.StreamError("api_error", "boom"))
    assert json.loads(encoded) == {"error": "boom"}


@given(st.binary(max_size=300))
@settings(max_examples=200)
def test_garbage_streams_end_in_a_stream_error_or_stop(data):
    events = decode(data)
    assert type(events[-1]) in (c.StreamError, c.MessageStop)


def test_a_line_past_the_limit_breaks_the_stream_off():
    parser = ollama.LineParser(max_line=100)
    with pytest.raises(ollama.NDJSONTooLarge):
        for _ in range(20):
            parser.feed(b"x" * 10)


# ---------------------------------------------------------------- requests

TOOL = {"type": "function", "function": {
    "name": "get_current_weather", "description": "Get the weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]}}}


def three_turns() -> dict:
    """A tool conversation over three turns as older Ollama clients send it: calls without
    ids, results named only by tool_name."""
    def call(city):
        return {"function": {"name": "get_current_weather", "arguments": {"location": city}}}
    return {"model": "llama3.2", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Weather in Paris and Rome?", "images": ["iVBORw0KGgo="]},
        {"role": "assistant", "content": "", "tool_calls": [call("Paris"), call("Rome")]},
        {"role": "tool", "tool_name": "get_current_weather", "content": "22C"},
        {"role": "tool", "tool_name": "get_current_weather", "content": "25C"},
        {"role": "assistant", "content": "And Oslo:", "thinking": "one more",
         "tool_calls": [call("Oslo")]},
        {"role": "tool", "tool_name": "get_current_weather", "content": "5C"},
        {"role": "user", "content": "Thanks"}],
        "tools": [TOOL], "options": {"temperature": 0.2, "num_predict": 300, "num_ctx": 8192,
                                     "stop": ["\n\n"]},
        "format": "json", "keep_alive": "5m", "think": True}


def test_tool_results_by_name_match_their_calls_over_three_turns():
    req = ollama.decode_request(three_turns())
    assert req.system == (c.Text("Be brief."),) and req.stream is True
    calls = [p.id for m in req.messages for p in m.parts if type(p) is c.ToolUse]
    results = [p.tool_use_id for m in req.messages for p in m.parts if type(p) is c.ToolResult]
    assert len(set(calls)) == 3 and results == calls  # each result its own call, in order
    # the results of one turn are one user message
    assert [len(m.parts) for m in req.messages if m.parts and type(m.parts[0]) is
            c.ToolResult] == [2, 1]
    image = req.messages[0].parts[1]
    assert type(image) is c.Image and image.media_type == "image/png"
    assert (req.temperature, req.max_tokens, req.stop) == (0.2, 300, ("\n\n",))
    assert req.response_format == c.ResponseFormat() and req.thinking == {"type": "adaptive"}
    assert req.extras["ollama:options.num_ctx"] == 8192


def test_requests_encode_for_an_ollama_provider():
    req = ollama.decode_request(three_turns())
    body = ollama.encode_request(req)
    assert body["stream"] is True and body["think"] is True and body["keep_alive"] == "5m"
    assert body["options"] == {"temperature": 0.2, "num_predict": 300, "stop": ["\n\n"],
                               "num_ctx": 8192}
    tools = [m for m in body["messages"] if m["role"] == "tool"]
    calls = [tc for m in body["messages"] for tc in m.get("tool_calls", ())]
    # each result names its call by id and by the tool's name (older servers read the name)
    assert [t["tool_call_id"] for t in tools] == [tc["id"] for tc in calls]
    assert {t["tool_name"] for t in tools} == {"get_current_weather"}
    assert body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert body["messages"][1]["images"] == ["iVBORw0KGgo="]
    assert body["tools"] == [TOOL]
    # what detour writes, it reads back to the same
    assert ollama.encode_request(ollama.decode_request(body)) == body


def test_other_formats_requests_never_ask_think_and_say_stream_false():
    req = c.Request("llama3.2", (c.Message("user", (c.Text("hi"),)),), stream=False,
                    thinking={"type": "enabled", "budget_tokens": 100}, max_tokens=64)
    body = ollama.encode_request(req)
    assert body == {"model": "llama3.2", "messages": [{"role": "user", "content": "hi"}],
                    "stream": False, "options": {"num_predict": 64}}
    with pytest.raises(c.TranslationError, match="inline"):
        ollama.encode_request(c.Request("m", (c.Message("user", (
            c.Image("image/png", url="https://x/y.png"),)),)))


def test_generate_requests_and_answers():
    body = {"model": "codellama:code", "prompt": "def gcd(a, b):", "suffix": "  return r",
            "system": "You write Python.", "options": {"temperature": 0}, "stream": False}
    req = ollama_generate.decode_request(body)
    assert req.messages == (c.Message("user", (c.Text("def gcd(a, b):"),)),)
    assert req.system == (c.Text("You write Python."),) and req.stream is False
    # suffix is /api/generate's own: named as dropped when the call goes to another format
    assert c.foreign_fields(req, ollama.EXTRAS_PREFIX) == ("suffix",)
    assert ollama_generate.encode_request(req) == body
    whole = {"model": "codellama:code", "created_at": "2024-07-22T20:47:51.1Z",
             "response": "\n  if a == 0:", "done": True, "done_reason": "stop",
             "prompt_eval_count": 17, "eval_count": 63}
    resp = ollama_generate.decode_response(whole)
    assert resp.parts == (c.Text("\n  if a == 0:"),) and resp.usage == c.Usage(17, 63)
    again = ollama_generate.encode_response(resp)
    assert (again["response"], again["prompt_eval_count"], again["eval_count"]) == (
        "\n  if a == 0:", 17, 63)


def test_whole_chat_answers_both_ways():
    body = {"model": "llama3.2", "created_at": "2024-07-22T20:33:28.1Z", "message": {
        "role": "assistant", "content": "", "tool_calls": [{"function": {
            "name": "get_current_weather", "arguments": {"location": "Paris, FR"}}}]},
        "done_reason": "stop", "done": True, "prompt_eval_count": 122, "eval_count": 33}
    resp = ollama.decode_response(body)
    assert resp.stop_reason == "tool_use" and resp.usage == c.Usage(122, 33)
    out = ollama.encode_response(resp)
    assert out["message"]["tool_calls"][0]["function"]["arguments"] == {"location": "Paris, FR"}
    assert out["done"] is True and out["prompt_eval_count"] == 122
    with pytest.raises(c.TranslationError, match="not found"):
        ollama.decode_response({"error": "model 'x' not found"})


def test_rewrite_sets_only_the_model_and_a_lower_cap():
    body = {"model": "a", "messages": [], "options": {"num_predict": 64000, "seed": 1}}
    assert ollama.rewrite_request(body, model="a") is body
    assert ollama.rewrite_request(body, model="b", max_tokens=8192) == {
        "model": "b", "messages": [], "options": {"num_predict": 8192, "seed": 1}}
    unbounded = {"model": "a", "messages": []}  # Ollama's default: no cap at all
    assert ollama.rewrite_request(unbounded, max_tokens=100)["options"] == {"num_predict": 100}


def test_sniffing():
    assert ollama.sniff_request(three_turns())
    assert not ollama.sniff_request({"model": "x", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}], "options": {}})
    assert ollama_generate.sniff_request({"model": "x", "prompt": "hi"})
    assert ollama.sniff_stream(STREAMS["text"])
    assert ollama_generate.sniff_stream(STREAMS["generate"])


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4), max_leaves=20)
message_keys = st.sampled_from(["role", "content", "images", "tool_calls", "tool_name",
                                "tool_call_id", "thinking"])
messages = st.dictionaries(message_keys, json_values | st.sampled_from(
    ["user", "assistant", "tool", "system"]), max_size=5)
bodies = st.fixed_dictionaries({"messages": st.lists(messages, max_size=5)},
                               optional={"tools": json_values, "options": json_values,
                                         "format": json_values, "think": json_values,
                                         "stream": json_values, "model": json_values})


@given(st.one_of(json_values, bodies))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_fuzzed_requests_only_raise_translation_errors(body):
    try:
        req = ollama.decode_request(body)
    except c.TranslationError:
        return
    try:
        again = ollama.encode_request(req)
    except c.TranslationError:
        return
    assert ollama.encode_request(ollama.decode_request(again)) == again


# ---------------------------------------------------------------- Gemini's JSON-array streams


def gemini_events():
    return c.response_to_events(c.Response(
        "r1", "gemini-x", (c.Text('a "quoted" [bracket] {brace}'),
                           c.ToolUse("call_1", "ls", {"path": "/tmp"})),
        "tool_use", c.Usage(10, 5)))


def test_a_json_array_stream_is_one_json_array_of_the_sse_chunks():
    sse = gemini.StreamEncoder().encode_all(gemini_events())
    array = JsonArrayFraming(gemini.StreamEncoder()).encode_all(gemini_events())
    assert array.startswith(b"[{") and array.endswith(b"\n]")
    assert json.loads(array) == [json.loads(line[6:]) for line in sse.splitlines()
                                 if line.startswith(b"data: ")]
    # read back by the Gemini decoder, which tells the framing by its first byte
    assert c.collect_response(checked_events(gemini, array)) == c.collect_response(
        checked_events(gemini, sse))
    # and whole, as a passthrough reads an answer that is not an event stream
    assert gemini.decode_response(json.loads(array)).usage == c.Usage(10, 5)


def test_a_json_array_stream_ends_closed_on_an_error():
    enc = JsonArrayFraming(gemini.StreamEncoder())
    out = enc.encode_all([c.MessageStart("r", "m"), c.BlockStart(0, "text"),
                          c.TextDelta(0, "hi"), c.StreamError("api_error", "broke")])
    assert json.loads(out)[-1]["error"]["message"] == "broke"


@given(st.data())
@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
def test_json_array_elements_come_out_whatever_the_chunking(data):
    body = JsonArrayFraming(gemini.StreamEncoder()).encode_all(gemini_events())
    cuts = sorted(data.draw(st.lists(st.integers(0, len(body)), max_size=30)))
    pieces = [body[a:b] for a, b in zip([0] + cuts, cuts + [len(body)])]
    parser = JsonArrayParser()
    elements = [e.data for p in pieces for e in parser.feed(p)] + [
        e.data for e in parser.close()]
    assert [json.loads(e) for e in elements] == json.loads(body)
    dec = gemini.StreamDecoder()
    events = [ev for p in pieces for ev in dec.feed(p)] + dec.close()
    assert c.collect_response(events).parts == c.collect_response(gemini_events()).parts


def test_only_a_call_that_asks_nothing_has_an_idle_answer():
    assert ollama.idle_answer({"model": "m", "messages": [{"role": "user", "content": "x"}]}) \
        is None
    assert json.loads(ollama.idle_answer({"model": "m", "messages": [], "keep_alive": "0"}))[
        "done_reason"] == "unload"
    assert ollama_generate.idle_answer({"model": "m", "prompt": "x"}) is None
    loaded = json.loads(ollama_generate.idle_answer({"model": "m"}))
    assert (loaded["response"], loaded["done"], loaded["done_reason"]) == ("", True, "load")
