"""The relay's HTTP side (addons/relay.RelayHttp): what it writes is HTTP/1.1 that a client
parses, whether h11 frames a body or the relay frames a stream's chunks itself."""

import h11
import pytest

from addons.relay import RelayHttp


class Collected:
    def __init__(self):
        self.data = bytearray()

    def write(self, data: bytes) -> None:
        self.data += data


def relay_http(requests: int = 1) -> tuple[RelayHttp, Collected]:
    writer = Collected()
    http = RelayHttp(None, writer)
    http.h11.receive_data(b"POST /relay/t HTTP/1.1\r\nhost: relay\r\ncontent-length: 0\r\n\r\n"
                          * requests)
    assert type(http.h11.next_event()) is h11.Request
    assert type(http.h11.next_event()) is h11.EndOfMessage
    return http, writer


def parsed(raw: bytes, cycles: int = 1) -> list[tuple[int, dict, bytes]]:
    """Each answer as a client reads it: status, headers, body."""
    client = h11.Connection(h11.CLIENT)
    client.receive_data(bytes(raw))
    out = []
    for _ in range(cycles):
        client.send(h11.Request(method="POST", target="/relay/t",
                                headers=[("host", "relay"), ("content-length", "0")]))
        client.send(h11.EndOfMessage())
        head = client.next_event()
        body = bytearray()
        while type(event := client.next_event()) is h11.Data:
            body += event.data
        assert type(event) is h11.EndOfMessage, event
        out.append((head.status_code, dict(head.headers), bytes(body)))
        client.start_next_cycle()
    return out


def test_a_stream_is_chunked_and_the_connection_serves_the_next_request():
    http, writer = relay_http(requests=2)
    events = [b"event: a\ndata: {}\n\n", b"x" * 70000, b"event: z\ndata: {}\n\n"]
    http.write_head(200, {"content-type": "text/event-stream"}, None)
    for data in events:
        http.write_data(data)
    http.write_data(b"")  # nothing: an empty chunk would end the body
    http.end()
    assert http.next_cycle()  # h11 saw the whole answer go out
    assert type(http.h11.next_event()) is h11.Request
    assert type(http.h11.next_event()) is h11.EndOfMessage
    http.write_head(200, {"content-type": "text/event-stream"}, None)
    http.write_data(b"second")
    http.end()
    [(status, headers, body), (_, _, second)] = parsed(writer.data, cycles=2)
    assert status == 200 and headers[b"transfer-encoding"] == b"chunked"
    assert body == b"".join(events) and second == b"second"


def test_a_body_with_a_length_is_counted_by_h11():
    http, writer = relay_http()
    http.write_head(502, {"content-type": "application/json"}, 4)
    http.write_data(b"{}")
    with pytest.raises(h11.LocalProtocolError):
        http.end()  # two bytes short of the length it declared
    http, writer = relay_http()
    http.write_head(502, {"content-type": "application/json"}, 2)
    http.write_data(b"{}")
    http.end()
    assert parsed(writer.data) == [(502, {b"content-type": b"application/json",
                                          b"content-length": b"2"}, b"{}")]
