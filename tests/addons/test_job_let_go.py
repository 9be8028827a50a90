"""Job.let_go: once the answering candidate has the request, the job drops the request (its
parsed body, canonical form, encoded copies) and keeps only what the answer needs; the answer
it then encodes is byte for byte what it was before."""

import json

from addons.call import Call
from addons.config import parse_config
from addons.forwarding import Forwarder, Job, answer_shape, client_encoder
from addons.routing import CooldownBook, build_providers, plan
from translators import canonical

CONFIG = """
providers:
  ant: {kind: anthropic, base_url: "http://ant.test", api_keys: [key-ant]}
routes:
  gpt-x: [ant/claude-x]
"""


def chat_job() -> tuple[Forwarder, Job]:
    """A Chat client asking for a usage chunk and a JSON answer, routed to Anthropic (which
    has no response_format: the answer comes as a forced tool call)."""
    config = parse_config(CONFIG)
    body = {"model": "gpt-x", "stream": True, "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": "weather? " + "x" * 20000}],
            "response_format": {"type": "json_schema", "json_schema": {
                "name": "weather", "schema": {"type": "object",
                                              "properties": {"t": {"type": "number"}}}}}}
    call = Call("f1", "test", "openai-chat", lambda row: None)
    job = Job("f1", "openai-chat", {}, "http://vendor.test/v1/chat/completions",
              json.dumps(body).encode(), body, "gpt-x", True,
              plan(config, build_providers(config), "gpt-x"), call)
    return Forwarder(config, CooldownBook()), job


def answer_events(tool: str) -> list:
    return canonical.response_to_events(canonical.Response(
        "msg_1", "claude-x", (canonical.ToolUse("toolu_1", tool, {"t": 21.5}),), "tool_use",
        canonical.Usage(input_tokens=12, output_tokens=3)))


def test_the_answer_is_the_same_after_the_request_is_let_go():
    fwd, job = chat_job()
    fwd.build(job, job.candidates[0])
    tool = answer_shape(job).tool
    assert tool == "weather"
    before = client_encoder(job).encode_all(answer_events(tool))
    job.let_go()
    assert job.body == {} and job.raw_body == b"" and job.built == {}
    assert job._canonical is None
    after = client_encoder(job).encode_all(answer_events(tool))
    assert after == before
    # the answer tool's input became the message text, and the usage chunk came
    assert b'{\\"t\\":21.5}' in after and b'"prompt_tokens":12' in after
    # each encoder is fresh: a second stream of the same job encodes the same again
    assert client_encoder(job).encode_all(answer_events(tool)) == before
    job.let_go()  # twice: nothing more to let go
    assert client_encoder(job).encode_all(answer_events(tool)) == before


def test_asyncios_tls_read_buffer_is_one_record_not_256_kib():
    # a provider connection per open stream: asyncio's default 256 KiB buffer, zero-filled
    # and so resident, was a quarter of what detour held per open stream
    import asyncio.sslproto

    from addons import transport
    assert asyncio.sslproto.SSLProtocol.max_size == transport.TLS_READ_SIZE == 16 * 1024
