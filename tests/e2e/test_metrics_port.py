"""The metrics and operator port beside another proxy: the default (9464) is one per machine,
so a proxy that finds it taken serves on the next free port and says so in proxy.json, where
`detour status` reads it; a port set on purpose that is taken is not replaced (logged, no
metrics). Real mitmdumps; the default port is held by this test for its whole run, or the
test is skipped when another process holds it (the same fallback, in process and on a port of
its own: tests/addons/test_metrics_port.py)."""

import errno
import socket
import time

import httpx
import pytest

from addons.instance import Instance
from addons.metrics import DEFAULT_PORT
from tests.e2e.conftest import detour_home
from tests.harness import Mitmdump


def hold(port: int) -> socket.socket | None:
    """Listen on 127.0.0.1:port, if no one does (None: someone already does)."""
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", port))
    except OSError as e:
        s.close()
        assert e.errno == errno.EADDRINUSE
        return None
    s.listen()
    return s


def home_with(tmp_path, name: str):
    # a provider named after the proxy: its /accounts tells the proxies apart
    return detour_home(tmp_path / name, f"providers:\n  {name}: {{kind: openai, base_url: "
                                        f'"http://127.0.0.1:9/v1", api_keys: [k-{name}]}}\n')


def state(home) -> Instance:
    """proxy.json, once written (just after mitmproxy listens)."""
    deadline = time.monotonic() + 20
    while (instance := Instance.read(home)) is None:
        assert time.monotonic() < deadline, "proxy.json never written"
        time.sleep(0.05)
    return instance


def accounts_at(port: int) -> str:
    r = httpx.get(f"http://127.0.0.1:{port}/accounts", trust_env=False, timeout=10)
    assert r.status_code == 200
    return r.text


def test_a_second_proxy_serves_its_metrics_on_another_port(confdir, tmp_path):
    held = hold(DEFAULT_PORT)
    if held is None:
        # held by someone else, it may be freed at any moment and taken by a proxy under test
        pytest.skip(f"port {DEFAULT_PORT} is taken by another process on this machine; the "
                    "test needs it held by itself")
    default = ["--set", f"detour_metrics_port={DEFAULT_PORT}"]
    try:
        with Mitmdump(confdir, home_with(tmp_path, "first"), extra=default), \
                Mitmdump(confdir, home_with(tmp_path, "second"), extra=default) as second:
            ports = [state(tmp_path / name).metrics_port for name in ("first", "second")]
            assert None not in ports and DEFAULT_PORT not in ports and ports[0] != ports[1]
            assert '"first"' in accounts_at(ports[0]) and '"second"' in accounts_at(ports[1])
            assert f"metrics port {DEFAULT_PORT} is taken" in second.text
    finally:
        held.close()


def test_a_port_set_on_purpose_that_is_taken_is_not_replaced(confdir, tmp_path):
    """No metrics, and proxy.json says none."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with Mitmdump(confdir, home_with(tmp_path, "third"),
                      extra=["--set", f"detour_metrics_port={port}"]) as third:
            assert state(tmp_path / "third").metrics_port is None
            assert f"cannot listen on 127.0.0.1:{port}" in third.text
