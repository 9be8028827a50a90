import json
import os
import time

from addons.request_log import StreamTee, redact_body, redacted, sweep
from addons.scrubber import SecretScrubber

KNOWN = SecretScrubber(["configured-provider-secret-1234"])
# shaped like an Anthropic API key (what the log must spot anywhere), joined at run time so that
# the tree holds no key-shaped literal
KEY_SHAPED = "-".join(("sk", "ant", "api03", "abcdefghijklmnop"))


def test_json_bodies_lose_secret_fields_and_anything_shaped_like_a_key():
    body = json.dumps({"model": "m", "max_tokens": 100, "refresh_token": "opaque-value-1",
                       "client_secret": "cs-1", "nested": [{"api_key": "k-1", "x": 1}],
                       "messages": [{"content": f"use {KEY_SHAPED} or "
                                                "configured-provider-secret-1234"}]})
    out = json.loads(redact_body(body, KNOWN))
    assert out["refresh_token"] == out["client_secret"] == out["nested"][0]["api_key"] == \
        "[redacted]"
    assert out["max_tokens"] == 100 and out["model"] == "m" and out["nested"][0]["x"] == 1
    assert out["messages"][0]["content"] == "use [redacted] or [redacted]"


def test_form_bodies_keep_only_public_fields():
    body = "grant_type=authorization_code&code=abc&code_verifier=xyz&client_id=c1&redirect_uri=u"
    assert redact_body(body, KNOWN) == ("grant_type=authorization_code&code=%5Bredacted%5D"
                                        "&code_verifier=%5Bredacted%5D&client_id=c1"
                                        "&redirect_uri=u")


def test_streams_and_headers():
    sse = 'data: {"access_token": "ya29.invented-access-token"}\n\n'
    assert "ya29" not in redact_body(sse, KNOWN)
    record = {"flow_id": "f", "ts": "2026-12-01T00:00:00Z", "request": {
        "method": "POST", "url": "u", "body": "{}",
        "headers": [["Authorization", "Bearer abc"], ["X-Goog-Api-Key", "AIza1"],
                    ["x-session-token", "s"], ["user-agent", "curl/8"]]}}
    headers = dict(redacted(record, KNOWN)["request"]["headers"])
    assert headers == {"Authorization": "[redacted]", "X-Goog-Api-Key": "[redacted]",
                       "x-session-token": "[redacted]", "user-agent": "curl/8"}


def test_sweep_by_age_then_size(tmp_path):
    now = time.time()
    for day, age, size in (("2026-11-01", 30 * 86400, 10), ("2026-11-28", 3 * 86400, 400),
                           ("2026-11-30", 86400, 400), ("2026-12-01", 60, 400)):
        (tmp_path / day).mkdir()
        path = tmp_path / day / f"000000-{day}.json"
        path.write_bytes(b"x" * size)
        os.utime(path, (now - age, now - age))
    sweep(tmp_path, max_age=7 * 86400, max_bytes=900)
    # the 30-day-old file is too old; then the oldest goes until the rest fit 900 bytes
    assert sorted(p.name for p in tmp_path.glob("*/*.json")) == [
        "000000-2026-11-30.json", "000000-2026-12-01.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2026-11-30", "2026-12-01"]


def test_off_by_default_with_no_flow_hooks_at_all():
    from mitmproxy.test import taddons

    from addons.request_log import RequestLog
    from addons.settings import DetourSettings

    addon = RequestLog(DetourSettings())
    with taddons.context(addon) as tctx:
        tctx.configure(addon)
        assert addon.requestheaders is None and addon.request is None
        assert addon._tail.responseheaders is None and addon._tail.response is None
        tctx.configure(addon, detour_request_log=True)
        assert callable(addon.requestheaders) and callable(addon._tail.response)
        tctx.configure(addon, detour_request_log=False)
        assert addon.requestheaders is None and addon._tail.error is None


def test_the_tee_keeps_what_a_list_returning_stream_callable_sends():
    """The direct path's stream callable returns a list mid-stream (`[]` holds back): the tee
    keeps its bytes and hands the list on unchanged."""
    answers = iter([[b"event: a\n\n"], [], [b"event: b\n\n", b""], b"tail"])
    tee = StreamTee(lambda chunk: next(answers), limit=14)
    assert tee(b"x") == [b"event: a\n\n"]
    assert tee(b"y") == []
    assert tee(b"z") == [b"event: b\n\n", b""]
    assert tee(b"") == b"tail"
    assert bytes(tee.kept) == b"event: a\n\nevent: b\n\n"[:14] and tee.cut
