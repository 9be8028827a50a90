"""Chat endpoints on more hosts (config `chat_hosts`): Qwen Code's own by default, any list
the user writes instead; and the Gemini API's endpoints in the format table."""

from addons import formats
from addons.config import parse_config


def test_qwen_codes_hosts_are_chat_by_default():
    table = parse_config("{}").format_table
    for host in ("dashscope.aliyuncs.com", "dashscope-intl.aliyuncs.com", "portal.qwen.ai"):
        assert host in table.handled_hosts
        for path in ("/compatible-mode/v1/chat/completions", "/v1/chat/completions"):
            call = table.client_call(host, "POST", path)
            assert call.client_format == "openai-chat" and call.endpoint.kind == formats.MODEL_CALL
            assert call.model({"model": "qwen3.5-plus"}) == "qwen3.5-plus"
        assert table.client_call(host, "POST", "/api/v1/services/aigc") is None
    assert table.client_call("api.anthropic.com", "POST", "/v1/messages").client_format == \
        "anthropic"


def test_the_list_is_the_users():
    table = parse_config("chat_hosts: [llm.example.internal]").format_table
    assert "llm.example.internal" in table.handled_hosts
    assert "portal.qwen.ai" not in table.handled_hosts
    assert table.host_formats["llm.example.internal"] == "openai-chat"
    assert "api.openai.com" in table.handled_hosts  # the vendors' own stay
    none = parse_config("chat_hosts: []").format_table
    assert none.handled_hosts == formats.HANDLED_HOSTS


def test_gemini_endpoints_read_model_and_stream_from_the_path():
    stream = formats.client_call("generativelanguage.googleapis.com", "POST",
                                 "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
    assert (stream.client_format, stream.model({}), stream.stream({})) == (
        "gemini", "gemini-2.5-pro", True)
    whole = formats.client_call("generativelanguage.googleapis.com", "POST",
                                "/v1/models/gemini-x:generateContent")
    assert (whole.model({"model": "ignored"}), whole.stream({"stream": True})) == (
        "gemini-x", False)
    count = formats.client_call("generativelanguage.googleapis.com", "POST",
                                "/v1beta/models/m:countTokens")
    assert count.endpoint.kind == formats.COUNT_TOKENS
    listing = formats.client_call("generativelanguage.googleapis.com", "GET", "/v1beta/models")
    assert listing.endpoint.kind == formats.MODEL_LIST
    for path in ("/v1beta/models/m:embedContent", "/v1beta/files", "/v1beta/models/a/b:x"):
        assert formats.client_call("generativelanguage.googleapis.com", "POST", path) is None


def test_gemini_provider_urls():
    kind = formats.provider_kind("gemini")
    base = "https://generativelanguage.googleapis.com"
    assert kind.url(base, "gemini-2.5-pro") == base + "/v1beta/models/gemini-2.5-pro:generateContent"
    assert kind.url(base, "gemini-2.5-pro", True) == (
        base + "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse")
    assert kind.url(base, "m", path=kind.count_path) == base + "/v1beta/models/m:countTokens"
    headers, query = {}, {}
    kind.credential.apply("AIza-k", headers, query)
    assert headers == {"x-goog-api-key": "AIza-k"} and not query
