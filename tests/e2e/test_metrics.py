"""/metrics and /healthz of a real mitmdump with the router: calls through it are counted (read
back with prometheus_client's own text parser), a resting account shows, and /healthz names
what fails."""

import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import PROVIDER_KEY, capture, free_port, start_proxy
from tests.fakes.replies import Status, Text, Usage

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": "client-key", "anthropic-version": "2023-06-01",
           "user-agent": "claude-cli/2.1.197 (external, cli)"}


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai):
    port = free_port()
    config = f"""
providers:
  fake:
    kind: openai
    base_url: "{fake_openai.base_url}/v1"
    api_keys: [sk-second-fake-key, {PROVIDER_KEY}]
routes:
  claude-opus-4-8: [fake/fake-model]
prices:
  fake-model: {{input: 2, output: 10, cache_read: 0.5}}
cooldown_seconds: 300
"""
    fake_openai.keys.add("sk-second-fake-key")
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config,
                    extra=["--set", f"detour_metrics_port={port}"])
    p.metrics_url = f"http://127.0.0.1:{port}"
    yield p
    p.mitm.stop()


def scrape(proxy) -> dict[str, list]:
    text = httpx.get(f"{proxy.metrics_url}/metrics", trust_env=False, timeout=10).text
    return {family.name: family.samples for family in text_string_to_metric_families(text)}


def value(families, name, sample_name=None, **labels):
    samples = [s for s in families[name] if (sample_name is None or s.name == sample_name)
               and all(s.labels.get(k) == v for k, v in labels.items())]
    return sum(s.value for s in samples)


def test_calls_are_counted(proxy, fake_openai):
    fake_openai.clear()
    # the first account gets a 429 (it rests), the second answers: one fallback, one cooldown
    fake_openai.enqueue(Status(429, headers={"retry-after": "120"}),
                        Text("hi", usage=Usage(prompt=1000, completion=40, cached=600)))
    fake_openai.enqueue(Text("two", usage=Usage(prompt=100, completion=10)))
    with proxy.client() as client:
        first = client.post(URL, json=dict(capture("text"), stream=False), headers=HEADERS)
        second = client.post(URL, json=dict(capture("text"), stream=True), headers=HEADERS)
        second.read()
    assert first.status_code == second.status_code == 200
    proxy.rows(expect=2)
    labels = dict(provider="fake", model="fake-model", client="claude-code")
    deadline = time.monotonic() + 10
    while True:  # the counters follow the rows the writer stores
        families = scrape(proxy)
        if value(families, "detour_requests", status="200", **labels) >= 2 or \
                time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert value(families, "detour_requests", "detour_requests_total", status="200",
                 **labels) == 2
    assert value(families, "detour_tokens", kind="input", **labels) == 400 + 100
    assert value(families, "detour_tokens", kind="cache_read", **labels) == 600
    assert value(families, "detour_tokens", kind="output", **labels) == 50
    assert value(families, "detour_cost_usd", basis="api", **labels) == pytest.approx(
        (500 * 2 + 600 * 0.5 + 50 * 10) / 1e6)
    assert value(families, "detour_fallbacks", **labels) == 1
    [rested] = families["detour_cooldowns"]  # one rest, of the account that got the 429
    assert (rested.labels["provider"], rested.labels["reason"], rested.value) == (
        "fake", "rate-limit", 1)
    account = rested.labels["account"]
    assert value(families, "detour_request_duration_seconds",
                 "detour_request_duration_seconds_count", **labels) == 2
    assert value(families, "detour_time_to_first_byte_seconds",
                 "detour_time_to_first_byte_seconds_count", **labels) >= 1
    assert value(families, "detour_errors") == 0
    # that account rests (as a whole or for the model), the other one is ready
    resting = {(s.labels["account"], s.labels["scope"]): s.value
               for s in families["detour_account_resting"]}
    assert len({a for a, _ in resting}) == 2
    assert max(resting[(account, "account")], resting[(account, "model")]) == 1
    assert value(families, "detour_account_rest_seconds", account=account) > 60
    assert sum(v for (a, _), v in resting.items() if a != account) == 0
    assert value(families, "detour_usage_rows_queued") == 0
    assert value(families, "detour_config_valid") == 1


def test_errors_are_counted_by_kind(proxy, fake_openai):
    fake_openai.clear()
    fake_openai.enqueue(Status(400))  # a 400 skips the provider's other account
    with proxy.client() as client:
        r = client.post(URL, json=dict(capture("text"), stream=False), headers=HEADERS)
    assert r.status_code == 400
    proxy.rows(expect=3)
    deadline = time.monotonic() + 10
    while value(families := scrape(proxy), "detour_errors") < 1 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert value(families, "detour_errors", kind="400", client="claude-code") == 1


def test_healthz(proxy):
    r = httpx.get(f"{proxy.metrics_url}/healthz", trust_env=False, timeout=10)
    assert r.status_code == 200, r.text
    checks = r.json()["checks"]
    assert {name: c["ok"] for name, c in checks.items()} == {
        "addon": True, "config": True, "database": True, "relay": True}
    assert "writable" in checks["database"]["detail"]
    assert httpx.get(f"{proxy.metrics_url}/nothing", trust_env=False).status_code == 404

    config = proxy.home / "config.yaml"
    good = config.read_text()
    try:
        config.write_text(good + "\nnot_a_key: 1\n")
        deadline = time.monotonic() + 15
        while (r := httpx.get(f"{proxy.metrics_url}/healthz", trust_env=False,
                              timeout=10)).status_code == 200 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["status"] == "failing" and not body["checks"]["config"]["ok"]
        assert "not_a_key: unknown key" in body["checks"]["config"]["detail"]
        assert body["checks"]["database"]["ok"] and body["checks"]["relay"]["ok"]
        assert value(scrape(proxy), "detour_config_valid") == 0
    finally:
        config.write_text(good)
    deadline = time.monotonic() + 15
    while httpx.get(f"{proxy.metrics_url}/healthz", trust_env=False).status_code != 200:
        assert time.monotonic() < deadline, "the fixed config never loaded"
        time.sleep(0.2)
    assert json.loads(httpx.get(f"{proxy.metrics_url}/healthz", trust_env=False).text)[
        "status"] == "ok"
