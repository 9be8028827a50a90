"""Gemini CLI's Code Assist envelope over the Gemini codec: requests both ways with the
envelope's fields kept, answers and streams wrapped and unwrapped, the same-format rewrite."""

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.captures import CAPTURES, checked_events
from translators import canonical as c
from translators import codec, gemini
from translators import gemini_code_assist as ca

BODIES = {p.name: json.loads(p.read_text())
          for p in sorted(CAPTURES.glob("gemini-cli.*.request.json"))}
STREAMS = {p.name: p.read_bytes()
           for p in sorted(CAPTURES.glob("gemini-cli.streamGenerateContent.*.response.txt"))}


def wrapped(body: dict) -> dict:
    return {"model": "gemini-2.5-pro", "project": "proj-7", "user_prompt_id": "u-1",
            "request": dict(body, session_id="sess-1")}


def test_the_codec_contract():
    assert codec.missing(ca) == []


@pytest.mark.parametrize("name", sorted(BODIES))
def test_envelopes_decode_and_encode_back(name):
    env = wrapped(BODIES[name])
    assert ca.sniff_request(env) and not gemini.sniff_request(env)
    req = ca.decode_request(env)
    assert req.model == "gemini-2.5-pro"
    assert req.messages == gemini.decode_request(BODIES[name]).messages
    again = ca.encode_request(req)
    assert {k: again[k] for k in ("model", "project", "user_prompt_id")} == {
        k: env[k] for k in ("model", "project", "user_prompt_id")}
    assert again["request"]["session_id"] == "sess-1"
    assert again["request"]["contents"] == gemini.encode_request(req)["contents"]
    # to the Gemini API, the envelope's fields are named as not sent
    assert {"project", "user_prompt_id"} <= set(c.foreign_fields(req, gemini.EXTRAS_PREFIX))
    assert "session_id" not in gemini.encode_request(req)


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_streams_wrap_and_unwrap(name):
    events = checked_events(gemini, STREAMS[name])
    data = ca.StreamEncoder().encode_all(events)
    for line in data.decode().splitlines():
        if line.startswith("data: "):
            assert set(json.loads(line[6:])) == {"response", "traceId"}
    assert ca.sniff_stream(data) and not gemini.sniff_stream(data)
    back = checked_events(ca, data)
    assert c.collect_response(back).parts == c.collect_response(events).parts
    one = ca.StreamDecoder()
    pieces = [e for i in range(len(data)) for e in one.feed(data[i:i + 1])] + one.close()
    assert len(pieces) == len(back) and c.collect_response(pieces).usage == \
        c.collect_response(events).usage


def test_whole_answers_and_errors():
    resp = c.Response("trace-1", "m", (c.Text("hi"),), "end_turn", c.Usage(3, 2))
    body = ca.encode_response(resp)
    assert body["traceId"] == "trace-1" and body["response"]["candidates"]
    assert ca.decode_response(body) == resp
    with pytest.raises(c.TranslationError, match="quota"):
        ca.decode_response({"error": {"code": 429, "message": "quota", "status":
                                      "RESOURCE_EXHAUSTED"}})
    assert json.loads(ca.error_body(403, "no"))["error"]["status"] == "PERMISSION_DENIED"


def test_rewrite_changes_the_model_and_a_lower_cap_only():
    env = wrapped({"contents": [], "generationConfig": {"maxOutputTokens": 9000}})
    assert ca.rewrite_request(env) is env and ca.rewrite_request(env, model=env["model"]) is env
    out = ca.rewrite_request(env, model="other", max_tokens=100)
    assert out["model"] == "other" and out["request"]["generationConfig"] == {
        "maxOutputTokens": 100}
    assert env["request"]["generationConfig"] == {"maxOutputTokens": 9000}


def test_setup_answers_let_gemini_cli_go_on():
    load = json.loads(ca.setup_answer("loadCodeAssist"))
    assert load["currentTier"]["id"] and load["cloudaicompanionProject"] == ca.LOCAL_PROJECT
    assert json.loads(ca.setup_answer("onboardUser"))["done"] is True
    assert json.loads(ca.setup_answer("recordCodeAssistMetrics")) == {}
    assert ca.count_tokens_model({"request": {"model": "models/gemini-x"}}) == "gemini-x"


# ---------------------------------------------------------------- the envelope a provider gets


def test_the_envelope_names_the_accounts_project_not_the_clients():
    client = {"model": "gemini-2.5-pro", "project": "the-clients-own",
              "user_prompt_id": "u-1", "enabled_credit_types": ["GOOGLE_ONE_AI"],
              "request": {"contents": [], "session_id": "s-1"}}
    sent = ca.for_project(client, "the-accounts")
    assert sent == {"model": "gemini-2.5-pro", "project": "the-accounts",
                    "user_prompt_id": "u-1", "request": {"contents": [], "session_id": "s-1"}}
    assert list(sent)[:2] == ["model", "project"]
    assert client["project"] == "the-clients-own"  # the client's body is not changed


def test_an_encoded_request_gets_the_project_and_no_project_yet_names_none():
    req = c.Request(model="gemini-2.5-pro", messages=(c.Message("user", (c.Text("hi"),)),))
    wire = ca.encode_request(req)
    assert "project" not in wire
    assert ca.for_project(wire, "p-9")["project"] == "p-9"
    assert "project" not in ca.for_project(dict(wire, project="stale"), None)


@given(st.dictionaries(st.sampled_from(["model", "project", "user_prompt_id", "request",
                                        "enabled_credit_types"]) | st.text(max_size=12),
                       st.none() | st.integers() | st.text(max_size=12), max_size=8),
       st.none() | st.text(min_size=1, max_size=30))
def test_for_project_keeps_every_other_field(body, project):
    sent = ca.for_project(body, project)
    assert sent.get("project") == project
    assert "enabled_credit_types" not in sent and sent["model"] == body.get("model")
    kept = {k: v for k, v in body.items() if k not in ("project", "enabled_credit_types")}
    assert {k: v for k, v in sent.items() if k != "project"} == dict(kept, model=body.get(
        "model"))
