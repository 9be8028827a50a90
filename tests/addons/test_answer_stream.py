"""AnswerStream, the one stream translator of the relay and the direct path (sans IO): the
same client bytes whether the provider's stream comes whole or byte by byte, a same-format
stream passed untouched, and every way a stream goes wrong ending in an error event of the
client's format."""

import json

import pytest

from addons.call import Call
from addons.config import parse_config
from addons.forwarding import AnswerStream, Forwarder, Job
from addons.routing import CooldownBook, build_providers, plan
from addons.scrubber import SecretScrubber
from tests.captures import CAPTURES, anthropic_events
from translators import canonical

CONFIG = """
providers:
  chat: {kind: openai, base_url: "http://chat.test/v1", api_keys: [sk-chat-key-0123456789]}
  ant: {kind: anthropic, base_url: "http://ant.test", api_keys: [key-ant]}
routes:
  to-chat: [chat/m]
  to-ant: [ant/claude-x]
"""


def job_for(model: str) -> tuple[Forwarder, Job]:
    config = parse_config(CONFIG)
    body = json.loads((CAPTURES / "claude-code.messages.text.request.json").read_text())
    body.update(model=model, stream=True)
    call = Call("f1", "test", "anthropic", lambda row: None)
    job = Job("f1", "anthropic", {}, "http://vendor.test/v1/messages", json.dumps(body).encode(),
              body, model, True, plan(config, build_providers(config), model), call)
    fwd = Forwarder(config, CooldownBook())
    fwd.scrubber = SecretScrubber(["sk-chat-key-0123456789"])  # the configuration's secrets
    return fwd, job


def chat_chunks(*pieces: str, finish: bool = True) -> bytes:
    out = [{"id": "c1", "object": "chat.completion.chunk", "model": "m", "choices": [
        {"index": 0, "delta": {"role": "assistant", "content": p} if i == 0 else {"content": p},
         "finish_reason": None}]} for i, p in enumerate(pieces)]
    if finish:
        out.append({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
    data = b"".join(b"data: " + json.dumps(o).encode() + b"\n\n" for o in out)
    return data + (b"data: [DONE]\n\n" if finish else b"")


ANTHROPIC_STREAM = (CAPTURES / "claude-code.messages.text.response.txt").read_bytes()


def run(model: str, data: bytes, step: int | None) -> tuple[AnswerStream, bytes]:
    fwd, job = job_for(model)
    fmt = "openai-chat" if model == "to-chat" else "anthropic"
    answer = AnswerStream(fwd, job, job.candidates[0].key, fmt)
    pieces = [data] if step is None else [data[i:i + step] for i in range(0, len(data), step)]
    out = b"".join(answer.feed(p) for p in pieces) + answer.close()
    return answer, out


@pytest.mark.parametrize("step", [None, 1, 7])
def test_a_translated_stream_is_the_same_whatever_the_chunks(step):
    answer, out = run("to-chat", chat_chunks("Hel", "lo ", "there"), step)
    _, whole = run("to-chat", chat_chunks("Hel", "lo ", "there"), None)
    assert out == whole
    events = anthropic_events(out)
    assert "".join(e.text for e in events if type(e) is canonical.TextDelta) == "Hello there"
    assert (answer.final, answer.content, answer.error, answer.ended) == (True, True, None, False)


@pytest.mark.parametrize("step", [None, 1, 13])
def test_a_same_format_stream_passes_untouched(step):
    answer, out = run("to-ant", ANTHROPIC_STREAM, step)
    assert out == ANTHROPIC_STREAM
    assert answer.final and answer.error is None


def test_a_provider_error_before_content_is_told_and_scrubbed():
    err = {"error": {"message": "overloaded, your sk-chat-key-0123456789 is fine", "type": "server_error"}}
    answer, out = run("to-chat", b"data: " + json.dumps(err).encode() + b"\n\n", 5)
    assert answer.content is False and answer.error_kind is not None
    assert answer.error.startswith("chat/") and "sk-chat-key-0123456789" not in answer.error
    last = anthropic_events(out)[-1]
    assert type(last) is canonical.StreamError and "sk-chat-key-0123456789" not in last.message


@pytest.mark.parametrize("model, data", [
    ("to-chat", chat_chunks("cut ", "here", finish=False)),
    ("to-ant", ANTHROPIC_STREAM[:len(ANTHROPIC_STREAM) // 2]),
])
def test_a_stream_ending_before_its_final_event_ends_with_an_error_event(model, data):
    answer, out = run(model, data, 3)
    assert answer.error and not answer.final
    assert type(anthropic_events(out)[-1]) is canonical.StreamError


def test_a_broken_read_ends_the_stream_in_the_clients_format():
    fwd, job = job_for("to-chat")
    answer = AnswerStream(fwd, job, job.candidates[0].key, "openai-chat")
    out = answer.feed(chat_chunks("partial", finish=False))
    out += answer.broke("chat/account 1 broke off the stream: ReadError")
    assert answer.ended and "ReadError" in answer.error
    events = anthropic_events(out)
    assert type(events[-1]) is canonical.StreamError and "ReadError" in events[-1].message
