"""The provider kinds subscription logins serve (copilot, copilot-responses, qwen, iflow):
their default base_url, where a login's own API takes its place, and Copilot's headers that
depend on the request."""

import pytest

from addons import formats
from addons.config import parse_config
from addons.credentials.provider import api_base


def test_kinds_know_their_api():
    cfg = parse_config("providers:\n  cp: {kind: copilot}\n  q: {kind: qwen}\n"
                       "  i: {kind: iflow}\n  o: {kind: qwen, base_url: 'http://own/v1'}\n")
    assert cfg.providers["cp"].base_url == "https://api.githubcopilot.com"
    assert cfg.providers["q"].base_url == "https://portal.qwen.ai/v1"
    assert cfg.providers["i"].base_url == "https://apis.iflow.cn/v1"
    assert cfg.providers["o"].base_url == "http://own/v1"


def test_other_kinds_still_need_a_base_url():
    from addons.config import ConfigError
    with pytest.raises(ConfigError, match="providers.x.base_url"):
        parse_config("providers:\n  x: {kind: openai}\n")


@pytest.mark.parametrize("vendor, where, base", [
    ("qwen", "portal.qwen.ai", "https://portal.qwen.ai/v1"),
    ("qwen", "https://portal.qwen.ai/v1/", "https://portal.qwen.ai/v1"),
    ("qwen", "http://127.0.0.1:9", "http://127.0.0.1:9/v1"),
    ("copilot", "https://api.business.githubcopilot.com", "https://api.business.githubcopilot.com"),
])
def test_api_base_of_a_login(vendor, where, base):
    assert api_base(vendor, where) == base


@pytest.mark.parametrize("body, expected", [
    ({"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "hi"}]},
     {"x-initiator": "user"}),
    ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                   {"role": "user", "content": "c"}]}, {"x-initiator": "agent"}),
    ({"input": [{"type": "function_call_output", "call_id": "c", "output": "x"}]},
     {"x-initiator": "agent"}),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
     {"x-initiator": "user", "copilot-vision-request": "true"}),
    ({"input": "hi"}, {"x-initiator": "user"}),
])
def test_copilot_body_headers(body, expected):
    assert formats.copilot_body_headers(body) == expected


def test_copilot_kinds_send_the_editor_headers():
    for name in ("copilot", "copilot-responses"):
        headers = dict(formats.provider_kind(name).fixed_headers)
        assert headers["copilot-integration-id"] == "vscode-chat"
        assert headers["editor-version"].startswith("vscode/")
        assert headers["user-agent"].startswith("GitHubCopilotChat/")


async def test_iflow_refresh_keeps_its_key_when_the_user_info_fails(monkeypatch):
    """The refresh token is spent once the token endpoint answered: a user info that fails
    then must not lose the new tokens (the API key held stays)."""
    import httpx

    from addons.credentials import oauth
    from addons.credentials.vendors import VENDORS
    from tests.fakes.oauth_server import FakeOAuth
    v = VENDORS["iflow"]
    with FakeOAuth() as auth:
        auth.client_secrets[v.client_id] = v.client_secret
        monkeypatch.setenv("DETOUR_OAUTH_IFLOW_TOKEN_URL", auth.url("/token"))
        monkeypatch.setenv("DETOUR_OAUTH_IFLOW_API_KEY_URL", auth.url("/api/oauth/getUserInfo"))
        held = auth.grant() | {"api_key": "the-key-held"}
        async with httpx.AsyncClient(trust_env=False) as http:
            tokens = await oauth.refresh(http, v, held)
            assert tokens.api_key == auth.iflow_api_key  # bought again with the new token
            monkeypatch.setenv("DETOUR_OAUTH_IFLOW_API_KEY_URL", auth.url("/gone"))
            again = await oauth.refresh(http, v, tokens.secrets(held))
        assert again.refresh_token != tokens.refresh_token
        assert again.secrets(tokens.secrets(held))["api_key"] == auth.iflow_api_key
