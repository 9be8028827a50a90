"""Rate-limit headers read into the QuotaBook, the headroom preference, and per-client routes."""

import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from addons.config import ConfigError, parse_config
from addons.quota import (LOW_HEADROOM, QuotaBook, RecentErrors, parse_rate_limits,
                          parse_reset, prefer_headroom)
from addons.routing import build_providers, plan

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


def raw(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    return [(k.encode(), v.encode()) for k, v in headers.items()]


# ------------------------------------------------------------ parsing

def test_anthropic_headers():
    windows = parse_rate_limits(raw({
        "content-type": "application/json",
        "anthropic-ratelimit-requests-limit": "1000",
        "anthropic-ratelimit-requests-remaining": "999",
        "anthropic-ratelimit-requests-reset": "2026-01-01T00:00:30Z",
        "anthropic-ratelimit-tokens-limit": "96000",
        "anthropic-ratelimit-tokens-remaining": "0",
        "anthropic-ratelimit-tokens-reset": "2026-01-01T00:01:00+00:00",
        "anthropic-ratelimit-input-tokens-limit": "80000",
        "anthropic-ratelimit-input-tokens-remaining": "80000",
        "anthropic-ratelimit-output-tokens-remaining": "16000",
        "request-id": "req_1",
    }), NOW)
    assert windows["requests"].remaining == 999 and windows["requests"].limit == 1000
    assert windows["requests"].resets_at == NOW + 30
    assert windows["tokens"].remaining == 0 and windows["tokens"].resets_at == NOW + 60
    assert windows["input-tokens"].limit == 80000
    assert windows["output-tokens"].remaining == 16000
    assert set(windows) == {"requests", "tokens", "input-tokens", "output-tokens"}


def test_openai_headers_and_go_durations():
    windows = parse_rate_limits(raw({
        "X-RateLimit-Limit-Requests": "5000",
        "x-ratelimit-remaining-requests": "4999",
        "x-ratelimit-reset-requests": "12ms",
        "x-ratelimit-limit-tokens": "160000",
        "x-ratelimit-remaining-tokens": "159976",
        "x-ratelimit-reset-tokens": "6m0s",
    }), NOW)
    assert windows["requests"].limit == 5000 and windows["requests"].remaining == 4999
    assert windows["requests"].resets_at == pytest.approx(NOW + 0.012)
    assert windows["tokens"].resets_at == pytest.approx(NOW + 360)


@pytest.mark.parametrize("value,seconds", [
    ("1s", 1), ("20ms", 0.02), ("6m0s", 360), ("1h2m3.5s", 3723.5), ("2m59.56s", 179.56),
    ("500us", 0.0005), ("12", 12), ("0", 0), ("1.5", 1.5),
    ("2026-01-01T00:00:05Z", 5), ("2026-01-01T00:00:05.250+00:00", 5.25),
    (str(NOW + 90), 90),  # an epoch time in seconds
])
def test_reset_forms(value, seconds):
    assert parse_reset(value, NOW) == pytest.approx(NOW + seconds)


@pytest.mark.parametrize("value", ["", "soon", "1x", "s", "5 s", "-3", "nan", "inf", "1e999",
                                   "m1s", "2026-13-01T00:00:00Z", "1s2", "9" * 80])
def test_reset_garbage_is_none(value):
    assert parse_reset(value, NOW) is None


def test_far_resets_are_capped_and_unknown_figures_ignored():
    windows = parse_rate_limits(raw({
        "x-ratelimit-reset-requests": "99999h",
        "x-ratelimit-remaining-requests": "lots",
        "x-ratelimit-limit-tokens": "-1",  # Azure: no figure
        "x-ratelimit-remaining-tokens": "-1",
        "x-ratelimit-weird": "1",  # no window name
        "anthropic-ratelimit-requests-used": "3",  # no such field
    }), NOW)
    assert windows["requests"].resets_at == NOW + 7 * 86400
    assert windows["requests"].remaining is None
    assert windows["tokens"].share_left(NOW) is None  # -1 is not "at zero"
    assert windows["tokens"].exhausted_for(NOW) == 0
    assert set(windows) == {"requests", "tokens"}


def test_zero_without_a_reset_rests_a_minute():
    windows = parse_rate_limits(raw({"x-ratelimit-remaining-requests": "0"}), NOW)
    assert windows["requests"].exhausted_for(NOW) == 60


def test_windows_per_answer_are_bounded():
    headers = {f"x-ratelimit-remaining-w{i}": "1" for i in range(100)}
    assert len(parse_rate_limits(raw(headers), NOW)) == 8


header_names = st.one_of(
    st.sampled_from([b"anthropic-ratelimit-", b"x-ratelimit-", b"X-RateLimit-", b"a", b"x"]).flatmap(
        lambda p: st.binary(max_size=40).map(lambda b: p + b)),
    st.binary(max_size=40))
header_values = st.one_of(
    st.binary(max_size=80),
    st.text(alphabet="0123456789.-+:TZhmsuµn eE", max_size=40).map(str.encode),
    st.floats(allow_nan=True).map(lambda f: repr(f).encode()))


@given(st.lists(st.tuples(header_names, header_values), max_size=30))
def test_parsing_never_raises(headers):
    windows = parse_rate_limits(headers, NOW)
    assert len(windows) <= 8
    for w in windows.values():
        assert w.resets_at is None or 0 <= w.resets_at <= NOW + 7 * 86400
        assert w.exhausted_for(NOW) >= 0
        share = w.share_left(NOW)
        assert share is None or 0 <= share <= 1


@given(st.text(max_size=80))
def test_reset_text_never_raises(value):
    at = parse_reset(value, NOW)
    assert at is None or 0 <= at <= NOW + 7 * 86400


# ------------------------------------------------------------ the book

def test_book_exhausted_until_the_reset_and_headroom():
    book = QuotaBook()
    book.observe("p/a", raw({"content-type": "application/json"}))
    assert book.seen("p/a") is None and len(book) == 0  # nothing said: nothing kept
    book.observe("p/a", raw({"x-ratelimit-limit-requests": "100",
                             "x-ratelimit-remaining-requests": "0",
                             "x-ratelimit-reset-requests": "30s",
                             "x-ratelimit-limit-tokens": "1000",
                             "x-ratelimit-remaining-tokens": "500",
                             "x-ratelimit-reset-tokens": "5s"}))
    seconds, windows = book.exhausted("p/a")
    assert 29 < seconds <= 30 and windows == "requests"
    assert book.headroom("p/a") == 0
    described = book.describe("p/a")
    assert described["windows"]["tokens"] == {
        "remaining": 500, "limit": 1000, "resets_at": described["windows"]["tokens"]["resets_at"],
        "resets_in": pytest.approx(5, abs=1)}
    book.observe("p/a", raw({"x-ratelimit-limit-requests": "100",
                             "x-ratelimit-remaining-requests": "80"}))
    assert book.exhausted("p/a") is None and book.headroom("p/a") == 0.8
    assert book.exhausted("p/other") is None and book.headroom("p/other") is None


def test_a_window_past_its_reset_counts_as_unknown():
    book = QuotaBook()
    book.observe("p/a", raw({"x-ratelimit-limit-requests": "10",
                             "x-ratelimit-remaining-requests": "0",
                             "x-ratelimit-reset-requests": "1ms"}))
    time.sleep(0.01)
    assert book.exhausted("p/a") is None and book.headroom("p/a") is None


def test_book_keys_are_bounded():
    book = QuotaBook()
    book.MAX_KEYS = 3
    for i in range(10):
        book.observe(f"k{i}", raw({"x-ratelimit-remaining-requests": "1"}))
    assert len(book) == 3 and book.seen("k9") is not None and book.seen("k0") is None


def test_recent_errors_keep_the_last_few():
    errors = RecentErrors()
    for i in range(8):
        errors.note("p/a", f"HTTP 500 #{i}")
    assert [e["error"] for e in errors.of("p/a")] == [f"HTTP 500 #{i}" for i in range(3, 8)]
    assert errors.of("p/b") == [] and errors.keys() == ["p/a"]


# ------------------------------------------------------------ preferring headroom

CFG = """
providers:
  p: {kind: openai, base_url: http://p, api_keys: [k-one, k-two, k-three]}
  cheap: {kind: openai, base_url: http://cheap, api_keys: [k-cheap]}
  codex: {kind: openai, base_url: http://codex, api_keys: [k-codex]}
routes:
  m: [p/up, passthrough]
  claude-*: [p/*]
  "*": [passthrough]
combos:
  coding: [p/reasoner]
clients:
  claude-code:
    match: "claude-cli/*"
    routes:
      claude-haiku-*: [cheap/small]
  codex:
    match: [codex_cli_rs/*, codex_exec/*]
    routes:
      "*": [codex/gpt-5, passthrough]
"""


@pytest.fixture
def cfg():
    config = parse_config(CFG)
    return config, build_providers(config)


def test_low_accounts_go_behind_in_a_stable_order(cfg):
    config, providers = cfg
    book = QuotaBook()
    cands = plan(config, providers, "m", quotas=book)
    labels = [c.account.name for c in cands if c.account]
    assert labels == ["account 1", "account 2", "account 3"]
    low = int(LOW_HEADROOM * 1000) - 1
    book.observe(cands[0].key, raw({"x-ratelimit-limit-tokens": "1000",
                                    "x-ratelimit-remaining-tokens": str(low)}))
    book.observe(cands[1].key, raw({"x-ratelimit-limit-tokens": "1000",
                                    "x-ratelimit-remaining-tokens": "5"}))
    book.observe(cands[2].key, raw({"x-ratelimit-limit-tokens": "1000",
                                    "x-ratelimit-remaining-tokens": "900"}))
    reordered = plan(config, providers, "m", quotas=book)
    assert [c.account.name for c in reordered if c.account] == [
        "account 3", "account 1", "account 2"]
    assert reordered[-1].provider is None  # the route's order between entries stands
    # plenty everywhere: the configured order
    for cand in cands[:3]:
        book.observe(cand.key, raw({"x-ratelimit-limit-tokens": "1000",
                                    "x-ratelimit-remaining-tokens": "999"}))
    assert plan(config, providers, "m", quotas=book) == cands
    assert prefer_headroom(cands, None) is cands


# ------------------------------------------------------------ per-client routes

def names(cands):
    return [f"{c.provider_name}/{c.model}" for c in cands]


def test_client_routes_come_first_then_the_global_ones(cfg):
    config, providers = cfg
    cc = "claude-cli/2.0.14 (external, cli)"
    assert names(plan(config, providers, "claude-haiku-4-5", user_agent=cc)) == [
        "cheap/small"]
    # no route of its own for this model: the global routes
    assert names(plan(config, providers, "claude-sonnet-4-5", user_agent=cc)) == [
        "p/claude-sonnet-4-5"] * 3
    assert config.route("coding", cc) == ("combos.coding", ["p/reasoner"])
    # everything Codex sends, combos included, goes to its chain
    codex = "codex_cli_rs/0.46.0 (Ubuntu 22.4.0; x86_64) xterm-256color"
    for model in ("gpt-5", "claude-haiku-4-5", "coding"):
        assert names(plan(config, providers, model, user_agent=codex)) == [
            "codex/gpt-5", f"passthrough/{model}"]
    assert config.route("x", "codex_exec/1.0") == ("clients.codex.routes.*",
                                                   ["codex/gpt-5", "passthrough"])
    # an SDK, no user agent at all, or a near miss: the global routes
    for ua in ("OpenAI/Python 1.109.1", "", "Claude-CLI/2.0", "xcodex_cli_rs/1"):
        assert names(plan(config, providers, "claude-haiku-4-5", user_agent=ua)) == [
            "p/claude-haiku-4-5"] * 3
    assert config.route("nothing-else") == ("routes.*", ["passthrough"])


@pytest.mark.parametrize("clients,error", [
    ("{cc: {routes: {'*': [passthrough]}}}", "clients.cc.match: Field required"),
    ("{cc: {match: [], routes: {'*': [passthrough]}}}", "clients.cc.match: needs"),
    ("{cc: {match: 'a/*', routes: {}}}", "clients.cc.routes: needs at least one"),
    ("{cc: {match: 'a/*', routes: {'*': [nope/x]}}}",
     "clients.cc.routes.*[0]: unknown provider 'nope' (configured: p)"),
    ("{cc: {match: 'a/*', routes: {'*': []}}}",
     "clients.cc.routes.*: needs at least one candidate"),
    ("{cc: {match: 'a/*', routes: {'*': [passthrough]}, model: x}}",
     "clients.cc.model: unknown key"),
    ("{cc: {match: 3, routes: {'*': [passthrough]}}}", "clients.cc.match: Input should be a valid list"),
])
def test_client_routes_are_validated(clients, error):
    text = ("providers: {p: {kind: openai, base_url: http://p}}\n"
            f"clients: {clients}\n")
    with pytest.raises(ConfigError) as e:
        parse_config(text)
    assert error in str(e.value), str(e.value)
