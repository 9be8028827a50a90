"""Request logs, off by default (`--set detour_request_log=true`): the request and the answer
of every flow on a vendor host detour handles (model calls, and the other calls there, such as
OAuth token refreshes), one JSON file per flow under DETOUR_HOME/request-logs/<UTC day>/,
named by time and flow id (the `flow_id` of the call's usage row, `x-detour-id` of its answer).

Every credential is redacted before anything is written: credential headers (and any header
whose name says key, token, secret, auth or cookie) by name; in bodies, the string values of
fields named like a secret (`refresh_token`, `access_token`, `client_secret`, `api_key`,
`password`, ...), every value of a form-encoded body but its grant type, client id, redirect
URI and scope, then every secret detour knows (the configuration's keys, the client's own
credentials, addons/scrubber.py) and whatever looks like a key or a token (`sk-...`,
`AIza...`, `ya29....`, a JWT, `Bearer ...`) wherever it appears.

The request is read as the client sent it (this addon comes before the interceptor), the
answer as the client got it (a tail addon at the end of the chain tees a streamed answer's
chunks: `detour_request_log_max_body` bytes of each body are kept). Files are written by a
worker thread, never on the request path, and swept by size (`detour_request_log_max_mb`, the
oldest go first) and age (`detour_request_log_max_days`).
"""

import asyncio
import base64
import json
import logging
import os
import re
import threading
import time
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from mitmproxy import ctx, http
from mitmproxy.utils.asyncio_utils import create_task

from addons.decoding import TooLarge, decode_whole
from addons.scrubber import CREDENTIAL_HEADERS, MASK, credentials_of
from addons.settings import DetourSettings

log = logging.getLogger(__name__)

FOLDER = "request-logs"
SWEEP_EVERY = 60.0  # seconds between two sweeps (and one at start)
# header names that carry a secret whatever their vendor calls them
SECRET_HEADER = re.compile(r"(?i)key|token|secret|auth|cookie|session|signature")
_MASKS = re.compile(f"(?:{re.escape(MASK)}){{2,}}")  # masks side by side: one
# JSON fields whose string values are secrets
SECRET_FIELD = re.compile(r"(?i)(^|[_-])(token|secret|password|passwd|api[_-]?key|apikey|key|"
                          r"authorization|code_verifier|credentials?|cookie)$|^(code|id_token)$")
# form fields of an OAuth exchange that are not secrets: every other value is
PUBLIC_FORM_FIELDS = frozenset({"grant_type", "client_id", "redirect_uri", "scope",
                                "response_type", "code_challenge_method"})
# what a key or a token looks like, wherever it appears
TOKEN_SHAPES = re.compile(
    r"sk-[A-Za-z0-9_\-]{12,}"  # OpenAI, Anthropic (sk-ant-api..., sk-ant-oat...), DeepSeek ...
    r"|AIza[0-9A-Za-z_\-]{30,}"  # Google API keys
    r"|ya29\.[0-9A-Za-z_\-.]{16,}"  # Google OAuth access tokens
    r"|1//[0-9A-Za-z_\-]{20,}"  # Google OAuth refresh tokens
    r"|eyJ[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}\.[A-Za-z0-9_\-]{8,}"  # JWTs (ChatGPT login)
    r"|(?i:bearer|basic)\s+[A-Za-z0-9_\-.=:+/]{12,}")


