"""DeepSeek's thinking mode answers 400 "The reasoning_content in the thinking mode must be
passed back" when an assistant turn with tool calls comes back without its reasoning
(claude-code-router #1050, #1378; 9router #355; CLIProxyAPI #3451, where Codex sent back only
the encrypted reasoning it keeps). What each client sends back of an earlier turn's thinking
reaches a DeepSeek provider as that turn's reasoning_content; Anthropic's and OpenAI's opaque
forms (signature, encrypted_content) go only to their own vendors."""

import json

from tests.captures import CAPTURES
from translators import anthropic, openai_chat
from translators import openai_responses as r

DEEPSEEK = openai_chat.DIALECTS["deepseek"]


def assistant_with_calls(body: dict) -> dict:
    return next(m for m in body["messages"] if m["role"] == "assistant" and m.get("tool_calls"))


def test_codex_sends_back_a_reasoning_item_deepseek_gets_its_text():
    body = json.loads((CAPTURES / "codex.responses.tool-result.request.json").read_text())
    at = next(i for i, item in enumerate(body["input"]) if item.get("type") == "custom_tool_call")
    body["input"].insert(at, {"type": "reasoning", "id": "rs_1", "encrypted_content": "gAAAA-x",
                              "summary": [{"type": "summary_text", "text": "list the files"}]})
    sent = openai_chat.encode_request(r.decode_request(body), DEEPSEEK)
    assistant = assistant_with_calls(sent)
    assert assistant["reasoning_content"] == "list the files"
    assert "gAAAA-x" not in json.dumps(sent)


def test_claude_code_sends_back_a_thinking_block_deepseek_gets_its_text():
    body = json.loads((CAPTURES / "claude-code.messages.tool-result.request.json").read_text())
    turn = next(m for m in body["messages"] if m["role"] == "assistant"
                and any(b.get("type") == "tool_use" for b in m["content"]))
    turn["content"].insert(0, {"type": "thinking", "thinking": "run echo", "signature": "EqQB"})
    sent = openai_chat.encode_request(anthropic.decode_request(body), DEEPSEEK)
    assistant = assistant_with_calls(sent)
    assert assistant["reasoning_content"] == "run echo" and "EqQB" not in json.dumps(sent)
