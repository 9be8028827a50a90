"""One owner per login: the vendors' CLIs refresh their own tokens (Claude Code at
platform.claude.com or console.anthropic.com, Codex at auth.openai.com, Gemini CLI at
oauth2.googleapis.com, Qwen Code at chat.qwen.ai). Refresh tokens rotate, and a spent one
revokes the chain, so once detour holds a login (imported from that CLI) detour alone
refreshes it, and the CLI's own refresh call for it is answered here, from detour's store: the
current access token, and the CLI's own refresh token handed back unchanged (so it asks the
same way next time, and never spends detour's chain). A refresh token detour does not
recognise goes to the vendor untouched.

The token hosts are intercepted only while detour holds a login of their vendor. The answer
goes out through the relay (a one-time URL), its body streamed and not kept in the flow; the
request body (the CLI's refresh token) is replaced in the flow by a redacted one.
"""

import asyncio
import json
import logging
from urllib.parse import parse_qs

from mitmproxy import connection, http, tls

from addons.credentials.provider import NeedsLogin, RefreshFailed, AccountRef
from addons.credentials.vendors import VENDORS
from addons.flow_url import pretty_host

log = logging.getLogger(__name__)

REDACTED_BODY = b'{"grant_type":"refresh_token","refresh_token":"[redacted]"}'


class TokenOwner:
    def __init__(self, settings):
        self.settings = settings
        self._answered: dict[str, str] = {}  # flow id -> the URL the CLI called

    def _endpoints(self) -> dict[tuple[str, str], str]:
        """(host, path) -> vendor, for the vendors detour holds a login of now."""
        creds = self.settings.credentials
        held = creds.vendors() if creds is not None else set()
        return {(host, path): name for name in held if name in VENDORS
                for host, path in VENDORS[name].refresh_hosts}

    def tls_clienthello(self, data: tls.ClientHelloData):
        host = data.client_hello.sni or (data.context.server.address or ("",))[0]
        if any(h == host for h, _ in self._endpoints()):
            data.ignore_connection = False  # decrypted, to see its refresh calls

    async def request(self, flow: http.HTTPFlow):
        req = flow.request
        if req.method != "POST" or flow.response is not None:
            return
        endpoints = self._endpoints()
        if not endpoints:  # no login held: every flow's host is not parsed for nothing
            return
        vendor = endpoints.get((pretty_host(req), req.path.partition("?")[0]))
        if vendor is None:
            return
        params = _params(req)
        token = params.get("refresh_token")
        if params.get("grant_type") != "refresh_token" or not token:
            return
        creds = self.settings.credentials
        acct = await asyncio.to_thread(creds.store.holding, vendor, token)
        if acct is None or not creds.holds(acct.id):
            return  # not a login detour holds: the vendor answers it
        called = req.pretty_url
        ref = AccountRef(acct.id)
        try:
            await creds.fresh(ref)
            status, body = 200, creds.token_answer(ref, token)
            story = "answered from detour's store"
        except NeedsLogin as e:
            status, body = 400, json.dumps({"error": "invalid_grant",
                                            "error_description": str(e)}).encode()
            story = "refused: the login needs a new login"
        except RefreshFailed as e:
            status, body = 503, json.dumps({"error": "temporarily_unavailable",
                                            "error_description": str(e)}).encode()
            story = f"not answered now: {e}"
        relay = await self.settings.ready_relay()
        if relay is None:
            flow.response = http.Response.make(503, b'{"error":"temporarily_unavailable"}',
                                               {"content-type": "application/json"})
            return
        url = relay.answer(status, {"content-type": "application/json",
                                    "cache-control": "no-store"}, body)
        self._answered[flow.id] = called
        req.url = url
        if flow.server_conn.via:  # --mode upstream: the relay is ours, on loopback
            flow.server_conn = connection.Server(address=(req.host, req.port))
        req.content = REDACTED_BODY  # the CLI's refresh token stays out of the flow
        req.headers.pop("content-encoding", None)
        flow.comment = (f"detour: {vendor} token refresh for {acct.provider}/{acct.name}: "
                        f"{story}")
        log.info("detour: %s refresh call for %s/%s %s", vendor, acct.provider, acct.name,
                 story)

    def responseheaders(self, flow: http.HTTPFlow):
        called = self._answered.pop(flow.id, None)
        if called is not None:
            flow.response.stream = True  # the tokens pass, the flow keeps no copy
            flow.request.url = called

    def error(self, flow: http.HTTPFlow):
        self._answered.pop(flow.id, None)


def _params(req: http.Request) -> dict:
    try:
        text = req.get_text(strict=False) or ""
    except ValueError:
        return {}
    if "json" in req.headers.get("content-type", "") or text.lstrip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return {}
        return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(
            data, dict) else {}
    return {k: v[-1] for k, v in parse_qs(text).items()}
