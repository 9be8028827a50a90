"""The relay on its own: single-use unguessable tokens, keep-alive, chunked streaming, cleanup
when the client leaves, and no job left behind."""

import asyncio

import httpx

from addons.relay import RelayServer
from tests.addons.test_forwarding import Upstreams, chat_stream, setup


async def start(upstreams: Upstreams, model="two-providers", stream=True):
    fwd, job = setup(upstreams, model, stream=stream)
    finished = []
    relay = RelayServer(fwd, finished.append, ports=2)
    await relay.start()
    return relay, fwd, job, finished


async def test_unknown_or_reused_tokens_get_404():
    up = Upstreams(**{"p.test": [httpx.Response(200, content=chat_stream("a"),
                                                headers={"content-type": "text/event-stream"})]})
    relay, fwd, job, finished = await start(up)
    url = relay.submit(job)
    async with httpx.AsyncClient(trust_env=False) as c:
        assert (await c.post(url.rsplit("/", 1)[0] + "/guess", content=b"{}")).status_code == 404
        r = await c.post(url, content=b'{"the": "original body"}')
        assert r.status_code == 200 and b"message_stop" in r.content
        assert r.headers["transfer-encoding"] == "chunked"
        assert r.headers["x-detour-route"] == job.candidates[0].public_name
        again = await c.post(url, content=b"{}")  # same keep-alive connection, spent token
        assert again.status_code == 404
    assert finished == [job]
    assert relay._jobs == {} and relay._by_flow == {} and relay._running == {}
    relay.stop()
    await fwd.aclose()


async def test_tokens_are_long_and_random():
    relay, fwd, job, _ = await start(Upstreams())
    urls = {relay.submit(job) for _ in range(50)}
    assert len(urls) == 50
    assert all(len(u.rsplit("/", 1)[1]) >= 32 for u in urls)
    relay.stop()


async def test_failure_before_the_first_byte_is_a_whole_error_response():
    relay, fwd, job, finished = await start(Upstreams())  # every connection refused
    async with httpx.AsyncClient(trust_env=False) as c:
        r = await c.post(relay.submit(job), content=b"{}")
    assert r.status_code == 502
    assert r.json()["error"]["type"] == "api_error"
    assert "ConnectError" in r.json()["error"]["message"]
    assert finished == [job] and job.row.status == 502
    relay.stop()


async def test_client_leaving_cancels_the_provider_call():
    gate = asyncio.Event()
    closed = asyncio.Event()

    async def slow_body():
        try:
            yield chat_stream("first").partition(b"\n\n")[0] + b"\n\n"  # its first content
            await gate.wait()  # never set: the provider would go on forever
            yield b""
        finally:
            closed.set()

    up = Upstreams(**{"p.test": [httpx.Response(200, content=slow_body(),
                                                headers={"content-type": "text/event-stream"})]})
    relay, fwd, job, finished = await start(up)
    url = httpx.URL(relay.submit(job))
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(f"POST {url.raw_path.decode()} HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n{{}}"
                 .encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    writer.close()
    await asyncio.wait_for(closed.wait(), 5)  # the provider's response was closed
    for _ in range(100):
        if finished:
            break
        await asyncio.sleep(0.01)
    assert finished == [job] and job.row.error == "client-aborted"
    assert relay._running == {}
    relay.stop()


async def test_cancel_before_delivery_records_the_job_once():
    relay, fwd, job, finished = await start(Upstreams())
    relay.submit(job)
    relay.cancel(job.flow_id)
    relay.cancel(job.flow_id)
    assert finished == [job] and "client-aborted" in job.row.error
    assert relay._jobs == {}
    relay.stop()


async def test_stop_records_every_open_job_once():
    gate = asyncio.Event()

    async def endless():
        yield chat_stream("first").partition(b"\n\n")[0] + b"\n\n"  # its first content
        await gate.wait()
        yield b""

    up = Upstreams(**{"p.test": [httpx.Response(200, content=endless(),
                                                headers={"content-type": "text/event-stream"})]})
    relay, fwd, job, finished = await start(up)
    other, _, waiting, _ = await start(Upstreams())
    other.stop()  # only its job is wanted
    url = httpx.URL(relay.submit(job))
    relay.submit(waiting)  # never delivered
    reader, writer = await asyncio.open_connection(url.host, url.port)
    writer.write(f"POST {url.raw_path.decode()} HTTP/1.1\r\nhost: x\r\ncontent-length: 0\r\n\r\n"
                 .encode())
    await reader.readuntil(b"\r\n\r\n")
    assert relay.stats() == {"jobs_waiting": 1, "jobs_running": 1, "connections": 1,
                             "connections_waiting": 0}
    relay.stop()
    assert finished == [job, waiting]
    assert job.row.error == "proxy stopped mid-answer"
    assert "before the relay" in waiting.row.error
    async with asyncio.timeout(10):
        await relay.wait_closed()  # every connection and its task ended
        await reader.read()  # returns: the relay closed the connection
    writer.close()
    assert finished == [job, waiting]  # the cancelled work did not report again
    assert relay.stats() == {"jobs_waiting": 0, "jobs_running": 0, "connections": 0,
                             "connections_waiting": 0}
