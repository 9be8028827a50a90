"""Antigravity's envelope: the Code Assist envelope of a translated request (and of Gemini CLI's
own, same format) finished with Antigravity's fields, and the provider kind that sends it."""

import copy
import re

from addons import formats
from translators import anthropic, antigravity
from translators import gemini_code_assist as ca

TOOL = {"name": "Bash", "description": "Run a command", "input_schema": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]}}


def envelope_of(model: str, text: str = "hi", tools: bool = False) -> dict:
    body = {"model": model, "max_tokens": 100,
            "messages": [{"role": "user", "content": text}]}
    if tools:
        body["tools"] = [TOOL]
    wire = ca.encode_request(anthropic.decode_request(body))
    return ca.for_project(wire, "proj-7")


def test_a_translated_request_goes_in_antigravitys_envelope():
    env = envelope_of("gemini-3-pro-high")
    out = antigravity.envelope(env)
    assert set(out) == {"model", "project", "userAgent", "requestType", "requestId", "request"}
    assert (out["model"], out["project"], out["userAgent"], out["requestType"]) == (
        "gemini-3-pro-high", "proj-7", "antigravity", "agent")
    assert re.fullmatch(r"agent-[0-9a-f-]{36}", out["requestId"])
    assert re.fullmatch(r"-[1-9]\d*", out["request"]["sessionId"])
    assert int(out["request"]["sessionId"][1:]) < 2 ** 63
    # the Gemini body itself is the translated one, unchanged but for the session
    assert {k: v for k, v in out["request"].items() if k != "sessionId"} == env["request"]


def test_each_call_has_its_own_request_id_and_a_conversation_keeps_its_session():
    first, again = (antigravity.envelope(envelope_of("m", "fix the bug")) for _ in range(2))
    other = antigravity.envelope(envelope_of("m", "write a poem"))
    assert first["requestId"] != again["requestId"]
    assert first["request"]["sessionId"] == again["request"]["sessionId"]
    assert other["request"]["sessionId"] != first["request"]["sessionId"]


def test_a_conversation_without_text_gets_a_fresh_session():
    env = {"model": "m", "project": "p", "request": {"contents": [
        {"role": "user", "parts": [{"inlineData": {"mimeType": "image/png", "data": "AA=="}}]}]}}
    ids = {antigravity.envelope(env)["request"]["sessionId"] for _ in range(3)}
    assert len(ids) == 3 and all(re.fullmatch(r"-[1-9]\d*", i) for i in ids)


def test_gemini_clis_own_fields_are_left_out_and_the_client_body_is_not_changed():
    env = {"model": "gemini-2.5-pro", "project": "proj-7", "user_prompt_id": "u-1",
           "enabled_credit_types": ["GOOGLE_ONE_AI"],
           "request": {"contents": [{"role": "user", "parts": [{"text": "hi"}]}],
                       "session_id": "sess-1",
                       "safetySettings": [{"category": "HARM_CATEGORY_HARASSMENT",
                                           "threshold": "BLOCK_NONE"}]}}
    before = copy.deepcopy(env)
    out = antigravity.envelope(env)
    assert env == before
    assert set(out) == {"model", "project", "userAgent", "requestType", "requestId", "request"}
    assert set(out["request"]) == {"contents", "sessionId"}


def test_claude_models_call_tools_in_validated_mode_only():
    claude = antigravity.envelope(envelope_of("claude-sonnet-4-5", tools=True))
    assert claude["request"]["toolConfig"]["functionCallingConfig"]["mode"] == "VALIDATED"
    gemini_model = antigravity.envelope(envelope_of("gemini-3-pro-high", tools=True))
    assert gemini_model["request"].get("toolConfig") == envelope_of(
        "gemini-3-pro-high", tools=True)["request"].get("toolConfig")
    no_tools = antigravity.envelope(envelope_of("claude-sonnet-4-5"))
    assert "toolConfig" not in no_tools["request"]
    # a choice the client made stays (only the mode is Antigravity's)
    env = envelope_of("claude-opus-4-5-thinking", tools=True)
    env["request"]["toolConfig"] = {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["Bash"]}}
    assert antigravity.envelope(env)["request"]["toolConfig"] == {"functionCallingConfig": {
        "mode": "VALIDATED", "allowedFunctionNames": ["Bash"]}}


def test_hostile_envelopes_do_not_raise():
    for inner in (None, [], {"contents": "x"}, {"contents": [None, {"role": "user"}]},
                  {"contents": [{"role": "user", "parts": [None]}]},
                  {"tools": [{}], "toolConfig": ["x"]}):
        out = antigravity.envelope({"model": "claude-x", "request": inner})
        assert re.fullmatch(r"-[1-9]\d*", out["request"]["sessionId"])


def test_the_provider_kind():
    kind = formats.provider_kind("antigravity")
    assert kind.codec is ca and kind.account_project and kind.finish_body is antigravity.envelope
    assert dict(kind.fixed_headers)["user-agent"].startswith("antigravity/")
    assert kind.forwarded_headers == ()  # a Gemini CLI client's user agent is not sent on
    base = kind.default_base_url
    assert base == "https://daily-cloudcode-pa.googleapis.com"
    assert kind.url(base, "m") == base + "/v1internal:generateContent"
    assert kind.url(base, "m", stream=True) == base + "/v1internal:streamGenerateContent?alt=sse"