class RequestLog:
    """The addon (before the interceptor in the chain): options, the requests, the writer."""

    def __init__(self, settings: DetourSettings):
        self.settings = settings
        self._open: dict[str, dict] = {}  # flow id -> its record so far
        self._tees: dict[str, StreamTee] = {}
        self._lock = threading.Lock()
        self._last_sweep = 0.0
        self._tail = RequestLogTail(self)
        self._tail_added = False
        self.requestheaders = self.request = None  # hooks: set while logging is on

    def load(self, loader):
        loader.add_option(
            "detour_request_log", bool, False,
            f"Write the request and answer of every flow on a vendor host detour handles to "
            f"<detour_home>/{FOLDER}/ (credentials redacted), one JSON file per flow named by "
            "its flow id.",
        )
        loader.add_option(
            "detour_request_log_max_mb", int, 200,
            "Request logs: total size kept (MB); the oldest files go first.",
        )
        loader.add_option(
            "detour_request_log_max_days", int, 7,
            "Request logs: files older than this many days are removed.",
        )
        loader.add_option(
            "detour_request_log_max_body", int, 4 << 20,
            "Request logs: bytes of each body kept (the rest is cut, and said so).",
        )

    def configure(self, updated):
        # the flow hooks exist only while logging is on: mitmproxy looks a hook up at each
        # event, and an addon without it costs the flow nothing
        if "detour_request_log" in updated:
            on = ctx.options.detour_request_log
            self.requestheaders = self._requestheaders if on else None
            self.request = self._request if on else None
            self._tail.on(on)

    def running(self):
        if not self._tail_added:
            ctx.master.addons.add(self._tail)
            self._tail_added = True

    def folder(self) -> Path:
        # a method: mitmproxy reads every attribute of an addon when it collects commands
        return self.settings.runtime.home / FOLDER

    # ------------------------------------------------------------ the request, as sent

    def _requestheaders(self, flow: http.HTTPFlow):
        if flow.request.pretty_host not in self.settings.format_table().handled_hosts:
            return
        self._open[flow.id] = {"credentials": credentials_of(flow.request.headers)}

    def _request(self, flow: http.HTTPFlow):
        entry = self._open.get(flow.id)
        if entry is None:
            return
        req = flow.request
        entry["record"] = {
            "flow_id": flow.id,
            "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(req.timestamp_start)),
            "request": {"method": req.method, "url": req.pretty_url,
                        "headers": list(req.headers.items(multi=True)),
                        **self._body(req.raw_content or b"",
                                     req.headers.get("content-encoding", ""))},
        }

    def _body(self, raw: bytes, encoding: str) -> dict:
        limit = ctx.options.detour_request_log_max_body
        try:
            data = decode_whole(raw, encoding, limit, "the body once decoded")
            cut = False
        except TooLarge:
            data, cut = raw[:limit], True
        except ValueError:
            data, cut = raw, False
        if len(data) > limit:
            data, cut = data[:limit], True
        out: dict = {"body_bytes": len(raw)}
        try:
            out["body"] = data.decode("utf-8")
        except UnicodeDecodeError:
            out["body_base64"] = base64.b64encode(data).decode()
        if cut:
            out["body_cut_at"] = limit
        return out

    # ------------------------------------------------------------ the answer, as sent

    def tee(self, flow: http.HTTPFlow) -> None:
        entry = self._open.get(flow.id)
        if entry is None or flow.response is None or not flow.response.stream:
            return
        inner = flow.response.stream
        tee = StreamTee(None if inner is True else inner, ctx.options.detour_request_log_max_body)
        self._tees[flow.id] = tee
        flow.response.stream = tee

    def ended(self, flow: http.HTTPFlow) -> None:
        entry = self._open.pop(flow.id, None)
        tee = self._tees.pop(flow.id, None)
        if entry is None or "record" not in entry:
            return
        record = entry["record"]
        resp = flow.response
        if resp is not None:
            answer = {"status": resp.status_code, "headers": list(resp.headers.items(multi=True))}
            if tee is not None:
                answer |= self._body(bytes(tee.kept), "")
                if tee.cut:
                    answer["body_cut_at"] = tee.limit
            else:
                answer |= self._body(resp.raw_content or b"",
                                     resp.headers.get("content-encoding", ""))
            record["response"] = answer
        if flow.error is not None:
            record["error"] = flow.error.msg
        record["route"] = flow.comment or None
        scrubber = self.settings.runtime.forwarder.scrubber.adding(entry["credentials"])
        create_task(self._write_soon(record, scrubber), name="detour request log write",
                    keep_ref=True)

    async def _write_soon(self, record: dict, scrubber) -> None:
        await asyncio.to_thread(self._write, record, scrubber)

    # ------------------------------------------------------------ files (worker thread)

    def _write(self, record: dict, scrubber) -> None:
        try:
            text = json.dumps(redacted(record, scrubber), indent=1, ensure_ascii=False)
            day = record["ts"][:10]
            folder = self.folder() / day
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            name = f"{record['ts'][11:19].replace(':', '')}-{record['flow_id']}.json"
            fd = os.open(folder / name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            with self._lock:
                due = time.monotonic() - self._last_sweep > SWEEP_EVERY
                if due:
                    self._last_sweep = time.monotonic()
            if due:
                self.sweep()
        except Exception as e:  # noqa: BLE001 - a log never breaks a call
            log.error("detour: request log of %s not written: %s", record.get("flow_id"), e)

    def sweep(self) -> None:
        """Remove the files older than max_days, then the oldest until the rest fit max_mb."""
        sweep(self.folder(), ctx.options.detour_request_log_max_days * 86400,
              ctx.options.detour_request_log_max_mb << 20)


class RequestLogTail:
    """The end of the addon chain: the answer as the interceptor leaves it for the client.
    Its hooks exist only while logging is on (`on`)."""

    def __init__(self, log_: RequestLog):
        self.log = log_
        self.responseheaders = self.response = self.error = None

    def on(self, on: bool) -> None:
        self.responseheaders = self.log.tee if on else None
        self.response = self.error = self.log.ended if on else None


class StreamTee:
    """A stream callable that keeps the first `limit` bytes of what the client is sent (after
    the stream callable it wraps, if any)."""

    __slots__ = ("inner", "kept", "limit", "cut")

    def __init__(self, inner, limit: int):
        self.inner = inner
        self.kept = bytearray()
        self.limit = limit
        self.cut = False

    def __call__(self, chunk: bytes):
        out = self.inner(chunk) if self.inner is not None else chunk
        # bytes, or (the direct path's stream callable, mid-stream) a list of them
        data = out if type(out) is bytes else b"".join(out)
        room = self.limit - len(self.kept)
        if room > 0:
            self.kept += data[:room]
        if len(data) > room:
            self.cut = self.cut or bool(data)
        return out


def redacted(record: dict, scrubber) -> dict:
    """The record with every credential replaced by MASK (see the module's docstring)."""
    out = dict(record)
    for part in ("request", "response"):
        if part not in out:
            continue
        p = dict(out[part])
        p["headers"] = [[name, MASK if _secret_header(name) else scrub_text(value, scrubber)]
                        for name, value in p["headers"]]
        if "body" in p:
            p["body"] = redact_body(p["body"], scrubber)
        out[part] = p
    for key in ("error", "route"):
        if isinstance(out.get(key), str):
            out[key] = scrub_text(out[key], scrubber)
    return out


def _secret_header(name: str) -> bool:
    return name.lower() in CREDENTIAL_HEADERS or bool(SECRET_HEADER.search(name))


def redact_body(body: str, scrubber) -> str:
    stripped = body.lstrip()
    if stripped[:1] in ("{", "["):
        try:
            return scrub_text(json.dumps(_redact_json(json.loads(body)), ensure_ascii=False),
                              scrubber)
        except ValueError:
            pass
    elif "=" in body and "\n" not in body.strip() and " " not in body.strip():
        fields = parse_qsl(body.strip(), keep_blank_values=True)
        if fields:
            return urlencode([(k, v if k in PUBLIC_FORM_FIELDS else MASK) for k, v in fields])
    return scrub_text(body, scrubber)  # SSE, text: by what secrets look like


def _redact_json(value):
    if isinstance(value, dict):
        return {k: (MASK if isinstance(v, str) and SECRET_FIELD.search(k) else _redact_json(v))
                for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_json(v) for v in value]
    return value


def scrub_text(text: str, scrubber) -> str:
    return _MASKS.sub(MASK, scrubber.scrub(TOKEN_SHAPES.sub(MASK, text)))


def sweep(folder: Path, max_age: float, max_bytes: int) -> None:
    try:
        files = [(p.stat().st_mtime, p.stat().st_size, p) for p in folder.glob("*/*.json")]
    except OSError:
        return
    files.sort()
    now = time.time()
    total = sum(size for _, size, _ in files)
    for mtime, size, path in files:
        if now - mtime <= max_age and total <= max_bytes:
            break
        path.unlink(missing_ok=True)
        total -= size
    for day in folder.glob("*"):
        try:
            day.rmdir()  # only when empty
        except OSError:
            pass
