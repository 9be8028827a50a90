"""detour's answer, in the client's format, where mitmproxy would tell a provider's failure itself.

On the direct path (direct.py) mitmproxy's own connection carries a call to its provider. When
that connection fails (the connect, a timeout detour's watchdog ends, the provider breaking
off), mitmproxy's `HttpStream.handle_protocol_error` runs the `error` hook and then tells the
client itself: an HTML 502 page if the client has no answer yet, a cut connection if it has
the answer's head (an HTTP/1 chunked body without its last chunk). Neither is an answer a
coding CLI can read, and an addon cannot replace either: the `error` hook has no say in what
follows it.

Here the same method runs, in mitmproxy's order, with one difference: after the `error` hook,
a reply the hook left for the flow (`leave`) is sent instead of mitmproxy's own words:

- `Whole(response)`, while the client has no answer yet: that response, head and body (an
  error JSON in the client's format, what the relay answers when no candidate is left);
- `Tail(data)`, while the answer is streamed to the client: these bytes (the error event
  ending the client's stream) and then the end of the body, so the stream is well formed.

A reply that does not fit the state (a `Tail` before the head went out, a client that has
gone, a request still being sent) is dropped and mitmproxy's own handling runs. Everything
else (the hook, a flow killed in it, the stream dropped, the server side marked failed) is
mitmproxy's, unchanged.

It replaces the method on mitmproxy's class while detour runs (`ErrorReply`: installed at
`load`, the original back at `done`), and only over the method it was written against: the
original's source is compared with the one of mitmproxy 12.3.1 first. Another mitmproxy keeps
its own method, and the direct path stays off (`installed()` is False): its failures would be
told in mitmproxy's words. `tests/addons/test_error_reply.py` fails then, so whoever updates
mitmproxy reads the method again.
"""

from dataclasses import dataclass

from mitmproxy import flow as mflow
from mitmproxy import http
from mitmproxy.proxy import layer
from mitmproxy.proxy.layers.http import (DropStream, HttpErrorHook, HttpStream,
                                         RequestProtocolError, ResponseData,
                                         ResponseEndOfMessage, ResponseHeaders,
                                         ResponseProtocolError, SendHttp)

from addons.method_patch import MethodPatch

# sha256 of `inspect.getsource(HttpStream.handle_protocol_error)` in mitmproxy 12.3.1
WRITTEN_AGAINST = "59fc3b2eeeabf63a64d4cce98b4fe4cab5193ebefbd9c32ae186e65c7d25bfe2"
# the attribute of a flow that holds the reply its `error` hook left: on the flow, so it goes
# with it where the method does not run (an error hook mitmproxy calls elsewhere); not one of
# the flow's state attributes, so never saved nor shown
ATTR = "_detour_error_reply"


@dataclass(slots=True, frozen=True)
class Whole:
    """A whole answer for a client that has none yet."""
    response: http.Response


@dataclass(slots=True, frozen=True)
class Tail:
    """The last bytes of an answer streamed to the client, then its end."""
    data: bytes


def leave(flow: http.HTTPFlow, reply: Whole | Tail) -> None:
    """For the `error` hook: what the client is told instead of mitmproxy's own words."""
    setattr(flow, ATTR, reply)


def installed() -> bool:
    return HttpStream.handle_protocol_error is handle_protocol_error


def handle_protocol_error(
    self: HttpStream, event: RequestProtocolError | ResponseProtocolError
) -> layer.CommandGenerator[None]:
    # mitmproxy's HttpStream.handle_protocol_error (12.3.1), with the reply (marked below)
    is_client_error_but_we_already_talk_upstream = (
        isinstance(event, RequestProtocolError)
        and self.client_state in (self.state_stream_request_body, self.state_done)
        and self.server_state not in (self.state_done, self.state_errored)
    )
    need_error_hook = not (
        self.client_state == self.state_errored
        or self.server_state in (self.state_done, self.state_errored)
    )

    if is_client_error_but_we_already_talk_upstream:
        yield SendHttp(event, self.context.server)
        self.client_state = self.state_errored

    reply = None  # detour
    if need_error_hook:
        self.flow.error = mflow.Error(event.message)
        yield HttpErrorHook(self.flow)
        reply = self.flow.__dict__.pop(ATTR, None)  # detour

    if (yield from self.check_killed(False)):
        return

    if isinstance(event, ResponseProtocolError):
        if self.client_state != self.state_errored:
            if not (yield from _send_reply(self, reply)):  # detour
                yield SendHttp(event, self.context.client)
        self.server_state = self.state_errored

    self.flow.live = False
    yield DropStream(self.stream_id)


def _send_reply(stream: HttpStream, reply: Whole | Tail | None) -> layer.CommandGenerator[bool]:
    """Send the hook's reply to the client if it fits the stream's state; True if sent."""
    if reply is None or stream.client_state != stream.state_done:
        return False  # nothing left, or the request is still being sent: mitmproxy's way
    client = stream.context.client
    streaming = stream.server_state == stream.state_stream_response_body
    if type(reply) is Tail and streaming:
        if reply.data:
            yield SendHttp(ResponseData(stream.stream_id, reply.data), client)
    elif type(reply) is Whole and not streaming:
        response = reply.response
        stream.flow.response = response
        body = response.raw_content or b""
        yield SendHttp(ResponseHeaders(stream.stream_id, response, end_stream=not body), client)
        if body:
            yield SendHttp(ResponseData(stream.stream_id, body), client)
    else:
        return False
    yield SendHttp(ResponseEndOfMessage(stream.stream_id), client)
    return True


class ErrorReply(MethodPatch):
    """The addon: `handle_protocol_error` above on mitmproxy's class while detour is loaded."""

    def __init__(self):
        super().__init__(HttpStream, "handle_protocol_error", handle_protocol_error,
                         WRITTEN_AGAINST, "the direct path stays off (detour_direct)")
