"""A `Call` writes its usage row once, scrubbed, whoever ends it."""

import sqlite_utils
import pytest

from addons.call import Call, FinishedTwice
from addons.scrubber import SecretScrubber
from addons.usage import UsageStore
from translators import canonical

KEY = "sk-provider-secret-0123456789"
CLIENT_KEY = "sk-ant-client-9876543210abcdef"


def test_finish_writes_the_row_once_to_the_store(tmp_path, monkeypatch):
    store = UsageStore(tmp_path / "detour.db")
    call = Call("f1", "claude-cli/2", "anthropic", store.add)
    call.requested("m", True)
    call.answered_by("p", "key1", "pm")
    call.used(canonical.Usage(input_tokens=10, output_tokens=3), 0.5)
    call.status(200)
    row = call.finish()
    assert row is not None and call.done and row.latency_ms is not None
    with pytest.raises(FinishedTwice):
        call.finish()
    monkeypatch.setattr(Call, "strict", False)  # in production: logged, not raised
    assert call.finish() is None
    store.close()
    rows = list(sqlite_utils.Database(tmp_path / "detour.db")["usage"].rows)
    assert len(rows) == 1
    assert (rows[0]["provider"], rows[0]["model_upstream"], rows[0]["input_tokens"],
            rows[0]["cost_usd"], rows[0]["stream"]) == ("p", "pm", 10, 0.5, 1)


def test_the_row_is_scrubbed_of_configured_and_client_secrets():
    rows = []
    call = Call("f1", "ua", "openai-chat", rows.append, SecretScrubber([KEY]), [CLIENT_KEY])
    call.routed(2, [{"provider": "p", "account": "a", "error": f"bad key {KEY}"},
                    {"provider": "passthrough", "account": "client",
                     "error": f"Incorrect API key provided: {CLIENT_KEY[:20]}..."}])
    call.skipped_before_routing([f"q/b: cannot translate {KEY}"])
    call.failed(f"no provider answered: {KEY} and {CLIENT_KEY}", 502)
    call.finish()
    text = repr(rows[0])
    assert KEY not in text and CLIENT_KEY[:20] not in text and "[redacted]" in text
    assert rows[0].status == 502 and rows[0].route[0] == {"skipped": "q/b: cannot translate [redacted]"}


def test_an_ending_cause_never_hides_an_earlier_error():
    call = Call("f1", "ua", "anthropic", lambda row: None)
    call.failed("p/a broke off the stream")
    call.ended("proxy stopped mid-answer")
    call.client_left()
    assert call.row.error == "p/a broke off the stream"


def test_a_client_leaving_after_the_final_event_aborted_nothing():
    call = Call("f1", "ua", "openai-chat", lambda row: None)
    call.deliver()
    call.client_left()
    assert call.row.error is None
    other = Call("f2", "ua", "openai-chat", lambda row: None)
    other.client_left(" before the relay was reached")
    assert other.row.error == "client-aborted before the relay was reached"


def test_first_byte_is_taken_once():
    call = Call("f1", "ua", "anthropic", lambda row: None)
    call.first_byte()
    first = call.row.ttfb_ms
    call.first_byte()
    assert call.row.ttfb_ms == first is not None


def test_dropped_fields_go_on_the_asked_attempts_only():
    call = Call("f1", "ua", "anthropic", lambda row: None)
    call.routed(1, [{"provider": "p", "account": "a", "status": 200},
                    {"provider": "q", "account": "b", "skipped": True}])
    call.noted_dropped({"p/a": ("metadata.user_id",), "q/b": ("x",)})
    assert call.row.route[0]["dropped"] == ["metadata.user_id"]
    assert "dropped" not in call.row.route[1]
