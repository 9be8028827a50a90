"""The team gateway through a real mitmdump: proxy authentication from the users file (407 and
nothing proxied without valid credentials, a removed user refused at once, open connections
too), usage rows carrying the user, non-vendor hosts refused unless in `allow_hosts`, and
per-user limits answered 429 in the client's own format."""

import base64
import time

import httpx
import pytest
from click.testing import CliRunner

from scripts.cli import cli
from tests.e2e.conftest import PROVIDER_KEY, Proxy, detour_home
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Text, Usage
from tests.harness import Mitmdump

CHAT_URL = "https://api.openai.com/v1/chat/completions"
MESSAGES_URL = "https://api.anthropic.com/v1/messages"
CHAT = {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}
MESSAGES = {"model": "claude-sonnet-4-5", "max_tokens": 50,
            "messages": [{"role": "user", "content": "hi"}]}
ANTHROPIC_HEADERS = {"x-api-key": "client-key-not-real", "anthropic-version": "2023-06-01"}


def user_cli(home, *args) -> str:
    result = CliRunner().invoke(cli, ["--home", str(home), "user", *args],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def add_user(home, name: str) -> str:
    """The user's secret, from the proxy URL `detour user add` prints."""
    line = user_cli(home, "add", name).strip()
    assert line.startswith(f"HTTPS_PROXY=http://{name}:") and line.endswith("@127.0.0.1:8080")
    return line.removeprefix(f"HTTPS_PROXY=http://{name}:").split("@")[0]


@pytest.fixture(scope="module")
def fake():
    with FakeOpenAI(keys=[PROVIDER_KEY]) as f:
        yield f


@pytest.fixture(scope="module")
def gateway(confdir, tmp_path_factory, fake):
    home = detour_home(tmp_path_factory.mktemp("home"), f"""
providers:
  fake: {{kind: openai, base_url: "{fake.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  "*": [fake/fake-model]
prices:
  fake-model: {{input: 1000000, output: 1000000}}
allow_hosts: ["127.0.0.1"]
""")
    secrets = {name: add_user(home, name) for name in ("alice", "tokens", "dollars", "rpm",
                                                        "revoked", "suspended")}
    user_cli(home, "limits", "tokens", "--tokens-per-day", "1")
    user_cli(home, "limits", "dollars", "--usd-per-month", "0.5")
    user_cli(home, "limits", "rpm", "--rpm", "3")
    user_cli(home, "limits", "suspended", "--rpm", "0")
    mitm = Mitmdump(confdir, home, extra=["--set", f"save_stream_file={home / 'flows'}"]).start()
    proxy = Proxy(mitm, home)
    proxy.secrets = secrets
    yield proxy
    mitm.stop()


@pytest.fixture(autouse=True)
def fresh(fake):
    fake.clear()


def as_user(gateway, name: str, secret: str | None = None) -> httpx.Client:
    secret = gateway.secrets[name] if secret is None else secret
    url = f"http://{name}:{secret}@127.0.0.1:{gateway.mitm.port}"
    return httpx.Client(proxy=url, verify=gateway.ssl_context, trust_env=False, timeout=20)


def refused_connect(client: httpx.Client, url: str) -> str:
    with pytest.raises(httpx.ProxyError) as e:
        client.post(url, json=CHAT)
    return str(e.value)


def test_without_valid_credentials_407_and_nothing_proxied(gateway, fake):
    with gateway.client() as anonymous:
        assert "407" in refused_connect(anonymous, CHAT_URL)
    with as_user(gateway, "alice", "not-the-secret") as wrong:
        assert "407" in refused_connect(wrong, CHAT_URL)
    with as_user(gateway, "nobody", gateway.secrets["alice"]) as unknown:
        assert "407" in refused_connect(unknown, CHAT_URL)
    # a plain-HTTP request through the proxy too, to an allowed host
    r = httpx.get(f"{fake.base_url}/v1/models", proxy=gateway.mitm.url, trust_env=False)
    assert r.status_code == 407 and "proxy-authenticate" in r.headers
    assert fake.requests == []


SPOOFED = {"x-forwarded-for": "127.0.0.1", "x-real-ip": "127.0.0.1",
           "forwarded": "for=127.0.0.1", "x-9r-real-ip": "127.0.0.1", "host": "127.0.0.1"}


def test_headers_claiming_a_local_client_do_not_replace_credentials(gateway, fake):
    """9router #3294: a header saying "127.0.0.1" made any client local and unauthenticated.
    Who a client is comes from its proxy credentials only, whatever its headers say."""
    anonymous = httpx.Client(proxy=httpx.Proxy(gateway.mitm.url, headers=SPOOFED),
                             verify=gateway.ssl_context, trust_env=False, timeout=20)
    with anonymous:
        assert "407" in refused_connect(anonymous, CHAT_URL)
    r = httpx.get(f"{fake.base_url}/v1/models", proxy=gateway.mitm.url, headers=SPOOFED,
                  trust_env=False)
    assert r.status_code == 407
    assert fake.requests == []


def test_a_user_is_served_and_its_rows_carry_its_name(gateway, fake):
    with as_user(gateway, "alice") as client:
        r = client.post(CHAT_URL, json=CHAT, headers={"authorization": "Bearer client-key"})
        assert r.status_code == 200, r.text
        r2 = client.post(MESSAGES_URL, json=MESSAGES, headers=ANTHROPIC_HEADERS)
        assert r2.status_code == 200, r2.text
    assert gateway.row_of(r)["user"] == "alice"
    assert gateway.row_of(r2)["user"] == "alice"
    # the proxy never logs a secret
    assert not any(secret in gateway.mitm.text for secret in gateway.secrets.values())


def test_only_vendor_hosts_and_allow_hosts_are_proxied(gateway, fake):
    with as_user(gateway, "alice") as client:
        assert "403" in refused_connect(client, "https://example.invalid/v1/chat/completions")
        allowed = client.get(f"{fake.base_url}/v1/models",
                             headers={"authorization": f"Bearer {PROVIDER_KEY}"})
        assert allowed.status_code == 200, allowed.text
        refused = client.get(f"http://localhost:{fake.port}/v1/models")
        assert refused.status_code == 403
        assert "allow_hosts" in refused.text
    assert [r.route for r in fake.requests] == ["/v1/models"]


def test_over_tokens_per_day_is_429_in_the_clients_format(gateway, fake):
    fake.enqueue(Text("one", usage=Usage(prompt=5, completion=2)))
    with as_user(gateway, "tokens") as client:
        first = client.post(CHAT_URL, json=CHAT)
        assert first.status_code == 200, first.text
        gateway.row_of(first)  # counted once its row is written
        chat = client.post(CHAT_URL, json=CHAT)
        messages = client.post(MESSAGES_URL, json=MESSAGES, headers=ANTHROPIC_HEADERS)
    assert chat.status_code == 429
    error = chat.json()["error"]  # OpenAI's error object
    assert "tokens_per_day" in error["message"] and "1 tokens per day" in error["message"]
    assert 0 < int(chat.headers["retry-after"]) <= 86400
    assert messages.status_code == 429
    body = messages.json()  # Anthropic's error object
    assert body["type"] == "error" and body["error"]["type"] == "rate_limit_error"
    assert "tokens_per_day" in body["error"]["message"]
    assert len(fake.requests) == 1  # the refused calls reached no provider
    row = gateway.row_of(chat)
    assert (row["user"], row["status"]) == ("tokens", 429)


def test_over_usd_per_month_is_refused(gateway, fake):
    # priced at 1 USD per token: 7 tokens spend 7 USD, past the 0.5 limit
    fake.enqueue(Text("one", usage=Usage(prompt=5, completion=2)))
    with as_user(gateway, "dollars") as client:
        gateway.row_of(client.post(CHAT_URL, json=CHAT))
        r = client.post(CHAT_URL, json=CHAT)
    assert r.status_code == 429 and "0.5 USD per month" in r.json()["error"]["message"]
    assert int(r.headers["retry-after"]) <= 31 * 86400


def test_rpm_and_a_suspended_user(gateway, fake):
    with as_user(gateway, "suspended") as client:
        r = client.post(CHAT_URL, json=CHAT)
    assert r.status_code == 429 and "0 requests per minute" in r.text
    left = 60 - time.time() % 60
    if left < 10:  # the five calls must fall in one minute's window
        time.sleep(left + 0.1)
    minute = int(time.time() // 60)
    with as_user(gateway, "rpm") as client:
        statuses = [client.post(CHAT_URL, json=CHAT).status_code for _ in range(5)]
    assert int(time.time() // 60) == minute, "the calls took 10 s: no verdict"
    assert statuses == [200, 200, 200, 429, 429]


def test_a_removed_user_is_refused_at_once_on_its_open_connection(gateway, fake):
    with as_user(gateway, "revoked") as client:
        assert client.post(CHAT_URL, json=CHAT).status_code == 200
        user_cli(gateway.home, "remove", "revoked")
        deadline = time.monotonic() + 10
        while True:  # the proxy polls the file every second
            r = client.post(CHAT_URL, json=CHAT)  # the same keep-alive tunnel
            if r.status_code != 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert r.status_code == 407
    with as_user(gateway, "revoked") as fresh_client:
        assert "407" in refused_connect(fresh_client, CHAT_URL)


def test_no_secret_in_the_saved_flows(gateway):
    """Last: every flow above, the refused ones too, as mitmproxy saved them."""
    gateway.mitm.stop()  # the save file is complete once mitmdump stops
    saved = (gateway.home / "flows").read_bytes()
    assert b"api.openai.com" in saved  # the flows are there
    for secret in [*gateway.secrets.values(), "not-the-secret"]:
        assert secret.encode() not in saved
        assert base64.b64encode(f"alice:{secret}".encode()) not in saved
