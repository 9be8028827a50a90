"""What detour changes in a client's request before a provider gets it, in one place and one
fixed order, whatever the pair of formats: no encoder repeats these.

A translated call (client and provider formats differ) goes through `CANONICAL_STEPS`, each a
canonical -> canonical change; a same-format call keeps the client's bytes and goes through
`BODY_STEPS` on the decoded body, then the codec's `rewrite_request` (model, output cap), so
the rest is sent as the client wrote it. Each step notes what of the client's request it left
out (shown in the route story as "dropped").
"""

import dataclasses
import hashlib
from dataclasses import dataclass
from types import ModuleType
from typing import Any
from urllib.parse import urlsplit

import orjson

from addons.config import Provider
from translators import anthropic, canonical, openai_responses

# Claude Code's first system block: `x-anthropic-billing-header: cc_version=...; cch=...;`
BILLING_HEADER = "x-anthropic-billing-header:"
BILLING_HEADER_NOTE = "system[billing-header]"
ANTHROPIC_API_HOST = "api.anthropic.com"


@dataclass(frozen=True, slots=True)
class Target:
    """What the policies know of one candidate: whose request it is and where it goes."""

    client: ModuleType  # the client's codec
    provider: ModuleType  # the provider's codec
    spec: Provider
    model: str  # the upstream model
    stream: bool

    @property
    def drops_billing_header(self) -> bool:
        # Claude Code's billing header changes on every call and opens the system prompt: sent
        # to any other provider it would keep its prompt cache from ever hitting
        return (self.client is anthropic
                and urlsplit(self.spec.base_url).hostname != ANTHROPIC_API_HOST)


Changes = dict[str, Any]


# ---------------------------------------------------------------- translated calls


def foreign_fields(req: canonical.Request, t: Target, changes: Changes, dropped: list) -> None:
    """The client's fields the provider's format has no place for are named (not sent)."""
    dropped += canonical.foreign_fields(req, t.provider.EXTRAS_PREFIX)


def end_user_id(req: canonical.Request, t: Target, changes: Changes, dropped: list) -> None:
    """The end user's id is not sent on: Claude Code's metadata.user_id carries its device and
    account ids, which have no business at another vendor."""
    if req.user is not None:
        dropped.append(t.client.USER_FIELD)
    changes["user"] = None


def reasoning_effort(req: canonical.Request, t: Target, changes: Changes, dropped: list) -> None:
    """The provider's `reasoning_effort`: drop (models without reasoning refuse the field;
    Claude Code always asks "high"), pass, or the effort to send."""
    effort = t.spec.reasoning_effort
    if effort == "drop":
        changes["reasoning_effort"] = None
    elif effort != "pass":
        changes["reasoning_effort"] = effort


def output_cap(req: canonical.Request, t: Target, changes: Changes, dropped: list) -> None:
    """The provider's max_output_tokens caps what the client asked (or sets it, unasked)."""
    cap = t.spec.max_output_tokens
    if cap and (req.max_tokens is None or req.max_tokens > cap):
        changes["max_tokens"] = cap


def billing_header(req: canonical.Request, t: Target, changes: Changes, dropped: list) -> None:
    if t.drops_billing_header:
        system = tuple(b for b in req.system if not b.text.startswith(BILLING_HEADER))
        if len(system) != len(req.system):
            changes["system"] = system
            dropped.append(BILLING_HEADER_NOTE)


CACHE_KEY = "prompt_cache_key"


def conversation_key(system: str, first_message: str) -> str:
    """A Responses prompt_cache_key for one conversation: what opens it (the system prompt and
    the first message) does not change from turn to turn, so neither does the key, and
    OpenAI's cache keeps routing the conversation's calls to where its prefix is cached."""
    digest = hashlib.sha256(f"{system}\x00{first_message}".encode()).hexdigest()
    return "detour-" + digest[:32]


def _texts(parts) -> str:
    return "\n".join(p.text for p in parts if type(p) is canonical.Text)


