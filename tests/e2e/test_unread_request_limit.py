"""Through a real mitmdump: a model call whose declared body is past limits.request_body is
refused before mitmproxy reads that body (it used to hold all of it before the request hook):
the client gets a 413 in its own format, the call its usage row, and the proxy's peak memory
does not grow by the body's size."""

import pytest

from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, start_proxy

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"
LIMIT = 1 << 20
CHUNK = b"x" * (1 << 20)


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai):
    config = f"""
providers:
  fake: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  "*": [fake/fake-model]
vendors:
  api.openai.com: "{fake_openai.base_url}"
  api.anthropic.com: "{fake_openai.base_url}"
limits: {{request_body: {LIMIT}}}
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


def lazy_body(megabytes: int):
    """A JSON body of about `megabytes` MiB, made as it is sent (never whole in memory)."""
    yield b'{"model": "m", "messages": [{"role": "user", "content": "hi"}], "pad": "'
    for _ in range(megabytes):
        yield CHUNK
    yield b'"}'


def size_of(megabytes: int) -> int:
    return sum(len(piece) for piece in lazy_body(0)) + megabytes * len(CHUNK)


@pytest.mark.parametrize("url,headers,megabytes", [
    (ANTHROPIC_URL, {"x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"}, 200),
    (OPENAI_URL, {"authorization": f"Bearer {CLIENT_KEY}"}, 8),
])
def test_a_declared_body_past_the_limit_is_refused_unread(proxy, fake_openai, url, headers,
                                                          megabytes):
    fake_openai.clear()
    before = proxy.mitm.peak_rss_mb()
    with proxy.client(timeout=120) as c:
        r = c.post(url, content=lazy_body(megabytes),
                   headers=dict(headers, **{"content-type": "application/json",
                                            "content-length": str(size_of(megabytes))}))
    grown_mb = proxy.mitm.peak_rss_mb() - before
    assert r.status_code == 413, r.text
    error = r.json()["error"]
    if url == ANTHROPIC_URL:
        assert r.json()["type"] == "error" and error["type"] == "request_too_large"
    assert "limits.request_body" in error["message"]
    row = proxy.row_of(r)
    assert row["status"] == 413 and "limits.request_body" in row["error"]
    assert not fake_openai.requests
    # mitmproxy held the whole body (twice, briefly) before: 400 MB for 200 MB
    assert grown_mb < megabytes / 4 + 40, f"the proxy's peak grew {grown_mb:.0f} MB"


def test_a_body_under_the_limit_still_goes_through(proxy, fake_openai):
    fake_openai.clear()
    with proxy.client() as c:
        r = c.post(OPENAI_URL, json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                   headers={"authorization": f"Bearer {CLIENT_KEY}"})
    assert r.status_code == 200, r.text
    assert len(fake_openai.requests) == 1
