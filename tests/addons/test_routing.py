import time

import pytest

from addons.config import parse_config
from addons.routing import CooldownBook, build_providers, plan, retry_after_seconds

CFG = """
providers:
  a: {kind: openai, base_url: http://a, api_keys: [env:DETOUR_T_A1, key-two]}
  local: {kind: openai, base_url: http://localhost:11434/v1}
routes:
  m: [a/up-m, local/*, passthrough]
"""


@pytest.fixture
def cfg(monkeypatch):
    monkeypatch.setenv("DETOUR_T_A1", "secret-one")
    config = parse_config(CFG)
    return config, build_providers(config)


def test_plan_expands_accounts_in_order(cfg):
    config, providers = cfg
    cands = plan(config, providers, "m")
    assert [(c.provider_name, c.account_label, c.model) for c in cands] == [
        ("a", "env:DETOUR_T_A1", "up-m"),
        ("a", cands[1].account_label, "up-m"),
        ("local", "no-key", "m"),
        ("passthrough", "client", "m"),
    ]
    assert cands[1].account_label.startswith("key2:")
    assert cands[0].account.secret == "secret-one"


def test_labels_and_reprs_never_show_the_secret(cfg):
    config, providers = cfg
    for cand in plan(config, providers, "m"):
        assert "secret-one" not in repr(cand) and "key-two" not in repr(cand)
        assert "key-two" not in cand.account_label


def test_cooldown_book():
    book = CooldownBook()
    assert book.remaining("a/k") == 0
    book.cool("a/k", 30)
    assert 29 < book.remaining("a/k") <= 30
    book.cool("a/k", 5)  # a shorter cooldown never shortens a longer one
    assert book.remaining("a/k") > 29
    book.cool("b/k", 10**9)  # an absurd Retry-After is capped
    assert book.remaining("b/k") <= CooldownBook.MAX_SECONDS
    book.clear("a/k")
    assert book.remaining("a/k") == 0
    book.cool("c/k", 0)
    assert book.remaining("c/k") == 0


def test_retry_after_forms():
    assert retry_after_seconds("12") == 12
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    future = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 100))
    assert 90 < retry_after_seconds(future) <= 101
