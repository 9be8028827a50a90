"""Request logs through a real mitmdump: one file per flow joined to its usage row by flow id,
the client's request and the answer it got, and no secret anywhere under DETOUR_HOME (the
redaction scan). Also: a passthrough call made with a subscription login records its
API-equivalent cost, marked as such."""

import json
import os
import time
from pathlib import Path

import pytest

from tests.e2e.conftest import PROVIDER_KEY, capture, start_proxy
from tests.fakes.replies import Text, Usage

MESSAGES = "https://api.anthropic.com/v1/messages"
OAUTH_TOKEN = "sk-ant-oat01-" + "Q" * 40 + "-oauth-login"  # Claude Code's subscription login
CLIENT_KEY = "client-own-api-key-0123456789"
REFRESH_TOKEN = "rt-refresh-token-9f8e7d6c5b4a39281706"
# shaped like an OpenAI project key (what the log must spot in a prompt), joined at run time so
# that the tree holds no key-shaped literal
PROMPT_SECRET = "-".join(("sk", "proj", "pastedintoaprompt0123456789"))
SECRETS = [PROVIDER_KEY, OAUTH_TOKEN, CLIENT_KEY, REFRESH_TOKEN, PROMPT_SECRET]


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_anthropic):
    fake_anthropic.keys.add(OAUTH_TOKEN)
    config = f"""
providers:
  fake:
    kind: openai
    base_url: "{fake_openai.base_url}/v1"
    api_keys: [env:DETOUR_TEST_PROVIDER_KEY]
routes:
  claude-opus-4-8: [fake/fake-model]
  "*": [passthrough]
vendors:
  api.anthropic.com: "{fake_anthropic.base_url}"
prices:
  fake-model: {{input: 1, output: 2}}
"""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["DETOUR_TEST_PROVIDER_KEY"] = PROVIDER_KEY
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config, env=env,
                    extra=["--set", "detour_request_log=true", "--set", "detour_metrics_port=0"])
    yield p
    p.mitm.stop()


def log_of(proxy, flow_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        found = list((proxy.home / "request-logs").glob(f"*/*-{flow_id}.json"))
        if found or time.monotonic() > deadline:
            assert len(found) == 1, f"{len(found)} request logs of flow {flow_id}"
            return json.loads(found[0].read_text())
        time.sleep(0.05)


def test_logs_are_joined_to_rows_and_redacted(proxy, fake_openai, fake_anthropic):
    fake_openai.enqueue(Text("streamed answer", pieces=3, usage=Usage(prompt=100, completion=9)))
    body = capture("text")
    body["messages"][-1]["content"] = f"my key is {PROMPT_SECRET}, keep it"
    api_key = {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01",
               "user-agent": "claude-cli/2.1.197 (external, cli)"}
    login = {"authorization": f"Bearer {OAUTH_TOKEN}", "anthropic-version": "2023-06-01",
             "anthropic-beta": "oauth-2025-04-20", "user-agent": "claude-cli/2.1.197 (external)"}
    with proxy.client() as client:
        streamed = client.post(MESSAGES, json=dict(body, stream=True), headers=api_key)
        # a passthrough call with the client's subscription login, on a model genai-prices knows
        observed = client.post(MESSAGES, headers=login, json=dict(
            capture("text"), model="claude-sonnet-4-5", stream=False))
        # a token refresh on the vendor host (not a model call: it passes through)
        refresh = client.post("https://api.anthropic.com/v1/oauth/token",
                              content=f"grant_type=refresh_token&refresh_token={REFRESH_TOKEN}"
                                      "&client_id=9d1c250a",
                              headers={"content-type": "application/x-www-form-urlencoded"})
    assert streamed.status_code == 200 and observed.status_code == 200, observed.text
    assert refresh.status_code == 404

    record = log_of(proxy, streamed.headers["x-detour-id"])
    row = proxy.row_of(streamed)
    assert record["flow_id"] == row["flow_id"]
    assert record["request"]["url"] == MESSAGES and record["request"]["method"] == "POST"
    headers = dict(record["request"]["headers"])
    assert headers["x-api-key"] == "[redacted]"
    sent = json.loads(record["request"]["body"])
    assert sent["messages"][-1]["content"] == "my key is [redacted], keep it"
    assert sent["model"] == "claude-opus-4-8" and sent["max_tokens"] == body["max_tokens"]
    assert record["response"]["status"] == 200
    assert "streamed answer" in "".join(
        json.loads(line[6:])["delta"].get("text", "")
        for line in record["response"]["body"].splitlines()
        if line.startswith("data: ") and '"text_delta"' in line)
    assert record["route"].startswith("detour: anthropic claude-opus-4-8")

    passthrough = log_of(proxy, observed.headers["x-detour-id"])
    assert dict(passthrough["request"]["headers"])["authorization"] == "[redacted]"
    assert json.loads(passthrough["response"]["body"])["type"] == "message"
    row = proxy.row_of(observed)
    assert row["cost_basis"] == "subscription" and row["price_source"] == "genai-prices"
    assert row["cost_usd"] > 0

    token_call = log_of(proxy, refresh.headers["x-detour-id"])
    assert token_call["request"]["body"] == (
        "grant_type=refresh_token&refresh_token=%5Bredacted%5D&client_id=9d1c250a")
    assert token_call["response"]["status"] == 404


def test_no_secret_anywhere_under_detour_home(proxy):
    """The redaction scan: every file detour wrote (the database and its WAL, the request
    logs, whatever else) is searched for every secret the calls carried."""
    proxy.rows(expect=2)
    time.sleep(1)  # the last log files and rows are written off the request path
    files = [p for p in Path(proxy.home).rglob("*") if p.is_file()]
    assert any("request-logs" in str(p) for p in files)
    assert any(p.name == "detour.db" for p in files)
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            for form in {secret.encode(), secret.encode("utf-16-le"), secret[:-4].encode()}:
                assert form not in data, f"{secret[:6]}... found in {path}"
