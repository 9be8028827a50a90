"""Every form an api_keys entry may take (a literal, env:NAME, file:PATH, each also as a
`{key: ..., priority:, disabled:}` mapping) through `detour config check` and `detour doctor`:
disabled keys are reported as disabled, never resolved as if they were asked, and no secret
is printed. The proxy (addons/routing.build_providers) accepts exactly what the check accepts."""

import json

import pytest

from addons.config import load_config
from addons.routing import build_providers

LITERAL, MAPPED, OFF = "sk-literal-1111111111", "sk-mapped-2222222222", "sk-off-3333333333"
FROM_ENV, FROM_FILE = "sk-from-env-4444444444", "sk-from-file-5555555555"
SECRETS = (LITERAL, MAPPED, OFF, FROM_ENV, FROM_FILE)


@pytest.fixture
def forms_config(home, tmp_path, monkeypatch):
    """A provider with each form: five active keys, three disabled ones (a literal, and an
    env:/file: reference that does not resolve)."""
    key_file = tmp_path / "key.txt"
    key_file.write_text(FROM_FILE + "\n")
    monkeypatch.setenv("FORMS_KEY", FROM_ENV)
    monkeypatch.delenv("FORMS_UNSET", raising=False)
    home.mkdir(parents=True, exist_ok=True)
    path = home / "config.yaml"
    path.write_text(f"""
providers:
  p:
    kind: openai
    base_url: https://api.example.test/v1
    api_keys:
      - {LITERAL}
      - env:FORMS_KEY
      - file:{key_file}
      - {{key: {MAPPED}, priority: 2}}
      - {{key: env:FORMS_KEY, priority: 2}}
      - {{key: {OFF}, disabled: true}}
      - {{key: env:FORMS_UNSET, disabled: true}}
      - {{key: file:{tmp_path / 'gone.txt'}, priority: 3, disabled: true}}
routes: {{"*": [p/m]}}
""")
    return path


def assert_no_secret(text: str):
    for secret in SECRETS:
        assert secret not in text


def test_config_check_accepts_every_form(detour, forms_config):
    result = detour("config", "check")
    assert result.stdout.startswith("ok: 1 providers, 1 routes")
    assert result.stderr == ""  # no warning: five keys are active
    assert_no_secret(result.output)
    record = json.loads(detour("config", "check", "--json").stdout)
    assert record["ok"] and record["warnings"] == []


def test_an_active_mapping_whose_variable_is_unset_is_named(detour, forms_config, monkeypatch):
    forms_config.write_text(forms_config.read_text().replace(
        "{key: env:FORMS_KEY, priority: 2}", "{key: env:FORMS_UNSET, priority: 2}"))
    result = detour("config", "check", expect=2)
    assert "providers.p.api_keys[4].key: environment variable FORMS_UNSET is not set" in \
        result.output
    assert_no_secret(result.output)


def test_up_names_the_mapping_it_cannot_resolve_before_starting_anything(
        detour, forms_config, confdir):
    forms_config.write_text(forms_config.read_text().replace(
        "{key: env:FORMS_KEY, priority: 2}", "{key: env:FORMS_UNSET, priority: 2}"))
    result = detour("up", expect=2)
    assert "providers.p.api_keys[4].key: environment variable FORMS_UNSET is not set" in \
        result.stderr
    assert not confdir.exists()  # no CA made for a proxy that never started
    assert_no_secret(result.output)


def test_every_key_disabled_is_a_warning_not_a_crash(detour, home):
    home.mkdir(parents=True)
    (home / "config.yaml").write_text(
        "providers:\n  p: {kind: openai, base_url: 'https://api.example.test/v1', api_keys: "
        f"[{{key: {OFF}, disabled: true}}, {{key: env:FORMS_UNSET, disabled: true}}]}}\n"
        "routes: {'*': [p/m]}\n")
    result = detour("config", "check")
    assert result.stdout.startswith("ok: 1 providers")
    assert "providers.p: every key is disabled: its routes skip it" in result.stderr
    assert_no_secret(result.output)


def test_doctor_reports_each_account_and_the_disabled_ones_as_disabled(detour, forms_config):
    detour("certs", "bundle")
    checks = json.loads(detour("doctor", "--json", expect=0).stdout)
    [config] = [c for c in checks if c["name"] == "config"]
    assert config["state"] == "ok" and "1 providers" in config["detail"]
    accounts = {c["name"]: c for c in checks if c["name"].startswith("account ")}
    assert list(accounts) == [f"account p/account {i}" for i in range(1, 9)]
    assert {c["state"] for c in accounts.values()} == {"ok"}
    states = [c["detail"].rpartition(": ")[2] for c in accounts.values()]
    assert states == ["ready"] * 5 + ["disabled"] * 3
    # labels name a reference, or hash a literal: never the secret itself
    assert accounts["account p/account 2"]["detail"] == "env:FORMS_KEY: ready"
    assert accounts["account p/account 7"]["detail"] == "env:FORMS_UNSET: disabled"
    assert accounts["account p/account 6"]["detail"].startswith("key6:")
    assert_no_secret(json.dumps(checks))
    assert_no_secret(detour("doctor").output)


def test_the_proxy_loads_what_the_check_accepts(forms_config):
    providers = build_providers(load_config(forms_config))
    accounts = providers["p"].accounts
    assert [a.secret for a in accounts[:5]] == [LITERAL, FROM_ENV, FROM_FILE, MAPPED, FROM_ENV]
    assert [(a.priority, a.disabled) for a in accounts] == [(1, False)] * 3 + [(2, False)] * 2 + [
        (1, True), (1, True), (3, True)]
    # a disabled literal is still known, so the scrubber masks it; an unresolvable one is not
    assert [a.secret for a in accounts[5:]] == [OFF, "", ""]
