"""Calls on a vendor host that are not model calls (endpoint kinds other than MODEL_CALL in
the format table), which detour answers itself when what the vendor would say is wrong once the
model is rerouted.

- The WebSocket mode of `/v1/responses` (Codex opens one before each turn, `Upgrade:
  websocket`): answered 426 in the client's format. Codex then falls back to HTTPS POST at
  once, with no retry (a 404 or 501 costs five reconnects and ~7 s), and the POST is a model
  call detour routes like any other. Observe mode included: the POST is what detour reads.
- OpenAI model lists (`GET /v1/models`): the models detour routes for the asking client (its own
  routes, combos, the global routes; glob routes contribute the upstream models they name).
  When passthrough is a candidate of the client's catch-all route, the vendor's own list is
  fetched (the request goes on untouched) and detour's names are added to it on the way back.
  Gemini's list (`SideCalls`): when models default to passthrough the vendor's list is the
  truth; otherwise the routed model names of config.yaml.
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
- count-tokens: a provider that speaks the client's format and counts (`ProviderKind.
  count_path`) is asked, with its own key and its upstream model; else (another format, or that
  provider failed) the answer is a local estimate, about 4 characters a token over the prompt's
  JSON, marked as such (`x-detour-estimate` header, the flow's comment).
- setup-call (Gemini CLI's loadCodeAssist, onboardUser, listExperiments, ...): passed through
  while the default route may use the client's own account (passthrough is among its
  candidates); otherwise answered locally by the format's codec (`setup_answer`), since no
  vendor account is used and the vendor would refuse a login detour never sees.

No usage row is written for these calls (they use no tokens), but for compaction, which is a
model call of its own (its summary request goes through the forwarder like every model call).
"""

import logging
import time
import uuid

import httpx
import orjson
from mitmproxy import http

from addons import formats
from addons.config import PASSTHROUGH, Config
from addons.decoding import TooLarge, decode_whole
from addons.formats import COUNT_TOKENS, MODEL_LIST, SETUP_CALL, ClientCall
from addons.routing import plan
from addons.settings import DetourSettings
from translators import canonical, openai_responses

log = logging.getLogger(__name__)

ESTIMATE_HEADER = "x-detour-estimate"
CHARS_PER_TOKEN = 4
COUNT_TIMEOUT = 10.0


