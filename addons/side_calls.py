"""Calls on a vendor host that are not model calls (endpoint kinds other than MODEL_CALL in
the format table): counting a prompt's tokens, listing models, a client's setup calls.

Whatever the route of the model, passthrough leaves the call to the vendor. Otherwise:
- count-tokens: a provider that speaks the client's format and counts (`ProviderKind.
  count_path`) is asked, with its own key and its upstream model; else (another format, or that
  provider failed) the answer is a local estimate, about 4 characters a token over the prompt's
  JSON, marked as such (`x-detour-estimate` header, the flow's comment).
- model-list: when models default to passthrough the vendor's list is the truth (routed names
  work on top of it); otherwise the list is the routed model names of config.yaml.
- setup-call (Gemini CLI's loadCodeAssist, onboardUser, listExperiments, ...): passed through
  while the default route may use the client's own account (passthrough is among its
  candidates); otherwise answered locally by the format's codec (`setup_answer`), since no
  vendor account is used and the vendor would refuse a login detour never sees.

No usage row is written: these calls use no tokens.
"""

import logging

import httpx
import orjson
from mitmproxy import http

from addons import formats
from addons.decoding import TooLarge, decode_whole
from addons.config import PASSTHROUGH
from addons.formats import COUNT_TOKENS, SETUP_CALL, ClientCall
from addons.routing import plan
from addons.settings import DetourSettings
from translators import canonical

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
        return self._model_list(flow, call, mark)

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