def prompt_cache_key(req: canonical.Request, t: Target, changes: Changes, dropped: list) -> None:
    """A Responses provider (OpenAI, the ChatGPT backend) gets a prompt_cache_key stable for
    the conversation when the client gave none (Claude Code, Chat clients): a fresh one per
    call, or none, would keep its prompt cache from hitting. After billing_header: the
    system prompt without the header that changes on every call."""
    key = openai_responses.EXTRAS_PREFIX + CACHE_KEY
    if t.provider is not openai_responses or key in req.extras:
        return
    system = changes.get("system", req.system)
    first = req.messages[0].parts if req.messages else ()
    changes["extras"] = {**req.extras, key: conversation_key(_texts(system), _texts(first))}


CANONICAL_STEPS = (foreign_fields, end_user_id, reasoning_effort, output_cap, billing_header,
                   prompt_cache_key)


def apply(req: canonical.Request, t: Target) -> tuple[canonical.Request, tuple[str, ...]]:
    """A translated call's request as the provider gets it, and what was left out."""
    changes: Changes = {"model": t.model, "stream": t.stream}
    dropped: list[str] = []
    for step in CANONICAL_STEPS:
        step(req, t, changes, dropped)
    return dataclasses.replace(req, **changes), tuple(dropped)


# ---------------------------------------------------------------- same-format calls


def billing_header_body(body: dict, t: Target, dropped: list) -> dict:
    """billing_header on an Anthropic body (`body` itself when it has none)."""
    if not t.drops_billing_header:
        return body
    system = body.get("system")
    if isinstance(system, list) and any(_is_billing(b) for b in system):
        dropped.append(BILLING_HEADER_NOTE)
        return dict(body, system=[b for b in system if not _is_billing(b)])
    return body


def _is_billing(block: Any) -> bool:
    return isinstance(block, dict) and str(block.get("text", "")).startswith(BILLING_HEADER)


def prompt_cache_key_body(body: dict, t: Target, dropped: list) -> dict:
    """prompt_cache_key on a Responses body that has none (an SDK client's)."""
    if t.provider is not openai_responses or CACHE_KEY in body:
        return body
    # read off the raw fields: decoding a 40 KB body costs more than the rest of the call
    items = body.get("input")
    first = items[0] if isinstance(items, list) and items else items
    system = body.get("instructions")
    return dict(body, **{CACHE_KEY: conversation_key(
        system if isinstance(system, str) else "",
        first if isinstance(first, str) else orjson.dumps(first, option=orjson.OPT_SORT_KEYS)
        .decode())})


def detour_summaries_body(body: dict, t: Target, dropped: list) -> dict:
    """A compaction item detour made for Codex (another provider summarised its history)
    means nothing to OpenAI, which would try to decrypt it: it goes as the user message it
    stands for."""
    items = body.get("input")
    if t.provider is not openai_responses or not isinstance(items, list):
        return body
    out = None
    for i, item in enumerate(items):
        if isinstance(item, dict) and item.get("type") == "compaction" and (
                summary := openai_responses.detour_summary(item)) is not None:
            out = out or list(items)
            out[i] = {"type": "message", "role": "user", "content": [
                {"type": "input_text", "text": openai_responses.SUMMARY_PREFIX + summary}]}
    return body if out is None else dict(body, input=out)


# the end user's id and the reasoning effort stay as sent: the provider speaks the client's
# format and takes what the client's vendor takes
BODY_STEPS = (billing_header_body, prompt_cache_key_body, detour_summaries_body)


def apply_to_body(body: dict, t: Target) -> tuple[dict, tuple[str, ...]]:
    """A same-format call's body as the provider gets it (`body` itself when unchanged: its
    bytes go as they came), and what was left out."""
    dropped: list[str] = []
    for step in BODY_STEPS:
        body = step(body, t, dropped)
    body = t.provider.rewrite_request(body, model=t.model, max_tokens=t.spec.max_output_tokens)
    return body, tuple(dropped)
