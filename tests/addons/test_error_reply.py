"""addons/error_reply.py: replaces mitmproxy's HttpStream.handle_protocol_error only over the
method it was written against, and puts the original back; the direct path goes only where it
is installed. (The replies themselves, through real mitmdumps: tests/e2e/test_direct_path.py
and test_direct_reach.py.)"""

from mitmproxy.proxy.layers.http import HttpStream
from mitmproxy.test import tflow

from addons import error_reply, method_patch


def test_written_against_the_locked_mitmproxy():
    """Fails when mitmproxy's method changes: read it again (error_reply.handle_protocol_error
    is a copy of it with the reply added), then update WRITTEN_AGAINST."""
    assert method_patch.fingerprint(HttpStream.handle_protocol_error) == \
        error_reply.WRITTEN_AGAINST


def test_installed_while_loaded_and_the_original_back_when_done():
    original = HttpStream.handle_protocol_error
    addon = error_reply.ErrorReply()
    addon.load(None)
    try:
        assert error_reply.installed()
        error_reply.ErrorReply().load(None)  # a second instance (a script reloaded): no change
        assert addon.original is original
    finally:
        addon.done()
    assert HttpStream.handle_protocol_error is original and not error_reply.installed()


def test_another_method_is_left_alone_and_the_direct_path_stays_off(monkeypatch, caplog):
    def changed(self, event):  # what a newer mitmproxy might have
        yield from ()

    monkeypatch.setattr(HttpStream, "handle_protocol_error", changed)
    addon = error_reply.ErrorReply()
    with caplog.at_level("INFO", logger="addons.method_patch"):
        addon.load(None)
    assert HttpStream.handle_protocol_error is changed and not error_reply.installed()
    assert "direct path stays off" in caplog.text
    addon.done()
    assert HttpStream.handle_protocol_error is changed


def test_a_reply_rides_on_its_flow_and_is_not_part_of_its_state():
    flow = tflow.tflow()
    error_reply.leave(flow, error_reply.Tail(b"event: error\n\n"))
    assert getattr(flow, error_reply.ATTR) == error_reply.Tail(b"event: error\n\n")
    assert error_reply.ATTR not in str(flow.get_state())  # never saved nor shown
