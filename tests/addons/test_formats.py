"""The format table: which calls are model calls in which client format, where their model and
stream flag are read, and how each provider kind is spoken to (URL, credential, dialect)."""

import json

import pytest

from addons import formats
from addons.config import ConfigError, parse_config
from addons.forwarding import Forwarder, Job
from addons.routing import CooldownBook, build_providers, plan
from addons.usage import UsageRow, now_iso
from translators import anthropic, openai_chat


def test_the_vendor_endpoints_are_model_calls_of_their_format():
    call = formats.client_call("api.anthropic.com", "POST", "/v1/messages?beta=true")
    assert call.client_format == "anthropic" and call.endpoint.kind == formats.MODEL_CALL
    assert call.model({"model": "claude-x", "stream": True}) == "claude-x"
    assert call.stream({"model": "claude-x", "stream": True}) is True
    assert call.stream({"stream": "yes"}) is False
    chat = formats.client_call("api.openai.com", "POST", "/v1/chat/completions")
    assert chat.client_format == "openai-chat"
    for host, method, path in (("api.anthropic.com", "GET", "/v1/messages"),
                               ("api.anthropic.com", "POST", "/api/claude_code/metrics"),
                               ("example.com", "POST", "/v1/messages")):
        assert formats.client_call(host, method, path) is None
    assert formats.HANDLED_HOSTS >= {"api.anthropic.com", "api.openai.com", "chatgpt.com",
                                     "generativelanguage.googleapis.com",
                                     "cloudcode-pa.googleapis.com", "oauth2.googleapis.com"}
    assert formats.HOST_FORMATS["api.openai.com"] == "openai-chat"
    assert set(formats.CODECS) == {"anthropic", "openai-chat", "openai-responses", "gemini",
                                   "gemini-cli"}


def test_a_patterned_path_gives_model_and_stream_from_the_url():
    # the shape Gemini's endpoints have: the model and the method in the path, SSE by query
    e = formats.Endpoint.make(
        "generativelanguage.googleapis.com", "/v1beta/models/{model}:{method}", "anthropic",
        model=formats.PathPart("model"),
        stream=formats.PathPart("method", equals="streamGenerateContent"))
    path = "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse"
    m = e.pattern.fullmatch(path.partition("?")[0])
    call = formats.ClientCall(e, path, m.groupdict())
    assert call.model({"model": "ignored"}) == "gemini-2.5-pro"
    assert call.stream({}) is True
    assert not e.pattern.fullmatch("/v1beta/models/a/b:generateContent")
    by_query = formats.ClientCall(
        formats.Endpoint.make("h", "/x", "anthropic", stream=formats.QueryParam("alt", "sse")),
        "/x?key=1&alt=sse", {})
    assert by_query.stream({}) is True
    assert formats.ClientCall(by_query.endpoint, "/x", {}).stream({}) is False


def test_provider_kinds_name_their_codec_path_and_credential():
    ant, oai = formats.provider_kind("anthropic"), formats.provider_kind("openai")
    assert ant.codec is anthropic and oai.codec is openai_chat
    assert ant.url("https://a.test", "m") == "https://a.test/v1/messages"
    assert oai.url("https://o.test/v1", "m") == "https://o.test/v1/chat/completions"
    templated = formats.ProviderKind("t", openai_chat, "/models/{model}:streamGenerateContent",
                                     formats.QueryKey("key"))
    assert templated.url("https://g.test/v1beta", "a/b") == \
        "https://g.test/v1beta/models/a%2Fb:streamGenerateContent"
    headers, query = {}, {}
    templated.credential.apply("s3cret", headers, query)
    assert query == {"key": "s3cret"} and headers == {}


@pytest.mark.parametrize("base_url,dialect", [
    ("https://api.deepseek.com/v1", "deepseek"),
    ("https://api.openai.com/v1", "openai"),
    ("https://me.openai.azure.com/openai/v1", "azure"),
    ("https://dashscope-intl.aliyuncs.com/compatible-mode/v1", "dashscope"),
    ("https://openrouter.ai/api/v1", "openrouter"),
    ("http://127.0.0.1:8000/v1", "compatible"),
    ("https://notapi.deepseek.com.evil.test/v1", "compatible"),
])
def test_dialect_follows_the_host(base_url, dialect):
    assert formats.dialect_name(None, base_url) == dialect
    assert formats.dialect_name("openrouter", base_url) == "openrouter"


