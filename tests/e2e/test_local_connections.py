"""Local peers holding connections open through a real mitmweb: the relay's loopback ports
close connections that never send a request beyond `detour_relay_max_waiting`, the proxy's
port refuses clients beyond `detour_max_clients`; calls still get answered and each condition
is one log line, not one per connection."""

import resource
import socket
import time

import httpx
import pytest

from tests.captures import anthropic_events
from tests.e2e.conftest import capture
from addons.relay import MAX_WAITING
from tests.e2e.test_soak import URL, start_web, status

MAX_CLIENTS = 30
IDLE = 1000  # connections another local user holds open on the relay's ports (1,019 took it down)


@pytest.mark.slow
def test_idle_local_connections_do_not_take_the_proxy_down(confdir, tmp_path, fake_openai):
    proxy, web_port = start_web(
        confdir, tmp_path / "home", fake_openai,
        extra=["--set", f"detour_max_clients={MAX_CLIENTS}"])
    m = proxy.mitm
    # the common default limit of open files, where 1,019 held connections exhausted it
    resource.prlimit(m.proc.pid, resource.RLIMIT_NOFILE, (1024, 1024))
    body = dict(capture("text"), stream=True)
    held: list[socket.socket] = []
    with m:  # stops it
        try:
            relay_ports = status(web_port)["relay_ports"]
            for i in range(IDLE):  # over every port, with the default detour_relay_max_waiting
                held.append(socket.create_connection(("127.0.0.1", relay_ports[i % len(relay_ports)]),
                                                     timeout=10))
            with proxy.client() as c:
                r = c.post(URL, json=body, headers={"x-api-key": "k"})
                assert r.status_code == 200 and anthropic_events(r.content)
                proxy.row_of(r)
            state = status(web_port)["process"]
            assert state["relay_connections_waiting"] <= MAX_WAITING, state
            # the oldest held connections were closed by the relay
            held[0].settimeout(10)
            assert held[0].recv(1) == b""

            for _ in range(MAX_CLIENTS):
                held.append(socket.create_connection(("127.0.0.1", m.port), timeout=10))
            with pytest.raises(httpx.TransportError), proxy.client() as c:
                c.post(URL, json=body, headers={"x-api-key": "k"})
        finally:
            for s in held:
                s.close()
        deadline = time.monotonic() + 20
        while True:  # mitmproxy sees the held clients go, then serves again
            try:
                with proxy.client() as c:
                    r = c.post(URL, json=body, headers={"x-api-key": "k"})
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "still refused after the clients left"
                time.sleep(0.2)
        assert r.status_code == 200 and anthropic_events(r.content)
        proxy.row_of(r)
    log = m.text
    assert log.count("connections waiting for a request") <= 2, log[-3000:]
    assert log.count("client connections open") == 1, log[-3000:]
    assert "Traceback" not in log
