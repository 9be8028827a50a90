"""Costs: configured prices first, genai-prices' defaults, NULL for an unknown model, and
subscription logins priced at their API equivalent."""

import pytest

from addons.call import Call
from addons.config import Price, parse_config
from addons.forwarding import Forwarder
from addons.prices import CONFIG, GENAI_PRICES, UNKNOWN, cost_of, subscription_login
from addons.routing import CooldownBook
from translators.canonical import Usage

USAGE = Usage(input_tokens=1000, output_tokens=500, cache_read_tokens=20_000,
              cache_write_tokens=4000)


def test_a_configured_price_wins_and_prices_cache_reads_and_writes_at_their_own_rates():
    prices = {"claude-sonnet-4-5": Price(input=1, output=2, cache_read=0.5, cache_write=1.5)}
    cost = cost_of(prices, "claude-sonnet-4-5", USAGE, "https://api.anthropic.com")
    assert cost.source == CONFIG
    assert cost.usd == pytest.approx((1000 * 1 + 500 * 2 + 20_000 * 0.5 + 4000 * 1.5) / 1e6)


def test_a_configured_price_without_cache_rates_charges_cached_tokens_as_input():
    cost = cost_of({"m": Price(input=2, output=4)}, "m", USAGE)
    assert cost.usd == pytest.approx((1000 * 2 + 500 * 4 + 24_000 * 2) / 1e6)


def test_a_known_model_gets_its_default_price_with_exact_cache_rates():
    # Claude Sonnet 4.5 at the API's list price: $3 in, $15 out, cache read $0.30, 5-minute
    # cache write $3.75 per million tokens
    cost = cost_of({}, "claude-sonnet-4-5", USAGE, "https://api.anthropic.com/v1/messages")
    assert cost.source == GENAI_PRICES
    assert cost.usd == pytest.approx(
        (1000 * 3 + 500 * 15 + 20_000 * 0.30 + 4000 * 3.75) / 1e6)


def test_a_provider_url_genai_prices_knows_sets_the_price():
    # DeepSeek's own URL and a loopback server of the same model give DeepSeek's price
    here = cost_of({}, "deepseek-chat", USAGE, "https://api.deepseek.com/v1")
    local = cost_of({}, "deepseek-chat", USAGE, "http://127.0.0.1:9999/v1")
    assert here.source == local.source == GENAI_PRICES
    assert here.usd == local.usd and here.usd > 0


def test_an_unknown_model_has_no_cost_never_zero():
    assert cost_of({}, "my-local-finetune-7b", USAGE, "http://127.0.0.1:8000/v1") == UNKNOWN
    assert cost_of({}, "", USAGE) == UNKNOWN


@pytest.mark.parametrize("headers, login", [
    ({"authorization": "Bearer sk-ant-oat01-abcdef"}, True),  # Claude Code's OAuth login
    ({"authorization": "Bearer eyJhbGciOiJSUzI1NiJ9.e30.sig"}, True),  # ChatGPT login (JWT)
    ({"authorization": "Bearer ya29.a0AfH6SM"}, True),  # Google OAuth
    ({"authorization": "Bearer sk-proj-abc"}, False),  # an OpenAI API key
    ({"x-api-key": "sk-ant-api03-abc"}, False),  # an Anthropic API key
    ({}, False),
])
def test_subscription_logins_are_told_from_api_keys(headers, login):
    assert subscription_login(headers) is login


def test_a_subscription_call_records_its_api_equivalent_marked_as_such():
    rows = []
    config = parse_config("prices:\n  m: {input: 1, output: 1}\n")
    forwarder = Forwarder(config, CooldownBook())
    for subscription in (False, True):
        call = Call(f"f{subscription}", "claude-cli/2.1.197 (external, cli)", "anthropic",
                    rows.append)
        call.answered_by("api.anthropic.com", "", "m")
        forwarder.set_usage(call, USAGE, "https://api.anthropic.com", subscription)
        call.finish()
    api, sub = rows
    assert api.cost_usd == sub.cost_usd == pytest.approx(25_500 / 1e6)
    assert (api.cost_basis, sub.cost_basis) == ("api", "subscription")
    assert api.price_source == sub.price_source == "config"
    assert (api.client_tool, api.client_version) == ("claude-code", "2.1.197")



def test_the_writer_prices_rows_without_a_configured_price(tmp_path):
    """The default price is looked up off the event loop, by the store's writer."""
    import sqlite_utils

    from addons.usage import UsageStore
    store = UsageStore(tmp_path / "detour.db")
    forwarder = Forwarder(parse_config("{}"), CooldownBook())
    for flow_id, model, subscription in (("known", "claude-sonnet-4-5", True),
                                         ("unknown", "no-such-model-x", False)):
        call = Call(flow_id, "", "anthropic", store.add)
        call.answered_by("api.anthropic.com", "", model)
        forwarder.set_usage(call, USAGE, "https://api.anthropic.com/v1/messages", subscription)
        assert call.row.cost_usd is None  # not yet: the writer prices it
        call.finish()
    store.close()
    db = sqlite_utils.Database(tmp_path / "detour.db")
    rows = {r["flow_id"]: r for r in db["usage"].rows}
    db.close()
    known, unknown = rows["known"], rows["unknown"]
    assert known["cost_usd"] == pytest.approx(
        (1000 * 3 + 500 * 15 + 20_000 * 0.30 + 4000 * 3.75) / 1e6)
    assert (known["cost_basis"], known["price_source"]) == ("subscription", "genai-prices")
    assert (unknown["cost_usd"], unknown["cost_basis"], unknown["price_source"]) == (
        None, None, None)
