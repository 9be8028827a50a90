"""The one table of what a failed attempt means (rest, provider skipped, client status)."""

import pytest

from addons.failure_policy import (BACKOFFS, MAX_REST, ErrorBody, Failed, Scope, Weight,
                                   rest_seconds, skipped_weight, vendor_wait, verdict)
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
    assert set(BACKOFFS) == set(Rest)
    assert all(b.cap is None or b.cap <= MAX_REST for b in BACKOFFS.values())


def test_backoff_grows_per_kind_and_is_capped():
    # transient: 1 s doubling up to cooldown_seconds
    assert [rest_seconds(Rest.TRANSIENT, n, None, 30) for n in (1, 2, 3, 5, 6, 40)] == [
        1, 2, 4, 16, 30, 30]
    # a rate limit without Retry-After: cooldown_seconds, doubling to an hour
    assert [rest_seconds(Rest.RATE_LIMIT, n, None, 30) for n in (1, 2, 8, 20)] == [
        30, 60, 3600, 3600]
    # an exhausted quota without a reset: 15 min doubling to 24 h
    assert [rest_seconds(Rest.QUOTA, n, None, 30) for n in (1, 2, 3, 8, 30)] == [
        900, 1800, 3600, 86400, 86400]
    assert rest_seconds(Rest.AUTH, 1, None, 30) == 600
    assert rest_seconds(Rest.AUTH, 99, None, 30) == 6 * 3600


def test_the_vendors_wait_wins_up_to_its_cap():
    assert rest_seconds(Rest.RATE_LIMIT, 5, 2.0, 30) == 2.0  # streak or not
    assert rest_seconds(Rest.RATE_LIMIT, 1, 10 ** 6, 30) == 6 * 3600
    assert rest_seconds(Rest.QUOTA, 1, 20 * 3600, 30) == 20 * 3600  # a daily reset
    assert rest_seconds(Rest.QUOTA, 1, 10 ** 7, 30) == MAX_REST
    # transient failures and keys are never rested for what a vendor says
    assert rest_seconds(Rest.TRANSIENT, 1, 500, 30) == 1
    assert rest_seconds(Rest.AUTH, 1, 5, 30) == 600


GEMINI_DAILY = {"error": {
    "code": 429, "status": "RESOURCE_EXHAUSTED",
    "message": "You exceeded your current quota, please check your plan and billing details.",
    "details": [
        {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_free_tier_requests",
            "quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]},
        {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "43s"}]}}
GEMINI_MINUTE = {"error": {**GEMINI_DAILY["error"], "details": [
    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
        "quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7.5s"}]}}


def test_gemini_resource_exhausted_daily_is_a_quota_per_model_with_its_reset():
    body = ErrorBody.read(GEMINI_DAILY)
    assert body.retry_delay == 43 and "resource_exhausted" in body.codes
    v = verdict(429, message=GEMINI_DAILY["error"]["message"], body=body)
    assert (v.rest, v.scope, v.weight) == (Rest.QUOTA, Scope.MODEL, Weight.LIMIT)
    assert vendor_wait({}, body) == 43
    assert vendor_wait({"retry-after": "5"}, body) == 5  # the header first


def test_gemini_resource_exhausted_per_minute_is_a_rate_limit():
    body = ErrorBody.read([GEMINI_MINUTE])  # Gemini may answer a list
    v = verdict(429, message="You exceeded your current quota", body=body)
    assert (v.rest, v.scope) == (Rest.RATE_LIMIT, Scope.MODEL)
    assert vendor_wait({}, body) == 7.5


@pytest.mark.parametrize("status,body,message", [
    (429, {"error": {"type": "insufficient_quota", "code": "insufficient_quota",
                     "message": "You exceeded your current quota, please check your plan and "
                                "billing details."}}, "You exceeded your current quota"),
    (400, {"type": "error", "error": {"type": "invalid_request_error", "message":
                                      "Your credit balance is too low to access the Anthropic "
                                      "API."}}, "Your credit balance is too low"),
    (402, {"error": {"code": 402, "message": "Insufficient credits"}}, "Insufficient credits"),
    (403, {"error": {"code": "billing_not_active", "message": "no"}}, "no"),
])
def test_billing_and_balance_rest_the_whole_account(status, body, message):
    v = verdict(status, message=message, body=ErrorBody.read(body))
    assert (v.rest, v.scope, v.weight, v.skip_provider) == (
        Rest.QUOTA, Scope.ACCOUNT, Weight.LIMIT, False)


def test_scopes_rate_limits_per_model_keys_per_account():
    assert verdict(429).scope is Scope.MODEL
    assert verdict(503).scope is Scope.MODEL
    assert verdict(200, stream_error="rate_limit_error").scope is Scope.MODEL
    assert verdict(401).scope is Scope.ACCOUNT
    assert verdict(200, stream_error="billing_error").scope is Scope.ACCOUNT
    assert verdict(None, failed=Failed.UNREACHABLE).scope is Scope.ACCOUNT
    # a 5xx that says "billing" is still a server failure
    assert verdict(500, message="billing service down").rest is Rest.TRANSIENT


def test_retry_after_ms_and_unreadable_bodies():
    assert vendor_wait({"retry-after-ms": "1500"}, ErrorBody()) == 1.5
    assert vendor_wait({}, ErrorBody()) is None
    for junk in (None, 3, "x", [], [1], {"error": "text"}, {"error": {"details": [1, {}]}}):
        assert ErrorBody.read(junk).codes == frozenset()


def test_skipped_candidates_weigh_by_their_rest():
    assert skipped_weight(Rest.RATE_LIMIT) is Weight.LIMIT
    assert skipped_weight(Rest.QUOTA) is Weight.LIMIT
    assert skipped_weight(Rest.TRANSIENT) is Weight.RESTING
    assert skipped_weight(Rest.AUTH) is Weight.RESTING
