"""Gemini's `streamGenerateContent` asked without `alt=sse` through a real mitmdump: the answer
is one JSON array written element by element (`[{...}\\n,{...}\\n]`), whoever answers it: a
translated provider, a Gemini provider (asked for SSE, as detour always asks it), or the
vendor itself in passthrough (its usage read from the array)."""

import json

import pytest

from tests.captures import checked_events
from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, start_proxy
from tests.fakes.gemini_provider import FakeGemini
from tests.fakes.replies import Linger, Text, ToolCall, Usage
from translators import canonical, gemini

GEMINI_KEY = "AIza-fake-provider-key"
BASE = "https://generativelanguage.googleapis.com/v1beta/models"
HEADERS = {"x-goog-api-key": CLIENT_KEY, "content-type": "application/json",
           "user-agent": "google-genai-sdk/1.30.0 gl-python/3.12.1"}
USAGE = Usage(prompt=1000, completion=50, cached=600)
BODY = {"contents": [{"role": "user", "parts": [{"text": "Say hi"}]}]}


@pytest.fixture(scope="module")
def fake_gemini():
    with FakeGemini(keys={GEMINI_KEY}) as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fake_openai, fake_gemini):
    config = f"""
providers:
  chat: {{kind: openai, base_url: "{fake_openai.base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
  gem: {{kind: gemini, base_url: "{fake_gemini.base_url}", api_keys: [{GEMINI_KEY}]}}
routes:
  to-chat: [chat/fake-model]
  to-gem: [gem/gemini-fake-pro]
  "*": [passthrough]
vendors:
  generativelanguage.googleapis.com: "{fake_gemini.base_url}"
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


@pytest.fixture(autouse=True)
def fresh_fakes(fake_openai, fake_gemini):
    for fake in (fake_openai, fake_gemini):
        fake.clear()
    yield


def array_answer(r) -> tuple[list, canonical.Response]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.content.startswith(b"[{") and r.content.rstrip().endswith(b"]")
    elements = json.loads(r.content)
    return elements, canonical.collect_response(checked_events(gemini, r.content))


@pytest.mark.parametrize("route", ["to-chat", "to-gem"])
def test_a_stream_without_alt_sse_is_one_json_array(proxy, http, fake_openai, fake_gemini,
                                                    route):
    fake = fake_openai if route == "to-chat" else fake_gemini
    fake.enqueue(ToolCall("run_shell_command", {"command": "ls"}), Text("hi there",
                                                                         usage=USAGE))
    r = http.post(f"{BASE}/{route}:streamGenerateContent", json=BODY, headers=HEADERS)
    elements, resp = array_answer(r)
    assert all("candidates" in e for e in elements)
    assert [p.name for p in resp.parts if type(p) is canonical.ToolUse] == [
        "run_shell_command"]
    if route == "to-gem":  # the provider is asked for SSE; the client still gets its array
        assert "alt=sse" in fake_gemini.requests[-1].path
    r2 = http.post(f"{BASE}/{route}:streamGenerateContent", json=BODY, headers=HEADERS)
    _, answer = array_answer(r2)
    assert [p.text for p in answer.parts if type(p) is canonical.Text] == ["hi there"]
    row = proxy.row_of(r2)
    assert (row["stream"], row["status"], row["input_tokens"], row["cache_read_tokens"],
            row["output_tokens"]) == (1, 200, 400, 600, 50)


def test_the_array_is_written_as_the_provider_streams(proxy, fake_openai):
    # the provider's last event came, its response is held open: the client has the whole
    # array, its closing bracket included, while the provider's stream is still open
    fake_openai.enqueue(Linger(30, Text("one two three", pieces=3)))
    before = fake_openai.completed_streams
    with proxy.client() as http:
        with http.stream("POST", f"{BASE}/to-chat:streamGenerateContent", json=BODY,
                         headers=HEADERS) as r:
            got = b""
            for piece in r.iter_bytes():
                got += piece
                if got.endswith(b"\n]"):  # the array's end (compact elements hold no newline)
                    break
            # the provider's stream had not ended (it lingers 30 s): still open, or closed by
            # detour once the array's end was sent (a race either way), never completed
            state = (fake_openai.open_streams, fake_openai.completed_streams - before,
                     fake_openai.aborted_streams)
            assert state[1] == 0, (state, got)
    assert "".join(p.text for p in canonical.collect_response(checked_events(
        gemini, got)).parts) == "one two three"


def test_passthrough_passes_the_array_on_and_reads_its_usage(proxy, http, fake_gemini):
    fake_gemini.keys.add(CLIENT_KEY)
    try:
        fake_gemini.enqueue(Text("from the vendor", usage=USAGE))
        r = http.post(f"{BASE}/gemini-own:streamGenerateContent", json=BODY, headers=HEADERS)
    finally:
        fake_gemini.keys.discard(CLIENT_KEY)
    _, resp = array_answer(r)
    assert [p.text for p in resp.parts] == ["from the vendor"]
    assert "alt=sse" not in fake_gemini.requests[-1].path
    row = proxy.row_of(r)
    assert (row["provider"], row["stream"]) == ("generativelanguage.googleapis.com", 1)
    assert (row["input_tokens"], row["cache_read_tokens"], row["output_tokens"]) == (
        400, 600, 50)
