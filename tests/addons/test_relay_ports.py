"""Which relay port a job is sent to: a client connection's jobs share one port while it has
fewer than mitmproxy's per-address limit open there (so mitmproxy reuses its connection to
the relay), and move to the next port past it (an HTTP/2 client's parallel streams)."""

import dataclasses

import httpx

from addons.relay import MAX_PER_ADDRESS as PER_ADDRESS
from addons.relay import RelayServer
from tests.addons.test_forwarding import Upstreams, setup


async def start(ports: int = 3):
    fwd, job = setup(Upstreams(), "two-providers", stream=True)
    finished = []
    relay = RelayServer(fwd, finished.append, ports=ports)
    await relay.start()
    return relay, job, finished


def port_of(url: str) -> int:
    return httpx.URL(url).port


async def test_one_at_a_time_a_client_connection_keeps_to_one_port():
    relay, job, finished = await start()
    ports = []
    for i in range(6):  # an HTTP/1.1 client: each stream ends before the next begins
        one = dataclasses.replace(job, flow_id=f"f{i}")
        ports.append(port_of(relay.submit(one, "client-a")))
        relay.cancel(one.flow_id)  # ended: its slot is free again
    assert ports == [relay.ports[0]] * 6
    assert len(finished) == 6
    assert relay._slots == {} and relay._load == {}
    relay.stop()


async def test_parallel_jobs_past_the_limit_go_to_the_next_port():
    relay, job, finished = await start()
    jobs = [dataclasses.replace(job, flow_id=f"f{i}") for i in range(PER_ADDRESS + 2)]
    ports = [port_of(relay.submit(j, "client-a")) for j in jobs]
    assert ports == [relay.ports[0]] * PER_ADDRESS + [relay.ports[1]] * 2
    # another client connection has limits of its own: it starts at the first port
    other = dataclasses.replace(job, flow_id="other")
    assert port_of(relay.submit(other, "client-b")) == relay.ports[0]
    relay.withdraw(jobs[0].flow_id)  # answered another way: its slot is free too
    again = dataclasses.replace(job, flow_id="again")
    assert port_of(relay.submit(again, "client-a")) == relay.ports[0]
    relay.stop()
    assert relay._slots == {} and relay._load == {}


async def test_every_port_at_the_limit_spreads_the_rest():
    relay, job, finished = await start(ports=2)
    jobs = [dataclasses.replace(job, flow_id=f"f{i}") for i in range(2 * PER_ADDRESS + 2)]
    ports = [port_of(relay.submit(j, "c")) for j in jobs]
    assert ports[-2:] == [relay.ports[0], relay.ports[1]]
    relay.stop()
    assert len(finished) == len(jobs)
