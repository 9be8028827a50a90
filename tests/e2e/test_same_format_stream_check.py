"""Same-format streams through a real mitmdump (Claude Code -> an Anthropic account, a Chat
client -> a Chat provider): the provider's bytes reach the client untouched while they are
sound; garbage, an event out of order or an early end stops them at the event that broke,
followed by one error event in the client's format, and the usage row says why."""

import dataclasses
import json

import pytest

from tests.e2e.conftest import CLIENT_KEY, PROVIDER_KEY, VENDOR_KEY, capture, start_proxy
from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import CutAfter, Events, Text
from tests.fakes.server import Stream
from translators import anthropic, canonical, openai_chat

ANTHROPIC_URL = "https://api.anthropic.com/v1/messages"
OPENAI_URL = "https://api.openai.com/v1/chat/completions"


class Recording:
    """A fake that records the SSE events it sends, and may slip `inject` = (position, bytes)
    in among them (garbage a broken provider sends mid-stream)."""

    inject: tuple[int, bytes] | None = None

    def plan(self, received):
        plan = super().plan(received)
        if isinstance(plan, Stream):
            events = [e for e in plan.events if e]
            if self.inject is not None:
                at, bad = self.inject
                events[at:at] = [bad]
            plan = dataclasses.replace(plan, events=events)
            self.sent = events[:plan.cut_after] if plan.cut_after is not None else events
        return plan


class RecordingAnthropic(Recording, FakeAnthropic):
    pass


class RecordingOpenAI(Recording, FakeOpenAI):
    pass


@pytest.fixture(scope="module")
def fakes():
    with RecordingAnthropic() as ant, RecordingOpenAI() as oai:
        yield {"anthropic": ant, "openai-chat": oai}


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, fakes):
    config = f"""
providers:
  ant: {{kind: anthropic, base_url: "{fakes['anthropic'].base_url}", api_keys: [{VENDOR_KEY}]}}
  oai: {{kind: openai, base_url: "{fakes['openai-chat'].base_url}/v1", api_keys: [{PROVIDER_KEY}]}}
routes:
  claude-fake-sonnet: [ant/claude-fake-sonnet]
  gpt-fake-1: [oai/gpt-fake-1]
  "*": [passthrough]
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


@pytest.fixture
def fake(request, fakes):
    f = fakes[request.param]
    f.clear()
    f.inject = None
    f.sent = []
    yield f
    f.inject = None


def call(proxy, fmt: str):
    with proxy.client() as c:
        if fmt == "anthropic":
            return c.post(ANTHROPIC_URL, json=dict(capture("text"), model="claude-fake-sonnet", stream=True), headers={
                "x-api-key": CLIENT_KEY, "anthropic-version": "2023-06-01"})
        return c.post(OPENAI_URL, headers={"authorization": f"Bearer {CLIENT_KEY}"}, json={
            "model": "gpt-fake-1", "stream": True,
            "messages": [{"role": "user", "content": "hi"}]})


def error_event(fmt: str, body: bytes) -> dict:
    """The one error event at the end of `body`, in the client's format."""
    last = body.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    if fmt == "anthropic":
        name, data = last.split(b"\n")
        assert name == b"event: error"
    else:
        data = last
    payload = json.loads(data.removeprefix(b"data: "))
    assert payload["error"]["type"] and payload["error"]["message"]
    return payload


MODULES = {"anthropic": anthropic, "openai-chat": openai_chat}
FMTS = ["anthropic", "openai-chat"]


@pytest.mark.parametrize("fake", FMTS, indirect=True)
def test_a_sound_stream_reaches_the_client_untouched(proxy, fake):
    fake.enqueue(Events(40, piece="tok "))
    fmt = "anthropic" if isinstance(fake, FakeAnthropic) else "openai-chat"
    r = call(proxy, fmt)
    assert r.status_code == 200, r.text
    assert r.content == b"".join(fake.sent)
    assert proxy.row_of(r)["error"] is None


BROKEN = [("anthropic", b"data: garbage mid-stream\n\n"),
          ("openai-chat", b"data: garbage mid-stream\n\n"),
          ("anthropic", b'data: {"type": "content_block_delta", "index": 7}\n\n'),  # order
          ("openai-chat", b'data: ["not", "a chunk"]\n\n')]


@pytest.mark.parametrize("fake,bad", BROKEN, indirect=["fake"])
def test_garbage_mid_stream_ends_in_an_error_event(proxy, fake, bad):
    fake.inject = (4, bad)  # after the head and a content event or two
    fake.enqueue(Text("one two three four five six", pieces=6))
    fmt = "anthropic" if isinstance(fake, FakeAnthropic) else "openai-chat"
    r = call(proxy, fmt)
    assert r.status_code == 200
    head = b"".join(fake.sent[:4])
    assert r.content.startswith(head)
    tail = r.content[len(head):]
    assert tail.count(b"\n\n") == 1, tail  # one error event, nothing of the provider's after
    error = error_event(fmt, r.content)
    row = proxy.row_of(r)
    # the row names the account by its label, the client by its place ("account 1")
    provider, _, cause = error["error"]["message"].partition(": ")
    assert provider.endswith("/account 1") and row["error"].endswith(": " + cause), row["error"]
    # the client's own decoder reads the whole answer as a well-formed stream that failed
    dec = MODULES[fmt].StreamDecoder()
    events = dec.feed(r.content) + dec.close()
    assert type(events[-1]) is canonical.StreamError
    assert events[-1].message == error["error"]["message"]


@pytest.mark.parametrize("fake", FMTS, indirect=True)
def test_lines_that_are_not_sse_pass_as_every_sse_parser_ignores_them(proxy, fake):
    """Not a field of the event-stream format: no event, for our parser as for the client's."""
    fake.inject = (4, b"<html>oops</html>\n\n")
    fake.enqueue(Text("one two three four five six", pieces=6))
    fmt = "anthropic" if isinstance(fake, FakeAnthropic) else "openai-chat"
    r = call(proxy, fmt)
    assert r.content == b"".join(fake.sent)
    assert proxy.row_of(r)["error"] is None


@pytest.mark.parametrize("fake", FMTS, indirect=True)
def test_a_stream_cut_before_its_final_event_ends_in_an_error_event(proxy, fake):
    fake.enqueue(CutAfter(4))
    fmt = "anthropic" if isinstance(fake, FakeAnthropic) else "openai-chat"
    r = call(proxy, fmt)
    assert r.status_code == 200
    head = b"".join(fake.sent)
    assert r.content.startswith(head)
    error_event(fmt, r.content[len(head):])
    assert proxy.row_of(r)["error"]


def test_garbage_after_message_stop_is_not_passed(proxy, fakes):
    fake = fakes["anthropic"]
    fake.clear()
    fake.inject = (10 ** 6, b"data: {after the end\n\n")  # appended after message_stop
    try:
        fake.enqueue(Text("all of it"))
        r = call(proxy, "anthropic")
    finally:
        fake.inject = None
    assert r.status_code == 200
    assert r.content == b"".join(fake.sent[:-1])
    assert proxy.row_of(r)["error"] is None
