"""Answers detour makes itself, built without mitmproxy's per-object type check.

`http.Response.make` runs the dataclass check of mitmproxy's `ResponseData` (while Python runs
without -O), which raises and catches a TypeError for each field left None (`content`,
`trailers`). The caught error's traceback keeps its frame and, through `f_back`, every frame
of the caller's stack alive in a reference cycle: the request hook's frames, and with them the
call's parsed body, canonical request and encoded copies (~100 KB of objects for Claude Code's
request), until the garbage collector gets to them. Copying a response made once at import
builds the same object without the check, so a call's objects are freed as soon as it ends.
"""

import time

from mitmproxy import http
from mitmproxy.net.http import status_codes

_MADE = http.Response.make(200)


def _clone(obj):
    """`copy.copy` of a plain object (a new one sharing its attributes), without copy's
    `__reduce_ex__` round trip: a third of this module's time per answer."""
    new = object.__new__(type(obj))
    new.__dict__.update(obj.__dict__)
    return new


def _bytes(value: str | bytes) -> bytes:
    """`always_bytes(value, "utf-8", "surrogateescape")` for a header's name or value."""
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def make_response(status_code: int, content: bytes,
                  headers: dict[str, str] | http.Headers) -> http.Response:
    """What `http.Response.make(status_code, content, headers)` returns (the same fields,
    headers, content-length and timestamps), without the type check's reference cycle."""
    if not isinstance(headers, http.Headers):
        headers = http.Headers((_bytes(k), _bytes(v)) for k, v in headers.items())
    response = _clone(_MADE)
    response.data = data = _clone(_MADE.data)
    data.status_code = status_code
    data.reason = status_codes.RESPONSES.get(status_code, "").encode()
    data.headers = headers
    data.timestamp_start = time.time()
    data.timestamp_end = time.time()
    response.content = content
    return response
