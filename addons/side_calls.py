"""Calls on a model endpoint's host that are not model calls but that detour answers itself,
because what the vendor would say is wrong once the model is rerouted (the format table marks
them: formats.SOCKET_UPGRADE, MODEL_LIST, COMPACTION).

- The WebSocket mode of `/v1/responses` (Codex opens one before each turn, `Upgrade:
  websocket`): answered 426 in the client's format. Codex then falls back to HTTPS POST at
  once, with no retry (a 404 or 501 costs five reconnects and ~7 s), and the POST is a model
  call detour routes like any other. Observe mode included: the POST is what detour reads.
- Model lists (`GET /v1/models`): the models detour routes for the asking client (its own
  routes, combos, the global routes; glob routes contribute the upstream models they name).
  When passthrough is a candidate of the client's catch-all route, the vendor's own list is
  fetched (the request goes on untouched) and detour's names are added to it on the way back.
  Codex's own catalogue (`chatgpt.com/backend-api/codex/models`, asked in both of its modes)
  is answered empty when its models are rerouted (Codex keeps its bundled list; a detour
  answer saves it ~9 s of retries when chatgpt.com is out of reach), else passed through.
- Codex's ChatGPT account check (`wham/accounts/check`, needed before its first prompt) is
  answered from the client's own token when its models are rerouted, else passed through.
- Compaction (`POST /v1/responses/compact`, Codex's remote compaction of a long session): a
  provider of another format has no such endpoint, so the history is sent to the routed
  provider as an ordinary request asking for a handoff summary, and the answer comes back as
  the compacted history Codex expects: its own user messages, then the summary. A route
  whose candidates are all passthrough sends the call to the vendor untouched.

Pure helpers plus one small class the interceptor asks; no provider I/O of its own (the
compaction's summary request goes through the forwarder like every model call).
"""

import time
import uuid

import orjson
from mitmproxy import http

from addons import formats
from addons.config import PASSTHROUGH, Config
from translators import canonical, openai_responses

# Codex's own compaction words (the codec answers its compaction_trigger with them too)
SUMMARY_PROMPT = openai_responses.SUMMARY_PROMPT
SUMMARY_PREFIX = openai_responses.SUMMARY_PREFIX
# Codex marks the context it injects (environment, instructions) with these: not user words
_INJECTED = ("<environment_context>", "<user_instructions>", "# AGENTS.md", "<permissions")


def is_socket_upgrade(headers) -> bool:
    return "websocket" in headers.get("upgrade", "").lower()


def refuse_socket(flow: http.HTTPFlow, fmt: str, id_header: str) -> None:
    """426: use HTTPS. Codex falls back at once (measured with Codex 0.169: one attempt)."""
    mod = formats.CODECS[fmt]
    flow.response = http.Response.make(
        426, mod.error_body(426, "detour: the WebSocket mode is not offered through detour; "
                                 "use HTTPS (Codex falls back by itself)"),
        {"content-type": mod.JSON_CONTENT_TYPE, id_header: flow.id})
    flow.comment = "detour: WebSocket upgrade refused (426): the client falls back to HTTPS"


# ---------------------------------------------------------------- model lists


def _plain(name: str) -> bool:
    return not any(ch in name for ch in "*?[")


def routed_models(config: Config, user_agent: str) -> tuple[list[str], bool]:
    """(the model names detour routes for this client, in the order configured; whether
    passthrough is a candidate of its catch-all route, i.e. the vendor's own models stay
    reachable)."""
    tables: list[dict[str, list[str]]] = []
    client = config.client_of(user_agent)
    if client is not None:
        tables.append(config.clients[client].routes)
    tables += [config.combos, config.routes]
    names: dict[str, None] = {}
    for table in tables:
        for pattern, cands in table.items():
            if _plain(pattern):
                names[pattern] = None
                continue
            for cand in cands:  # a glob route: the upstream models it names are what answers
                name, _, upstream = cand.partition("/")
                if cand != PASSTHROUGH and upstream and _plain(upstream):
                    names[upstream] = None
    return list(names), PASSTHROUGH in config.route("*", user_agent)[1]


