"""`Request.pretty_host` and `Request.pretty_url` as mitmproxy computes them, the Host header's
parse remembered.

mitmproxy parses the Host header anew at every read (a regex, an IDNA check: ~13 us for
`pretty_host`, ~17 us for `pretty_url`), and the hooks read them several times per call, for
a handful of distinct hosts. The parse is a pure function of the header's value, so it is
kept (a bounded cache: a client sending ever new Host values only cycles it).
"""

import functools

from mitmproxy import http
from mitmproxy.net.http import url


@functools.lru_cache(maxsize=128)
def _authority(value: str) -> tuple[str, int | None]:
    return url.parse_authority(value, check=False)


def pretty_host(req: http.Request) -> str:
    """`req.pretty_host`."""
    authority = req.host_header
    return _authority(authority)[0] if authority else req.host


def pretty_url(req: http.Request) -> str:
    """`req.pretty_url`."""
    if req.first_line_format == "authority":
        return req.authority
    authority = req.host_header
    if not authority:
        return req.url
    host, port = _authority(authority)
    port = port or url.default_port(req.scheme) or 443
    path = req.path if req.path != "*" else ""
    return url.unparse(req.scheme, host, port, path)
