"""What a valid config.yaml probably did not mean (warned at start, in `detour config check`,
`detour status` and `detour doctor`), and a combo inside a route refused with the reason."""

import pytest

from addons.config import ConfigError, config_warnings, parse_config

DEEPSEEK = "deepseek: {kind: openai, base_url: 'https://api.deepseek.com/v1', api_keys: [k]}"


def test_providers_but_no_routes_is_observe_mode_and_said_so():
    [warning] = config_warnings(parse_config(f"providers:\n  {DEEPSEEK}\n"))
    assert warning.startswith("providers are configured but no route, combo or client route "
                              "uses one: every call goes to its original vendor")
    assert 'routes: {"*": [deepseek/MODEL]}' in warning


def test_a_provider_without_keys_and_one_unused():
    config = parse_config(f"""
providers:
  {DEEPSEEK}
  local: {{kind: openai, base_url: 'http://127.0.0.1:11434/v1'}}
  spare: {{kind: openai, base_url: 'https://x.example/v1', api_keys: [{{key: k, disabled: true}}]}}
routes: {{"*": [deepseek/deepseek-chat]}}
combos: {{c: [spare/m, local/m]}}
""")
    assert config_warnings(config) == [
        "providers.local: no api_keys: calls go to it without a credential (right for a local "
        "server; a hosted API answers 401)",
        "providers.spare: every key is disabled: its routes skip it",
    ]


def test_a_route_through_a_client_counts_as_use():
    config = parse_config(f"""
providers:
  {DEEPSEEK}
clients: {{cc: {{match: "claude-cli/*", routes: {{"*": [deepseek/x]}}}}}}
""")
    assert config_warnings(config) == []


def test_the_default_config_warns_of_nothing():
    assert config_warnings(parse_config("")) == []


def test_a_combo_inside_a_route_is_refused_with_the_reason():
    with pytest.raises(ConfigError) as e:
        parse_config(f"""
providers:
  {DEEPSEEK}
combos: {{coding: [deepseek/deepseek-reasoner, passthrough]}}
routes: {{claude-*: [coding]}}
""")
    message = str(e.value)
    assert "routes.claude-*[0]: 'coding' is a combo, and combos do not nest" in message
    assert "(deepseek/deepseek-reasoner, passthrough)" in message
    assert "have clients ask for model 'coding'" in message
