"""`pretty_host`/`pretty_url` give what mitmproxy's properties give, for every kind of request."""

import pytest
from mitmproxy import http
from mitmproxy.test import tutils

from addons.flow_url import pretty_host, pretty_url


def _requests():
    yield tutils.treq()  # address:22, Host header "address"
    yield tutils.treq(headers=http.Headers(host="api.anthropic.com"))
    yield tutils.treq(headers=http.Headers(host="api.anthropic.com:8443"), scheme=b"https")
    yield tutils.treq(headers=http.Headers(host="[::1]:9000"))
    yield tutils.treq(headers=http.Headers(host="b\u00fccher.example"))  # IDNA
    yield tutils.treq(headers=http.Headers(host="not a host!"))  # malformed: kept as it is
    yield tutils.treq(headers=http.Headers(host="h:99999"))  # a port out of range
    yield tutils.treq(headers=http.Headers())  # no Host header: the request's host
    yield tutils.treq(headers=http.Headers(host="x.test"), path=b"*", method=b"OPTIONS")
    yield tutils.treq(method=b"CONNECT", authority=b"vendor.test:443", host="vendor.test",
                      port=443, path=b"", headers=http.Headers())
    h2 = tutils.treq(http_version=b"HTTP/2.0", authority=b"h2.test:444", headers=http.Headers())
    yield h2
    yield tutils.treq(http_version=b"HTTP/2.0", authority=b"", headers=http.Headers(host="o.test"))


@pytest.mark.parametrize("req", list(_requests()), ids=lambda r: repr(r))
def test_as_mitmproxy_reads_them(req):
    assert pretty_host(req) == req.pretty_host
    assert pretty_url(req) == req.pretty_url


def test_a_changed_host_header_is_read_anew():
    req = tutils.treq(headers=http.Headers(host="one.test"))
    assert pretty_host(req) == "one.test"
    req.headers["host"] = "two.test:81"
    assert (pretty_host(req), pretty_url(req)) == ("two.test", req.pretty_url)
    assert pretty_url(req) == "http://two.test:81/path"
