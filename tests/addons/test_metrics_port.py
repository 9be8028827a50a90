"""Where the metrics server listens when its port is taken, in process: the default port
(moved here to a port this test holds, the real one being one per machine) gives way to the
next free one; a port set on purpose is that port or none. tests/e2e/test_metrics_port.py
runs the same with real mitmdumps and proxy.json."""

import socket

from addons import metrics
from addons.metrics import MetricsServer
from addons.settings import DetourSettings


def held_port() -> socket.socket:
    """A loopback port this test listens on, so nobody else can take it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


async def test_the_default_port_taken_the_next_free_one_is_served(monkeypatch):
    with held_port() as held:
        port = held.getsockname()[1]
        monkeypatch.setattr(metrics, "DEFAULT_PORT", port)
        server = MetricsServer(DetourSettings())
        await server._start(port)
        try:
            assert server.started.is_set()
            assert server.port not in (None, port)
            assert server._server.sockets[0].getsockname() == ("127.0.0.1", server.port)
        finally:
            server._stop()


async def test_a_port_set_on_purpose_that_is_taken_is_not_replaced(caplog):
    with held_port() as held:
        port = held.getsockname()[1]
        assert port != metrics.DEFAULT_PORT  # the system picks from its ephemeral range
        server = MetricsServer(DetourSettings())
        await server._start(port)
        assert server.started.is_set() and server.port is None and server._server is None
        assert f"cannot listen on 127.0.0.1:{port}" in caplog.text
