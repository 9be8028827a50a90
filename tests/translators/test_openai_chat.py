"""OpenAI Chat Completions <-> canonical: requests, responses, streams (both directions)."""

import json

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.captures import CAPTURES
from translators import anthropic
from translators import canonical as c
from translators import openai_chat as oc

# The real Qwen Code captures (53-65 KB each); the stream tests carry copies of the answers.
CAPTURE_NAMES = ["text", "tool-call", "tool-result"]


def load_capture(name: str, kind: str = "request.json"):
    path = CAPTURES / f"qwen-code.chat-completions.{name}.{kind}"
    return json.loads(path.read_text()) if kind.endswith(".json") else path.read_bytes()


# ---------------------------------------------------------------- stream helpers


def sse_chunk(delta=None, finish=None, *, usage=None, choices=True, id_="chatcmpl-1",
              model="deepseek-chat", created=1795572019) -> bytes:
    """One chat.completion.chunk as upstreams write it (json.dumps with spaces, like the stub)."""
    body = {"id": id_, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta if delta is not None else {},
                         "finish_reason": finish}] if choices else []}
    if usage is not None:
        body["usage"] = usage
    return f"data: {json.dumps(body)}\n\n".encode()


DONE = b"data: [DONE]\n\n"
USAGE = {"prompt_tokens": 12, "completion_tokens": 6, "total_tokens": 18}


def qwen(id_, *chunks) -> bytes:
    """The stub answers Qwen Code accepted (captures/qwen-code.chat-completions.*.response.txt)."""
    out = [sse_chunk({"role": "assistant", "content": ""}, id_=id_, model="qwen3.5-plus",
                     created=chunks[0])]
    out += [sse_chunk(d, f, id_=id_, model="qwen3.5-plus", created=chunks[0])
            for d, f in chunks[1:]]
    out.append(sse_chunk(usage=USAGE, choices=False, id_=id_, model="qwen3.5-plus",
                         created=chunks[0]))
    return b"".join(out) + DONE


QWEN_TEXT = qwen("chatcmpl-stub40298b6d61854a9b", 1795572019,
                 ({"content": "STUB-OK: hello fr"}, None),
                 ({"content": "om the stub vendor"}, None), ({}, "stop"))
QWEN_TOOL_CALL = qwen("chatcmpl-stubbdb7789292dd4716", 1795572022, ({"tool_calls": [{
    "index": 0, "id": "call_stubd9252451019e", "type": "function", "function": {
        "name": "run_shell_command",
        "arguments": "{\"command\": \"echo hi\", \"is_background\": false, "
                     "\"description\": \"Print hi\"}"}}]}, None), ({}, "tool_calls"))
QWEN_TOOL_RESULT = qwen("chatcmpl-stubc0e815c25bd64a0c", 1795572023, (
    {"content": "STUB-OK: hello from the stub vendor (tool said: Command: echo hi\nDirectory: (r"},
    None), ({"content": "oot)\nOutput: hi\nError: (none)\nExit Code: 0\nSignal: 0\n"
                        "Process Group PGID: 20967)"}, None), ({}, "stop"))
QWEN_RESPONSES = {"text": QWEN_TEXT, "tool-call": QWEN_TOOL_CALL, "tool-result": QWEN_TOOL_RESULT}


def grammar_checked(events: list) -> list:
    g = c.StreamGrammar()
    for ev in events:
        g.check(ev)
    assert g.done, f"stream did not end: {events[-3:]}"
    return events


def decode_in(pieces) -> list:
    d = oc.StreamDecoder()
    out = []
    for piece in pieces:
        out += d.feed(piece)
    return out + d.close()


def decode(raw: bytes) -> list:
    """Whole buffer and byte by byte give the same events, which the grammar accepts."""
    whole = decode_in([raw])
    assert decode_in([raw[i:i + 1] for i in range(len(raw))]) == whole
    return grammar_checked(whole)


def of_type(events, t) -> list:
    return [e for e in events if type(e) is t]


def tool_args(events) -> dict:
    """Tool block id -> its argument text, joined from the deltas."""
    ids, args = {}, {}
    for ev in events:
        if type(ev) is c.BlockStart and ev.kind == "tool_use":
            ids[ev.index] = ev.tool_id
            args[ev.tool_id] = ""
        elif type(ev) is c.ToolInputDelta:
            args[ids[ev.index]] += ev.partial_json
    return args


def call(index, args=None, id_=None, name=None) -> dict:
    d = {"index": index}
    if id_ is not None:
        d["id"], d["type"] = id_, "function"
    fn = {}
    if name is not None:
        fn["name"] = name
    if args is not None:
        fn["arguments"] = args
    if fn:
        d["function"] = fn
    return d


# ---------------------------------------------------------------- requests: Chat -> canonical


def req(messages, **fields) -> dict:
    return {"model": "deepseek-chat", "messages": messages, **fields}


def test_leading_system_and_developer_messages_become_the_system_prompt():
    r = oc.decode_request(req([
        {"role": "system", "content": "be brief"},
        {"role": "developer", "content": [{"type": "text", "text": "no emoji",
                                           "cache_control": {"type": "ephemeral"}}]},
        {"role": "user", "content": "hi"},
        {"role": "system", "content": "mid"}]))
    assert r.system == (c.Text("be brief"), c.Text("no emoji", {"type": "ephemeral"}))
    assert r.messages == (c.Message("user", (c.Text("hi"),)),
                          c.Message("system", (c.Text("mid"),)))


def test_user_content_string_and_parts_with_images():
    r = oc.decode_request(req([{"role": "user", "content": [
        {"type": "text", "text": "what is this"},
        {"type": "image_url",
         "image_url": {"url": "data:image/png;base64,iVBORw0", "detail": "high"}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "image_url", "image_url": "data:text/plain,not-base64"}]}]))
    assert r.messages[0].parts == (
        c.Text("what is this"), c.Image(media_type="image/png", data="iVBORw0"),
        c.Image(url="https://example.com/cat.jpg"), c.Image(url="data:text/plain,not-base64"))


def test_assistant_reasoning_text_and_tool_calls():
    r = oc.decode_request(req([{"role": "assistant", "content": "let me look",
                                "reasoning_content": "the user wants ls",
                                "tool_calls": [
                                    {"id": "call_1", "type": "function",
                                     "function": {"name": "Bash", "arguments": '{"command":"ls"}'}},
                                    {"id": "call_2", "type": "function",
                                     "function": {"name": "Noop", "arguments": ""}},
                                    {"id": "call_3", "type": "function",
                                     "function": {"name": "Bad", "arguments": "{not json"}}]}]))
    assert r.messages[0] == c.Message("assistant", (
        c.Thinking("the user wants ls"), c.Text("let me look"),
        c.ToolUse("call_1", "Bash", {"command": "ls"}), c.ToolUse("call_2", "Noop", {}),
        c.ToolUse("call_3", "Bad", {}, raw_arguments="{not json")))


def test_openrouter_reasoning_field_is_thinking_too():
    r = oc.decode_request(req([{"role": "assistant", "content": None, "reasoning": "hmm"}]))
    assert r.messages[0].parts == (c.Thinking("hmm"),)


def test_consecutive_tool_messages_merge_into_one_user_message():
    r = oc.decode_request(req([
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "f", "arguments": "{}"}},
            {"id": "b", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "a", "content": "one"},
        {"role": "tool", "tool_call_id": "b", "content": [{"type": "text", "text": "two"}]},
        {"role": "user", "content": "thanks"},
        {"role": "tool", "tool_call_id": "c", "content": ""}]))
    assert r.messages[1:] == (
        c.Message("user", (c.ToolResult("a", (c.Text("one"),)),
                           c.ToolResult("b", (c.Text("two"),)))),
        c.Message("user", (c.Text("thanks"),)),
        c.Message("user", (c.ToolResult("c", ()),)))


