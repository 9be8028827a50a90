"""The relay's side of each connection mitmproxy opens to it sends without Nagle's delay: an
accepted socket's proto is 0, so asyncio's own TCP_NODELAY never applied to it, and an answer's
last small write waited for mitmproxy's delayed ACK (~40 ms) on a reused relay connection."""

import asyncio
import socket

from addons.relay import RelayServer
from tests.addons.test_forwarding import Upstreams, setup


async def test_an_accepted_relay_connection_has_nagle_off():
    fwd, _ = setup(Upstreams(), "two-providers", stream=True)
    relay = RelayServer(fwd, lambda job: None, ports=1)
    await relay.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", relay.ports[0])
    try:
        for _ in range(500):  # the relay accepts in a task of its own (bounded: ~5 s)
            if relay._writers:
                break
            await asyncio.sleep(0.01)
        [server_side] = relay._writers
        sock = server_side.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
        # what the change was for: asyncio leaves Nagle on for such a socket
        plain = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(plain.getsockname())
        accepted, _ = plain.accept()
        with plain, client, accepted:
            assert accepted.proto == 0
    finally:
        writer.close()
        relay.stop()
        await relay.wait_closed()
