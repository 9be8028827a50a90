"""No rest is longer than 24 hours, whatever a backoff rule or a vendor asks (the book's own
cap, under the failure policy's)."""

from addons.routing import CooldownBook, Rest


def test_no_rest_outlasts_a_day():
    book = CooldownBook()
    assert book.fail("p/k@m", Rest.QUOTA, lambda streak: 10.0 ** 9) == 24 * 3600
    book.cool("p/j", 10.0 ** 9, Rest.AUTH)
    assert 24 * 3600 - 5 < book.remaining("p/j") <= 24 * 3600
