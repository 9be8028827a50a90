"""Tool calls that went by untouched, and why: so a user whose Gemini CLI or Codex login mode
answers straight from the vendor learns it from detour's log and `detour status`, not by
wondering why their routes do nothing.

Two kinds:
- a model API host detour does not handle (yet): its TLS is tunnelled without interception,
  so only the host is known (`tls_clienthello`);
- on a host detour handles, an API path that is not a model call it takes (token counting,
  model lists, a WebSocket upgrade, `/v1/responses/compact`): passed to the vendor as it was.

Each distinct (method, host, path) is logged once, counted, and kept in
`DETOUR_HOME/untouched.json` (bounded), which `detour status` reads.
"""

import asyncio
import fnmatch
import json
import logging
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from addons import formats
from addons.flow_url import pretty_host

if TYPE_CHECKING:  # `detour status` reads untouched.json without loading mitmproxy
    from mitmproxy import http, tls

    from addons.settings import DetourSettings

log = logging.getLogger(__name__)

FILE_NAME = "untouched.json"
MAX_ENTRIES = 200
WRITE_INTERVAL = 1.0

# model API hosts of the tools people run through detour, and whose they are
MODEL_HOSTS = {
    "api.anthropic.com": "the Anthropic API (Claude Code, Anthropic SDKs)",
    "api.openai.com": "the OpenAI API (Codex with an API key, OpenAI SDKs)",
    "chatgpt.com": "ChatGPT's backend (Codex with a ChatGPT login)",
    "generativelanguage.googleapis.com": "the Gemini API (Gemini CLI with an API key)",
    "cloudcode-pa.googleapis.com": "Code Assist (Gemini CLI with a Google login)",
    "dashscope.aliyuncs.com": "DashScope (Qwen Code with an API key)",
    "dashscope-intl.aliyuncs.com": "DashScope international (Qwen Code with an API key)",
    "portal.qwen.ai": "Qwen's portal (Qwen Code with a Qwen login)",
    "api.githubcopilot.com": "GitHub Copilot",
    "openrouter.ai": "OpenRouter",
    "api.deepseek.com": "DeepSeek",
}
# on a handled host, paths of its API (not the tools' own settings and telemetry calls)
API_PATHS = ("/v1/*", "/v1beta/*", "/v1internal*", "/backend-api/codex/*",
             "/compatible-mode/*")


def _api_path(path: str) -> bool:
    return any(fnmatch.fnmatchcase(path, p) for p in API_PATHS)


class UntouchedCalls:
    def __init__(self, settings: "DetourSettings"):
        self.settings = settings
        self.seen: dict[str, dict] = {}
        self._dirty = False
        self._writer: asyncio.Task | None = None

    # ------------------------------------------------------------ what went by

    def tls_clienthello(self, data: "tls.ClientHelloData") -> None:
        host = data.client_hello.sni or ""
        if host in MODEL_HOSTS and host not in formats.HANDLED_HOSTS:
            self.note("CONNECT", host, "", f"{MODEL_HOSTS[host]}: detour does not handle "
                      "this host yet; its calls are tunnelled to the vendor untouched")

    def response(self, flow: "http.HTTPFlow") -> None:
        self._after(flow)

    def error(self, flow: "http.HTTPFlow") -> None:
        self._after(flow)

    def _after(self, flow: "http.HTTPFlow") -> None:
        if flow.marked:
            return  # detour took it (the interceptor marks every flow it answers)
        req = flow.request
        host = flow.metadata.get("detour.host") or pretty_host(req)
        if host not in formats.HANDLED_HOSTS:
            return
        path = req.path.partition("?")[0]
        if not _api_path(path) or formats.client_call(host, req.method, req.path) is not None:
            return
        if req.headers.get("upgrade", "").lower() == "websocket":
            why = "a WebSocket upgrade: detour takes model calls over HTTP only"
        else:
            why = "not a model call detour translates"
        self.note(req.method, host, path, f"{why}; passed to the vendor as it was")

    def note(self, method: str, host: str, path: str, why: str) -> None:
        key = f"{method} {host}{path}"
        now = time.time()
        entry = self.seen.get(key)
        if entry is None:
            if len(self.seen) >= MAX_ENTRIES:
                return
            log.warning("detour: a tool call went by untouched: %s (%s)", key, why)
            entry = self.seen[key] = {"method": method, "host": host, "path": path, "why": why,
                                      "count": 0, "first": now}
        entry["count"] += 1
        entry["last"] = now
        self._dirty = True

    # ------------------------------------------------------------ kept for `detour status`

    def running(self) -> None:
        from mitmproxy.utils.asyncio_utils import create_task

        self.write()  # a fresh list per run: an older proxy's may name what this one handles
        self._writer = create_task(self._write_loop(), name="detour untouched write",
                                   keep_ref=True)

    async def _write_loop(self) -> None:
        while True:
            await asyncio.sleep(WRITE_INTERVAL)
            if self._dirty:
                self.write()

    def write(self) -> None:
        rt = self.settings.runtime
        if rt is None:
            return
        self._dirty = False
        path = rt.home / FILE_NAME
        try:
            tmp = path.with_name(f".{FILE_NAME}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"pid": os.getpid(), "calls": list(self.seen.values())},
                                      indent=1))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("detour: cannot write %s: %s", path, e)

    def done(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
        if self._dirty:
            self.write()


def read_untouched(home: Path) -> list[dict]:
    """What the last proxy of this home saw go by untouched (most seen first)."""
    try:
        calls = json.loads((home / FILE_NAME).read_text())["calls"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return sorted(calls, key=lambda c: -c.get("count", 0))