def test_tools_and_tool_choice():
    tools = [{"type": "function", "function": {"name": "Bash", "description": "run",
                                               "parameters": {"type": "object"}}},
             {"type": "function", "function": {"name": "Ping"}}]
    r = oc.decode_request(req([], tools=tools, tool_choice="required", parallel_tool_calls=False))
    assert r.tools == (c.Tool("Bash", "run", {"type": "object"}),
                       c.Tool("Ping", None, {"type": "object", "properties": {}}))
    assert r.tool_choice == c.ToolChoice("any", parallel=False)
    for wire, mode in [("auto", "auto"), ("none", "none"), ("required", "any")]:
        assert oc.decode_request(req([], tool_choice=wire)).tool_choice == c.ToolChoice(mode)
    named = {"type": "function", "function": {"name": "Bash"}}
    assert oc.decode_request(req([], tool_choice=named)).tool_choice == c.ToolChoice("tool", "Bash")
    assert oc.decode_request(req([], parallel_tool_calls=True)).tool_choice == c.ToolChoice(
        "auto", parallel=True)
    assert oc.decode_request(req([])).tool_choice is None


def test_scalar_fields():
    r = oc.decode_request(req([], max_tokens=100, temperature=0.2, top_p=1, stop="END",
                              stream=True, stream_options={"include_usage": True},
                              reasoning_effort="high", user="u-1"))
    assert (r.max_tokens, r.temperature, r.top_p, r.stop, r.stream, r.reasoning_effort,
            r.user) == (100, 0.2, 1, ("END",), True, "high", "u-1")
    assert r.extras == {}  # stream_options is plumbing, not carried
    assert oc.decode_request(req([], stop=["a", "b"])).stop == ("a", "b")
    assert oc.decode_request(req([], max_completion_tokens=7, max_tokens=9)).max_tokens == 7


def test_unknown_fields_go_to_extras_and_come_back():
    body = req([{"role": "user", "content": "hi"}], seed=3, response_format={"type": "json_object"},
               stream=False)
    r = oc.decode_request(body)
    assert r.extras == {"openai_chat:seed": 3}
    assert r.response_format == c.ResponseFormat()
    assert oc.encode_request(r) == body


@pytest.mark.parametrize("body, path", [
    ([], ""),
    ({"messages": []}, "model"),
    ({"model": "m"}, "messages"),
    (req(["hi"]), "messages[0]"),
    (req([{"role": "robot", "content": "x"}]), "messages[0].role"),
    (req([{"role": "function", "name": "f", "content": "x"}]), "messages[0].role"),
    (req([{"role": "user", "content": [{"type": "input_audio"}]}]), "messages[0].content[0]"),
    (req([{"role": "user", "content": [{"type": "text", "text": 1}]}]),
     "messages[0].content[0].text"),
    (req([{"role": "user", "content": None}]), "messages[0].content"),
    (req([{"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]),
     "messages[0].content[0]"),
    (req([{"role": "user", "content": "a"}, {"role": "user", "content": "b"},
          {"role": "user", "content": "c"},
          {"role": "assistant", "tool_calls": [{"id": "x", "function": {"name": ""}}]}]),
     "messages[3].tool_calls[0].function.name"),
    (req([{"role": "assistant", "tool_calls": [{"id": 1, "function": {"name": "f"}}]}]),
     "messages[0].tool_calls[0].id"),
    (req([{"role": "assistant",
           "tool_calls": [{"id": "x", "function": {"name": "f", "arguments": 3}}]}]),
     "messages[0].tool_calls[0].function.arguments"),
    (req([{"role": "assistant", "function_call": {"name": "f"}}]), "messages[0].function_call"),
    (req([{"role": "tool", "content": "x"}]), "messages[0].tool_call_id"),
    (req([], tools=[{"type": "custom", "custom": {"name": "x"}}]), "tools[0]"),
    (req([], tools=[{"type": "function", "function": {"name": "f", "parameters": []}}]),
     "tools[0].function.parameters"),
    (req([], tool_choice="sometimes"), "tool_choice"),
    (req([], tool_choice={"type": "function", "function": {}}), "tool_choice.function.name"),
    (req([], parallel_tool_calls="no"), "parallel_tool_calls"),
    (req([], max_tokens=True), "max_tokens"),
    (req([], temperature="hot"), "temperature"),
    (req([], stop=[1]), "stop"),
    (req([], stream="yes"), "stream"),
])
def test_invalid_requests_name_the_field(body, path):
    with pytest.raises(c.TranslationError) as e:
        oc.decode_request(body)
    assert e.value.path == path


# ---------------------------------------------------------------- requests: canonical -> Chat


def test_system_prompt_is_one_leading_message_and_mid_system_stays_in_place():
    r = c.Request("m", (c.Message("user", (c.Text("hi"),)), c.Message("system", (c.Text("now"),)),
                        c.Message("assistant", (c.Text("ok"),))),
                  system=(c.Text("a", {"type": "ephemeral"}), c.Text("b")))
    assert oc.encode_request(r)["messages"] == [
        {"role": "system", "content": "a\n\nb"}, {"role": "user", "content": "hi"},
        {"role": "system", "content": "now"}, {"role": "assistant", "content": "ok"}]


def test_tool_results_come_first_then_their_images_then_the_rest_of_the_turn():
    png = c.Image(media_type="image/png", data="AAAA")
    r = c.Request("m", (
        c.Message("assistant", (c.ToolUse("t1", "Read", {"path": "a.png"}),
                                c.ToolUse("t2", "Bash", {"command": "ls"}))),
        c.Message("user", (c.Text("also look at this"),
                           c.ToolResult("t1", (c.Text("here"), png), is_error=True),
                           c.ToolResult("t2", (c.Text("x"), c.Text("y"))),
                           c.Image(url="https://e.com/i.jpg")))))
    assert oc.encode_request(r)["messages"] == [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "t1", "type": "function",
             "function": {"name": "Read", "arguments": '{"path":"a.png"}'}},
            {"id": "t2", "type": "function",
             "function": {"name": "Bash", "arguments": '{"command":"ls"}'}}]},
        {"role": "tool", "tool_call_id": "t1", "content": "here"},
        {"role": "tool", "tool_call_id": "t2", "content": "x\n\ny"},
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,AAAA"}}]},
        {"role": "user", "content": [
            {"type": "text", "text": "also look at this"},
            {"type": "image_url", "image_url": {"url": "https://e.com/i.jpg"}}]}]