def model_object(name: str, created: int) -> dict:
    return {"id": name, "object": "model", "created": created, "owned_by": "detour"}


def model_list_body(names: list[str], codex_shape: bool = False) -> bytes:
    """OpenAI's model list; `codex_shape`: Codex's own catalogue (`{"models": [...]}`, each a
    full model description detour cannot make up), empty: Codex keeps its bundled one, and
    takes any name routed by `-m`."""
    if codex_shape:
        return b'{"models":[]}'
    created = int(time.time())
    return orjson.dumps({"object": "list", "data": [model_object(n, created) for n in names]})


def account_check_body(authorization: str) -> bytes:
    """Codex's ChatGPT account check (`wham/accounts/check`), from the client's own token: its
    account (the token's `chatgpt_account_id` claim), served by chatgpt.com as usual."""
    account = formats.chatgpt_account_id(authorization.rpartition(" ")[2]) or ""
    return orjson.dumps({"accounts": [{
        "id": account, "workspace_backend_origin": "https://chatgpt.com",
        "account_routing_override": "NO_CONSTRAINT"}] if account else []})


def merged_model_list(vendor_body: bytes, names: list[str]) -> bytes | None:
    """The vendor's list with detour's names added (first, unless the vendor has them); None
    when the vendor's answer is not an OpenAI model list (it then goes on unchanged)."""
    try:
        listed = orjson.loads(vendor_body)
    except orjson.JSONDecodeError:
        return None
    data = listed.get("data") if isinstance(listed, dict) else None
    if not isinstance(data, list):
        return None
    have = {m.get("id") for m in data if isinstance(m, dict)}
    created = int(time.time())
    listed["data"] = [model_object(n, created) for n in names if n not in have] + data
    return orjson.dumps(listed)


# ---------------------------------------------------------------- compaction


def summary_request(body: dict) -> dict:
    """The Responses request that asks the routed provider for a handoff summary of the
    history a compaction call carries (its `input`, under its `instructions`)."""
    items = body.get("input")
    if isinstance(items, str):
        items = [{"type": "message", "role": "user", "content": items}]
    if not isinstance(items, list):
        raise canonical.TranslationError("input: the history to compact (a list of items)")
    out = {"model": body.get("model"), "stream": False,
           "input": items + [{"type": "message", "role": "user",
                              "content": [{"type": "input_text", "text": SUMMARY_PROMPT}]}]}
    if isinstance(body.get("instructions"), str):
        out["instructions"] = body["instructions"]
    for key in ("tools", "parallel_tool_calls", "reasoning", "prompt_cache_key"):
        if key in body:
            out[key] = body[key]
    return out


def _user_texts(items) -> list[str]:
    texts = []
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict) or item.get("role") != "user" or item.get(
                "type", "message") != "message":
            continue
        content = item.get("content")
        parts = [content] if isinstance(content, str) else [
            p.get("text") for p in content or () if isinstance(p, dict)]
        text = "".join(p for p in parts if isinstance(p, str))
        if text and not text.lstrip().startswith(_INJECTED):
            texts.append(text)
    return texts


def compacted_history(request_body: dict, summary_answer: bytes) -> bytes:
    """Codex's compaction answer (`{"output": [items]}`) from the provider's summary, given
    as a whole Responses answer: the user's own messages, then the summary as a user
    message, as Codex's local compaction builds its new history."""
    answer = orjson.loads(summary_answer)
    resp = openai_responses.decode_response(answer)
    summary = "".join(p.text for p in resp.parts if type(p) is canonical.Text).strip()
    if not summary:
        raise canonical.TranslationError("the provider's summary holds no text")

    def user(text: str) -> dict:
        return {"type": "message", "role": "user",
                "content": [{"type": "input_text", "text": text}]}

    output = [user(t) for t in _user_texts(request_body.get("input"))]
    output.append(user(SUMMARY_PREFIX + summary))
    return orjson.dumps({"id": "resp_" + uuid.uuid4().hex[:24], "object": "response.compaction",
                         "created_at": int(time.time()), "output": output,
                         "usage": answer.get("usage")})
