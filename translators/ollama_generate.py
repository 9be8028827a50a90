"""Ollama's completion API (`POST /api/generate`) <-> canonical: the chat codec
(`ollama.py`) with a prompt instead of messages, and `response` instead of `message` in the
answer. A variant of that codec, not a second one: framing, usage, errors and stream decoding
are the chat codec's.

Requests: `prompt` (one user turn, `images` beside it), `system`; `suffix`, `raw`, `template`
and `context` are Ollama's own (kept as this format's extras, named as dropped when the call
goes elsewhere). Stream lines: `{model, created_at, response, thinking?, done: false}`, then the
`done` line with the counts. Ollama's `/api/generate` has no tools: a tool call an answer
holds is not written.
"""

from translators import canonical as c
from translators import ollama
from translators.canonical import dumps_compact, need

NAME = "ollama-generate"
STREAM_CONTENT_TYPE = ollama.STREAM_CONTENT_TYPE
JSON_CONTENT_TYPE = ollama.JSON_CONTENT_TYPE
EXTRAS_PREFIX = "ollama-generate:"
MESSAGE_ID_PREFIX = ollama.MESSAGE_ID_PREFIX
USER_FIELD = ollama.USER_FIELD
StreamDecoder = ollama.StreamDecoder
error_body = ollama.error_body
is_error_event = ollama.is_error_event
may_follow_stop = ollama.may_follow_stop
rewrite_request = ollama.rewrite_request

_SLOTS = frozenset({"model", "prompt", "system", "images", "format", "options", "stream",
                    "think"})
_OWN = ("suffix", "raw", "template", "context")  # what only /api/generate takes


def idle_answer(body: dict) -> bytes | None:
    """A generate call without a prompt or images (Ollama's load, or unload with
    `keep_alive: 0`), answered as Ollama does; None for any other."""
    if body.get("prompt") or body.get("images"):
        return None
    return dumps_compact({"model": body.get("model", ""), "created_at": ollama.now(),
                          "response": "", "done": True,
                          "done_reason": ollama._idle_reason(body)})


def decode_request(body: dict) -> c.Request:
    need(body, dict, "")
    prompt = need(body.get("prompt", ""), str, "prompt", optional=True) or ""
    parts: list = [c.Text(prompt)] if prompt else []
    parts += [ollama._image(d, f"images[{i}]") for i, d in enumerate(
        need(body.get("images"), list, "images", optional=True) or ())]
    system = need(body.get("system"), str, "system", optional=True)
    req = ollama._request(body, (c.Text(system),) if system else (),
                          [c.Message("user", tuple(parts))] if parts else [], _SLOTS)
    extras = {(EXTRAS_PREFIX + k[len(ollama.EXTRAS_PREFIX):]
               if k[len(ollama.EXTRAS_PREFIX):] in _OWN else k): v
              for k, v in req.extras.items()}
    return c.Request(**{**{f: getattr(req, f) for f in req.__dataclass_fields__},
                        "extras": extras})


def encode_request(req: c.Request) -> dict:
    """The /api/generate body: the conversation's text as one prompt (detour's provider kind
    speaks /api/chat; this serves the round-trip tests and same-format rewrites)."""
    prompt = "\n\n".join(p.text for m in req.messages for p in m.parts if type(p) is c.Text)
    body: dict = {"model": req.model, "prompt": prompt, "stream": req.stream}
    if req.system:
        body["system"] = "\n\n".join(t.text for t in req.system)
    images = [p.data for m in req.messages for p in m.parts
              if type(p) is c.Image and p.data is not None]
    if images:
        body["images"] = images
    chat = ollama.encode_request(c.Request(req.model, (), extras=req.extras,
                                           response_format=req.response_format,
                                           temperature=req.temperature, top_p=req.top_p,
                                           top_k=req.top_k, max_tokens=req.max_tokens,
                                           stop=req.stop))
    for key in ("format", "options"):
        if key in chat:
            body[key] = chat[key]
    for key, value in req.extras.items():
        if key.startswith(EXTRAS_PREFIX):
            body.setdefault(key[len(EXTRAS_PREFIX):], value)
    return body


def decode_response(body: dict) -> c.Response:
    need(body, dict, "")
    if "error" in body and "response" not in body:
        c.fail(ollama._error_message(body), "error")
    parts: list = []
    thinking, text = body.get("thinking"), body.get("response")
    if isinstance(thinking, str) and thinking:
        parts.append(c.Thinking(thinking))
    if isinstance(text, str) and text:
        parts.append(c.Text(text))
    model = body.get("model")
    return c.Response("", model if isinstance(model, str) else "", tuple(parts),
                      ollama._stop_reason(body.get("done_reason"), False),
                      ollama.decode_usage(body))


def _fields(resp_parts, stop) -> tuple[dict, str]:
    msg, reason = ollama._answer(resp_parts, stop)
    out = {"response": msg["content"]}
    if "thinking" in msg:
        out["thinking"] = msg["thinking"]
    return out, reason


def encode_response(resp: c.Response) -> dict:
    fields, reason = _fields(resp.parts, resp.stop_reason)
    return {"model": resp.model, "created_at": ollama.now(), **fields, "done": True,
            "done_reason": reason, "total_duration": 0, "load_duration": 0,
            **ollama.encode_usage(resp.usage), "prompt_eval_duration": 0, "eval_duration": 0}


class StreamEncoder(ollama.StreamEncoder):
    """Canonical events -> /api/generate NDJSON (`response` deltas; tool calls not written)."""

    __slots__ = ()

    def _delta(self, text: str | None = None, thinking: str | None = None,
               calls: list | None = None) -> bytes:
        if calls:
            return b""
        fields: dict = {"response": text or ""}
        if thinking:
            fields["thinking"] = thinking
        return self._line({**fields, "done": False})

    def _final(self, reason: str, usage: c.Usage) -> bytes:
        return self._line({"response": "", "done": True, "done_reason": reason,
                           "total_duration": 0, "load_duration": 0,
                           **ollama.encode_usage(usage), "prompt_eval_duration": 0,
                           "eval_duration": 0})


def client_stream_encoder(body: dict) -> StreamEncoder:
    return StreamEncoder()


def sniff_request(body: object) -> bool:
    """A /api/generate request: a string `prompt`, no `messages`."""
    return isinstance(body, dict) and isinstance(body.get("prompt"), str) and (
        "messages" not in body)


def sniff_stream(head: bytes) -> bool:
    line = head.lstrip().split(b"\n", 1)[0]
    return line.startswith(b"{") and b'"response"' in line and b'"done"' in line

