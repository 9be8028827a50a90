
import pytest

from addons.config import (
    DEFAULT_CONFIG_YAML, ConfigError, ensure_home, load_config, parse_config, resolve_secret,
)

GOOD = """
providers:
  deepseek:
    kind: openai
    base_url: https://api.deepseek.com/v1/
    api_keys: [env:DETOUR_TEST_KEY, literal-key]
routes:
  claude-opus-4-8: [deepseek/deepseek-chat, passthrough]
  claude-*: [deepseek/*]
  "*": [passthrough]
combos:
  coding: [deepseek/deepseek-reasoner]
"""


def test_default_config_is_observe_mode():
    cfg = parse_config(DEFAULT_CONFIG_YAML)
    assert cfg.providers == {}
    assert cfg.candidates("claude-opus-4-8") == ["passthrough"]
    assert cfg.candidates("anything") == ["passthrough"]


def test_routes_exact_then_glob_then_star_and_combos():
    cfg = parse_config(GOOD)
    assert cfg.candidates("claude-opus-4-8") == ["deepseek/deepseek-chat", "passthrough"]
    assert cfg.candidates("claude-haiku-4-5") == ["deepseek/*"]
    assert cfg.candidates("gpt-5") == ["passthrough"]
    assert cfg.candidates("coding") == ["deepseek/deepseek-reasoner"]
    assert cfg.providers["deepseek"].base_url == "https://api.deepseek.com/v1"


@pytest.mark.parametrize("text, message", [
    ("providers: {x: {kind: openai, base_url: http://a, api_keyz: []}}",
     "providers.x.api_keyz: unknown key"),
    ("routez: {}", "routez: unknown key"),
    ("routes: {a: [foo/bar]}", "routes.a[0]: unknown provider 'foo'"),
    ("routes: {a: [justaname]}", "routes.a[0]: 'justaname' is not provider/model or passthrough"),
    ("routes: {a: []}", "routes.a: needs at least one candidate"),
    ("providers: {x: {kind: nope, base_url: http://a}}", "providers.x.kind"),
    ("providers: {x: {kind: openai, base_url: ftp://a}}", "providers.x.base_url"),
    ("providers: {x: {kind: openai, base_url: http://a, timeouts: {read: -1}}}",
     "providers.x.timeouts.read"),
    ("- a list", "the top level must be a mapping"),
    ("routes: [unclosed", "not valid YAML"),
])
def test_errors_name_the_bad_field(text, message):
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert message in str(e.value)


def test_secrets_env_file_literal(tmp_path, monkeypatch):
    monkeypatch.setenv("DETOUR_TEST_KEY", "from-env")
    assert resolve_secret("env:DETOUR_TEST_KEY", "k") == "from-env"
    (tmp_path / "key").write_text("from-file\n")
    assert resolve_secret(f"file:{tmp_path / 'key'}", "k") == "from-file"
    assert resolve_secret("plain", "k") == "plain"
    monkeypatch.delenv("DETOUR_TEST_KEY")
    with pytest.raises(ConfigError, match="providers.x.api_keys\\[0\\]: environment variable"):
        resolve_secret("env:DETOUR_TEST_KEY", "providers.x.api_keys[0]")
    with pytest.raises(ConfigError, match="cannot read"):
        resolve_secret(f"file:{tmp_path / 'missing'}", "k")


def test_ensure_home_writes_default_once_and_private(tmp_path):
    home = tmp_path / "home"
    cfg = ensure_home(home)
    assert cfg.read_text() == DEFAULT_CONFIG_YAML
    assert oct(cfg.stat().st_mode & 0o777) == "0o600"
    assert oct(home.stat().st_mode & 0o777) == "0o700"
    cfg.write_text("routes: {'*': [passthrough]}\n")
    ensure_home(home)
    assert cfg.read_text() == "routes: {'*': [passthrough]}\n"
    assert load_config(cfg).candidates("x") == ["passthrough"]


def test_load_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
