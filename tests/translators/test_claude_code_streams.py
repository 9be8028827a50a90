"""What Claude Code gets when another provider answers it: each provider format's stream,
decoded and encoded as Anthropic's, read by `ClaudeCodeReader`, an Anthropic stream reader
written from the rules Claude Code enforces (independent of detour's own event grammar), so
that what gateways of other projects sent Claude Code, and Claude Code refused, fails here:
a `message_stop` without a current message (9router #1779), a `thinking_delta` in a text
block (LiteLLM #33224), a tool call whose input arrives empty (CLIProxyAPI #3776; LiteLLM
#25321, #27469) or whose stop reason does not say tool_use (claude-code-router #129)."""

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.translators.test_openai_chat import DONE, USAGE, call, chunk_bodies, either, sse_chunk
from translators import anthropic, gemini, ollama, openai_chat, openai_responses

DELTA_BLOCK = {"text_delta": "text", "thinking_delta": "thinking", "signature_delta": "thinking",
               "input_json_delta": "tool_use"}


class ClaudeCodeRefused(AssertionError):
    """The stream Claude Code would have refused, with the reason it would give."""


class ClaudeCodeReader:
    """Anthropic SSE -> the message Claude Code builds, or `ClaudeCodeRefused`."""

    def __init__(self):
        self.message: dict | None = None
        self.open: dict | None = None  # the block being streamed
        self.partial = ""
        self.stopped = False
        self.error: dict | None = None

    def read(self, data: bytes) -> dict | None:
        for raw in data.replace(b"\r\n", b"\n").split(b"\n\n"):
            lines = [line for line in raw.decode().split("\n") if line.startswith("data:")]
            if lines:
                self.event(json.loads("\n".join(line[5:].strip() for line in lines)))
        if self.error is None and not self.stopped:
            raise ClaudeCodeRefused("Connection closed mid-response")
        return self.message

    def event(self, ev: dict) -> None:
        kind = ev["type"]
        if self.stopped or self.error is not None:
            raise ClaudeCodeRefused(f"{kind} after the end of the message")
        if kind == "error":
            self.error = ev["error"]
        elif kind == "ping":
            pass
        elif kind == "message_start":
            if self.message is not None:
                raise ClaudeCodeRefused("Received message_start while a message is current")
            self.message = dict(ev["message"], content=[])
        elif self.message is None:
            raise ClaudeCodeRefused(f"Received {kind} without a current message")
        elif kind == "content_block_start":
            if self.open is not None or ev["index"] != len(self.message["content"]):
                raise ClaudeCodeRefused("content_block_start out of order")
            self.open = dict(ev["content_block"])
            self.partial = ""
            self.message["content"].append(self.open)
        elif kind == "content_block_delta":
            delta = ev["delta"]
            if self.open is None or ev["index"] != len(self.message["content"]) - 1:
                raise ClaudeCodeRefused("Content block not found")
            if DELTA_BLOCK[delta["type"]] != self.open["type"]:
                raise ClaudeCodeRefused(f"Content block is not a {DELTA_BLOCK[delta['type']]} "
                                        "block")
            if delta["type"] == "text_delta":
                self.open["text"] += delta["text"]
            elif delta["type"] == "thinking_delta":
                self.open["thinking"] += delta["thinking"]
            elif delta["type"] == "signature_delta":
                self.open["signature"] = delta["signature"]
            else:
                self.partial += delta["partial_json"]
        elif kind == "content_block_stop":
            if self.open is None or ev["index"] != len(self.message["content"]) - 1:
                raise ClaudeCodeRefused("content_block_stop without its block")
            if self.open["type"] == "tool_use":
                self.open["input"] = json.loads(self.partial) if self.partial else {}
            self.open = None
        elif kind == "message_delta":
            if self.open is not None:
                raise ClaudeCodeRefused("message_delta inside a content block")
            self.message.update(ev["delta"])
            self.message["usage"] = {**self.message.get("usage", {}), **ev.get("usage", {})}
        elif kind == "message_stop":
            if self.open is not None or self.message.get("stop_reason") is None:
                raise ClaudeCodeRefused("message_stop before the message ended")
            self.stopped = True