def test_image_only_tool_result_leaves_an_empty_tool_message():
    r = c.Request("m", (c.Message("user", (c.ToolResult("t", (c.Image(url="u"),)),)),))
    assert oc.encode_request(r)["messages"] == [
        {"role": "tool", "tool_call_id": "t", "content": ""},
        {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]


def test_assistant_thinking_becomes_reasoning_content_without_signatures():
    r = c.Request("m", (c.Message("assistant", (
        c.Thinking("step 1", signature="sig=="), c.Thinking("", redacted="opaque"),
        c.Text("done"), c.ToolUse("t", "f", {}, raw_arguments="[1, 2]"))),))
    assert oc.encode_request(r)["messages"] == [{
        "role": "assistant", "content": "done", "reasoning_content": "step 1",
        "tool_calls": [{"id": "t", "type": "function",
                        "function": {"name": "f", "arguments": "[1, 2]"}}]}]


def test_tool_arguments_are_compact_json_keeping_unicode():
    r = c.Request("m", (c.Message("assistant", (c.ToolUse("t", "f", {"a": [1, {"b": "é"}]}),)),))
    call_ = oc.encode_request(r)["messages"][0]["tool_calls"][0]
    assert call_["function"]["arguments"] == '{"a":[1,{"b":"é"}]}'


def test_tools_tool_choice_and_scalars():
    r = c.Request("m", (), tools=(c.Tool("Bash", "run", {"type": "object"}),
                                  c.Tool("Ping", None, {"type": "object"})),
                  tool_choice=c.ToolChoice("any", parallel=False), max_tokens=50,
                  temperature=0.5, top_p=0.9, top_k=40, stop=("x",), stream=True,
                  thinking={"type": "enabled", "budget_tokens": 1024},
                  reasoning_effort="low", user="u", extras={"anthropic:metadata": {"a": 1}})
    assert oc.encode_request(r) == {
        "model": "m", "messages": [], "stream": True, "stream_options": {"include_usage": True},
        "tools": [{"type": "function", "function": {"name": "Bash", "description": "run",
                                                    "parameters": {"type": "object"}}},
                  {"type": "function", "function": {"name": "Ping",
                                                    "parameters": {"type": "object"}}}],
        "tool_choice": "required", "parallel_tool_calls": False, "max_tokens": 50,
        "temperature": 0.5, "top_p": 0.9, "stop": ["x"], "reasoning_effort": "low", "user": "u"}


@pytest.mark.parametrize("choice, wire", [
    (c.ToolChoice("auto"), "auto"), (c.ToolChoice("any"), "required"),
    (c.ToolChoice("none"), "none"),
    (c.ToolChoice("tool", "Bash"), {"type": "function", "function": {"name": "Bash"}})])
def test_tool_choice_modes(choice, wire):
    r = c.Request("m", (), tools=(c.Tool("Bash", None, {}),), tool_choice=choice)
    body = oc.encode_request(r)
    assert body["tool_choice"] == wire and "parallel_tool_calls" not in body


def test_tool_choice_is_left_out_without_tools():
    # OpenAI rejects tool_choice and parallel_tool_calls when no tools are given
    body = oc.encode_request(c.Request("m", (), tool_choice=c.ToolChoice("auto", parallel=False)))
    assert "tool_choice" not in body and "parallel_tool_calls" not in body


def test_max_tokens_field_for_reasoning_models():
    body = oc.encode_request(c.Request("m", (), max_tokens=9),
                             max_tokens_field="max_completion_tokens")
    assert body["max_completion_tokens"] == 9 and "max_tokens" not in body


def test_content_parts_mode_keeps_cache_markers():
    mark = {"type": "ephemeral"}
    r = c.Request("m", (c.Message("user", (c.Text("q", mark),)),
                        c.Message("assistant", (c.Text("a"),)),
                        c.Message("assistant", (c.Text("b", mark),)),
                        c.Message("user", (c.ToolResult("t", (c.Text("out"),),
                                                        cache_control=mark),))),
                  system=(c.Text("sys", mark),), tools=(c.Tool("f", None, {}, mark),))
    body = oc.encode_request(r, content_parts=True)
    assert body["messages"] == [
        {"role": "system", "content": [{"type": "text", "text": "sys", "cache_control": mark}]},
        {"role": "user", "content": [{"type": "text", "text": "q", "cache_control": mark}]},
        {"role": "assistant", "content": "a"},
        {"role": "assistant", "content": [{"type": "text", "text": "b", "cache_control": mark}]},
        {"role": "tool", "tool_call_id": "t",
         "content": [{"type": "text", "text": "out", "cache_control": mark}]}]
    assert body["tools"] == [{"type": "function", "function": {"name": "f", "parameters": {}},
                              "cache_control": mark}]
    plain = oc.encode_request(r)
    assert "cache_control" not in json.dumps(plain)
    assert plain["messages"][4] == {"role": "tool", "tool_call_id": "t", "content": "out"}


@pytest.mark.parametrize("message", [
    c.Message("user", (c.ToolUse("t", "f", {}),)),
    c.Message("user", (c.Thinking("x"),)),
    c.Message("assistant", (c.Image(url="u"),)),
    c.Message("assistant", (c.ToolResult("t", ()),)),
    c.Message("system", (c.Image(url="u"),)),
])
def test_parts_a_role_cannot_carry_are_errors(message):
    with pytest.raises(c.TranslationError, match="messages\\[0\\]"):
        oc.encode_request(c.Request("m", (message,)))


@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_qwen_code_captures_round_trip_exactly(name):
    body = load_capture(name)
    r = oc.decode_request(body)
    assert oc.encode_request(r, content_parts=True) == body
    assert r.stream and r.max_tokens == 8000 and set(r.extras) == {
        "openai_chat:metadata", "openai_chat:vl_high_resolution_images"}
    assert r.system[0].cache_control == {"type": "ephemeral"}


def test_qwen_code_tool_result_capture_decodes_to_a_tool_turn():
    r = oc.decode_request(load_capture("tool-result"))
    assistant, result = r.messages[-2:]
    assert assistant == c.Message("assistant", (c.ToolUse(
        "call_stubd9252451019e", "run_shell_command",
        {"command": "echo hi", "is_background": False, "description": "Print hi"}),))
    assert result.role == "user" and result.parts[0].tool_use_id == "call_stubd9252451019e"
    assert result.parts[0].content[0].text.startswith("Command: echo hi")


# ---------------------------------------------------------------- whole responses


def completion(message, finish="stop", usage=None) -> dict:
    return {"id": "chatcmpl-9", "object": "chat.completion", "created": 1, "model": "gpt-x",
            "choices": [{"index": 0, "message": {"role": "assistant", **message},
                         "logprobs": None, "finish_reason": finish}],
            "usage": usage or USAGE}


@pytest.mark.parametrize("finish, stop", [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("function_call", "tool_use"), ("content_filter", "refusal"),
    ("insufficient_system_resource", "end_turn"), (None, None)])
def test_finish_reason_mapping(finish, stop):
    assert oc.decode_response(completion({"content": "x"}, finish)).stop_reason == stop


@pytest.mark.parametrize("stop, finish", [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
    ("error", "stop"), (None, "stop")])
def test_stop_reason_mapping(stop, finish):
    resp = c.Response("id", "m", (c.Text("x"),), stop, c.Usage())
    assert oc.encode_response(resp, created=5)["choices"][0]["finish_reason"] == finish


def test_decode_response_with_reasoning_and_tool_calls():
    resp = oc.decode_response(completion({
        "content": None, "reasoning_content": "think",
        "tool_calls": [{"id": "c1", "type": "function",
                        "function": {"name": "f", "arguments": '{"x":1}'}}]}, "tool_calls"))
    assert resp == c.Response("chatcmpl-9", "gpt-x",
                              (c.Thinking("think"), c.ToolUse("c1", "f", {"x": 1})),
                              "tool_use", c.Usage(12, 6))


def test_tool_calls_with_finish_stop_still_mean_tool_use():
    # claude-code-router #129: a client told end_turn never runs the tool
    resp = oc.decode_response(completion({"content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]}, "stop"))
    assert resp.stop_reason == "tool_use"


def test_refusal_is_text():
    resp = oc.decode_response(completion({"content": None, "refusal": "I can't"}))
    assert resp.parts == (c.Text("I can't"),)


@pytest.mark.parametrize("usage, expected", [
    # OpenAI: cached tokens are part of prompt_tokens
    ({"prompt_tokens": 2006, "completion_tokens": 300, "total_tokens": 2306,
      "prompt_tokens_details": {"cached_tokens": 1920},
      "completion_tokens_details": {"reasoning_tokens": 128}}, c.Usage(86, 300, 1920, 0, 128)),
    # DeepSeek: prompt_cache_hit_tokens + prompt_cache_miss_tokens = prompt_tokens
    ({"prompt_tokens": 100, "completion_tokens": 40, "total_tokens": 140,
      "prompt_cache_hit_tokens": 64, "prompt_cache_miss_tokens": 36}, c.Usage(36, 40, 64)),
    # OpenRouter reports cache writes; DashScope's explicit cache names them differently
    ({"prompt_tokens": 194, "completion_tokens": 2,
      "prompt_tokens_details": {"cached_tokens": 10, "cache_write_tokens": 100}},
     c.Usage(84, 2, 10, 100)),
    ({"prompt_tokens": 1500, "completion_tokens": 2,
      "prompt_tokens_details": {"cached_tokens": 0, "cache_creation_input_tokens": 1472}},
     c.Usage(28, 2, 0, 1472)),
    # inconsistent figures never give negative input
    ({"prompt_tokens": 5, "prompt_tokens_details": {"cached_tokens": 9}}, c.Usage(0, 0, 9)),
    ({"prompt_tokens": None, "completion_tokens": None, "prompt_tokens_details": None}, c.Usage()),
    (None, c.Usage()),
])
def test_usage_decoding(usage, expected):
    assert oc.decode_usage(usage) == expected


def test_usage_encoding_round_trips():
    u = c.Usage(86, 300, 1920, 7, 128)
    wire = oc.encode_usage(u)
    assert wire == {"prompt_tokens": 2013, "completion_tokens": 300, "total_tokens": 2313,
                    "prompt_tokens_details": {"cached_tokens": 1920, "cache_write_tokens": 7},
                    "completion_tokens_details": {"reasoning_tokens": 128}}
    assert oc.decode_usage(wire) == u
    assert "cache_write_tokens" not in oc.encode_usage(c.Usage(1, 1))["prompt_tokens_details"]


def test_encode_response_shape_and_round_trip():
    resp = c.Response("chatcmpl-9", "gpt-x", (
        c.Thinking("hm", signature="s"), c.Text("here"), c.ToolUse("c1", "f", {"a": 1})),
        "tool_use", c.Usage(3, 4, 5))
    body = oc.encode_response(resp, created=7)
    assert body == {
        "id": "chatcmpl-9", "object": "chat.completion", "created": 7, "model": "gpt-x",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "tool_calls", "message": {
            "role": "assistant", "content": "here", "reasoning_content": "hm",
            "tool_calls": [{"id": "c1", "type": "function",
                            "function": {"name": "f", "arguments": '{"a":1}'}}]}}],
        "usage": oc.encode_usage(c.Usage(3, 4, 5))}
    assert oc.decode_response(body) == c.Response(
        "chatcmpl-9", "gpt-x", (c.Thinking("hm"), c.Text("here"), c.ToolUse("c1", "f", {"a": 1})),
        "tool_use", c.Usage(3, 4, 5))


@pytest.mark.parametrize("body, path", [
    ({"error": {"message": "bad key", "type": "invalid_request_error"}}, "error"),
    ({"id": "x"}, "choices"),
    ({"choices": [{"index": 0}]}, "choices[0].message"),
    ({"choices": [{"message": {"content": 5}}]}, "choices[0].message.content"),
    ({"choices": [{"message": {}, "finish_reason": 1}]}, "choices[0].finish_reason"),
])
def test_invalid_responses(body, path):
    with pytest.raises(c.TranslationError) as e:
        oc.decode_response(body)
    assert e.value.path == path


def test_empty_choices_is_an_empty_response():
    assert oc.decode_response({"id": "x", "model": "m", "choices": []}) == c.Response(
        "x", "m", (), None, c.Usage())


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("status, typ, code", [
    (400, "invalid_request_error", None), (404, "invalid_request_error", None),
    (422, "invalid_request_error", None), (401, "authentication_error", None),
    (402, "insufficient_quota", "insufficient_quota"), (403, "permission_error", None),
    (429, "requests", "rate_limit_exceeded"), (500, "server_error", None),
    (502, "server_error", None), (503, "server_error", None), (504, "server_error", None),
    (529, "server_error", None), (418, "invalid_request_error", None)])
def test_error_body_by_status(status, typ, code):
    assert json.loads(oc.error_body(status, "why")) == {
        "error": {"message": "why", "type": typ, "param": None, "code": code}}


def test_error_body_and_stream_error_are_the_same_object():
    for kind in sorted(c.ERROR_KINDS):
        body = oc.error_body(500, "why", kind)
        assert oc.StreamEncoder().encode(c.StreamError(kind, "why")) == b"data: " + body + b"\n\n"
    assert json.loads(oc.error_body(429, "x"))["error"]["code"] == "rate_limit_exceeded"


def test_error_body_with_a_lone_surrogate():
    # upstream JSON may carry "\ud83d" alone; UTF-8 cannot, so it goes out escaped
    body = oc.error_body(502, "upstream said \ud83d")
    assert b"\\ud83d" in body
    assert json.loads(body)["error"]["message"] == "upstream said \ud83d"


def test_error_body_kind_overrides_status():
    body = json.loads(oc.error_body(500, "slow down", "rate_limit_error"))
    assert body["error"]["type"] == "requests"
    assert json.loads(oc.error_body(400, "x", "insufficient_quota"))["error"]["type"] == (
        "insufficient_quota")


# ---------------------------------------------------------------- stream: Chat -> canonical


@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_inline_copies_match_the_captures(name):
    assert QWEN_RESPONSES[name] == load_capture(name, "response.txt")


def test_captured_text_stream():
    events = decode(QWEN_TEXT)
    assert events == [
        c.MessageStart("chatcmpl-stub40298b6d61854a9b", "qwen3.5-plus"),
        c.BlockStart(0, "text"), c.TextDelta(0, "STUB-OK: hello fr"),
        c.TextDelta(0, "om the stub vendor"), c.BlockStop(0),
        c.MessageDelta("end_turn", c.Usage(12, 6)), c.MessageStop()]


def test_captured_tool_call_stream():
    events = decode(QWEN_TOOL_CALL)
    resp = c.collect_response(events)
    assert resp.parts == (c.ToolUse("call_stubd9252451019e", "run_shell_command", {
        "command": "echo hi", "is_background": False, "description": "Print hi"}),)
    assert resp.stop_reason == "tool_use" and resp.usage == c.Usage(12, 6)


@pytest.mark.parametrize("name", CAPTURE_NAMES)
def test_captured_streams_re_encode_and_decode_to_the_same_events(name):
    events = decode(QWEN_RESPONSES[name])
    again = decode(oc.StreamEncoder(created=1).encode_all(events))
    assert again == events


def test_reasoning_then_content_are_two_blocks():
    raw = (sse_chunk({"role": "assistant", "content": None, "reasoning_content": ""}) +
           sse_chunk({"reasoning_content": "Let me"}) + sse_chunk({"reasoning_content": " think"}) +
           sse_chunk({"content": "Hi", "reasoning_content": None}) + sse_chunk({}, "stop") +
           sse_chunk(usage=USAGE, choices=False) + DONE)
    assert decode(raw)[1:-2] == [
        c.BlockStart(0, "thinking"), c.ThinkingDelta(0, "Let me"), c.ThinkingDelta(0, " think"),
        c.BlockStop(0), c.BlockStart(1, "text"), c.TextDelta(1, "Hi"), c.BlockStop(1)]


def test_reasoning_field_without_duplicates():
    # some servers send both fields with the same text: take one
    raw = sse_chunk({"reasoning": "r1", "reasoning_content": "r1"}) + sse_chunk(
        {"reasoning": "r2"}) + sse_chunk({}, "stop") + DONE
    assert [e.text for e in of_type(decode(raw), c.ThinkingDelta)] == ["r1", "r2"]


def test_tool_argument_fragments_join_to_the_exact_arguments():
    args = '{"command": "printf \'a\\\\nb\'", "description": "ünïcode ✓"}'
    pieces = [args[i:i + 3] for i in range(0, len(args), 3)]
    raw = sse_chunk({"tool_calls": [call(0, "", "call_a", "Bash")]})
    raw += b"".join(sse_chunk({"tool_calls": [call(0, p)]}) for p in pieces)
    raw += sse_chunk({}, "tool_calls") + sse_chunk(usage=USAGE, choices=False) + DONE
    events = decode(raw)
    assert tool_args(events) == {"call_a": args}
    assert len(of_type(events, c.ToolInputDelta)) == len(pieces)  # streamed, not buffered
    assert events[-2].stop_reason == "tool_use"


def test_parallel_tool_calls_in_sequence():
    raw = (sse_chunk({"content": "two calls"}) +
           sse_chunk({"tool_calls": [call(0, '{"a":', "c0", "f")]}) +
           sse_chunk({"tool_calls": [call(0, '1}')]}) +
           sse_chunk({"tool_calls": [call(1, '{"b":', "c1", "g")]}) +
           sse_chunk({"tool_calls": [call(1, '2}')]}) +
           sse_chunk({}, "tool_calls") + DONE)
    events = decode(raw)
    assert tool_args(events) == {"c0": '{"a":1}', "c1": '{"b":2}'}
    assert c.collect_response(events).parts == (
        c.Text("two calls"), c.ToolUse("c0", "f", {"a": 1}), c.ToolUse("c1", "g", {"b": 2}))


def test_interleaved_parallel_tool_calls_lose_nothing():
    raw = (sse_chunk({"tool_calls": [call(0, "", "c0", "f"), call(1, "", "c1", "g")]}) +
           sse_chunk({"tool_calls": [call(0, '{"x"'), call(1, '{"y"')]}) +
           sse_chunk({"tool_calls": [call(1, ':2}')]}) +
           sse_chunk({"tool_calls": [call(0, ':1}')], "content": "late text"}) +
           sse_chunk({}, "tool_calls") + DONE)
    events = decode(raw)
    assert tool_args(events) == {"c0": '{"x":1}', "c1": '{"y":2}'}
    assert c.collect_response(events).parts == (
        c.ToolUse("c0", "f", {"x": 1}), c.ToolUse("c1", "g", {"y": 2}), c.Text("late text"))


def test_all_tool_calls_in_one_chunk():
    raw = sse_chunk({"tool_calls": [call(0, '{"a":1}', "c0", "f"), call(1, '{"b":2}', "c1", "g")]},
                    "tool_calls") + DONE
    assert tool_args(decode(raw)) == {"c0": '{"a":1}', "c1": '{"b":2}'}


def test_reused_index_with_a_new_id_is_a_new_call():
    raw = (sse_chunk({"tool_calls": [call(0, '{"a":1}', "c0", "f")]}) +
           sse_chunk({"tool_calls": [call(0, '{"b":2}', "c1", "g")]}) +
           sse_chunk({}, "stop") + DONE)
    assert tool_args(decode(raw)) == {"c0": '{"a":1}', "c1": '{"b":2}'}


def test_tool_call_without_id_or_name_at_first():
    raw = (sse_chunk({"tool_calls": [{"index": 0, "function": {"arguments": '{"q"'}}]}) +
           sse_chunk({"tool_calls": [{"index": 0, "function": {"name": "search"}}]}) +
           sse_chunk({"tool_calls": [{"index": 0, "function": {"arguments": ': 1}'}}]}) +
           sse_chunk({}, "tool_calls") + DONE)
    events = decode(raw)
    start = of_type(events, c.BlockStart)[0]
    assert start.tool_name == "search" and start.tool_id == "call_0"
    assert tool_args(events) == {"call_0": '{"q": 1}'}


def test_tool_call_without_index_continues_the_latest_call():
    raw = (sse_chunk({"tool_calls": [{"id": "c0", "function": {"name": "f", "arguments": "{"}}]}) +
           sse_chunk({"tool_calls": [{"function": {"arguments": "}"}}]}) +
           sse_chunk({}, "tool_calls") + DONE)
    assert tool_args(decode(raw)) == {"c0": "{}"}


def test_tool_call_that_never_gets_a_name_is_an_error():
    raw = sse_chunk({"tool_calls": [{"index": 0, "function": {"arguments": "{}"}}]}) + sse_chunk(
        {}, "tool_calls") + DONE
    events = decode(raw)
    assert type(events[-1]) is c.StreamError and "name" in events[-1].message


def test_arguments_after_finish_for_a_closed_call_are_an_error_not_a_loss():
    raw = (sse_chunk({"tool_calls": [call(0, '{"a"', "c0", "f")]}) + sse_chunk({}, "tool_calls") +
           sse_chunk({"tool_calls": [call(0, ':1}')]}) + DONE)
    events = decode(raw)
    assert type(events[-1]) is c.StreamError and not of_type(events, c.MessageDelta)


def test_content_and_finish_reason_in_one_chunk():
    # the content comes first: a decoder closing on finish_reason first would drop "bye"
    raw = sse_chunk({"content": "bye"}, "stop") + sse_chunk(usage=USAGE, choices=False) + DONE
    assert decode(raw)[1:] == [
        c.BlockStart(0, "text"), c.TextDelta(0, "bye"), c.BlockStop(0),
        c.MessageDelta("end_turn", c.Usage(12, 6)), c.MessageStop()]


def test_message_delta_waits_for_the_usage_chunk():
    d = oc.StreamDecoder()
    events = d.feed(sse_chunk({"content": "hi"}) + sse_chunk({}, "stop"))
    assert not of_type(events, c.MessageDelta)
    events += d.feed(sse_chunk(usage={**USAGE, "prompt_tokens_details": {"cached_tokens": 8}},
                               choices=False))
    assert d.usage == c.Usage(4, 6, 8)
    events += d.feed(DONE) + d.close()
    assert grammar_checked(events)[-2] == c.MessageDelta("end_turn", c.Usage(4, 6, 8))


def test_usage_in_the_finish_chunk_ends_the_message_at_once():
    d = oc.StreamDecoder()
    events = d.feed(sse_chunk({"content": "hi"}) + sse_chunk({}, "length", usage=USAGE))
    assert events[-2:] == [c.MessageDelta("max_tokens", c.Usage(12, 6)), c.MessageStop()]
    assert d.feed(DONE) + d.close() == []


def test_usage_in_every_chunk_takes_the_last():
    raw = (sse_chunk({"content": "a"}, usage={"prompt_tokens": 10, "completion_tokens": 1}) +
           sse_chunk({"content": "b"}, usage={"prompt_tokens": 10, "completion_tokens": 2}) +
           sse_chunk({}, "stop", usage={"prompt_tokens": 10, "completion_tokens": 3}) + DONE)
    assert decode(raw)[-2].usage == c.Usage(10, 3)


def test_null_usage_on_ordinary_chunks_is_ignored():
    raw = (sse_chunk({"content": "a"}, usage=None) + sse_chunk({}, "stop") +
           sse_chunk(usage=USAGE, choices=False) + DONE)
    assert decode(raw)[-2].usage == c.Usage(12, 6)


@pytest.mark.parametrize("usage, expected", [
    ({"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
      "prompt_tokens_details": {"cached_tokens": 896}}, c.Usage(104, 50, 896)),
    ({"prompt_tokens": 1000, "completion_tokens": 50, "total_tokens": 1050,
      "prompt_cache_hit_tokens": 768, "prompt_cache_miss_tokens": 232,
      "completion_tokens_details": {"reasoning_tokens": 20}}, c.Usage(232, 50, 768, 0, 20)),
])
def test_streamed_cached_tokens_are_not_billed_as_input(usage, expected):
    # LiteLLM #36168 billed cache hits as input
    raw = sse_chunk({"content": "x"}) + sse_chunk({}, "stop") + sse_chunk(
        usage=usage, choices=False) + DONE
    assert decode(raw)[-2].usage == expected


def test_stream_ending_without_finish_reason_is_an_error():
    events = decode(sse_chunk({"content": "half an ans"}))
    assert events[-1] == c.StreamError("api_error", "upstream stream ended before finish_reason")
    assert of_type(events, c.TextDelta) == [c.TextDelta(0, "half an ans")]


def test_empty_stream_is_an_error():
    assert decode(b"") == [c.StreamError("api_error", "upstream stream ended before any chunk")]
    assert type(decode(DONE)[0]) is c.StreamError


def test_done_without_finish_reason_ends_normally():
    events = decode(sse_chunk({"content": "ok"}) + DONE)
    assert events[-2:] == [c.MessageDelta("end_turn", c.Usage()), c.MessageStop()]


def test_stream_without_done_marker_ends_at_close():
    events = decode(sse_chunk({"content": "ok"}) + sse_chunk({}, "stop"))
    assert events[-2:] == [c.MessageDelta("end_turn", c.Usage()), c.MessageStop()]


def test_error_object_mid_stream():
    raw = (sse_chunk({"content": "par"}) +
           b'data: {"error": {"message": "Rate limit reached", "type": "requests", '
           b'"code": "rate_limit_exceeded"}}\n\n' + sse_chunk({"content": "ignored"}) + DONE)
    events = decode(raw)
    assert events[-1] == c.StreamError("rate_limit_error", "Rate limit reached")
    assert of_type(events, c.TextDelta) == [c.TextDelta(0, "par")]


@pytest.mark.parametrize("payload, kind", [
    (b'{"error": {"message": "m", "code": 429}}', "rate_limit_error"),
    (b'{"error": {"message": "m", "code": 504}}', "timeout_error"),
    (b'{"error": {"message": "m", "code": 7}}', "api_error"),
    (b'{"error": {"message": "m", "type": "insufficient_quota"}}', "billing_error"),
    (b'{"error": {"message": "m", "type": "server_error"}}', "api_error"),
    (b'{"error": {"message": "m", "type": "invalid_request_error"}}', "invalid_request_error"),
    (b'{"error": "m"}', "api_error"),
])
def test_error_kinds(payload, kind):
    assert decode(b"data: " + payload + b"\n\n") == [c.StreamError(kind, "m")]


def test_openrouter_error_finish():
    raw = sse_chunk({"content": "x"}) + sse_chunk({}, "error")
    assert decode(raw)[-1] == c.StreamError("api_error", "upstream finished with an error")


DEEP = b"[" * 10_000 + b"]" * 10_000  # json.loads raises RecursionError on this


@pytest.mark.parametrize("garbage", [b"data: {not json\n\n", b"data: [1, 2]\n\n", b"data: 7\n\n",
                                     b"data: " + DEEP + b"\n\n",
                                     b'data: {"a":' + DEEP + b"}\n\n"])
def test_malformed_chunks_are_stream_errors_not_exceptions(garbage):
    events = decode(sse_chunk({"content": "x"}) + garbage + DONE)
    assert type(events[-1]) is c.StreamError and "malformed" in events[-1].message


def test_empty_and_role_only_chunks_emit_nothing_but_message_start():
    d = oc.StreamDecoder()
    assert d.feed(sse_chunk({"role": "assistant"})) == [
        c.MessageStart("chatcmpl-1", "deepseek-chat")]
    assert d.feed(sse_chunk(choices=False) + sse_chunk({"role": "assistant", "content": ""}) +
                  b": keep-alive\n\n" + sse_chunk({"content": None, "tool_calls": []})) == []


def test_unknown_fields_and_other_choices_are_ignored():
    raw = (b'data: {"id": "x", "model": "m", "system_fingerprint": "fp", "choices": ['
           b'{"index": 1, "delta": {"content": "other"}}, '
           b'{"index": 0, "delta": {"content": "mine", "annotations": []}, "logprobs": null}]}\n\n'
           + sse_chunk({}, "stop") + DONE)
    assert [e.text for e in of_type(decode(raw), c.TextDelta)] == ["mine"]


def test_nothing_after_the_end():
    d = oc.StreamDecoder()
    d.feed(sse_chunk({}, "stop") + DONE)
    assert d.feed(sse_chunk({"content": "more"})) == [] and d.close() == []


def test_decoders_share_no_state():
    a, b = oc.StreamDecoder(), oc.StreamDecoder()
    a.feed(sse_chunk({"content": "x"}))
    assert b.feed(sse_chunk({"content": "y"}))[1] == c.BlockStart(0, "text")


FIXTURES = [QWEN_TEXT, QWEN_TOOL_CALL, QWEN_TOOL_RESULT,
            sse_chunk({"reasoning_content": "r"}) + sse_chunk({"content": "é ✓ 中文"}) +
            sse_chunk({"tool_calls": [call(0, '{"a"', "c0", "f"), call(1, "{", "c1", "g")]}) +
            sse_chunk({"tool_calls": [call(1, "}"), call(0, ":1}")]}, "tool_calls") +
            sse_chunk(usage=USAGE, choices=False) + DONE]


@given(st.data())
@settings(max_examples=200)
def test_any_chunking_gives_the_same_events(data):
    raw = data.draw(st.sampled_from(FIXTURES))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=30)))
    pieces = [raw[a:b] for a, b in zip([0, *cuts], [*cuts, len(raw)])]
    assert decode_in(pieces) == decode_in([raw])


