"""`make_response`: the answer `http.Response.make` builds, without its reference cycle."""

import gc
import weakref

import pytest
from mitmproxy import http

from addons.responses import make_response


def _state(response: http.Response) -> dict:
    state = response.get_state()
    state.pop("timestamp_start")
    state.pop("timestamp_end")
    return state


@pytest.mark.parametrize("status, content, headers", [
    (200, b'{"ok":true}', {"content-type": "application/json", "x-detour-id": "f1"}),
    (429, b"", {"retry-after": "3"}),
    (599, b"x" * 10, http.Headers(content_type="text/plain")),
    (200, "caf\u00e9".encode(), {"content-encoding": "gzip"}),  # encoded as mitmproxy would
])
def test_the_same_response_as_mitmproxys_make(status, content, headers):
    ours = make_response(status, content, headers)
    theirs = http.Response.make(status, content, headers)
    assert _state(ours) == _state(theirs)
    assert ours.stream is False and ours.trailers is None
    assert ours.timestamp_start <= ours.timestamp_end


def test_each_response_is_its_own():
    first = make_response(200, b"a", {"x-a": "1"})
    second = make_response(500, b"bb", {"x-b": "2"})
    assert (first.status_code, first.content, first.headers["x-a"]) == (200, b"a", "1")
    assert "x-a" not in second.headers and second.reason == "Internal Server Error"
    first.headers["x-c"] = "3"
    assert "x-c" not in second.headers


class _Held:
    """Stands for a call's parsed body, held by the frame that builds the answer."""


def _answer_while_holding(factory, held: _Held) -> http.Response:
    return factory(200, b"{}", {"content-type": "application/json"})


@pytest.mark.parametrize("factory, freed", [(make_response, True), (http.Response.make, False)])
def test_the_callers_objects_are_freed_without_the_collector(factory, freed):
    # mitmproxy's check raises and catches a TypeError per field left None; its traceback
    # holds the caller's frames (and their locals) in a cycle only the collector frees
    gc.collect()
    gc.disable()
    try:
        held = _Held()
        ref = weakref.ref(held)
        _answer_while_holding(factory, held)
        del held
        assert (ref() is None) is freed
    finally:
        gc.enable()
        gc.collect()