def test_unknown_kinds_and_dialects_are_named_with_the_known_ones():
    with pytest.raises(ConfigError, match=r"providers\.x\.kind: .*'gemnii' "
                                          r"\(known: openai, anthropic, openai-responses, codex, "
                                          r"gemini\b"):
        parse_config("providers: {x: {kind: gemnii, base_url: http://a}}")
    with pytest.raises(ConfigError, match=r"providers\.x\.dialect: .*known: compatible"):
        parse_config("providers: {x: {kind: openai, base_url: http://a, dialect: nope}}")
    with pytest.raises(ConfigError, match="content_parts: only for kind openai"):
        parse_config("providers: {x: {kind: anthropic, base_url: http://a, content_parts: true}}")


CONFIG = """
providers:
  ds: {kind: openai, base_url: "https://api.deepseek.com/v1", api_keys: [key-ds]}
  oa: {kind: openai, base_url: "https://api.openai.com/v1", api_keys: [key-oa]}
  az: {kind: openai, base_url: "https://me.openai.azure.com/openai/v1", api_keys: [key-az]}
  qw: {kind: openai, base_url: "https://dashscope.aliyuncs.com/compatible-mode/v1",
       api_keys: [key-qw], content_parts: false, max_tokens_field: max_completion_tokens}
  forced: {kind: openai, base_url: "http://127.0.0.1:9/v1", api_keys: [k], dialect: dashscope}
  ant: {kind: anthropic, base_url: "https://ant.test", api_keys: [key-ant]}
routes:
  r-ds: [ds/m]
  r-oa: [oa/m]
  r-az: [az/m]
  r-qw: [qw/m]
  r-forced: [forced/m]
  r-ant: [ant/m]
"""
# a Claude Code turn after a thought: the thinking block goes back to the provider
BODY = {"model": "x", "max_tokens": 1000, "system": [{"type": "text", "text": "sys"}],
        "messages": [{"role": "user", "content": "q"},
                     {"role": "assistant", "content": [
                         {"type": "thinking", "thinking": "hmm", "signature": "sig"},
                         {"type": "text", "text": "a"}]},
                     {"role": "user", "content": "q2"}]}


def build(route: str, body: dict = BODY, headers: dict | None = None):
    config = parse_config(CONFIG)
    cands = plan(config, build_providers(config), route)
    raw = json.dumps(body).encode()
    job = Job("f", "anthropic", headers or {}, "https://api.anthropic.com/v1/messages", raw,
              body, route, False, cands, UsageRow(now_iso(), "f", "", "anthropic", "", False))
    fmt, url, out_headers, data = Forwarder(config, CooldownBook()).build(job, cands[0])
    return url, out_headers, json.loads(data), data, raw


def test_build_speaks_each_dialect():
    url, headers, body, _, _ = build("r-ds")
    assert url == "https://api.deepseek.com/v1/chat/completions"
    assert headers["authorization"] == "Bearer key-ds"
    assert body["messages"][2]["reasoning_content"] == "hmm"  # DeepSeek wants it back
    _, headers, body, _, _ = build("r-oa")
    assert "reasoning_content" not in body["messages"][2]  # OpenAI's Chat has no such field
    _, headers, body, _, _ = build("r-az")
    assert headers["api-key"] == "key-az" and "authorization" not in headers
    _, _, body, _, _ = build("r-forced")
    assert body["messages"][0]["content"] == [{"type": "text", "text": "sys"}]
    # the provider options override the dialect (DashScope's parts, here off)
    _, _, body, _, _ = build("r-qw")
    assert body["messages"][0]["content"] == "sys" and body["max_completion_tokens"] == 1000


def test_same_format_keeps_the_client_bytes_and_its_anthropic_headers():
    client = {"anthropic-version": "2023-06-01", "anthropic-beta": "b1", "x-other": "no"}
    url, headers, body, data, raw = build("r-ant", dict(BODY, model="m"), client)
    assert url == "https://ant.test/v1/messages" and data == raw
    assert (headers["x-api-key"], headers["anthropic-beta"]) == ("key-ant", "b1")
    assert "x-other" not in headers
    _, headers, body, _, _ = build("r-ds", BODY, client)
    assert "anthropic-beta" not in headers and "anthropic-version" not in headers
