"""A client header holding CR, LF or NUL never reaches a provider's wire: the model call gets a
400 in the client's format naming the header, before any provider is asked. Raw clients
through a real mitmdump: HTTP/1.1 (mitmproxy's parser keeps a bare CR and a NUL in a value; an
LF ends the line, so it is a header of its own there) and HTTP/2 (a value may hold any of the
three once the client skips its own checks)."""

import json
import socket
import ssl

import h2.config
import h2.connection
import h2.events
import pytest

from addons.intercept import unsafe_header
from mitmproxy.http import Headers
from tests.e2e.conftest import CLIENT_KEY, VENDOR_KEY, start_proxy
from tests.fakes.anthropic_vendor import FakeAnthropic

BODY = json.dumps({"model": "claude-fake-sonnet", "max_tokens": 16, "stream": False,
                   "messages": [{"role": "user", "content": "hi"}]}).encode()


@pytest.fixture(scope="module")
def vendor():
    with FakeAnthropic() as fake:
        yield fake


@pytest.fixture(scope="module")
def proxy(confdir, tmp_path_factory, vendor):
    config = f"""
providers:
  ant: {{kind: anthropic, base_url: "{vendor.base_url}", api_keys: [{VENDOR_KEY}]}}
routes:
  claude-fake-sonnet: [ant/claude-fake-sonnet]
  "*": [passthrough]
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config)
    yield p
    p.mitm.stop()


def tunnel(proxy, alpn: str) -> ssl.SSLSocket:
    """A TLS connection to api.anthropic.com through the proxy's CONNECT."""
    sock = socket.create_connection(("127.0.0.1", proxy.mitm.port), timeout=10)
    sock.sendall(b"CONNECT api.anthropic.com:443 HTTP/1.1\r\nHost: api.anthropic.com:443\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        data = sock.recv(4096)
        assert data, head
        head += data
    assert head.startswith(b"HTTP/1.1 200"), head
    ctx = ssl.create_default_context(cafile=str(proxy.mitm.ca_cert))
    ctx.set_alpn_protocols([alpn])
    return ctx.wrap_socket(sock, server_hostname="api.anthropic.com")


def http1(proxy, header_line: bytes) -> tuple[int, bytes]:
    with tunnel(proxy, "http/1.1") as tls:
        tls.sendall(b"POST /v1/messages HTTP/1.1\r\nHost: api.anthropic.com\r\n"
                    b"x-api-key: " + CLIENT_KEY.encode() + b"\r\n"
                    b"anthropic-version: 2023-06-01\r\ncontent-type: application/json\r\n"
                    + header_line + b"\r\ncontent-length: %d\r\nconnection: close\r\n\r\n"
                    % len(BODY) + BODY)
        data = b""
        while chunk := tls.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), body


def http2(proxy, name: bytes, value: bytes) -> tuple[int, bytes]:
    with tunnel(proxy, "h2") as tls:
        assert tls.selected_alpn_protocol() == "h2"
        conn = h2.connection.H2Connection(h2.config.H2Configuration(
            client_side=True, validate_outbound_headers=False, normalize_outbound_headers=False))
        conn.initiate_connection()
        conn.send_headers(1, [(b":method", b"POST"), (b":scheme", b"https"),
                              (b":authority", b"api.anthropic.com"), (b":path", b"/v1/messages"),
                              (b"x-api-key", CLIENT_KEY.encode()),
                              (b"anthropic-version", b"2023-06-01"),
                              (b"content-type", b"application/json"), (name, value)])
        conn.send_data(1, BODY, end_stream=True)
        tls.sendall(conn.data_to_send())
        status, body = None, b""
        while True:
            data = tls.recv(65536)
            assert data, "the proxy closed the connection without an answer"
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.ResponseReceived):
                    status = int(dict(ev.headers)[b":status"])
                elif isinstance(ev, h2.events.DataReceived):
                    body += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.StreamReset)):
                    return status, body
            tls.sendall(conn.data_to_send())


def assert_refused(status: int, body: bytes, name: str, vendor) -> None:
    assert status == 400, body
    error = json.loads(body)
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert repr(name) in error["error"]["message"]
    assert vendor.requests == []


@pytest.mark.parametrize("line", [b"anthropic-beta: a\rX-Injected-CR: yes",
                                  b"anthropic-beta: a\0b"])
def test_http1_header_with_a_bare_cr_or_nul_is_refused(proxy, vendor, line):
    vendor.clear()
    status, body = http1(proxy, line)
    assert_refused(status, body, "anthropic-beta", vendor)


H2_VALUES = [b"a\rX-Injected-CR: yes", b"a\r\nX-Injected: yes", b"a\nb", b"a\0b"]


@pytest.mark.parametrize("value", H2_VALUES)
def test_http2_header_with_cr_lf_or_nul_never_reaches_the_provider(proxy, vendor, value):
    """mitmproxy's HTTP/2 layer checks inbound headers by default (`validate_inbound_headers`):
    such a stream ends the connection before any hook runs."""
    vendor.clear()
    with pytest.raises(AssertionError, match="closed the connection"):
        http2(proxy, b"anthropic-beta", value)
    assert vendor.requests == []


@pytest.fixture(scope="module")
def lax_proxy(confdir, tmp_path_factory, vendor):
    config = f"""
providers:
  ant: {{kind: anthropic, base_url: "{vendor.base_url}", api_keys: [{VENDOR_KEY}]}}
routes: {{claude-fake-sonnet: [ant/claude-fake-sonnet], "*": [passthrough]}}
"""
    p = start_proxy(confdir, tmp_path_factory.mktemp("home"), config,
                    extra=["--set", "validate_inbound_headers=false"])
    yield p
    p.mitm.stop()


@pytest.mark.parametrize("value", H2_VALUES)
def test_http2_header_with_cr_lf_or_nul_is_refused_by_detour(lax_proxy, vendor, value):
    """With mitmproxy's check off, the value reaches the request hook: detour refuses it."""
    vendor.clear()
    status, body = http2(lax_proxy, b"anthropic-beta", value)
    assert_refused(status, body, "anthropic-beta", vendor)


def test_a_clean_header_still_goes_through(proxy, vendor):
    vendor.clear()
    status, body = http1(proxy, b"anthropic-beta: tools-2024-04-04")
    assert status == 200, body
    assert vendor.requests[0].headers["anthropic-beta"] == "tools-2024-04-04"


def test_unsafe_header_names_the_first_bad_one():
    assert unsafe_header(Headers(a="x", b="y")) is None
    assert unsafe_header(Headers([(b"a", b"x"), (b"anthropic-beta", b"a\rb")])) == \
        "anthropic-beta"
    assert unsafe_header(Headers([(b"x\nz", b"v")])) == "x\nz"
    assert unsafe_header(Headers([(b"c", b"nul\0")])) == "c"

