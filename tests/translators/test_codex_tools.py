"""Codex's code mode offers its tools in an `additional_tools` input item (namespaces), not in
`tools`: the `functions` namespace (the custom `exec` tool and its companions) reaches a
provider of another format as function tools, and a call of `exec` comes back to Codex as
the custom tool call it offered; the item itself goes back unchanged to a Responses target."""

import json

from tests.captures import CAPTURES
from translators import anthropic, openai_chat
from translators import canonical as c
from translators import openai_responses as r


def capture(name: str) -> dict:
    return json.loads((CAPTURES / f"{name}.request.json").read_text())


def test_code_mode_tools_are_offered_to_other_providers_as_functions():
    body = capture("codex.responses.text")
    req = r.decode_request(body)
    assert [t.name for t in req.tools] == ["exec", "wait", "request_user_input",
                                           "request_user_input_async"]
    assert next(t for t in req.tools if t.name == "exec").input_schema == r.CUSTOM_INPUT_SCHEMA
    wire = anthropic.encode_request(req)
    assert [t["name"] for t in wire["tools"]] == [t.name for t in req.tools]
    chat = openai_chat.encode_request(req, openai_chat.COMPATIBLE)
    exec_tool = next(t["function"] for t in chat["tools"] if t["function"]["name"] == "exec")
    assert exec_tool["parameters"] == r.CUSTOM_INPUT_SCHEMA
    # other namespaces (clock, collaboration) are called with a namespace no other provider
    # can give back: left out, and the item is named as dropped
    assert "sleep" not in {t.name for t in req.tools}
    assert "input[0] (additional_tools)" in c.foreign_fields(req, "anthropic:")


def test_a_responses_target_gets_the_item_back_not_extra_tools():
    for name in ("codex.responses.text", "codex.responses.tool-result",
                 "codex-chatgpt-login.responses.tool-result"):
        body = capture(name)
        assert r.encode_request(r.decode_request(body)) == body
        assert "tools" not in r.encode_request(r.decode_request(body))


def test_a_call_of_exec_goes_back_as_the_custom_tool_call_codex_offered():
    body = capture("codex.responses.tool-call")
    script = 'const r = await tools.exec_command({cmd: "echo hi"});\ntext(r.output);'
    events = [c.MessageStart("msg_1", "m"),
              c.BlockStart(0, "tool_use", tool_id="toolu_1", tool_name="exec"),
              c.ToolInputDelta(0, json.dumps({"input": script})[:20]),
              c.ToolInputDelta(0, json.dumps({"input": script})[20:]),
              c.BlockStop(0), c.MessageDelta("tool_use", c.Usage(3, 4)), c.MessageStop()]
    enc = r.client_stream_encoder(body)
    out = b"".join(enc.encode(e) for e in events)
    decoded = [json.loads(line[6:]) for line in out.splitlines() if line.startswith(b"data: ")]
    done = [e["item"] for e in decoded if e["type"] == "response.output_item.done"]
    assert done == [{"type": "custom_tool_call", "id": done[0]["id"], "status": "completed",
                     "call_id": "toolu_1", "name": "exec", "input": script}]
    assert [e["input"] for e in decoded
            if e["type"] == "response.custom_tool_call_input.done"] == [script]


def test_encrypted_reasoning_goes_only_to_a_responses_target():
    body = capture("codex.responses.tool-result")
    at = next(i for i, item in enumerate(body["input"]) if item.get("type") == "custom_tool_call")
    body["input"].insert(at, {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA-x",
                              "summary": [{"type": "summary_text", "text": "plan"}]})
    req = r.decode_request(body)
    assert r.encode_request(req) == body  # OpenAI gets it back exactly
    for wire in (anthropic.encode_request(req),
                 openai_chat.encode_request(req, openai_chat.DIALECTS["deepseek"]),
                 openai_chat.encode_request(req, openai_chat.COMPATIBLE)):
        text = json.dumps(wire)
        assert "gAAAA-x" not in text and "rs_1" not in text
        assert "signature" not in text  # no forged Anthropic thinking block either


