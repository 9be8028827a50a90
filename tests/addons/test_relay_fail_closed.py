"""The relay's serve path fails closed: a bug before the status line is a 500 in the client's
format, one after it ends the stream with one well-formed error event; the job gets its row
either way. And a one-time answer (a request refused before its body was read) is served once,
whatever body comes with it."""

import httpx

from addons import forwarding
from addons.relay import RelayServer
from tests.addons.test_forwarding import Upstreams, chat_stream, setup
from tests.captures import anthropic_events
from translators import canonical


class Injected(RuntimeError):
    pass


async def start(upstreams: Upstreams):
    fwd, job = setup(upstreams, "two-providers", stream=True)
    finished = []
    relay = RelayServer(fwd, finished.append, ports=1)
    await relay.start()
    return relay, fwd, job, finished


def one_stream() -> Upstreams:
    return Upstreams(**{"p.test": [httpx.Response(
        200, content=chat_stream("a", "b"), headers={"content-type": "text/event-stream"})]})


async def test_a_bug_before_the_status_line_is_a_500_in_the_clients_format(monkeypatch):
    relay, fwd, job, finished = await start(one_stream())

    async def broken_open(job):
        raise Injected("a bug")

    monkeypatch.setattr(fwd, "open", broken_open)
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(relay.submit(job), content=b"{}")
    assert r.status_code == 500
    assert r.json()["type"] == "error"
    assert r.json()["error"]["message"].endswith("detour internal error: Injected")
    assert finished == [job]
    assert job.row.error == "detour internal error: Injected"
    relay.stop()
    await fwd.aclose()


async def test_a_bug_after_the_status_line_ends_the_stream_with_an_error_event(monkeypatch):
    relay, fwd, job, finished = await start(one_stream())

    async def broken_stream(self, job, opened):
        await opened.response.aclose()
        raise Injected("a bug once the status line was written")
        yield b""  # an async generator, as the real one

    monkeypatch.setattr(forwarding.Forwarder, "stream", broken_stream)
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(relay.submit(job), content=b"{}")
    assert r.status_code == 200
    events = anthropic_events(r.content)
    assert r.headers["content-type"].startswith("text/event-stream")
    assert len(events) == 1 and type(events[0]) is canonical.StreamError
    assert events[0].message.endswith("detour internal error: Injected")
    assert finished == [job] and job.row.error == "detour internal error: Injected"
    relay.stop()
    await fwd.aclose()


async def test_a_one_time_answer_is_served_once_whatever_the_body():
    relay, fwd, job, finished = await start(Upstreams())
    url = relay.answer(413, {"content-type": "application/json", "x-detour-id": "f1"},
                       b'{"type":"error"}')
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(url, content=b"ignored" * 1000)
        assert (r.status_code, r.content, r.headers["x-detour-id"]) == (
            413, b'{"type":"error"}', "f1")
        assert (await c.post(url, content=b"{}")).status_code == 404
    assert relay._answers == {} and finished == []
    relay.stop()
    await fwd.aclose()