# A random upstream: text, reasoning and tool call deltas in any order (interleaved calls too),
# then a finish_reason and usage placed one of the ways servers place it.
fragment = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=6)
step = st.one_of(st.tuples(st.just("content"), fragment),
                 st.tuples(st.just("reasoning_content"), fragment),
                 st.tuples(st.just("tool"), st.integers(0, 3), st.text("{}\":ab1 ,", max_size=5)))


@given(st.lists(step, max_size=25), st.sampled_from(["stop", "tool_calls", "length"]),
       st.sampled_from(["separate", "finish", "none"]), st.booleans(), st.booleans())
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_random_upstream_streams_lose_nothing(steps, finish, usage_at, ids, done_marker):
    raw, texts, calls = [], {"content": "", "reasoning_content": ""}, {}
    for s in steps:
        if s[0] == "tool":
            _, k, args = s
            first = k not in calls
            calls[k] = calls.get(k, "") + args
            raw.append(sse_chunk({"tool_calls": [
                call(k, args, f"id{k}" if first and ids else None, f"fn{k}" if first else None)]}))
        else:
            texts[s[0]] += s[1]
            raw.append(sse_chunk({s[0]: s[1]}))
    raw.append(sse_chunk({}, finish, usage=USAGE if usage_at == "finish" else None))
    if usage_at == "separate":
        raw.append(sse_chunk(usage=USAGE, choices=False))
    events = decode_in([b"".join(raw) + (DONE if done_marker else b"")])
    grammar_checked(events)
    assert "".join(e.text for e in of_type(events, c.TextDelta)) == texts["content"]
    assert "".join(e.text for e in of_type(events, c.ThinkingDelta)) == texts["reasoning_content"]
    starts = [e for e in of_type(events, c.BlockStart) if e.kind == "tool_use"]
    assert sorted(e.tool_name for e in starts) == sorted(f"fn{k}" for k in calls)
    by_name = {e.tool_name: e.tool_id for e in starts}
    assert tool_args(events) == {by_name[f"fn{k}"]: v for k, v in calls.items()}
    delta = events[-2]
    assert delta.usage == (c.Usage() if usage_at == "none" else c.Usage(12, 6))
    assert delta.stop_reason == ("max_tokens" if finish == "length" else
                                 "tool_use" if calls or finish == "tool_calls" else "end_turn")


