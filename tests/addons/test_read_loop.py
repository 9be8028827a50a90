"""addons/read_loop.py: replaces mitmproxy's connection read loop only over the loop it was
written against, and puts the original back; a Feed puts the relay's bytes in mitmproxy's
reader with a writer's flow control. (What the loop keeps while a stream is open, and the
relay's answers fed in this way, through real mitmdumps: tests/e2e/test_read_loop.py.)"""

import asyncio

import pytest
from mitmproxy.proxy.server import ConnectionHandler

from addons import method_patch, read_loop


def test_written_against_the_locked_mitmproxy():
    """Fails when mitmproxy's loop changes: read it again, then update WRITTEN_AGAINST."""
    assert method_patch.fingerprint(ConnectionHandler.handle_connection) == read_loop.WRITTEN_AGAINST


def test_installed_while_loaded_and_the_original_back_when_done():
    original = ConnectionHandler.handle_connection
    addon = read_loop.ReadLoop()
    addon.load(None)
    try:
        assert ConnectionHandler.handle_connection is read_loop.handle_connection
        read_loop.ReadLoop().load(None)  # a second instance (a script reloaded) changes nothing
        assert addon.original is original
    finally:
        addon.done()
    assert ConnectionHandler.handle_connection is original


def test_another_loop_is_left_alone(monkeypatch, caplog):
    async def changed(self, connection):  # what a newer mitmproxy might have
        return None

    monkeypatch.setattr(ConnectionHandler, "handle_connection", changed)
    addon = read_loop.ReadLoop()
    with caplog.at_level("INFO", logger="addons.method_patch"):
        addon.load(None)
    assert ConnectionHandler.handle_connection is changed
    assert "keeps its own" in caplog.text
    addon.done()
    assert ConnectionHandler.handle_connection is changed


async def test_a_feed_puts_bytes_in_the_reader_and_holds_the_writer_while_unread():
    reader = asyncio.StreamReader()
    feed = read_loop.Feed(reader)
    feed.write(b"x" * read_loop.FEED_HIGH)
    await feed.drain()  # at the mark, not above it: no wait
    feed.write(b"y")
    drained = asyncio.ensure_future(feed.drain())
    await asyncio.sleep(0)
    assert not drained.done()  # more than FEED_HIGH unread
    data = await reader.read(read_loop.FEED_HIGH - read_loop.FEED_LOW)
    feed.was_read(len(data))  # what the read loop does after each read
    assert not drained.done()  # not yet down to FEED_LOW
    await asyncio.sleep(0)
    data = await reader.read(1)
    feed.was_read(len(data))
    await asyncio.wait_for(drained, 5)
    assert feed.delivered == read_loop.FEED_HIGH + 1
    assert await reader.read(read_loop.FEED_HIGH) == b"x" * (read_loop.FEED_LOW - 1) + b"y"


async def test_a_closed_feed_drops_writes_and_fails_its_writer():
    reader = asyncio.StreamReader()
    feed = read_loop.Feed(reader)
    feed.write(b"x" * (read_loop.FEED_HIGH + 1))
    waiting = asyncio.ensure_future(feed.drain())
    await asyncio.sleep(0)
    reader.feed_eof()  # mitmproxy closed the connection (its transport's connection_lost)
    feed.write(b"after the end")  # dropped, as a closed transport drops it: no error here
    feed.close()  # the read loop ended
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(waiting, 5)
    with pytest.raises(ConnectionResetError):
        await feed.drain()
    assert feed.delivered == read_loop.FEED_HIGH + 1
