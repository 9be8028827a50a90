"""The users file: what detour writes, mitmproxy's own htpasswd reader (proxyauth) accepts,
with the same secrets; limits ride in the third field. And the limits' fixed windows."""

import calendar

import pytest
from mitmproxy.utils.htpasswd import HtpasswdFile

from addons.user_limits import LocalCounters, Windows, spent_tokens
from addons.usage import UsageRow
from addons.users import (NO_LIMIT, User, UserLimits, UsersError, hash_secret, new_secret,
                          parse_users, read_users, render_users, with_limits, write_users)


def test_mitmproxys_reader_takes_the_file_detour_writes(tmp_path):
    secret = new_secret()
    users = {"alice": User("alice", hash_secret(secret), UserLimits(rpm=60, usd_per_month=2.5)),
             "bob": User("bob", hash_secret("other"))}
    path = tmp_path / "users.htpasswd"
    write_users(path, users)
    assert path.stat().st_mode & 0o777 == 0o600
    mitm = HtpasswdFile.from_file(path)
    assert mitm.check_password("alice", secret)
    assert not mitm.check_password("alice", "other") and mitm.check_password("bob", "other")
    back = read_users(path)
    assert back["alice"].limits == UserLimits(rpm=60, usd_per_month=2.5)
    assert back["alice"].check(secret) and not back["alice"].check(secret + "x")
    assert secret not in path.read_text() and secret not in repr(back)


def test_no_file_is_no_users_and_a_bad_line_names_itself(tmp_path):
    assert read_users(tmp_path / "none") is None
    with pytest.raises(UsersError, match="line 2"):
        parse_users("# comment\nalice:plaintext\n", "users")
    with pytest.raises(UsersError, match="unknown limit 'rpn=3'"):
        parse_users(f"a:{hash_secret('s')}:rpn=3\n", "users")


def test_limits_change_and_go():
    user = User("a", "h", UserLimits(rpm=5, tokens_per_day=10))
    changed = with_limits(user, rpm=NO_LIMIT, usd_per_month=0.0, tokens_per_day=None)
    assert changed.limits == UserLimits(tokens_per_day=10, usd_per_month=0.0)
    assert "usd_per_month=0" in render_users({"a": changed})


def test_windows_are_utc_and_end_where_they_should():
    now = calendar.timegm((2026, 12, 31, 23, 59, 30)) + 0.5
    w = Windows.at(now)
    assert (w.day, w.month) == ("2026-12-31", "2026-12")
    assert w.minute_ends - now == 29.5
    assert w.day_ends == w.month_ends == calendar.timegm((2027, 1, 1, 0, 0, 0))


def test_local_counters_refuse_spent_windows_and_roll_over():
    counters, limits = LocalCounters(), UserLimits(rpm=2, tokens_per_day=100)
    t = calendar.timegm((2026, 6, 1, 12, 0, 0))
    assert counters.admit("a", limits, t) is None and counters.admit("a", limits, t) is None
    refused = counters.admit("a", limits, t + 1)
    assert (refused.limit, refused.retry_after) == ("rpm", 59)
    assert "2 requests per minute" in refused.message
    assert counters.admit("a", limits, t + 60) is None  # the next minute
    counters.record("a", 100, 0.0, t + 61)
    assert counters.admit("a", limits, t + 62).limit == "tokens_per_day"
    assert counters.admit("a", limits, t + 86400) is None  # the next day
    assert counters.admit("b", limits, t) is None  # users apart


def test_tokens_count_every_processed_token():
    row = UsageRow("ts", "f", "c", "fmt", "m", False, input_tokens=3, output_tokens=4,
                   cache_read_tokens=5, cache_write_tokens=6)
    assert spent_tokens(row) == 18