# ---------------------------------------------------------------- stream: canonical -> Chat


def test_encoder_chunks_exactly():
    enc = oc.StreamEncoder(created=42)
    out = enc.encode_all([
        c.MessageStart("msg_1", "claude-x"), c.BlockStart(0, "thinking"),
        c.ThinkingDelta(0, "hm"), c.SignatureDelta(0, "sig"), c.BlockStop(0), c.Ping(),
        c.BlockStart(1, "text"), c.TextDelta(1, 'say "hi" é'), c.BlockStop(1),
        c.BlockStart(2, "tool_use", "toolu_1", "Bash"), c.ToolInputDelta(2, '{"c":'),
        c.ToolInputDelta(2, ""), c.ToolInputDelta(2, '1}'), c.BlockStop(2),
        c.BlockStart(3, "tool_use", "toolu_2", "Read"), c.BlockStop(3),
        c.MessageDelta("tool_use", c.Usage(3, 4, 5)), c.MessageStop()])
    head = 'data: {"id":"msg_1","object":"chat.completion.chunk","created":42,"model":"claude-x",'
    delta = head + '"choices":[{"index":0,"delta":'
    expected = [
        delta + '{"role":"assistant","content":""},"finish_reason":null}]}',
        delta + '{"reasoning_content":"hm"},"finish_reason":null}]}',
        delta + '{"content":"say \\"hi\\" é"},"finish_reason":null}]}',
        delta + '{"tool_calls":[{"index":0,"id":"toolu_1","type":"function",'
                '"function":{"name":"Bash","arguments":""}}]},"finish_reason":null}]}',
        delta + '{"tool_calls":[{"index":0,"function":{"arguments":"{\\"c\\":"}}]},'
                '"finish_reason":null}]}',
        delta + '{"tool_calls":[{"index":0,"function":{"arguments":"1}"}}]},'
                '"finish_reason":null}]}',
        delta + '{"tool_calls":[{"index":1,"id":"toolu_2","type":"function",'
                '"function":{"name":"Read","arguments":""}}]},"finish_reason":null}]}',
        delta + '{},"finish_reason":"tool_calls"}]}',
        head + '"choices":[],"usage":{"prompt_tokens":8,"completion_tokens":4,"total_tokens":12,'
               '"prompt_tokens_details":{"cached_tokens":5},'
               '"completion_tokens_details":{"reasoning_tokens":0}}}',
        "data: [DONE]"]
    assert out.decode() == "".join(line + "\n\n" for line in expected)
    for line in expected[:-1]:
        json.loads(line[len("data: "):])


