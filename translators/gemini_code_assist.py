"""Gemini CLI logged in with Google: the Code Assist API (`cloudcode-pa.googleapis.com/
v1internal:{generateContent,streamGenerateContent,countTokens}`) <-> canonical.

Not a codec of its own: an envelope around the `gemini` codec. A request is
`{"model", "project", "user_prompt_id", "request": <Gemini body + "session_id">}`; an answer,
whole or each streamed chunk, is `{"response": <GenerateContentResponse>, "traceId"}`. Errors
are Google's. The envelope's own fields wait in extras (`gemini_cli:`), so a same-format round
trip keeps them; another target names them as dropped.
"""

import dataclasses

from translators import canonical as c
from translators import gemini
from translators.canonical import dumps_compact, need

NAME = "gemini-cli"
STREAM_CONTENT_TYPE = gemini.STREAM_CONTENT_TYPE
JSON_CONTENT_TYPE = gemini.JSON_CONTENT_TYPE
EXTRAS_PREFIX = "gemini_cli:"
MESSAGE_ID_PREFIX = gemini.MESSAGE_ID_PREFIX
USER_FIELD = gemini.USER_FIELD
_P = EXTRAS_PREFIX
# the envelope's fields, and the one it adds inside the Gemini body
_ENVELOPE = ("project", "user_prompt_id", "enabled_credit_types")
_INNER = ("session_id",)


def decode_request(body: dict) -> c.Request:
    need(body, dict, "")
    inner = dict(need(body.get("request"), dict, "request"))
    extras = {_P + k: body[k] for k in _ENVELOPE if k in body}
    extras.update((_P + "request." + k, inner.pop(k)) for k in _INNER if k in inner)
    req = gemini.decode_request(inner)
    return dataclasses.replace(
        req, model=need(body.get("model"), str, "model", optional=True) or "",
        extras={**req.extras, **extras})


def encode_request(req: c.Request) -> dict:
    inner = gemini.encode_request(req)
    for k in _INNER:
        if _P + "request." + k in req.extras:
            inner[k] = req.extras[_P + "request." + k]
    body = {"model": req.model}
    for k in _ENVELOPE:
        if _P + k in req.extras:
            body[k] = req.extras[_P + k]
    body["request"] = inner
    return body


def for_project(body: dict, project: str | None) -> dict:
    """An envelope as one Google account sends it: naming that account's Code Assist project
    (a client's own envelope names its own login's), without the client's
    `enabled_credit_types` (its account's, not this one's). No project yet: none named."""
    out = {"model": body.get("model")}
    if project:
        out["project"] = project
    out.update((k, v) for k, v in body.items()
               if k not in ("model", "project", "enabled_credit_types"))
    return out


def _unwrap(body: dict) -> dict:
    inner = body.get("response")
    if not isinstance(inner, dict):
        return body
    trace = body.get("traceId")
    if isinstance(trace, str) and "responseId" not in inner:
        return dict(inner, responseId=trace)
    return inner


def _wrap(body: dict) -> dict:
    return {"response": body, "traceId": body.get("responseId", "")}


def decode_response(body: dict) -> c.Response:
    need(body, dict, "")
    if "error" in body and "response" not in body:
        return gemini.decode_response(body)  # raises, naming the error
    return gemini.decode_response(_unwrap(body))


def encode_response(resp: c.Response) -> dict:
    return _wrap(gemini.encode_response(resp))


class StreamDecoder(gemini.StreamDecoder):
    """Code Assist SSE: each chunk a GenerateContentResponse in its envelope."""

    __slots__ = ()
    _unwrap = staticmethod(_unwrap)


class StreamEncoder(gemini.StreamEncoder):
    __slots__ = ()
    _wrap = staticmethod(_wrap)


def client_stream_encoder(body: dict) -> StreamEncoder:
    return StreamEncoder()


error_body = gemini.error_body
is_error_event = gemini.is_error_event


def may_follow_stop(name: str, data: str) -> bool:
    obj = gemini._json_object(data)
    return obj is not None and gemini.may_follow_stop(name, dumps_compact(_unwrap(obj)).decode())


def sniff_request(body: object) -> bool:
    return isinstance(body, dict) and isinstance(body.get("request"), dict) and (
        gemini.sniff_request(body["request"]))


def sniff_stream(head: bytes) -> bool:
    for line in head.lstrip(b"\xef\xbb\xbf \t\r\n").splitlines():
        line = line.strip()
        if not line or line.startswith(b":"):
            continue
        return line.startswith(b"data:") and b'"response"' in line
    return False


def rewrite_request(body: dict, *, model: str | None = None,
                    max_tokens: int | None = None) -> dict:
    """The client's envelope with only the model and a lower maxOutputTokens changed; `body`
    itself when nothing changes."""
    out = body
    inner = body.get("request")
    if isinstance(inner, dict):
        capped = gemini.rewrite_request(inner, max_tokens=max_tokens)
        if capped is not inner:
            out = dict(body, request=capped)
    if model is not None and body.get("model") != model:
        out = dict(out, model=model)
    return out


count_tokens_response = gemini.count_tokens_response


def count_tokens_model(body: dict) -> str | None:
    """The model a countTokens envelope names (`request.model`, "models/<name>")."""
    inner = body.get("request")
    model = inner.get("model") if isinstance(inner, dict) else None
    return model.removeprefix("models/") if isinstance(model, str) else None


def count_tokens_prompt(body: dict) -> dict:
    """The Gemini body whose tokens a countTokens envelope asks for."""
    inner = body.get("request")
    return inner if isinstance(inner, dict) else {}


# ---------------------------------------------------------------- setup calls, answered locally
# When no Google account is used (the route leaves Code Assist), Gemini CLI's setup calls get
# the smallest answers that let it go on: a standard tier and a project named by detour.

LOCAL_PROJECT = "detour-local"
_SETUP_ANSWERS = {
    "loadCodeAssist": {"currentTier": {"id": "standard-tier", "name": "detour",
                                       "hasOnboardedPreviously": True},
                       "allowedTiers": [{"id": "standard-tier", "name": "detour",
                                         "isDefault": True}],
                       "cloudaicompanionProject": LOCAL_PROJECT},
    "onboardUser": {"done": True, "response": {"cloudaicompanionProject": {
        "id": LOCAL_PROJECT, "name": LOCAL_PROJECT}}},
    "listExperiments": {"experimentIds": [], "flags": []},
    "retrieveUserQuota": {"buckets": []},
    # oauth2.googleapis.com/tokeninfo: the cached login's token, as Google describes it
    "tokeninfo": {"azp": "detour", "aud": "detour", "access_type": "offline",
                  "scope": "https://www.googleapis.com/auth/cloud-platform "
                           "https://www.googleapis.com/auth/userinfo.email "
                           "https://www.googleapis.com/auth/userinfo.profile",
                  "expires_in": 3599},
}


def setup_answer(method: str) -> bytes:
    """The local answer to a setup call (anything not listed: an empty object, which is what
    metrics and settings calls get)."""
    return dumps_compact(_SETUP_ANSWERS.get(method, {}))
