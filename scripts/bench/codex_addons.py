"""mitmproxy addons for the Codex bench (`scripts/bench/codex.py`), loaded with `-s`:

- `Timing` (always): one JSON line per request to the file in `DETOUR_BENCH_TIMING`, at the
  request's headers and at its answer's headers (`time.time()`, this process's clock): method,
  path, whether it asked for a WebSocket, status.
- `Canned` (the plain side, when `DETOUR_BENCH_CANNED` names an SSE file): mitmdump answers
  Codex itself, as the recipe's stub did: the WebSocket upgrade of /v1/responses with 426
  (or `DETOUR_BENCH_UPGRADE_STATUS`), the
  POST with the canned Responses stream, every other path with 404.
"""

import json
import os
import time

from mitmproxy import http

# 426: Codex falls back to HTTPS at once; DETOUR_BENCH_UPGRADE_STATUS=404 shows its retry loop
UPGRADE_STATUS = int(os.environ.get("DETOUR_BENCH_UPGRADE_STATUS", "426"))


class Timing:
    def __init__(self):
        path = os.environ.get("DETOUR_BENCH_TIMING")
        self.out = open(path, "a", buffering=1) if path else None  # noqa: SIM115 - kept open

    def _line(self, flow: http.HTTPFlow, what: str) -> None:
        if self.out is not None:
            req = flow.request
            self.out.write(json.dumps({
                "t": time.time(), "what": what, "id": flow.id, "method": req.method,
                "path": req.path, "host": req.pretty_host,
                "websocket": "websocket" in req.headers.get("upgrade", "").lower(),
                "status": flow.response.status_code if flow.response else None}) + "\n")

    def requestheaders(self, flow: http.HTTPFlow) -> None:
        self._line(flow, "request")

    def responseheaders(self, flow: http.HTTPFlow) -> None:
        flow.metadata["bench.timed"] = True
        self._line(flow, "response")

    def response(self, flow: http.HTTPFlow) -> None:
        if not flow.metadata.get("bench.timed"):  # answered in `request`: no responseheaders
            self._line(flow, "response")

    def done(self) -> None:
        if self.out is not None:
            self.out.close()


class Canned:
    def __init__(self):
        path = os.environ.get("DETOUR_BENCH_CANNED")
        self.stream = open(path, "rb").read() if path else None  # noqa: SIM115

    def request(self, flow: http.HTTPFlow) -> None:
        if self.stream is None:
            return
        req = flow.request
        flow.metadata["bench.canned"] = True
        if req.path.startswith("/v1/responses") and req.method == "GET" and "websocket" in \
                req.headers.get("upgrade", "").lower():
            flow.response = http.Response.make(UPGRADE_STATUS,
                                               b'{"error":{"message":"use https"}}',
                                               {"content-type": "application/json"})
        elif req.method == "POST" and req.path == "/v1/responses":
            flow.response = http.Response.make(
                200, self.stream, {"content-type": "text/event-stream; charset=utf-8"})
        else:
            flow.response = http.Response.make(404, b'{"error":{"message":"not found"}}',
                                               {"content-type": "application/json"})


addons = [Timing(), Canned()]
