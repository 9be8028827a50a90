"""`detour doctor`: each check, and each failure with what to do (the TLS probe through a
running proxy is in tests/e2e/test_detour_run.py)."""

import json
import sqlite3
import time

import pytest


def checks(detour, expect=None, env=None) -> dict[str, list[dict]]:
    result = detour("doctor", "--json", expect=expect, env=env)
    out: dict[str, list[dict]] = {}
    for check in json.loads(result.stdout):
        out.setdefault(check["name"], []).append(check)
    return out


def test_a_fresh_machine_lacks_the_ca_and_says_how_to_make_it(detour, home):
    found = checks(detour, expect=1)
    assert found["python"][0]["state"] == "ok"
    assert found["mitmproxy"][0]["detail"].startswith("mitmproxy 12.3")
    [ca] = found["CA"]
    assert ca["state"] == "fail" and "`detour certs path` creates it" in ca["fix"]
    assert found["bundle"][0]["state"] == "fail"
    assert found["config"][0]["state"] == "warn"  # none yet
    assert not home.exists() or not (home / "config.yaml").exists()  # doctor changes nothing


def test_a_ready_setup_passes(detour, home):
    detour("certs", "bundle")
    detour("config", "init")
    found = checks(detour, expect=0)
    found.pop("port", None)  # 8080 may be taken on this machine: a warning, then
    assert {c["state"] for cs in found.values() for c in cs} == {"ok"}
    text = detour("doctor").stdout
    assert "✓ CA" in text


def test_a_bundle_without_the_current_ca(detour, home):
    detour("certs", "bundle")
    (home / "ca-bundle.pem").write_text("-----BEGIN CERTIFICATE-----\nAAAA\n"
                                        "-----END CERTIFICATE-----\n")
    [bundle] = checks(detour, expect=1)["bundle"]
    assert bundle["state"] == "fail" and "`detour certs bundle` rewrites it" in bundle["fix"]


def test_config_problems_name_the_field_and_warnings_show(detour, home, monkeypatch):
    detour("certs", "bundle")
    (home / "config.yaml").write_text(
        "providers:\n  ds: {kind: openai, base_url: 'https://api.deepseek.com/v1', "
        "api_keys: [env:DOCTOR_TEST_KEY]}\n")
    monkeypatch.delenv("DOCTOR_TEST_KEY", raising=False)
    [config] = checks(detour, expect=1)["config"]
    assert config["state"] == "fail"
    assert "providers.ds.api_keys[0]: environment variable DOCTOR_TEST_KEY is not set" in \
        config["detail"]
    assert "detour config check" in config["fix"]
    monkeypatch.setenv("DOCTOR_TEST_KEY", "sk-x")
    config = checks(detour, expect=0)["config"]
    assert [c["state"] for c in config] == ["ok", "warn"]
    assert "no route, combo or client route uses one" in config[1]["detail"]
    assert "sk-x" not in detour("doctor").stdout


def test_a_resting_account_is_a_warning_with_its_cause(detour, home):
    detour("certs", "bundle")
    (home / "config.yaml").write_text(
        "providers:\n  ds: {kind: openai, base_url: 'https://api.deepseek.com/v1', "
        "api_keys: [env:HOME]}\nroutes: {'*': [ds/m]}\n")
    conn = sqlite3.connect(home / "detour.db")
    with conn:
        from addons.cooldown_store import _CREATE
        conn.execute(_CREATE)
        conn.execute("INSERT INTO cooldowns VALUES ('ds/env:HOME', ?, 'auth', '401 bad key', 1, "
                     "'x')", (time.time() + 600,))
    conn.close()
    [account] = checks(detour, expect=0)["account ds/account 1"]
    assert account["state"] == "warn"
    assert "rests" in account["detail"] and "auth: 401 bad key" in account["detail"]
    assert "detour.cooldowns.clear" in account["fix"]


def test_a_database_that_is_not_one(detour, home):
    detour("certs", "bundle")
    (home / "detour.db").write_bytes(b"this is not sqlite" * 100)
    [database] = checks(detour, expect=1)["database"]
    assert database["state"] == "fail" and "move" in database["fix"]


@pytest.mark.parametrize("variable_holds_ca", [False, True])
def test_a_shell_with_a_proxy_but_not_the_ca(detour, home, confdir, variable_holds_ca):
    detour("certs", "bundle")
    extra = str(confdir / "mitmproxy-ca-cert.pem") if variable_holds_ca else "/nonexistent.pem"
    found = checks(detour, env={"HTTPS_PROXY": "http://127.0.0.1:1",
                                "NODE_EXTRA_CA_CERTS": extra})
    [shell] = found["shell"]
    assert shell["state"] == ("ok" if variable_holds_ca else "warn")
    if not variable_holds_ca:
        assert 'eval "$(detour env)"' in shell["fix"]