def test_encoder_stream_error_and_no_usage_chunk():
    enc = oc.StreamEncoder(created=1, include_usage=False)
    out = enc.encode_all([c.MessageStart("i", "m"), c.MessageDelta("end_turn", c.Usage(1, 1)),
                          c.MessageStop()])
    assert b'"choices":[]' not in out
    assert out.endswith(b'"finish_reason":"stop"}]}\n\ndata: [DONE]\n\n')
    err = oc.StreamEncoder().encode(c.StreamError("overloaded_error", "busy"))
    assert err == (b'data: {"error":{"message":"busy","type":"server_error","param":null,'
                   b'"code":null}}\n\n')


def test_encoder_lone_surrogate_falls_back_to_escapes():
    # a lone surrogate passed through from upstream JSON cannot be UTF-8: escaped instead
    enc = oc.StreamEncoder(created=1)
    enc.encode_all([c.MessageStart("i\udc00", "m"), c.BlockStart(0, "text")])
    out = enc.encode(c.TextDelta(0, "a\ud83db é"))
    assert b'"content":"a\\ud83db \\u00e9"' in out
    assert json.loads(out[len(b"data: "):])["choices"][0]["delta"]["content"] == "a\ud83db é"
    out = enc.encode_all([c.BlockStop(0), c.BlockStart(1, "thinking"),
                          c.ThinkingDelta(1, "\udfff"), c.BlockStop(1),
                          c.BlockStart(2, "tool_use", "t\ud800", "f"),
                          c.ToolInputDelta(2, '{"x":"\ud800"}'), c.BlockStop(2),
                          c.MessageDelta("tool_use", c.Usage()), c.MessageStop(),
                          ]) + oc.StreamEncoder().encode(c.StreamError("api_error", "\ud800"))
    chunks = [json.loads(line[len(b"data: "):]) for line in out.split(b"\n\n")
              if line.startswith(b"data: {")]
    assert chunks[0]["choices"][0]["delta"] == {"reasoning_content": "\udfff"}
    assert chunks[1]["choices"][0]["delta"]["tool_calls"][0]["id"] == "t\ud800"
    assert chunks[-1]["error"]["message"] == "\ud800"