def to_claude_code(codec, pieces: list[bytes]) -> bytes:
    """A provider's stream (in `codec`'s format, in these pieces) as detour writes it to
    Claude Code."""
    dec, enc = codec.StreamDecoder(), anthropic.StreamEncoder()
    out = b""
    for piece in pieces:
        out += b"".join(enc.encode(e) for e in dec.feed(piece))
    return out + b"".join(enc.encode(e) for e in dec.close())


def claude_code_message(codec, pieces: list[bytes]) -> dict:
    message = ClaudeCodeReader().read(to_claude_code(codec, pieces))
    assert message is not None
    return message


# ---------------------------------------------------------------- stream order


@given(st.lists(st.one_of(chunk_bodies(either).map(lambda b: f"data: {json.dumps(b)}\n\n".encode()),
                          st.binary(max_size=20), st.just(DONE)), max_size=8))
@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
def test_whatever_a_chat_provider_streams_claude_code_reads_a_whole_message_or_an_error(pieces):
    reader = ClaudeCodeReader()
    reader.read(to_claude_code(openai_chat, pieces))
    assert reader.stopped or reader.error is not None


def test_finish_chunks_usage_and_done_markers_repeated_end_one_message():
    """9router #1779: Kimi and MiMo finish twice, send usage after the finish and [DONE]
    twice; Claude Code refuses a second message_stop."""
    pieces = [sse_chunk({"role": "assistant", "content": "Hi"}), sse_chunk({}, "stop"),
              sse_chunk({}, "stop"), sse_chunk(usage=USAGE, choices=False), DONE, DONE,
              sse_chunk({"content": " late"})]
    message = claude_code_message(openai_chat, pieces)
    assert [b["text"] for b in message["content"]] == ["Hi"]
    assert message["stop_reason"] == "end_turn"
    # the usage Claude Code's status line and /context read (CLIProxyAPI #740): a Chat stream
    # says it only at its end, so the closing message_delta carries all of it
    assert (message["usage"]["input_tokens"], message["usage"]["output_tokens"]) == (12, 6)


def test_reasoning_arriving_after_the_answer_began_never_lands_in_the_text_block():
    """LiteLLM #33224: NIM's Nemotron sent its last reasoning piece after the first content
    piece; a thinking_delta in the open text block stops Claude Code ("Content block is not
    a thinking block"). Every piece stays in a block of its own kind, in order."""
    pieces = [sse_chunk({"role": "assistant", "reasoning_content": "The user greets"}),
              sse_chunk({"content": "Hello"}), sse_chunk({"reasoning_content": " an assistant."}),
              sse_chunk({"content": " there"}), sse_chunk({}, "stop"), DONE]
    message = claude_code_message(openai_chat, pieces)
    blocks = [(b["type"], b.get("text", b.get("thinking"))) for b in message["content"]]
    assert "".join(t for kind, t in blocks if kind == "text") == "Hello there"
    assert "".join(t for kind, t in blocks if kind == "thinking") == "The user greets an assistant."
    assert blocks[0] == ("thinking", "The user greets")


# ---------------------------------------------------------------- tool calls


COMMAND = {"command": "pwd", "description": "Print the working directory"}
ARGS = json.dumps(COMMAND)


def chat_tool_call(first_arguments: str) -> list[bytes]:
    rest = ARGS[len(first_arguments):]
    return [sse_chunk({"role": "assistant", "content": None,
                       "tool_calls": [call(0, first_arguments, "call_1", "Bash")]}),
            *[sse_chunk({"tool_calls": [call(0, rest[i:i + 5])]}) for i in range(0, len(rest), 5)],
            sse_chunk({}, "tool_calls"), DONE]


def responses_event(body: dict) -> bytes:
    return f"event: {body['type']}\ndata: {json.dumps(body)}\n\n".encode()


