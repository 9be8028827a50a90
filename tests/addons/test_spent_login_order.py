"""A stored login that needs renewing (needs_login) takes no round-robin turn: it is ordered
after every other account, the resting ones included, and the ready ones share evenly."""

import collections

from addons.config import parse_config
from addons.credentials.store import NEEDS_LOGIN, OAUTH, READY, StoredAccount
from addons.routing import CooldownBook, Rest, build_providers, plan


def stored(i: int, name: str, state: str) -> StoredAccount:
    acct = StoredAccount(i, "p", name, OAUTH, vendor="claude", state=state)
    acct.current_secret = f"token-{name}"
    return acct


def test_a_spent_login_goes_last_and_takes_no_turn():
    config = parse_config("providers: {p: {kind: openai, base_url: 'http://p', "
                          "api_keys: [k1, k2]}}\nroutes: {m: [p/up]}\n")
    providers = build_providers(config, [stored(1, "spent", NEEDS_LOGIN),
                                         stored(2, "fine", READY)])
    assert [(a.name, a.needs_login) for a in providers["p"].accounts] == [
        ("account 1", False), ("account 2", False), ("account 3", True), ("account 4", False)]
    book = CooldownBook()
    orders = [[c.account.name for c in plan(config, providers, "m", cooldowns=book)]
              for _ in range(30)]
    assert collections.Counter(o[0] for o in orders) == {
        "account 1": 10, "account 2": 10, "account 4": 10}
    assert {o[-1] for o in orders} == {"account 3"}
    # behind a resting account too (it wakes; a spent login does not)
    first = next(c for c in plan(config, providers, "m", cooldowns=book))
    book.cool(first.key, 60, Rest.AUTH)
    assert [c.account.name for c in plan(config, providers, "m", cooldowns=book)][-2:] == [
        first.account.name, "account 3"]
    # without a book: the order written, the spent login last
    assert [c.account.name for c in plan(config, providers, "m")] == [
        "account 1", "account 2", "account 4", "account 3"]