@pytest.mark.parametrize("events", [
    [c.TextDelta(0, "x")],
    [c.MessageStart("i", "m"), c.TextDelta(0, "x")],
    [c.MessageStart("i", "m"), c.BlockStart(0, "text"), c.ThinkingDelta(0, "x")],
    [c.MessageStart("i", "m"), c.BlockStart(1, "text")],
    [c.MessageStart("i", "m"), c.MessageStop()],
])
def test_encoder_rejects_out_of_order_events(events):
    with pytest.raises(c.StreamProtocolError):
        oc.StreamEncoder().encode_all(events)


def events_of(resp: c.Response) -> list:
    out = [c.MessageStart(resp.id, resp.model)]
    for i, p in enumerate(resp.parts):
        if type(p) is c.Text:
            out += [c.BlockStart(i, "text"), c.TextDelta(i, p.text)]
        elif type(p) is c.Thinking:
            out += [c.BlockStart(i, "thinking"), c.ThinkingDelta(i, p.text)]
        else:
            out += [c.BlockStart(i, "tool_use", p.id, p.name),
                    c.ToolInputDelta(i, json.dumps(p.input))]
        out.append(c.BlockStop(i))
    return out + [c.MessageDelta(resp.stop_reason, resp.usage), c.MessageStop()]


counts = st.integers(0, 10**6)
part = st.one_of(
    st.builds(c.Text, st.text(min_size=1)), st.builds(c.Thinking, st.text(min_size=1)),
    st.builds(c.ToolUse, st.text("abc123_", min_size=1), st.text("abc_", min_size=1),
              st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5)),
                              max_size=3)))


@given(st.lists(part, max_size=6),
       st.sampled_from(["end_turn", "max_tokens", "tool_use", "refusal"]),
       st.builds(c.Usage, counts, counts, counts, counts, counts))
@settings(max_examples=200)
def test_encode_then_decode_gives_the_response_back(parts, stop, usage):
    parts = [p for i, p in enumerate(parts)  # adjacent text (or thinking) parts would merge
             if i == 0 or type(p) is c.ToolUse or type(p) is not type(parts[i - 1])]
    resp = c.Response("chatcmpl-1", "m", tuple(parts), stop, usage)
    events = decode(oc.StreamEncoder(created=1).encode_all(events_of(resp)))
    got = c.collect_response(events)
    calls = [p for p in parts if type(p) is c.ToolUse]
    # Chat sends the tool calls of a turn last; text after them is held, order kept
    assert [p for p in got.parts if type(p) is c.ToolUse] == calls
    assert [p for p in got.parts if type(p) is not c.ToolUse] == [
        p for p in parts if type(p) is not c.ToolUse]
    assert got.usage == usage
    assert got.stop_reason == ("tool_use" if calls and stop == "end_turn" else stop)


# ---------------------------------------------------------------- fuzzing requests

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (st.lists(inner, max_size=4)
                   | st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=12)


# junk of another type, containers often: a list where a string is due does not even hash
junk = st.one_of(json_values, st.lists(json_values, max_size=2),
                 st.dictionaries(st.text(max_size=4), json_values, max_size=2))


def either(strategy):
    """Mostly the valid shape, sometimes anything at all."""
    return st.one_of(strategy, strategy, strategy, strategy, strategy, junk)


def valid(strategy):
    return strategy


def chat_tool_call(w):
    arguments = st.one_of(st.just(""), st.just("{oops"), st.just("[1]"), st.dictionaries(
        st.text("xyz", max_size=3), st.integers(), max_size=2).map(json.dumps))
    return w(st.fixed_dictionaries({
        "id": w(st.text("abc123", min_size=1, max_size=5)), "type": w(st.just("function")),
        "function": w(st.fixed_dictionaries({"name": w(st.text("abcdef", min_size=1, max_size=5)),
                                             "arguments": w(arguments)}))}))


