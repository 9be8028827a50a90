"""The format table's Codex rows (both hosts, the WebSocket upgrade, compaction, model lists),
the `codex` provider kind (ChatGPT token, backend rules) and the side calls' pure helpers."""

import json

import orjson

from addons import formats, side_calls
from addons.config import parse_config
from tests.fakes.codex_backend import chatgpt_token, fake_jwt


def test_codex_endpoints_on_both_hosts():
    for host, base in (("api.openai.com", "/v1"), ("chatgpt.com", "/backend-api/codex")):
        post = formats.client_call(host, "POST", base + "/responses")
        assert post.endpoint.kind == formats.MODEL_CALL
        assert post.client_format == "openai-responses"
        assert formats.client_call(host, "GET", base + "/responses").endpoint.kind == \
            formats.SOCKET_UPGRADE
        assert formats.client_call(host, "POST", base + "/responses/compact").endpoint.kind == \
            formats.COMPACTION
    assert formats.client_call("api.openai.com", "GET", "/v1/models").endpoint.kind == \
        formats.MODEL_LIST
    # Codex's account check and catalogue are detour's to answer when its models are rerouted
    assert formats.client_call("chatgpt.com", "GET", "/backend-api/wham/accounts/check"
                               ).endpoint.kind == formats.ACCOUNT_CHECK
    assert formats.client_call("chatgpt.com", "GET", "/backend-api/codex/models?client_version=1"
                               ).endpoint.kind == formats.MODEL_LIST
    # the backend's other paths pass through
    assert formats.client_call("chatgpt.com", "GET", "/backend-api/wham/settings/user") is None
    assert "chatgpt.com" in formats.HANDLED_HOSTS


def test_the_codex_kind_sends_the_token_and_its_account():
    kind = formats.provider_kind("codex")
    assert kind.codec.NAME == "openai-responses"
    assert kind.url("https://chatgpt.com/backend-api/codex", "gpt-5") == \
        "https://chatgpt.com/backend-api/codex/responses"
    headers: dict = {}
    kind.credential.apply(chatgpt_token("acct-9"), headers, {})
    assert headers == {"authorization": "Bearer " + chatgpt_token("acct-9"),
                       "chatgpt-account-id": "acct-9"}
    no_claim: dict = {}
    kind.credential.apply("not-a-jwt", no_claim, {})
    assert no_claim == {"authorization": "Bearer not-a-jwt"}
    assert formats.chatgpt_account_id(fake_jwt({"sub": "x"})) is None
    parse_config("providers:\n  c: {kind: codex, base_url: 'https://chatgpt.com/backend-api/"
                 "codex', api_keys: [t]}\nroutes: {'*': [c/gpt-5]}\n")


def test_the_backend_rules_fit_a_body_and_leave_a_fitting_one_alone():
    kind = formats.provider_kind("codex")
    fine = {"model": "m", "stream": True, "store": False, "input": []}
    assert kind.fit_body(fine, ()) == (fine, ())
    assert kind.fit_body(fine, ())[0] is fine  # its bytes go as they came
    fitted, dropped = kind.fit_body({"model": "m", "stream": False, "max_output_tokens": 9},
                                    ("x",))
    assert fitted == {"model": "m", "stream": True, "store": False}
    assert dropped == ("x", "max_output_tokens")
    plain = formats.provider_kind("openai-responses")
    body = {"model": "m", "max_output_tokens": 9}
    assert plain.fit_body(body, ())[0] is body


CONFIG = """
providers:
  p: {kind: openai, base_url: "https://p.test/v1", api_keys: [k]}
clients:
  codex: {match: "codex_*", routes: {gpt-6.1-sol: [p/a], "gpt-5*": [p/b, passthrough]}}
combos:
  coding: [p/c]
routes:
  claude-*: [p/*]
  sdk: [p/d]
  "*": [passthrough]
"""


def test_routed_models_per_client():
    config = parse_config(CONFIG)
    names, vendor = side_calls.routed_models(config, "codex_exec/0.169.0")
    assert names == ["gpt-6.1-sol", "b", "coding", "sdk"] and vendor is True
    names, vendor = side_calls.routed_models(config, "OpenAI/Python 1.0")
    assert names == ["coding", "sdk"] and vendor is True
    closed = parse_config(CONFIG.replace('"*": [passthrough]', '"*": [p/e]'))
    assert side_calls.routed_models(closed, "x") == (["coding", "sdk", "e"], False)


def test_model_lists_merge_into_the_vendors():
    vendor = orjson.dumps({"object": "list", "data": [{"id": "gpt-5", "object": "model"}]})
    merged = json.loads(side_calls.merged_model_list(vendor, ["mine", "gpt-5"]))
    assert [m["id"] for m in merged["data"]] == ["mine", "gpt-5"]
    assert side_calls.merged_model_list(b"<html>", ["mine"]) is None
    assert side_calls.merged_model_list(b'{"models": []}', ["mine"]) is None
    listed = json.loads(side_calls.model_list_body(["a"]))
    assert listed["object"] == "list" and listed["data"][0]["id"] == "a"


def test_compaction_request_and_history():
    body = {"model": "m", "instructions": "be Codex", "prompt_cache_key": "conv-1",
            "input": [{"type": "message", "role": "user", "content": "do it"}]}
    asked = side_calls.summary_request(body)
    assert asked["instructions"] == "be Codex" and asked["stream"] is False
    assert asked["prompt_cache_key"] == "conv-1"
    assert asked["input"][:1] == body["input"]
    assert "CONTEXT CHECKPOINT COMPACTION" in asked["input"][-1]["content"][0]["text"]
    answer = orjson.dumps({"id": "r", "object": "response", "status": "completed", "output": [
        {"type": "message", "role": "assistant",
         "content": [{"type": "output_text", "text": "the summary"}]}],
        "usage": {"input_tokens": 5, "output_tokens": 2}})
    out = json.loads(side_calls.compacted_history(body, answer))
    assert [i["content"][0]["text"] for i in out["output"]] == [
        "do it", side_calls.SUMMARY_PREFIX + "the summary"]
    assert out["usage"] == {"input_tokens": 5, "output_tokens": 2}


def test_codex_catalogue_and_account_check_answered_locally():
    assert json.loads(side_calls.model_list_body(["a"], codex_shape=True)) == {"models": []}
    check = json.loads(side_calls.account_check_body("Bearer " + chatgpt_token("acct-7")))
    assert check == {"accounts": [{"id": "acct-7", "workspace_backend_origin":
                                   "https://chatgpt.com",
                                   "account_routing_override": "NO_CONSTRAINT"}]}
    assert json.loads(side_calls.account_check_body("Bearer opaque")) == {"accounts": []}
