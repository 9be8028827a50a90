"""Each policy step on its own, and the fixed order they run in, for translated (canonical)
and same-format (body) calls."""

import dataclasses

from addons import policies
from addons.config import Provider
from translators import anthropic, openai_chat
from translators import canonical as c

BILLING = c.Text("x-anthropic-billing-header: cc_version=2; cch=abc;")
REQ = c.Request("claude-x", (c.Message("user", (c.Text("hi"),)),), system=(BILLING, c.Text("sys")),
                max_tokens=64000, reasoning_effort="high", user="device-and-account",
                extras={"anthropic:context_management": {"x": 1}, "openai_chat:seed": 3})


def target(client=anthropic, provider=openai_chat, **spec) -> policies.Target:
    spec.setdefault("base_url", "https://api.deepseek.com/v1")
    return policies.Target(client, provider, Provider(kind="openai", **spec), "up-model", True)


def step(fn, req=REQ, t=None):
    changes, dropped = {}, []
    fn(req, t or target(), changes, dropped)
    return changes, dropped


def test_foreign_fields_are_named():
    assert step(policies.foreign_fields) == ({}, ["context_management"])


def test_the_end_user_id_is_dropped_and_named_in_the_clients_terms():
    assert step(policies.end_user_id) == ({"user": None}, ["metadata.user_id"])
    chat = target(client=openai_chat, provider=anthropic)
    assert step(policies.end_user_id, t=chat) == ({"user": None}, ["user"])
    assert step(policies.end_user_id, dataclasses.replace(REQ, user=None)) == ({"user": None}, [])


def test_reasoning_effort_drop_pass_or_set():
    assert step(policies.reasoning_effort) == ({"reasoning_effort": None}, [])
    assert step(policies.reasoning_effort, t=target(reasoning_effort="pass")) == ({}, [])
    assert step(policies.reasoning_effort, t=target(reasoning_effort="low")) == (
        {"reasoning_effort": "low"}, [])


def test_output_cap_lowers_or_sets_never_raises():
    assert step(policies.output_cap) == ({}, [])
    assert step(policies.output_cap, t=target(max_output_tokens=8192)) == ({"max_tokens": 8192}, [])
    unasked = dataclasses.replace(REQ, max_tokens=None)
    assert step(policies.output_cap, unasked, target(max_output_tokens=8192)) == (
        {"max_tokens": 8192}, [])
    low = dataclasses.replace(REQ, max_tokens=100)
    assert step(policies.output_cap, low, target(max_output_tokens=8192)) == ({}, [])


def test_billing_header_goes_except_to_anthropic_itself():
    changes, dropped = step(policies.billing_header)
    assert changes == {"system": (c.Text("sys"),)} and dropped == ["system[billing-header]"]
    to_anthropic = target(provider=anthropic, base_url="https://api.anthropic.com")
    assert step(policies.billing_header, t=to_anthropic) == ({}, [])
    assert step(policies.billing_header, t=target(client=openai_chat)) == ({}, [])


def test_apply_runs_every_step_in_order():
    req, dropped = policies.apply(REQ, target(max_output_tokens=8192))
    assert dropped == ("context_management", "metadata.user_id", "system[billing-header]")
    assert (req.model, req.stream, req.user, req.reasoning_effort, req.max_tokens) == (
        "up-model", True, None, None, 8192)
    assert req.system == (c.Text("sys"),) and REQ.system[0] is BILLING  # the input is kept
    assert [s.__name__ for s in policies.CANONICAL_STEPS] == [
        "foreign_fields", "end_user_id", "reasoning_effort", "output_cap", "billing_header",
        "prompt_cache_key"]


BODY = {"model": "claude-x", "max_tokens": 64000, "metadata": {"user_id": "u"},
        "system": [{"type": "text", "text": BILLING.text}, {"type": "text", "text": "sys"}],
        "messages": [{"role": "user", "content": "hi"}]}


def test_same_format_body_changes_only_what_a_policy_says():
    ant = target(provider=anthropic, base_url="https://api.anthropic.com")
    unchanged = dict(BODY, model="up-model", max_tokens=100)
    assert policies.apply_to_body(unchanged, ant) == (unchanged, ())
    assert policies.apply_to_body(unchanged, ant)[0] is unchanged
    gateway = target(provider=anthropic, base_url="https://gw.test", max_output_tokens=8192)
    body, dropped = policies.apply_to_body(BODY, gateway)
    assert dropped == ("system[billing-header]",)
    assert body == dict(BODY, model="up-model", max_tokens=8192,
                        system=[{"type": "text", "text": "sys"}])
    assert body["metadata"] == {"user_id": "u"}  # same format: the vendor's own field stays
    assert BODY["system"][0]["text"] == BILLING.text