def chat_requests(w):
    """Chat request bodies; `w` wraps every node (`valid`, or `either` to break some)."""
    text, name = st.text(max_size=12), st.text("abc", min_size=1, max_size=4)
    content_part = w(st.one_of(
        st.fixed_dictionaries({"type": w(st.just("text")), "text": w(text)},
                              optional={"cache_control": w(st.just({"type": "ephemeral"}))}),
        st.fixed_dictionaries({"type": w(st.just("image_url")), "image_url": w(
            st.fixed_dictionaries({"url": w(st.sampled_from(
                ["https://e.com/a.png", "data:image/jpeg;base64,QUJD", "data:;base64,QQ==",
                 "data:text/plain,hi"]))}))})))
    content = w(st.one_of(text, st.lists(content_part, max_size=3)))
    text_content = w(st.one_of(text, st.lists(w(st.fixed_dictionaries(
        {"type": w(st.just("text")), "text": w(text)})), max_size=2)))
    message = w(st.one_of(
        st.fixed_dictionaries({"role": w(st.sampled_from(["system", "developer"])),
                               "content": text_content}),
        st.fixed_dictionaries({"role": w(st.just("user")), "content": content}),
        st.fixed_dictionaries({"role": w(st.just("assistant"))}, optional={
            "content": w(st.one_of(st.none(), text)), "reasoning_content": w(text),
            "tool_calls": w(st.lists(chat_tool_call(w), max_size=3))}),
        st.fixed_dictionaries({"role": w(st.just("tool")), "tool_call_id": w(text),
                               "content": content})))
    tool = w(st.fixed_dictionaries({"type": w(st.just("function")), "function": w(
        st.fixed_dictionaries({"name": w(st.text("abc", min_size=1, max_size=4))}, optional={
            "description": w(text), "parameters": w(st.just({"type": "object"}))}))}))
    return st.fixed_dictionaries(
        {"model": w(st.just("deepseek-chat")), "messages": w(st.lists(message, max_size=6))},
        optional={
            "tools": w(st.lists(tool, max_size=3)),
            "tool_choice": w(st.one_of(st.sampled_from(["auto", "none", "required"]),
                                       st.fixed_dictionaries({"type": w(st.just("function")),
                                                              "function": w(st.fixed_dictionaries(
                                                                  {"name": w(name)}))}))),
            "parallel_tool_calls": w(st.booleans()), "max_tokens": w(st.integers(1, 9999)),
            "temperature": w(st.floats(0, 2)), "stop": w(st.lists(text, max_size=2)),
            "stream": w(st.booleans()), "seed": json_values})


@given(st.one_of(json_values, chat_requests(either)))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_decode_request_gives_a_request_or_a_translation_error(body):
    try:
        r = oc.decode_request(body)
    except c.TranslationError:
        return
    assert isinstance(r, c.Request)
    for parts_mode in (False, True):
        oc.encode_request(r, content_parts=parts_mode)


@given(chat_requests(valid))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
# a request of only a system message once gave "messages": [] (Anthropic: 400)
@example({"model": "m", "messages": [{"role": "system", "content": "x"}]})
def test_chat_requests_encode_to_what_anthropic_accepts(body):
    """At least one message, no empty text block, no empty message, no role=system message
    (Anthropic takes those only with Claude Code's beta), no tool_choice without tools; a
    request with no text at all is a TranslationError."""
    req = oc.decode_request(body)
    try:
        out = anthropic.encode_request(req)
    except c.TranslationError:
        assert not any(t.text for t in req.system) and not any(
            p.text if type(p) is c.Text else type(p) is not c.Thinking
            for m in req.messages for p in m.parts)
        return
    assert out["messages"]
    json.dumps(out)
    for m in out["messages"]:
        assert m["role"] in ("user", "assistant") and m["content"]
        blocks = [m["content"]] if isinstance(m["content"], str) else m["content"]
        for b in blocks:
            assert b if isinstance(b, str) else b["type"] != "text" or b["text"]
        if not isinstance(m["content"], str):  # tool_results come first
            kinds = [b["type"] == "tool_result" for b in m["content"]]
            assert kinds == sorted(kinds, reverse=True)
    assert "tools" in out or "tool_choice" not in out
    if isinstance(out.get("system"), list):
        assert all(b["text"] for b in out["system"])


@given(chat_requests(valid))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_one_pass_through_canonical_normalizes_and_a_second_changes_nothing(body):
    r = oc.decode_request(body)
    parts = [p for m in r.messages for p in m.parts]
    assert sum(type(p) is c.ToolUse for p in parts) == sum(
        len(m.get("tool_calls", ())) for m in body["messages"])
    assert sum(type(p) is c.ToolResult for p in parts) == sum(
        m["role"] == "tool" for m in body["messages"])
    for parts_mode in (False, True):
        once = oc.encode_request(r, content_parts=parts_mode)
        assert oc.encode_request(oc.decode_request(once), content_parts=parts_mode) == once


def chat_responses(w):
    """chat.completion bodies; `w` wraps every node as in chat_requests."""
    text = st.text(max_size=12)
    message = w(st.fixed_dictionaries({"role": w(st.just("assistant"))}, optional={
        "content": w(st.one_of(st.none(), text, st.lists(w(st.fixed_dictionaries(
            {"type": w(st.sampled_from(["text", "refusal"])), "text": w(text),
             "refusal": w(text)})), max_size=2))),
        "reasoning_content": w(text), "refusal": w(text),
        "tool_calls": w(st.lists(chat_tool_call(w), max_size=2))}))
    choice = w(st.fixed_dictionaries({"index": w(st.just(0)), "message": message},
                                     optional={"finish_reason": w(st.sampled_from(
                                         [None, "stop", "length", "tool_calls"]))}))
    return w(st.fixed_dictionaries(
        {"id": w(text), "model": w(text), "choices": w(st.lists(choice, max_size=2))},
        optional={"usage": w(st.just(USAGE)), "error": w(json_values)}))


@given(st.one_of(json_values, chat_responses(either)))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_decode_response_gives_a_response_or_a_translation_error(body):
    try:
        resp = oc.decode_response(body)
    except c.TranslationError:
        return
    assert isinstance(resp, c.Response)
    json.dumps(oc.encode_response(resp, created=1))


@given(chat_responses(valid))
@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
def test_valid_responses_decode(body):
    resp = oc.decode_response(body)
    if body["choices"]:
        assert sum(type(p) is c.ToolUse for p in resp.parts) == len(
            body["choices"][0]["message"].get("tool_calls", ()))


def test_wrong_typed_part_type_is_a_translation_error():
    # `kind not in allowed` on a list raised TypeError (unhashable) before
    for body in ({"model": "m", "messages": [{"role": "user", "content": [{"type": [1]}]}]},
                 {"model": "m", "messages": [{"role": "user", "content": [{"type": {}}]}]}):
        with pytest.raises(c.TranslationError) as e:
            oc.decode_request(body)
        assert e.value.path == "messages[0].content[0]"
    with pytest.raises(c.TranslationError) as e:
        oc.decode_response({"choices": [{"message": {"content": [{"type": [1]}]}}]})
    assert e.value.path == "choices[0].message.content[0]"


def test_deeply_nested_arguments_are_kept_raw_not_a_recursion_error():
    deep = DEEP.decode()
    body = {"model": "m", "messages": [{"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": deep}}]}]}
    assert oc.decode_request(body).messages[0].parts == (c.ToolUse("c1", "f", {}, deep),)
    events = decode(sse_chunk({"tool_calls": [call(0, deep, "c1", "f")]}, "tool_calls") + DONE)
    assert c.collect_response(events).parts == (c.ToolUse("c1", "f", {}, deep),)


def chunk_bodies(w):
    """chat.completion.chunk objects; `w` wraps every node as in chat_requests."""
    text = st.text(max_size=12)
    function = w(st.fixed_dictionaries({}, optional={"name": w(text), "arguments": w(text)}))
    tool_call = w(st.fixed_dictionaries({"index": w(st.integers(0, 2))},
                                        optional={"id": w(text), "function": function}))
    delta = w(st.fixed_dictionaries({}, optional={
        "content": w(text), "reasoning_content": w(text),
        "tool_calls": w(st.lists(tool_call, max_size=2))}))
    choice = w(st.fixed_dictionaries({
        "index": w(st.just(0)), "delta": delta,
        "finish_reason": w(st.sampled_from([None, "stop", "tool_calls", "error"]))}))
    return st.fixed_dictionaries({"id": w(text), "choices": w(st.lists(choice, max_size=2))},
                                 optional={"usage": w(st.just(USAGE)), "error": json_values})


@given(st.lists(st.one_of(chunk_bodies(either).map(lambda b: f"data: {json.dumps(b)}\n\n".encode()),
                          st.binary(max_size=20), st.just(DONE)), max_size=8))
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_any_upstream_bytes_give_a_grammar_valid_stream(pieces):
    grammar_checked(decode_in(pieces))