def responses_tool_call(deltas: bool) -> list[bytes]:
    item = {"type": "function_call", "id": "fc_1", "call_id": "call_1", "name": "Bash",
            "arguments": ""}
    out = [responses_event({"type": "response.created", "response": {"id": "resp_1",
                                                                     "model": "gpt-5.5"}}),
           responses_event({"type": "response.output_item.added", "output_index": 0,
                            "item": item})]
    if deltas:
        out += [responses_event({"type": "response.function_call_arguments.delta",
                                 "output_index": 0, "item_id": "fc_1", "delta": ARGS[i:i + 7]})
                for i in range(0, len(ARGS), 7)]
    out += [responses_event({"type": "response.function_call_arguments.done", "output_index": 0,
                             "item_id": "fc_1", "arguments": ARGS}),
            responses_event({"type": "response.output_item.done", "output_index": 0,
                             "item": dict(item, arguments=ARGS)}),
            responses_event({"type": "response.completed", "response": {
                "id": "resp_1", "model": "gpt-5.5", "status": "completed",
                "output": [dict(item, arguments=ARGS)],
                "usage": {"input_tokens": 10, "output_tokens": 5}}})]
    return out


GEMINI_TOOL_CALL = [
    b'data: {"candidates":[{"content":{"role":"model","parts":[{"functionCall":{"name":"Bash",'
    b'"args":' + json.dumps(COMMAND).encode() + b'}}]},"finishReason":"STOP"}],'
    b'"usageMetadata":{"promptTokenCount":10,"candidatesTokenCount":5}}\r\n\r\n']
OLLAMA_TOOL_CALL = [
    json.dumps({"model": "qwen3-coder", "message": {"role": "assistant", "content": "",
                "tool_calls": [{"function": {"name": "Bash", "arguments": COMMAND}}]},
                "done": False}).encode() + b"\n",
    b'{"model":"qwen3-coder","message":{"role":"assistant","content":""},"done":true,'
    b'"done_reason":"stop","prompt_eval_count":10,"eval_count":5}\n']


@pytest.mark.parametrize("codec, pieces", [
    (openai_chat, chat_tool_call("")),  # arguments opened empty, then in pieces
    (openai_chat, chat_tool_call(ARGS)),  # all of them with the name
    (openai_responses, responses_tool_call(deltas=True)),
    (openai_responses, responses_tool_call(deltas=False)),  # only the .done events hold them
    (gemini, GEMINI_TOOL_CALL),  # one whole functionCall part, finish reason STOP
    (ollama, OLLAMA_TOOL_CALL),  # whole arguments, done_reason stop
], ids=["chat-pieces", "chat-whole", "responses-deltas", "responses-done-only", "gemini",
        "ollama"])
@pytest.mark.parametrize("step", [None, 1])
def test_a_streamed_tool_call_reaches_claude_code_with_its_input_and_runs(codec, pieces, step):
    if step is not None:  # the same bytes a byte at a time
        data = b"".join(pieces)
        pieces = [data[i:i + step] for i in range(0, len(data), step)]
    message = claude_code_message(codec, pieces)
    (tool,) = [b for b in message["content"] if b["type"] == "tool_use"]
    assert tool["name"] == "Bash" and tool["input"] == COMMAND  # input.command is defined
    assert message["stop_reason"] == "tool_use"  # so Claude Code runs it


def test_tool_calls_finished_as_stop_still_run():
    """claude-code-router #129: providers that finish a tool call with "stop"."""
    pieces = chat_tool_call("")
    pieces[-2] = sse_chunk({}, "stop")
    assert claude_code_message(openai_chat, pieces)["stop_reason"] == "tool_use"


def test_the_reader_refuses_what_claude_code_refuses():
    """The reader is no rubber stamp: the streams of the issues above fail it."""
    start = (b'event: message_start\ndata: {"type":"message_start","message":{"id":"m",'
             b'"type":"message","role":"assistant","model":"x","content":[],"usage":{}}}\n\n')
    text = b'event: content_block_start\ndata: {"type":"content_block_start","index":0,' \
           b'"content_block":{"type":"text","text":""}}\n\n'
    thinking_in_text = (b'event: content_block_delta\ndata: {"type":"content_block_delta",'
                        b'"index":0,"delta":{"type":"thinking_delta","thinking":"x"}}\n\n')
    stop = b'event: message_stop\ndata: {"type":"message_stop"}\n\n'
    with pytest.raises(ClaudeCodeRefused, match="without a current message"):
        ClaudeCodeReader().read(stop)
    with pytest.raises(ClaudeCodeRefused, match="not a thinking block"):
        ClaudeCodeReader().read(start + text + thinking_in_text)
    with pytest.raises(ClaudeCodeRefused, match="Connection closed mid-response"):
        ClaudeCodeReader().read(start + text)
