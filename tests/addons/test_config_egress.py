"""A provider's way out: outbound proxy and TLS trust in config.yaml."""

import pytest

from addons.config import ConfigError, parse_config

BASE = "providers:\n  p: {kind: openai, base_url: https://p.example/v1, %s}\n"


def provider(fields: str):
    return parse_config(BASE % fields).providers["p"]


def test_defaults_verify_with_no_proxy_of_its_own():
    p = provider("api_keys: [k]")
    assert (p.verify, p.ca_file, p.proxy) == (True, None, None)


@pytest.mark.parametrize("url", ["http://127.0.0.1:3128", "https://proxy.corp:443",
                                 "socks5://u:pw@127.0.0.1:1080", "socks5h://127.0.0.1:1080",
                                 "direct"])
def test_proxy_urls(url):
    assert provider(f"proxy: '{url}'").proxy == url


@pytest.mark.parametrize("url", ["ftp://h:21", "127.0.0.1:3128", "http://", "socks4://h:1"])
def test_a_bad_proxy_is_named_without_repeating_it(url):
    with pytest.raises(ConfigError, match=r"providers\.p\.proxy: .*must be direct or a URL"):
        provider(f"proxy: '{url}'")


def test_a_proxy_password_is_never_shown():
    p = provider("proxy: 'http://user:hunter2-secret@127.0.0.1:3128'")
    assert "hunter2" not in repr(p) and "hunter2" not in str(parse_config(
        BASE % "proxy: 'http://user:hunter2-secret@127.0.0.1:3128'"))
    with pytest.raises(ConfigError) as e:
        provider("proxy: 'ftp://user:hunter2-secret@127.0.0.1:3128'")
    assert "hunter2" not in str(e.value)


def test_ca_file_must_exist(tmp_path):
    pem = tmp_path / "ca.pem"
    pem.write_text("x")
    assert provider(f"ca_file: '{pem}'").ca_file == str(pem)
    with pytest.raises(ConfigError, match=r"providers\.p\.ca_file: .*missing\.pem: no such file"):
        provider(f"ca_file: '{tmp_path / 'missing.pem'}'")


def test_verify_tls_is_still_read_as_verify():
    assert provider("verify_tls: false").verify is False
    with pytest.raises(ConfigError, match="verify_tls: replaced by verify"):
        provider("verify_tls: false, verify: true")
