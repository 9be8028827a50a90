"""The one table of what a failed attempt means (rest, provider skipped, client status)."""

import pytest

from addons.failure_policy import DURATIONS, Duration, Failed, Weight, skipped_weight, verdict
from addons.routing import Rest


@pytest.mark.parametrize("status,rest,skip,weight", [
    (400, None, True, Weight.REFUSED),
    (404, None, True, Weight.REFUSED),
    (413, None, True, Weight.REFUSED),
    (422, None, True, Weight.REFUSED),
    (401, Rest.AUTH, False, Weight.FAILED),
    (403, Rest.AUTH, False, Weight.FAILED),
    (402, Rest.QUOTA, False, Weight.LIMIT),
    (429, Rest.RATE_LIMIT, False, Weight.LIMIT),
    (408, Rest.TRANSIENT, False, Weight.FAILED),
    (409, None, False, Weight.FAILED),  # another 4xx blames neither account nor request alone
    (301, None, False, Weight.FAILED),
    (500, Rest.TRANSIENT, False, Weight.FAILED),
    (503, Rest.TRANSIENT, False, Weight.FAILED),
    (529, Rest.TRANSIENT, False, Weight.FAILED),
])
def test_statuses(status, rest, skip, weight):
    v = verdict(status)
    assert (v.rest, v.skip_provider, v.weight) == (rest, skip, weight)


def test_a_429_about_quota_is_exhaustion_not_speed():
    assert verdict(429, message="You exceeded your current Quota").rest is Rest.QUOTA
    assert verdict(429, message="slow down").rest is Rest.RATE_LIMIT


@pytest.mark.parametrize("kind,rest,weight", [
    ("rate_limit_error", Rest.RATE_LIMIT, Weight.LIMIT),
    ("billing_error", Rest.QUOTA, Weight.LIMIT),
    ("authentication_error", Rest.AUTH, Weight.FAILED),
    ("permission_error", Rest.AUTH, Weight.FAILED),
    ("invalid_request_error", None, Weight.FAILED),
    ("not_found_error", None, Weight.FAILED),
    ("request_too_large", None, Weight.FAILED),
    ("overloaded_error", Rest.TRANSIENT, Weight.FAILED),
    ("api_error", Rest.TRANSIENT, Weight.FAILED),
    ("some_future_kind", Rest.TRANSIENT, Weight.FAILED),
])
def test_error_events_before_content_by_kind(kind, rest, weight):
    v = verdict(200, stream_error=kind)  # a 2xx stream that opened with an error
    assert (v.rest, v.skip_provider, v.weight) == (rest, False, weight)


@pytest.mark.parametrize("failed,rest,skip,weight", [
    (Failed.UNTRANSLATABLE, None, True, Weight.REFUSED),
    (Failed.NO_ANSWER_IN_TIME, Rest.TRANSIENT, False, Weight.TIMEOUT),
    (Failed.OVER_BUDGET, None, False, Weight.OVER_BUDGET),
    (Failed.TIMEOUT, Rest.TRANSIENT, False, Weight.FAILED),
    (Failed.UNREACHABLE, Rest.TRANSIENT, False, Weight.UNREACHABLE),
    (Failed.BROKEN, Rest.TRANSIENT, False, Weight.FAILED),
    (Failed.BAD_ANSWER, Rest.TRANSIENT, False, Weight.FAILED),
])
def test_failures_without_a_usable_status(failed, rest, skip, weight):
    for status in (None, 200):  # before or after a 2xx status line
        v = verdict(status, failed=failed)
        assert (v.rest, v.skip_provider, v.weight) == (rest, skip, weight)


def test_a_whole_call_over_budget_never_rests_whatever_came_first():
    assert verdict(200, failed=Failed.OVER_BUDGET).rest is None


def test_every_rest_has_a_duration_rule():
    assert set(DURATIONS) == set(Rest)
    assert DURATIONS[Rest.TRANSIENT] is Duration.BACKOFF
    assert DURATIONS[Rest.AUTH] is Duration.AUTH


def test_skipped_candidates_weigh_by_their_rest():
    assert skipped_weight(Rest.RATE_LIMIT) is Weight.LIMIT
    assert skipped_weight(Rest.QUOTA) is Weight.LIMIT
    assert skipped_weight(Rest.TRANSIENT) is Weight.RESTING
    assert skipped_weight(Rest.AUTH) is Weight.RESTING
