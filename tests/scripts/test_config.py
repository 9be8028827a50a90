import json

from addons.config import DEFAULT_CONFIG_YAML


def write_config(home, text: str):
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(text)


def test_path_prints_the_config_path_without_creating_it(detour, home):
    assert detour("config", "path").stdout == f"{home / 'config.yaml'}\n"
    assert not home.exists()


def test_init_writes_the_default_once_and_never_overwrites(detour, home):
    result = detour("config", "init")
    assert result.stdout == f"wrote: {home / 'config.yaml'}\n"
    assert (home / "config.yaml").read_text() == DEFAULT_CONFIG_YAML

    (home / "config.yaml").write_text("providers: {}\n")
    result = detour("config", "init")
    assert result.stdout == f"exists, left unchanged: {home / 'config.yaml'}\n"
    assert (home / "config.yaml").read_text() == "providers: {}\n"


def test_check_the_default_config(detour, home):
    detour("config", "init")
    result = detour("config", "check")
    assert result.stdout.startswith("ok: 0 providers, 1 routes")
    assert str(home / "config.yaml") in result.stdout


def test_check_counts_providers_and_routes(detour, home, monkeypatch):
    monkeypatch.setenv("DS_KEY", "sk-test")
    write_config(
        home,
        """
providers:
  deepseek: {kind: openai, base_url: "https://api.deepseek.com/v1", api_keys: [env:DS_KEY]}
  local: {kind: openai, base_url: "http://127.0.0.1:11434/v1"}
routes:
  claude-*: [deepseek/deepseek-chat, passthrough]
  "*": [passthrough]
""",
    )
    assert detour("config", "check").stdout.startswith("ok: 2 providers, 2 routes")
    record = json.loads(detour("config", "check", "--json").stdout)
    assert record == {
        "ok": True,
        "path": str(home / "config.yaml"),
        "providers": 2,
        "routes": 2,
        "combos": 0,
        "warnings": [
            "providers.local: no route, combo or client route uses it",
            "providers.local: no api_keys: calls go to it without a credential (right for a"
            " local server; a hosted API answers 401)",
        ],
    }


def test_check_names_the_bad_field_and_exits_2(detour, home):
    write_config(home, "providers:\n  deepseek: {kind: nope, base_url: https://x}\n")
    result = detour("config", "check", expect=2)
    assert result.stdout == ""
    assert "providers.deepseek.kind" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_names_an_unknown_key(detour, home):
    write_config(home, "routs: {}\n")
    result = detour("config", "check", expect=2)
    assert "routs: unknown key" in result.stderr


def test_check_names_a_route_to_an_unknown_provider(detour, home):
    write_config(home, "routes:\n  gpt-5: [nobody/gpt-5]\n")
    result = detour("config", "check", expect=2)
    assert "routes.gpt-5[0]" in result.stderr and "unknown provider 'nobody'" in result.stderr


def test_check_reports_a_key_variable_that_is_not_set(detour, home, monkeypatch):
    monkeypatch.delenv("DETOUR_TEST_MISSING_KEY", raising=False)
    write_config(
        home,
        "providers:\n  ds: {kind: openai, base_url: 'https://x',"
        " api_keys: [env:DETOUR_TEST_MISSING_KEY]}\n",
    )
    result = detour("config", "check", expect=2)
    assert "providers.ds.api_keys[0]" in result.stderr
    assert "DETOUR_TEST_MISSING_KEY is not set" in result.stderr


def test_check_puts_a_yaml_error_on_one_line(detour, home):
    write_config(home, "routes: [unclosed\n")
    result = detour("config", "check", expect=2)
    assert "not valid YAML" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_check_without_a_config_says_how_to_make_one(detour, home):
    result = detour("config", "check", expect=2)
    assert "no such file" in result.stderr and "detour config init" in result.stderr
