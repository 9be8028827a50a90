"""How detour reaches providers: through a provider's own outbound proxy (a real mitmdump as
forward proxy, HTTP with credentials and SOCKS5), behind a private CA, and under mitmproxy's
own `--mode upstream:URL` (a corporate proxy): the flows the proxies saw prove the way taken."""

import sqlite3

import httpx
import pytest
from mitmproxy import io as mitm_io

from tests.e2e.conftest import PROVIDER_KEY, VENDOR_KEY, capture, start_proxy
from tests.fakes.openai_provider import FakeOpenAI
from tests.harness import Mitmdump

URL = "https://api.anthropic.com/v1/messages"
HEADERS = {"x-api-key": "test-client-key-not-real", "anthropic-version": "2023-06-01"}
PROXY_USER, PROXY_PASSWORD = "detour", "proxy-pass-5ecret"
TEXT = "Hello from the fake provider"


class ForwardProxy:
    """A plain mitmdump (no router) as someone's forward proxy, saving every flow it carries."""

    def __init__(self, confdir, tmp_path, name: str, *options: str):
        self.flows_path = tmp_path / f"{name}.flows"
        self.mitm = Mitmdump(confdir, router=False,
                             extra=["--set", f"save_stream_file={self.flows_path}", *options])

    def __enter__(self) -> "ForwardProxy":
        self.mitm.start()
        return self

    def __exit__(self, *exc) -> None:
        self.mitm.stop()

    def urls(self) -> list[str]:
        """The URLs of the requests it carried (read once it has stopped: the file is whole)."""
        self.mitm.stop()
        if not self.flows_path.exists():
            return []
        with self.flows_path.open("rb") as f:
            return [fl.request.url for fl in mitm_io.FlowReader(f).stream()]


def _text(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    if r.headers["content-type"].startswith("text/event-stream"):
        return "".join(line.partition('"text":"')[2].partition('"')[0]
                       for line in r.text.splitlines() if '"text_delta"' in line)
    return r.json()["content"][0]["text"]


def _call(client, model: str, stream: bool) -> httpx.Response:
    return client.post(URL, headers=HEADERS, json=dict(capture("text"), model=model,
                                                      stream=stream))


@pytest.fixture(scope="module")
def tls_provider():
    with FakeOpenAI(tls=True) as fake:
        yield fake


def test_provider_proxy_and_private_ca(confdir, tmp_path, fake_openai, tls_provider):
    with ForwardProxy(confdir, tmp_path, "http", "--set",
                      f"proxyauth={PROXY_USER}:{PROXY_PASSWORD}") as http_proxy, \
            ForwardProxy(confdir, tmp_path, "socks", "--mode", "socks5") as socks_proxy:
        proxy_url = f"http://{PROXY_USER}:{PROXY_PASSWORD}@127.0.0.1:{http_proxy.mitm.port}"
        config = f"""
providers:
  proxied:
    kind: openai
    base_url: "{fake_openai.base_url}/v1"
    api_keys: [{PROVIDER_KEY}]
    proxy: "{proxy_url}"
  socks:
    kind: openai
    base_url: "{fake_openai.base_url}/v1"
    api_keys: [{PROVIDER_KEY}]
    proxy: "socks5://127.0.0.1:{socks_proxy.mitm.port}"
  private: {{kind: openai, base_url: "{tls_provider.base_url}/v1", api_keys: [{PROVIDER_KEY}],
             ca_file: "{tls_provider.ca_pem_path}"}}
  untrusted: {{kind: openai, base_url: "{tls_provider.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  via-proxy: [proxied/fake-model]
  via-socks: [socks/fake-model]
  private-ca: [private/fake-model]
  untrusted-ca: [untrusted/fake-model]
"""
        proxy = start_proxy(confdir, tmp_path / "home", config)
        try:
            with proxy.client() as client:
                for stream in (True, False):
                    assert _text(_call(client, "via-proxy", stream)) == TEXT
                    assert _text(_call(client, "via-socks", stream)) == TEXT
                    assert _text(_call(client, "private-ca", stream)) == TEXT
                r = _call(client, "untrusted-ca", False)
                assert r.status_code == 502
                assert "CERTIFICATE_VERIFY_FAILED" in r.json()["error"]["message"]
        finally:
            proxy.mitm.stop()
        provider_url = f"{fake_openai.base_url}/v1/chat/completions"
        # both calls went through the proxies, which saw them (the HTTP one checked the
        # credentials: proxyauth answers 407 without them)
        assert http_proxy.urls() == [provider_url, provider_url]
        assert socks_proxy.urls() == [provider_url, provider_url]
    # the proxy's password is a secret: not in detour's log, nor in its database
    assert PROXY_PASSWORD not in proxy.mitm.text
    db = sqlite3.connect(proxy.home / "detour.db")
    try:
        assert PROXY_PASSWORD not in "".join(map(str, db.execute("select * from usage")))
    finally:
        db.close()


def test_mitmproxy_upstream_mode(confdir, tmp_path, fake_openai, fake_anthropic):
    with ForwardProxy(confdir, tmp_path, "corporate") as corporate:
        config = f"""
providers:
  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  nearby:
    kind: openai
    base_url: "{fake_openai.base_url}/v1"
    api_keys: [{PROVIDER_KEY}]
    proxy: direct
routes:
  via-corporate: [fake/fake-model]
  direct: [nearby/fake-model]
  "*": [passthrough]
vendors:
  api.anthropic.com: "{fake_anthropic.base_url}"
"""
        proxy = start_proxy(confdir, tmp_path / "home", config, extra=[
            "--mode", f"upstream:http://127.0.0.1:{corporate.mitm.port}"])
        try:
            with proxy.client() as client:
                for stream in (True, False):
                    assert _text(_call(client, "via-corporate", stream)) == TEXT
                    assert _text(_call(client, "direct", stream)) == TEXT
                # passthrough rides mitmproxy's own connection: through the upstream proxy
                r = client.post(URL, headers=dict(HEADERS, **{"x-api-key": VENDOR_KEY}),
                                json=dict(capture("text"), model="claude-x", stream=False))
                assert r.status_code == 200, r.text
        finally:
            proxy.mitm.stop()
        urls = corporate.urls()
    provider_url = f"{fake_openai.base_url}/v1/chat/completions"
    # the two calls of the provider without `proxy: direct`, and the passthrough; never the
    # relay (it is on detour's loopback), never the `direct` provider's calls
    assert sorted(urls) == sorted([provider_url, provider_url,
                                   f"{fake_anthropic.base_url}/v1/messages"]), urls
