"""mitmproxy's per-connection read loop, without keeping a connection's last read for its life.

mitmproxy 12.3 reads every connection in `ConnectionHandler.handle_connection`:
`data = await reader.read(65535)`, the bytes handed to the layers as a `DataReceived` event,
then the next read. The name `data` keeps the chunk just handled until the next read returns,
and a client whose request is sent waits for the answer: so each open stream keeps the last
piece of its request, for Claude Code's request ~48 KB, for as long as the answer streams. The
layers no longer need it (they copy what they keep: HTTP/1's receive buffer, OpenSSL's BIO, a
TCP message). Measured with `scripts.bench.memory --upstream http --legs reverse` (200 held
streams): it was more than half of what plain mitmdump holds per open stream (86 KB -> 37 KB
with the chunk let go) and ~48 KB of detour's ~120 KB.

Here the same loop runs with the chunk let go once the layers have handled it. Everything else
is mitmproxy's, in its order: a read of at most 65535 bytes; an empty read or an OSError ends
reading; a cancellation while reading or draining ends it too and is raised again at the end;
a TCP connection closed by the peer stays writable (half-closed) until the handler cancels it;
then the writer is closed and the connection's transports entry removed.

The loop also lets the relay (relay.py) hand its answers to mitmproxy's reader of a connection
to it without the loopback socket in between: both ends are in this process and this event
loop, so a write and a read per relayed event (two syscalls, a loop turn and the kernel's TCP
path; ~19% of a paced stream's CPU per event) are spared. Each server connection the loop
reads is listed by its two addresses (`feeds`), which are the relay's peer and own address for
a connection mitmproxy opened to the relay; the relay looks it up once per connection (`Feed`)
and, if found, never writes its side of the socket (so nothing can arrive out of order). The
socket still carries mitmproxy's requests, and its close the end of the connection.

It replaces the method on mitmproxy's class while detour runs (`ReadLoop`: installed at
`load`, the original back at `done`), and only over the loop it was written against: the
original's source is compared with the one of mitmproxy 12.3.1 first. Another mitmproxy keeps
its own loop (logged once); `tests/addons/test_read_loop.py` fails then, so whoever updates
mitmproxy looks at its loop again.
"""

import asyncio

from mitmproxy.connection import Connection, ConnectionState, Server
from mitmproxy.proxy import events
from mitmproxy.proxy.server import ConnectionHandler

from addons.method_patch import MethodPatch

# sha256 of `inspect.getsource(ConnectionHandler.handle_connection)` in mitmproxy 12.3.1
WRITTEN_AGAINST = "95c3f93e9824e527cd3c1af9656c0e04690562abcd23f0b029d547257fb53f94"
READ_SIZE = 65535  # mitmproxy's
FEED_HIGH, FEED_LOW = 65536, 16384  # bytes fed and not read yet: the writer waits above HIGH


class Feed:
    """Bytes for mitmproxy's reader of one server connection, put there directly: `write` as
    a socket's transport would (nothing after the connection is closed), `drain` waiting while
    more than FEED_HIGH bytes are unread (the loop reads as fast as mitmproxy's client takes
    the answer), ConnectionResetError once mitmproxy is done with the connection."""

    __slots__ = ("reader", "unread", "room", "closed", "delivered")

    def __init__(self, reader: asyncio.StreamReader):
        self.reader = reader
        self.unread = 0
        self.room: asyncio.Future | None = None
        self.closed = False
        self.delivered = 0  # bytes, for the tests and the curious

    def write(self, data: bytes) -> None:
        # mitmproxy closing the connection feeds its reader's end (connection_lost) before its
        # read loop has ended: what comes after is dropped, as a closed transport drops writes
        if self.closed or self.reader.at_eof() or self.reader.exception() is not None:
            return
        try:
            self.reader.feed_data(data)
        except AssertionError:  # fed after its end (asyncio asserts it): the same
            self.closed = True
            return
        self.unread += len(data)
        self.delivered += len(data)

    def was_read(self, size: int) -> None:
        self.unread = max(0, self.unread - size)
        if self.room is not None and self.unread <= FEED_LOW:
            self._wake()

    def close(self) -> None:
        self.closed = True
        self._wake()

    def _wake(self) -> None:
        room, self.room = self.room, None
        if room is not None and not room.done():
            room.set_result(None)

    async def drain(self) -> None:
        while not self.closed and self.unread > FEED_HIGH:
            if self.room is None:
                self.room = asyncio.get_running_loop().create_future()
            await self.room
        if self.closed:
            raise ConnectionResetError("mitmproxy closed the connection")


# the server connections being read, by their two ends: ((local host, port), (peer host,
# port)) -> Feed; one TCP connection's ends, so no other connection can match
feeds: dict[tuple, Feed] = {}


async def handle_connection(self: ConnectionHandler, connection: Connection) -> None:
    """`ConnectionHandler.handle_connection`, the last read let go (module docstring)."""
    reader = self.transports[connection].reader
    assert reader
    feed = None
    if isinstance(connection, Server) and connection.sockname and connection.peername:
        key = (tuple(connection.sockname[:2]), tuple(connection.peername[:2]))
        feed = feeds[key] = Feed(reader)
    cancelled: asyncio.CancelledError | None = None
    while True:
        try:
            data = await reader.read(READ_SIZE)
        except OSError:
            break
        except asyncio.CancelledError as e:
            cancelled = e
            break
        if not data:  # the peer closed its side
            break
        if feed is not None:
            feed.was_read(len(data))
        await self.server_event(events.DataReceived(connection, data))
        data = None  # the layers copied what they keep: not held while the next read waits
        try:
            await self.drain_writers()
        except asyncio.CancelledError as e:
            cancelled = e
            break

    if feed is not None:
        feed.close()
        if feeds.get(key) is feed:
            del feeds[key]
    if cancelled is None and connection.transport_protocol == "tcp":
        connection.state &= ~ConnectionState.CAN_READ  # half-closed: we may still send
    else:
        connection.state = ConnectionState.CLOSED
    await self.server_event(events.ConnectionClosed(connection))

    if connection.state is ConnectionState.CAN_WRITE:
        try:  # kept for writing until the handler is done with it and cancels this task
            await asyncio.Event().wait()
        except asyncio.CancelledError as e:
            cancelled = e

    try:
        writer = self.transports[connection].writer
        assert writer
        writer.close()
    except OSError:
        pass
    self.transports.pop(connection)
    if cancelled:
        raise cancelled


class ReadLoop(MethodPatch):
    """The addon: `handle_connection` above on mitmproxy's class while detour is loaded."""

    def __init__(self):
        super().__init__(ConnectionHandler, "handle_connection", handle_connection,
                         WRITTEN_AGAINST, "it keeps its own (each open stream keeps its last "
                         "read)")
