"""addons/read_loop.py: replaces mitmproxy's connection read loop only over the loop it was
written against, and puts the original back. (What it keeps while a stream is open, through
real mitmdumps: tests/e2e/test_read_loop.py.)"""

from mitmproxy.proxy.server import ConnectionHandler

from addons import read_loop


def test_written_against_the_locked_mitmproxy():
    """Fails when mitmproxy's loop changes: read it again, then update WRITTEN_AGAINST."""
    assert read_loop.fingerprint(ConnectionHandler.handle_connection) == read_loop.WRITTEN_AGAINST


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
    with caplog.at_level("INFO", logger="addons.read_loop"):
        addon.load(None)
    assert ConnectionHandler.handle_connection is changed
    assert "keeps its own" in caplog.text
    addon.done()
    assert ConnectionHandler.handle_connection is changed