def estimate_tokens(body: dict) -> int:
    """A prompt's tokens, estimated from its JSON (what a model reads: contents, system,
    tools): about CHARS_PER_TOKEN characters a token."""
    inner = body.get("generateContentRequest")
    prompt = inner if isinstance(inner, dict) else body
    parts = [prompt.get(k) for k in ("contents", "systemInstruction", "tools")]
    size = len(canonical.dumps_compact([p for p in parts if p is not None]))
    return max(1, size // CHARS_PER_TOKEN) if size > 2 else 0


class SideCalls:
    def __init__(self, settings: DetourSettings):
        self.settings = settings

    async def answer(self, flow: http.HTTPFlow, call: ClientCall, mark: str) -> bool:
        """Answer the call (flow.response set, True), or leave it to its vendor (False)."""
        if call.endpoint.kind == COUNT_TOKENS:
            return await self._count_tokens(flow, call, mark)
        if call.endpoint.kind == SETUP_CALL:
            return self._setup(flow, call, mark)
        if call.endpoint.kind == MODEL_LIST and hasattr(formats.CODECS[call.client_format],
                                                         "model_list"):
            return self._model_list(flow, call, mark)  # OpenAI's: the interceptor's
        return False

    # ------------------------------------------------------------ setup calls

    def _setup(self, flow: http.HTTPFlow, call: ClientCall, mark: str) -> bool:
        config = self.settings.runtime.config
        default = config.candidates("*", flow.request.headers.get("user-agent", ""))
        if not default or PASSTHROUGH in default:
            return False
        method = call.parts.get("method") or call.path.partition("?")[0].rpartition("/")[2]
        codec = formats.CODECS[call.client_format]
        self._answer(flow, 200, codec.setup_answer(method), codec.JSON_CONTENT_TYPE, mark,
                     f"detour: {call.client_format} {method} answered locally (no vendor "
                     "account in the routes)")
        return True

    # ------------------------------------------------------------ model lists

    def _model_list(self, flow: http.HTTPFlow, call: ClientCall, mark: str) -> bool:
        config = self.settings.runtime.config
        default = config.candidates("*", flow.request.headers.get("user-agent", ""))
        if not default or all(c == PASSTHROUGH for c in default):
            return False
        names = [name for name in config.routes if not any(ch in name for ch in "*?[")]
        names += [name for name in config.combos if name not in names]
        codec = formats.CODECS[call.client_format]
        self._answer(flow, 200, codec.model_list(names), codec.JSON_CONTENT_TYPE, mark,
                     f"detour: {call.client_format} model list: {len(names)} routed models")
        return True

    # ------------------------------------------------------------ token counts

    async def _count_tokens(self, flow: http.HTTPFlow, call: ClientCall, mark: str) -> bool:
        rt = self.settings.runtime
        req = flow.request
        codec = formats.CODECS[call.client_format]
        try:
            raw = decode_whole(req.raw_content or b"", req.headers.get("content-encoding", ""),
                               rt.config.limits.decompressed, "the request body once decompressed")
            body = orjson.loads(raw)
        except (TooLarge, ValueError) as e:
            return self._error(flow, codec, 400, f"cannot read the request body: {e}", mark)
        if not isinstance(body, dict):
            return self._error(flow, codec, 400, "the request body must be a JSON object", mark)
        named = getattr(codec, "count_tokens_model", None)  # an envelope names it inside
        model = named(body) if named else call.model(body)
        if not isinstance(model, str) or not model:
            return self._error(flow, codec, 400, "model: a model name is required", mark)
        prompt = codec.count_tokens_prompt(body) if named else body
        candidates = plan(rt.config, rt.providers, model,
                          user_agent=req.headers.get("user-agent", ""),
                          quotas=rt.forwarder.quotas, cooldowns=rt.cooldowns)
        if all(c.provider is None for c in candidates):
            return False
        for cand in candidates:
            if cand.provider is None:
                continue
            kind = formats.provider_kind(cand.provider.spec.kind)
            if kind.codec.NAME == call.client_format and kind.count_path and not named:
                answer = await self._ask(cand, kind, body)
                if answer is not None:
                    self._answer(flow, 200, answer, codec.JSON_CONTENT_TYPE, mark,
                                 f"detour: {model} token count by {cand.public_name}")
                    return True
            break  # only the route's first provider counts for it
        total = estimate_tokens(prompt)
        self._answer(flow, 200, codec.count_tokens_response(total), codec.JSON_CONTENT_TYPE,
                     mark, f"detour: {model} token count estimated locally ({total})",
                     {ESTIMATE_HEADER: f"about {CHARS_PER_TOKEN} characters a token"})
        return True

    async def _ask(self, cand, kind: formats.ProviderKind, body: dict) -> bytes | None:
        """The provider's own count, or None when it gives none."""
        rt = self.settings.runtime
        spec = cand.provider.spec
        headers = {"content-type": "application/json", "user-agent": "detour/0.1"}
        query: dict[str, str] = {}
        if cand.account.secret:
            formats.credential_of(kind, None).apply(cand.account.secret, headers, query)
        headers.update(spec.headers)
        inner = body.get("generateContentRequest")
        if isinstance(inner, dict) and "model" in inner:
            body = dict(body, generateContentRequest=dict(inner, model=f"models/{cand.model}"))
        url = kind.url(spec.base_url, cand.model, path=kind.count_path)
        try:
            resp = await rt.forwarder.client(spec).post(
                url, headers=headers, params=query or None, content=orjson.dumps(body),
                timeout=COUNT_TIMEOUT)
        except httpx.HTTPError as e:
            log.info("detour: %s could not count tokens: %s", cand.public_name, type(e).__name__)
            return None
        if resp.status_code != 200:
            log.info("detour: %s could not count tokens: HTTP %s", cand.public_name,
                     resp.status_code)
            return None
        return resp.content

    # ------------------------------------------------------------ answers

    def _error(self, flow, codec, status: int, message: str, mark: str) -> bool:
        self._answer(flow, status, codec.error_body(status, f"detour: {message}"),
                     codec.JSON_CONTENT_TYPE, mark, f"detour: rejected ({status}): {message}")
        return True

    @staticmethod
    def _answer(flow: http.HTTPFlow, status: int, body: bytes, content_type: str, mark: str,
                comment: str, extra: dict[str, str] | None = None) -> None:
        flow.response = http.Response.make(status, body, {"content-type": content_type,
                                                          **(extra or {})})
        flow.comment = comment
        flow.marked = mark


# ---------------------------------------------------------------- Codex's side calls

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
