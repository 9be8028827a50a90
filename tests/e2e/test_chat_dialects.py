"""The Chat dialects of issue 16 through a real mitmdump: an Anthropic client (Claude Code's
shapes) routed to Chat providers speaking DeepSeek (`reasoning_content` back into thinking and
out again after a tool call), DashScope/Qwen (content as part arrays keeping `cache_control`)
and OpenRouter (its `reasoning` field and `: OPENROUTER PROCESSING` comments), against plain
OpenAI (no reasoning field sent)."""

import json

import pytest

from tests.captures import checked_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, start_proxy
from tests.fakes.replies import Raw, Text, ToolCall, ToolCalls
from translators import anthropic, canonical

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
           "user-agent": "claude-cli/2.1.0 (external, cli)"}
BASH = {"name": "Bash", "description": "Run a command", "input_schema": {
    "type": "object", "properties": {"command": {"type": "string"}}, "required": ["command"]},
    "cache_control": {"type": "ephemeral"}}
DIALECTS = ["deepseek", "dashscope", "openrouter", "openai"]


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai):
    providers = "\n".join(
        f'  {d}: {{kind: openai, base_url: "{fake_openai.base_url}/v1", '
        f"api_keys: [{PROVIDER_KEY}], dialect: {d}}}" for d in DIALECTS)
    routes = "\n".join(f"  to-{d}: [{d}/{d}-model]" for d in DIALECTS)
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"),
                    f"providers:\n{providers}\nroutes:\n{routes}\n")
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh(fake_openai):
    fake_openai.clear()
    yield


def ask(http, dialect: str, messages: list, stream: bool) -> canonical.Response:
    body = {"model": f"to-{dialect}", "max_tokens": 1000, "stream": stream, "tools": [BASH],
            "system": [{"type": "text", "text": "You are terse.",
                        "cache_control": {"type": "ephemeral"}}],
            "thinking": {"type": "enabled", "budget_tokens": 500}, "messages": messages}
    r = http.post(URL, json=body, headers=HEADERS)
    assert r.status_code == 200, r.text
    return (canonical.collect_response(checked_events(anthropic, r.content)) if stream
            else anthropic.decode_response(r.json()))


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_reasoning_and_cache_markers_as_each_dialect_takes_them(proxy, http, fake_openai,
                                                                dialect, stream):
    fake_openai.enqueue(ToolCalls((ToolCall("Bash", {"command": "ls"}),),
                                  reasoning="I should list the files."), Text("two files"))
    first = [{"role": "user", "content": [{"type": "text", "text": "What is here?",
                                           "cache_control": {"type": "ephemeral"}}]}]
    resp = ask(http, dialect, first, stream)
    thinking = [p for p in resp.parts if type(p) is canonical.Thinking]
    assert [t.text for t in thinking] == ["I should list the files."]  # reasoning_content
    call = next(p for p in resp.parts if type(p) is canonical.ToolUse)
    content = anthropic.encode_response(resp)["content"]
    follow = first + [{"role": "assistant", "content": content},
                      {"role": "user", "content": [{"type": "tool_result",
                                                    "tool_use_id": call.id, "content": "a b"}]}]
    answer = ask(http, dialect, follow, stream)
    assert [p.text for p in answer.parts if type(p) is canonical.Text] == ["two files"]
    sent = fake_openai.requests[-1].json
    assistant = next(m for m in sent["messages"] if m["role"] == "assistant")
    if dialect == "openai":  # OpenAI's Chat has no such field
        assert "reasoning_content" not in assistant
    else:  # DeepSeek answers 400 without it after a tool call in thinking mode
        assert assistant["reasoning_content"] == "I should list the files."
    system, user = sent["messages"][0], sent["messages"][1]
    if dialect == "dashscope":  # DashScope's explicit cache: part arrays with their markers
        assert system["content"] == [{"type": "text", "text": "You are terse.",
                                      "cache_control": {"type": "ephemeral"}}]
        assert user["content"][0]["cache_control"] == {"type": "ephemeral"}
        assert sent["tools"][0]["cache_control"] == {"type": "ephemeral"}
    else:
        assert system["content"] == "You are terse." and isinstance(user["content"], str)
        assert "cache_control" not in json.dumps(sent)


def openrouter_stream() -> bytes:
    def chunk(delta: dict, finish=None, usage=None) -> bytes:
        obj = {"id": "gen-1", "object": "chat.completion.chunk", "created": 1,
               "model": "anthropic/claude-sonnet-4.5", "provider": "Anthropic",
               "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if usage:
            obj["usage"] = usage
        return b"data: " + json.dumps(obj).encode() + b"\n\n"
    return b"".join([
        b": OPENROUTER PROCESSING\n\n",
        chunk({"role": "assistant", "content": "", "reasoning": "Thinking it over."}),
        b": OPENROUTER PROCESSING\n\n",
        chunk({"content": "Done."}),
        chunk({}, "stop", {"prompt_tokens": 120, "completion_tokens": 9,
                           "prompt_tokens_details": {"cached_tokens": 100},
                           "completion_tokens_details": {"reasoning_tokens": 4}}),
        b"data: [DONE]\n\n"])


def test_openrouter_reasoning_and_comments_reach_the_client(proxy, http, fake_openai):
    fake_openai.enqueue(Raw(headers={"content-type": "text/event-stream"},
                            pieces=[openrouter_stream()]))
    r = http.post(URL, json={"model": "to-openrouter", "max_tokens": 100, "stream": True,
                             "messages": [{"role": "user", "content": "hi"}]},
                  headers=HEADERS)
    assert r.status_code == 200, r.text
    resp = canonical.collect_response(checked_events(anthropic, r.content))
    assert [(type(p), p.text) for p in resp.parts] == [
        (canonical.Thinking, "Thinking it over."), (canonical.Text, "Done.")]
    row = proxy.row_of(r)
    assert (row["provider"], row["input_tokens"], row["cache_read_tokens"],
            row["output_tokens"], row["reasoning_tokens"]) == ("openrouter", 20, 100, 9, 4)
