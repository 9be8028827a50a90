"""Accounts within a provider (routing.order_accounts through plan): priority groups,
round-robin and least-recently-used inside a group, disabled and resting accounts; the book's
per-model rests, growing backoff and its persistence (cooldown_store.py)."""

import collections
import sqlite3
import time

import pytest

from addons.config import ConfigError, parse_config
from addons.cooldown_store import CooldownStore
from addons.routing import CooldownBook, Rest, build_providers, model_key, plan


def setup(accounts: str, strategy: str = "round-robin"):
    config = parse_config(f"""
providers:
  p: {{kind: openai, base_url: http://p, strategy: {strategy}, api_keys: {accounts}}}
routes:
  m: [p/up, passthrough]
""")
    return config, build_providers(config)


def labels(cands) -> list[str]:
    return [c.account.name for c in cands if c.account]


def test_round_robin_spreads_evenly_over_a_group():
    config, providers = setup("[k1, k2, k3]")
    book = CooldownBook()
    firsts = [labels(plan(config, providers, "m", cooldowns=book))[0] for _ in range(30)]
    assert collections.Counter(firsts) == {"account 1": 10, "account 2": 10, "account 3": 10}
    assert firsts[:4] == ["account 1", "account 2", "account 3", "account 1"]
    # every account is still a candidate (the fallback order), passthrough last
    cands = plan(config, providers, "m", cooldowns=book)
    assert sorted(labels(cands)) == ["account 1", "account 2", "account 3"]
    assert cands[-1].provider is None


def test_without_a_book_the_order_written():
    config, providers = setup("[k1, {key: k2, priority: 0}, k3]")
    assert labels(plan(config, providers, "m")) == ["account 2", "account 1", "account 3"]


def test_least_recently_used_asks_the_one_asked_longest_ago():
    config, providers = setup("[k1, k2, k3]", "least-recently-used")
    book = CooldownBook()
    keys = {c.account.name: c.key for c in plan(config, providers, "m", cooldowns=book)
            if c.account}
    assert labels(plan(config, providers, "m", cooldowns=book))[0] == "account 1"  # none used
    book.used(keys["account 1"], now=10)
    book.used(keys["account 3"], now=5)
    assert labels(plan(config, providers, "m", cooldowns=book)) == [
        "account 2", "account 3", "account 1"]
    book.used(keys["account 2"], now=20)
    assert labels(plan(config, providers, "m", cooldowns=book))[0] == "account 3"


def test_priority_groups_second_only_when_the_first_all_rest():
    config, providers = setup("[{key: a, priority: 1}, {key: b, priority: 2}, "
                              "{key: c, priority: 1}, {key: d, disabled: true}]")
    book = CooldownBook()
    for _ in range(4):  # group 1 (accounts 1 and 3) rotates ahead of group 2; 4 never
        got = labels(plan(config, providers, "m", cooldowns=book))
        assert set(got[:2]) == {"account 1", "account 3"} and got[2:] == ["account 2"]
    keys = {c.account.name: c.key for c in plan(config, providers, "m", cooldowns=book)
            if c.account}
    book.cool(keys["account 1"], 60, Rest.AUTH)
    assert labels(plan(config, providers, "m", cooldowns=book)) == [
        "account 3", "account 2", "account 1"]  # the resting one last
    book.cool(model_key(keys["account 3"], "up"), 30, Rest.RATE_LIMIT)
    # group 2 only now; the resting ones after it, first to wake first
    assert labels(plan(config, providers, "m", cooldowns=book)) == [
        "account 2", "account 3", "account 1"]


def test_every_account_disabled_leaves_no_candidate_of_that_provider():
    config, providers = setup("[{key: a, disabled: true}]")
    assert [c.provider_name for c in plan(config, providers, "m", cooldowns=CooldownBook())] == [
        "passthrough"]


@pytest.mark.parametrize("keys,message", [
    ("[{priority: 2}]", "api_keys: [0].key: Field required"),
    ("[{key: a, weight: 2}]", "api_keys: [0].weight: unknown key"),
    ("[{key: a, priority: -1}]", "api_keys: [0].priority: Input should be greater than or equal"),
    ("[a, 3]", "api_keys: [1]: a key (string) or a mapping"),
    ("[{key: '  '}]", "api_keys: [0].key: must not be empty"),
])
def test_bad_account_entries_are_named(keys, message):
    with pytest.raises(ConfigError) as e:
        setup(keys)
    assert message in str(e.value)


def test_bad_strategy_is_named():
    with pytest.raises(ConfigError, match="strategy: Input should be 'round-robin' or"):
        setup("[a]", "random")


def test_a_model_rest_leaves_the_accounts_other_models():
    book = CooldownBook()
    book.fail(model_key("p/k", "a"), Rest.RATE_LIMIT, lambda n: 30)
    assert book.rest("p/k", "a").reason is Rest.RATE_LIMIT
    assert book.rest("p/k", "b") is None and book.rest("p/k") is None
    book.succeeded("p/k", "b")  # a success on b does not end a's rest
    assert book.rest("p/k", "a") is not None
    book.cool("p/k", 60, Rest.AUTH)  # an account rest covers every model
    assert book.rest("p/k", "b").reason is Rest.AUTH
    book.succeeded("p/k", "a")
    assert book.rest("p/k", "a") is None and book.rest("p/k", "b") is None


def test_backoff_grows_with_consecutive_failures_and_a_success_resets_it():
    book = CooldownBook()
    got = [book.fail("p/k@m", Rest.TRANSIENT, lambda n: 2.0 ** (n - 1)) for _ in range(5)]
    assert got == [1, 2, 4, 8, 16] and book.streak("p/k@m", Rest.TRANSIENT) == 5
    assert book.streak("p/k@m", Rest.QUOTA) == 0  # streaks are per kind
    book.succeeded("p/k", "m")
    assert book.fail("p/k@m", Rest.TRANSIENT, lambda n: 2.0 ** (n - 1)) == 1


def test_rests_survive_a_restart_and_expired_ones_are_dropped(tmp_path):
    db = tmp_path / "detour.db"
    book = CooldownBook()
    store = CooldownStore(db, book)
    assert store.load() == 0
    book.fail("p/k@m", Rest.QUOTA, lambda n: 3600, "HTTP 429, quota")
    book.fail("p/k@m", Rest.QUOTA, lambda n: 7200, "HTTP 429, quota")
    book.cool("p/j", 600, Rest.AUTH, "HTTP 401")
    book.cool("p/gone", 0.01, Rest.TRANSIENT)
    assert store.write() == 3
    assert store.write() == 0  # nothing changed since
    time.sleep(0.02)

    again = CooldownBook()
    assert CooldownStore(db, again).load() == 2  # p/gone was over: dropped
    assert 7100 < again.remaining("p/k", "m") <= 7200
    assert again.rest("p/k", "m").cause == "HTTP 429, quota"
    assert again.streak("p/k@m", Rest.QUOTA) == 2  # the next failure grows on from there
    assert again.rest("p/j").reason is Rest.AUTH
    with sqlite3.connect(db) as conn:
        assert sorted(k for (k,) in conn.execute("SELECT key FROM cooldowns")) == ["p/j", "p/k@m"]

    # a success and a clear delete their rows
    again_store = CooldownStore(db, again)
    again.succeeded("p/k", "m")
    assert again.clear_where(lambda k: k.startswith("p/j")) == ["p/j"]
    again_store.write()
    assert CooldownStore(db, CooldownBook()).load() == 0