def test_another_providers_thinking_signature_never_reaches_codex():
    """Anthropic's signature sent to Codex as encrypted_content would come back every turn and
    be refused by an OpenAI provider asked next: a translated answer carries the summary only."""
    events = [c.MessageStart("msg_1", "m"), c.BlockStart(0, "thinking"),
              c.ThinkingDelta(0, "let me think"), c.SignatureDelta(0, "EqQBCkgIARAB-anthropic"),
              c.BlockStop(0), c.BlockStart(1, "text"), c.TextDelta(1, "hi"), c.BlockStop(1),
              c.MessageDelta("end_turn", c.Usage(3, 4)), c.MessageStop()]
    out = r.client_stream_encoder(capture("codex.responses.text")).encode_all(events)
    assert b"EqQBCkgIARAB-anthropic" not in out and b"encrypted_content" not in out
    assert b'"response.reasoning_summary_text.delta"' in out and b"let me think" in out


def compaction_turn() -> dict:
    """Codex's remote compaction (v2) as it sends it: the turn's history, then a
    compaction_trigger item (its x-codex-turn-metadata says request_kind "compaction")."""
    body = capture("codex.responses.tool-result")
    body["input"].append({"type": "compaction_trigger"})
    return body


def test_codex_compaction_asks_another_provider_for_a_summary_and_answers_one_item():
    body = compaction_turn()
    req = r.decode_request(body)
    assert r.encode_request(req) == body  # a Responses provider compacts it itself
    wire = anthropic.encode_request(req)
    assert "CONTEXT CHECKPOINT COMPACTION" in json.dumps(wire["messages"][-1])
    events = [c.MessageStart("msg_1", "m"), c.BlockStart(0, "thinking"),
              c.ThinkingDelta(0, "hmm"), c.BlockStop(0), c.BlockStart(1, "text"),
              c.TextDelta(1, "Ran echo hi; "), c.TextDelta(1, "nothing left."), c.BlockStop(1),
              c.MessageDelta("end_turn", c.Usage(30, 6)), c.MessageStop()]
    out = r.client_stream_encoder(body).encode_all(events)
    decoded = [json.loads(line[6:]) for line in out.splitlines() if line.startswith(b"data: ")]
    items = [e["item"] for e in decoded if e["type"] == "response.output_item.done"]
    assert [i["type"] for i in items] == ["compaction"]  # exactly one, as Codex demands
    assert r.detour_summary(items[0]) == "Ran echo hi; nothing left."
    final = decoded[-1]
    assert final["type"] == "response.completed" and final["response"]["output"] == items
    assert [e["sequence_number"] for e in decoded] == list(range(len(decoded)))

    # the next turn carries the item in place of the history: another provider reads the
    # summary; OpenAI never gets detour's item (it would try to decrypt it)
    later = {"model": "m", "input": [items[0], {"role": "user", "content": "go on"}]}
    first = anthropic.encode_request(r.decode_request(later))["messages"][0]
    assert "Ran echo hi; nothing left." in json.dumps(first)
    openai_own = {"type": "compaction", "id": "cmp_1", "encrypted_content": "gAAAA-openai"}
    assert r.decode_request({"model": "m", "input": [openai_own]}).messages == ()


def test_a_responses_provider_gets_detours_summary_as_a_message():
    from addons import policies
    from addons.config import parse_config

    item = r.compaction_item("the summary")
    body = {"model": "m", "input": [item, {"role": "user", "content": "go on"}]}
    spec = parse_config("providers: {p: {kind: openai-responses, base_url: 'http://p', "
                        "api_keys: [k]}}\n").providers["p"]
    target = policies.Target(r, r, spec, "up", True)
    sent, _ = policies.apply_to_body(body, target)
    assert sent["input"][0] == {"type": "message", "role": "user", "content": [
        {"type": "input_text", "text": r.SUMMARY_PREFIX + "the summary"}]}
    plain = {"model": "m", "input": [{"role": "user", "content": "hi"}], "prompt_cache_key": "k"}
    assert policies.apply_to_body(plain, target)[0] == dict(plain, model="up")
