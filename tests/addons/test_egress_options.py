"""mitmproxy options detour checks at start: where the proxy listens, options that would
break it, and mitmproxy's own upstream proxy (which providers are then reached through)."""

import pytest
from mitmproxy import exceptions
from mitmproxy.addons.proxyserver import Proxyserver
from mitmproxy.addons.upstream_auth import UpstreamAuth
from mitmproxy.test import taddons

from addons.settings import DetourSettings


@pytest.fixture
def started(tmp_path):
    """(settings, tctx) with a DETOUR_HOME loaded."""
    settings = DetourSettings()
    with taddons.context(Proxyserver(), UpstreamAuth(), settings) as tctx:
        tctx.configure(settings, detour_home=str(tmp_path))
        yield settings, tctx
        settings.runtime.store.close()


@pytest.mark.parametrize("options", [
    {"listen_host": "0.0.0.0"},
    {"listen_host": "192.0.2.7"},
    {"listen_host": "myhost.example"},
    {"listen_host": "127.0.0.1", "mode": ["regular@0.0.0.0:8081"]},
])
def test_a_remote_listen_address_is_refused_naming_it_and_the_way_to_allow_it(started, options):
    settings, tctx = started
    with pytest.raises(exceptions.OptionsError) as e:
        tctx.configure(settings, **options)
    host = options["listen_host"] if "mode" not in options else "0.0.0.0"
    assert f"refusing to listen on {host}" in str(e.value)
    assert "detour_allow_remote=true" in str(e.value) and "--listen-host 127.0.0.1" in str(e.value)


def test_a_remote_listen_address_is_allowed_on_request(started, caplog):
    settings, tctx = started
    tctx.configure(settings, detour_allow_remote=True, listen_host="0.0.0.0")
    assert tctx.options.listen_host == "0.0.0.0"
    assert "reachable from the network without authentication" in caplog.text


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_are_accepted(started, host):
    settings, tctx = started
    tctx.configure(settings, listen_host=host)
    assert tctx.options.listen_host == host


def test_stream_large_bodies_is_refused_with_the_reason(started):
    settings, tctx = started
    with pytest.raises(exceptions.OptionsError, match="stream_large_bodies .*request hook"):
        tctx.configure(settings, stream_large_bodies="1m")


def test_a_refused_option_set_with_an_eager_connection_strategy_is_refused_once(started,
                                                                                caplog):
    """mitmdump's start: detour turns connection_strategy to lazy from configure; a refusal
    after that update rolled it back and configured again, without end (mitmproxy logged the
    RecursionError as an addon error: thousands of lines before the reason)."""
    settings, tctx = started
    with pytest.raises(exceptions.OptionsError, match="stream_large_bodies"):
        tctx.configure(settings, connection_strategy="eager", stream_large_bodies="1m")
    assert tctx.options.stream_large_bodies is None
    assert "Addon error" not in caplog.text and "recursion" not in caplog.text


def test_upstream_mode_is_where_providers_are_reached(started):
    settings, tctx = started
    forwarder = settings.runtime.forwarder
    assert forwarder.upstream_proxy is None
    tctx.configure(settings, mode=["upstream:http://127.0.0.1:3128"])
    assert forwarder.upstream_proxy == "http://127.0.0.1:3128"
    tctx.configure(settings, upstream_auth="corp user:p@ss:word")
    assert forwarder.upstream_proxy == "http://corp%20user:p%40ss%3Aword@127.0.0.1:3128"
    tctx.configure(settings, mode=["regular"])
    assert forwarder.upstream_proxy is None


def test_two_upstream_proxies_are_refused(started):
    settings, tctx = started
    with pytest.raises(exceptions.OptionsError, match="2 upstream proxies"):
        tctx.configure(settings, mode=["upstream:http://127.0.0.1:3128",
                                       "upstream:http://127.0.0.1:3129@8081"])


def _client(peer: tuple[str, int]):
    from mitmproxy.test import tflow
    client = tflow.tclient_conn()
    client.peername = peer
    return client


@pytest.mark.parametrize("peer", [("192.0.2.10", 40000), ("2001:db8::5", 40000, 0, 0),
                                  ("::ffff:198.51.100.3", 40000, 0, 0)])
def test_a_peer_from_the_network_is_disconnected_at_once(started, peer, caplog):
    """mitmproxy's default listen address is every interface: whatever it bound, a client that
    is not this machine is refused before it can spend the operator's keys."""
    settings, tctx = started
    refused = [_client(peer) for _ in range(3)]
    for client in refused:
        settings.client_connected(client)
        assert client.error and "loopback" in client.error
    assert caplog.text.count("refused a connection from") == 1  # one line per peer


@pytest.mark.parametrize("peer", [("127.0.0.1", 40000), ("127.8.0.2", 1), ("::1", 40000, 0, 0),
                                  ("::ffff:127.0.0.1", 40000, 0, 0)])
def test_loopback_peers_are_served(started, peer):
    settings, tctx = started
    client = _client(peer)
    settings.client_connected(client)
    assert client.error is None


def test_network_peers_are_served_when_allowed(started):
    settings, tctx = started
    tctx.configure(settings, detour_allow_remote=True)
    client = _client(("192.0.2.10", 40000))
    settings.client_connected(client)
    assert client.error is None
