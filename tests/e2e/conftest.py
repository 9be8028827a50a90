"""Integration fixtures: loopback fake vendors and a real `mitmdump -s addons/router.py`."""

import functools
import json
import ssl
import time
from pathlib import Path

import httpx
import pytest
import sqlite_utils

from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.openai_provider import FakeOpenAI
from tests.harness import Mitmdump, free_port  # noqa: F401 - free_port: the tests import it from here

CAPTURES = Path(__file__).resolve().parent.parent / "data" / "captures"
CLIENT_KEY = "test-client-key-not-real"
PROVIDER_KEY = "sk-fake-provider-key"
VENDOR_KEY = "sk-ant-fake-vendor-key"


def capture(name: str) -> dict:
    return json.loads((CAPTURES / f"claude-code.messages.{name}.request.json").read_text())


@pytest.fixture(scope="session")
def confdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mitmproxy-confdir")


@pytest.fixture(scope="module")
def fake_openai():
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def fake_anthropic():
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture
def http(proxy):
    """An HTTPS client through the module's `proxy` (a module fixture of the test file)."""
    with proxy.client() as c:
        yield c


class Proxy:
    def __init__(self, mitm: Mitmdump, home: Path):
        self.mitm = mitm
        self.home = home

    def client(self, **kw) -> httpx.Client:
        """An HTTPS client that goes through the proxy and trusts only its CA."""
        kw.setdefault("timeout", 20)
        return httpx.Client(proxy=self.mitm.url, verify=self.ssl_context, trust_env=False, **kw)

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.mitm.ca_cert))

    def row_of(self, response: httpx.Response, timeout: float = 20.0) -> dict:
        """The usage row of a response, by the flow id detour puts in `x-detour-id` (rows are
        written in batches: wait for it)."""
        flow_id = response.headers["x-detour-id"]
        deadline = time.monotonic() + timeout
        while True:
            db = sqlite_utils.Database(self.home / "detour.db")
            try:
                rows = list(db["usage"].rows_where("flow_id = ?", [flow_id]))
            finally:
                db.close()
            if rows or time.monotonic() > deadline:
                assert len(rows) == 1, f"{len(rows)} usage rows for flow {flow_id}"
                return rows[0]
            time.sleep(0.05)

    def rows(self, expect: int | None = None, timeout: float = 5.0) -> list[dict]:
        """Usage rows, waiting for the batched flush when `expect` rows are due."""
        deadline = time.monotonic() + timeout
        while True:
            db = sqlite_utils.Database(self.home / "detour.db")
            try:
                rows = list(db["usage"].rows_where(order_by="id"))
            finally:
                db.close()
            if expect is None or len(rows) >= expect or time.monotonic() > deadline:
                return rows
            time.sleep(0.05)


def detour_home(home: Path, config: str) -> Path:
    """A DETOUR_HOME holding this config.yaml."""
    home.mkdir(parents=True, exist_ok=True)
    (home / "config.yaml").write_text(config)
    return home


def proxy_with_script(confdir: Path, home: Path, fake: FakeOpenAI, script: Path, direct: bool,
                      env: dict) -> Proxy:
    """start_proxy with every model routed to `fake` (an OpenAI-compatible provider), a
    mitmproxy script of the test's after the router, and the relay or the direct path."""
    config = f"""
providers:
  fake: {{kind: openai, base_url: "{fake.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  "*": [fake/m]
"""
    return start_proxy(confdir, home, config, env=env, extra=[
        "--set", f"detour_direct={str(direct).lower()}", "-s", str(script)])


def start_proxy(confdir: Path, home: Path, config: str, **mitmdump) -> Proxy:
    """A running mitmdump (or mitmweb: `web=(port, password)`) with the router and this config;
    the caller stops it (`proxy.mitm.stop()`)."""
    return Proxy(Mitmdump(confdir, detour_home(home, config), **mitmdump).start(), home)
