"""Antigravity logged in with Google: Code Assist's `v1internal:{generateContent,
streamGenerateContent}` as Google's Antigravity IDE calls it (hosts of its own:
`daily-cloudcode-pa.googleapis.com`, `daily-cloudcode-pa.sandbox.googleapis.com`,
`cloudcode-pa.googleapis.com`).

Not a codec of its own: the `gemini-cli` codec's envelope (`gemini_code_assist.py`, answers
the same `{"response": ...}` chunks), finished the way Antigravity sends it:

    {"model", "project", "userAgent": "antigravity", "requestType": "agent",
     "requestId": "agent-<uuid>", "request": <Gemini body + "sessionId">}

Gemini CLI's own envelope fields (`user_prompt_id`, `enabled_credit_types`, the body's
`session_id`) are not Antigravity's and are left out; so are `safetySettings`. `sessionId`
stays the same for one conversation (derived from its first user text, the way Antigravity
keeps one server-side session per conversation). Claude models served by Antigravity take
function calls only in its `VALIDATED` calling mode.
"""

import hashlib
import secrets
import uuid

USER_AGENT = "antigravity"  # the envelope's userAgent (the HTTP header names the version)
REQUEST_TYPE = "agent"
_GEMINI_CLI_ONLY = ("user_prompt_id", "enabled_credit_types")
_INNER_DROPPED = ("session_id", "safetySettings")


def session_id(inner: dict) -> str:
    """Antigravity's session id ("-" and a positive 63-bit number): the same for every call
    of a conversation whose first user turn starts with text, else a fresh one."""
    for turn in inner.get("contents") or ():
        if isinstance(turn, dict) and turn.get("role") == "user":
            parts = turn.get("parts")
            first = parts[0] if isinstance(parts, list) and parts else None
            text = first.get("text") if isinstance(first, dict) else None
            if isinstance(text, str) and text:
                digest = hashlib.sha256(text.encode()).digest()
                return "-" + str(int.from_bytes(digest[:8], "big") & (2 ** 63 - 1))
            break
    return "-" + str(secrets.randbelow(2 ** 63 - 1) + 1)


def envelope(body: dict) -> dict:
    """A Code Assist envelope (`gemini_code_assist`, its project already the account's) as
    Antigravity sends it."""
    inner = body.get("request")
    inner = dict(inner) if isinstance(inner, dict) else {}
    for k in _INNER_DROPPED:
        inner.pop(k, None)
    inner["sessionId"] = session_id(inner)
    model = body.get("model")
    if isinstance(model, str) and "claude" in model.lower() and inner.get("tools"):
        config = inner.get("toolConfig")
        config = config if isinstance(config, dict) else {}
        calling = config.get("functionCallingConfig")
        calling = calling if isinstance(calling, dict) else {}
        inner["toolConfig"] = dict(config, functionCallingConfig=dict(calling, mode="VALIDATED"))
    out = {k: v for k, v in body.items() if k not in _GEMINI_CLI_ONLY and k != "request"}
    out.update(userAgent=USER_AGENT, requestType=REQUEST_TYPE,
               requestId=f"agent-{uuid.uuid4()}", request=inner)
    return out
