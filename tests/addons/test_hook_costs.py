"""The request hook's cheaper paths give what the slower ones gave: headers read in one pass over
their fields (addons/header_fields.py) against mitmproxy's mapping interface, and candidates
checked lazily (a translated request built once, only for candidates the call gets to)."""

import json

import httpx
import pytest
from hypothesis import given, settings, strategies as st
from mitmproxy import http
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.test import taddons

from addons import header_fields
from addons.forwarding import Forwarder
from addons.intercept import Interceptor, redact_credentials
from addons.scrubber import CREDENTIAL_HEADERS
from addons.settings import DetourSettings
from tests.addons.test_intercept import CHAT_OK, CLIENT_KEY, PROVIDER_KEY, hook, model_call, rows_of
from tests.harness import running

NAMES = st.sampled_from([b"Authorization", b"authorization", b"X-Api-Key", b"x-api-key",
                         b"Cookie", b"cookie", b"content-type", b"User-Agent", b"x-\xc3\xa9",
                         b"X-\xc3\x89", b"accept", b"proxy-authorization", b"X-Goog-Api-Key"])
VALUES = st.one_of(
    st.sampled_from([b"", b"Bearer sk-0123456789abcdef", b"...abcd[redacted]", b"a=b; c=d",
                     b"caf\xc3\xa9", b"\xff\xfe", b"x\r\ny", b"nul\0", b"Bearer x"]),
    st.binary(max_size=12))
FIELDS = st.lists(st.tuples(NAMES, VALUES), max_size=10)


def _old_unsafe(headers) -> str | None:
    for name, value in headers.fields:
        if any(b in name or b in value for b in (b"\r", b"\n", b"\0")):
            return name.decode("latin-1", "replace")
    return None


def _old_redact(headers) -> None:
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name)
        if value and not value.endswith("[redacted]"):
            scheme, _, secret = value.rpartition(" ") if name != "cookie" else ("", "", value)
            tail = secret[-4:] if len(secret) >= 16 else ""
            headers[name] = f"{scheme + ' ' if scheme else ''}...{tail}[redacted]"


@settings(max_examples=300, deadline=None)
@given(FIELDS)
def test_one_pass_reads_give_what_the_mapping_interface_gives(fields):
    headers = http.Headers(fields)
    assert header_fields.lowered(headers) == {k.lower(): v for k, v in headers.items()}
    assert header_fields.credentials_held(headers) == {
        name: headers.get_all(name) for name in CREDENTIAL_HEADERS if name in headers}
    assert header_fields.unsafe_name(headers) == _old_unsafe(headers)
    redacted, expected = http.Headers(fields), http.Headers(fields)
    redact_credentials(redacted)
    _old_redact(expected)
    assert redacted.fields == expected.fields
    before = redacted.fields
    redact_credentials(redacted)  # a second time changes nothing
    assert redacted.fields == before


ANTHROPIC_OK = {"id": "msg_1", "type": "message", "role": "assistant", "model": "am",
                "content": [{"type": "text", "text": "hi"}], "stop_reason": "end_turn",
                "stop_sequence": None, "usage": {"input_tokens": 3, "output_tokens": 1}}
CONFIG = f"""\
providers:
  a: {{kind: anthropic, base_url: "http://a.test", api_keys: [{PROVIDER_KEY}]}}
  p: {{kind: openai, base_url: "http://p.test/v1", api_keys: [{PROVIDER_KEY}]}}
  q: {{kind: openai, base_url: "http://q.test/v1", api_keys: [{PROVIDER_KEY}]}}
cooldown_seconds: 0
routes:
  chat-chat: [p/pm, q/qm]
  same-then-chat: [a/am, p/pm]
"""
# a document by file id: the Anthropic API takes it, Chat Completions cannot
FILE_DOCUMENT = {"type": "document", "source": {"type": "file", "file_id": "file_1"}}


@pytest.fixture
def lazy(tmp_path, monkeypatch):
    (tmp_path / "config.yaml").write_text(CONFIG)
    built: list[str] = []
    real_build = Forwarder._build

    def counting_build(self, job, cand):
        built.append(cand.provider_name)
        return real_build(self, job, cand)

    monkeypatch.setattr(Forwarder, "_build", counting_build)
    settings_ = DetourSettings()
    with taddons.context(Proxyserver(), settings_) as tctx:
        tctx.configure(settings_, detour_home=str(tmp_path))
        yield running(Interceptor(settings_)), settings_.runtime, built
        settings_.runtime.store.close()


def answering(rt, statuses: dict[str, int]) -> list[str]:
    """Providers answer by host: the status given (200 with a whole answer), in their format."""
    hosts: list[str] = []

    async def handler(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)
        status = statuses[request.url.host]
        if status != 200:
            return httpx.Response(status, json={"error": {"message": "down"}})
        return httpx.Response(200, json=ANTHROPIC_OK if request.url.host == "a.test" else CHAT_OK)

    rt.forwarder.transport = httpx.MockTransport(handler)
    return hosts


def ask(model: str, content) -> dict:
    return {"model": model, "max_tokens": 50, "messages": [{"role": "user", "content": content}]}


async def test_a_call_its_first_candidate_answers_is_translated_once(lazy):
    interceptor, rt, built = lazy
    hosts = answering(rt, {"p.test": 200, "q.test": 200})
    flow = model_call(ask("chat-chat", "hi"))
    await hook(interceptor, flow)
    assert flow.response.status_code == 200 and hosts == ["p.test"]
    assert built == ["p"]  # checked before routing, sent as built; q never built


async def test_a_later_candidate_is_built_when_the_call_gets_to_it(lazy):
    interceptor, rt, built = lazy
    hosts = answering(rt, {"p.test": 503, "q.test": 200})
    flow = model_call(ask("chat-chat", "hi"))
    await hook(interceptor, flow)
    assert flow.response.status_code == 200 and hosts == ["p.test", "q.test"]
    assert built == ["p", "q"]


async def test_a_later_candidate_that_cannot_take_it_is_skipped_when_reached(lazy):
    interceptor, rt, built = lazy
    content = [FILE_DOCUMENT, {"type": "text", "text": "Summarise"}]
    hosts = answering(rt, {"a.test": 503, "p.test": 200})
    flow = model_call(ask("same-then-chat", content))
    await hook(interceptor, flow)
    # the same-format candidate needs no check, so the chat one is checked only once a failed
    assert hosts == ["a.test"] and built == ["a", "p"]
    assert flow.response.status_code == 502  # what the eager check gave: the same story
    [row] = rows_of(rt, flow.id)
    route = json.loads(row["route"])
    assert "p/" in route[0]["skipped"] and "document source" in route[0]["skipped"]
    assert [a.get("provider") for a in route[1:]] == ["a"]
    assert CLIENT_KEY not in row["route"]


async def test_a_later_candidate_not_reached_is_never_checked(lazy):
    interceptor, rt, built = lazy
    content = [FILE_DOCUMENT, {"type": "text", "text": "Summarise"}]
    hosts = answering(rt, {"a.test": 200, "p.test": 200})
    flow = model_call(ask("same-then-chat", content))
    await hook(interceptor, flow)
    assert flow.response.status_code == 200 and hosts == ["a.test"] and built == ["a"]
    [row] = rows_of(rt, flow.id)
    assert [a.get("provider") for a in json.loads(row["route"])] == ["a"]
