"""Which flows are detour's, and what happens to each: the request hook decides.

- A host detour never handles is tunnelled without TLS interception (`tls_clienthello`).
- On a handled host, only the model endpoints (host + path, from the format table in
  formats.py, which also says where the model and stream flag are read) are intercepted; every other path
  (Claude Code's `/api/claude_code/*`, telemetry, ...) passes through untouched and is never
  counted as a model call.
- A model call whose route is only `passthrough` goes to its original vendor through
  mitmproxy's own connection, untouched; its usage is read on the way back (observe mode).
- Any other model call becomes a `Job`: streamed ones are rerouted to the relay, whole ones
  are answered inline here.

Each model call gets one `Call` (addons/call.py) the moment its path says it is one; the call
writes its usage row once, however it ends. The interceptor keeps the calls still open, so
that an internal error, a client leaving or the proxy stopping ends them too.
"""

import asyncio
import contextlib
import functools
import json
import logging
import os
from urllib.parse import urlsplit

import orjson
from mitmproxy import command, connection, ctx, http, tls

from addons.call import Call
from addons.config import PASSTHROUGH
from addons.decoding import TooLarge, decode_whole
from addons.direct import DirectPath, flows_looked_at
from addons import formats, side_calls
from addons.flow_url import pretty_host, pretty_url
from addons.formats import (ACCOUNT_CHECK, CODEX_MODELS_PATH, COMPACTION, MODEL_CALL,
                            MODEL_LIST, SOCKET_UPGRADE, FormatTable)
from addons.forwarding import FORMATS, Job, internal_error, streamed_answer
from addons.header_fields import credentials_held, lowered, unredacted_credentials, unsafe_name
from addons.prices import subscription_login
from addons.responses import make_response
from addons.routing import plan
from addons.scrubber import credentials_of
from addons.settings import DetourSettings
from addons.side_calls import SideCalls
from translators import canonical

log = logging.getLogger(__name__)
# seconds a call that comes before detour's `running` waits for it (then it goes on as it can)
RUNNING_WAIT_SECONDS = 10.0

# which hosts and paths are model calls, in which client format: the format table
MARK = ":twisted_rightwards_arrows:"
# every answer on a vendor host carries its flow id: the key of its usage row (`flow_id`) and
# of its flow in mitmweb
ID_HEADER = "x-detour-id"
META = "detour"


def client_name(headers) -> str:
    return headers.get("user-agent", "")[:120]


class PassthroughTap:
    """Reads usage off a vendor's answer while mitmproxy forwards it untouched."""

    __slots__ = ("call", "decoder", "broken", "error")

    def __init__(self, call: Call, client_format: str):
        self.call = call
        self.decoder = FORMATS[client_format].StreamDecoder()
        self.broken: str | None = None  # why usage stopped being read, if it did
        # the stream's first error event as the decoder read it: the vendor's own, or the
        # decoder's refusal of what it sent (a usage figure beyond a count)
        self.error: str | None = None

    def __call__(self, chunk: bytes) -> bytes:
        # a stream callable: synchronous, once per chunk, and once more with b"" at the end.
        # It runs inside mitmproxy's connection handling: an exception here would crash the
        # proxy, so whatever goes wrong only stops the usage reading (and is noted)
        if chunk and self.broken is None:
            try:
                events = self.decoder.feed(chunk)
                if self.error is None:
                    for ev in events:
                        if type(ev) is canonical.StreamError:
                            self.error = f"{ev.kind}: {ev.message}"[:300]
                            break
            except Exception as e:
                self.broken = f"usage not read: {type(e).__name__}: {e}"[:300]
                log.warning("detour: observing %s: %s", self.call.flow_id, self.broken,
                            exc_info=not isinstance(e, canonical.TranslationError))
        return chunk


class Interceptor:
    def __init__(self, settings: DetourSettings):
        self.settings = settings
        self._inline: dict[str, set[asyncio.Task]] = {}  # client connection id -> our tasks
        settings.on_finished(self._relay_finished)
        settings.on_stopping(self._stopping)
        self._relay_flows: dict[str, http.HTTPFlow] = {}
        # passthrough flows being observed; not in flow.metadata, which mitmproxy saves with
        # the flow and can only hold plain data
        self._taps: dict[str, PassthroughTap] = {}
        # a vendor host's request credentials, taken off the flow before mitmweb first shows
        # it (`requestheaders`); put back only on a flow sent to the vendor as it is, once the
        # request hook's `update` has been published (`_put_back`); kept in `_unredacted` until
        # they are redacted again
        self._held: dict[str, dict[str, list[str]]] = {}
        self._due: dict[str, dict[str, list[str]]] = {}
        self._unredacted: dict[str, http.HTTPFlow] = {}
        # model calls not yet finished, by flow id (a call leaves once it finished)
        self._calls: dict[str, Call] = {}
        # calls mitmproxy's own connection carries to their one provider (addons/direct.py)
        self.direct = DirectPath(settings, self._finish)
        self._put_back = asyncio.Event()  # set at `running`: CredentialsPutBack is in the chain
        self.side_calls = SideCalls(settings)

    # ------------------------------------------------------------ operator command

    @command.command("detour.status")
    def status(self) -> str:
        """detour's state as JSON: calls in flight, relay jobs, queued usage rows, resting
        accounts, and the process's memory, open files and asyncio tasks (`process`). The
        counts of calls, jobs and rows are back to 0 when the proxy is idle."""
        rt = self.settings.runtime
        relay = rt.relay.stats() if rt.relay else {}
        return json.dumps({
            "open_calls": len(self._calls),
            "relayed_flows": len(self._relay_flows),
            "observed_flows": len(self._taps),
            "inline_calls": sum(len(t) for t in self._inline.values()),
            "direct_calls": len(self.direct.calls),
            "relay_jobs_waiting": relay.get("jobs_waiting", 0),
            "relay_jobs_running": relay.get("jobs_running", 0),
            "usage_rows_queued": rt.store.stats()["rows_queued"],
            "cooling_down": {key: round(left) for key, left in rt.cooldowns.resting().items()},
            "relay_ports": list(rt.relay.ports) if rt.relay else [],
            "gateway": self.settings.gate.stats() if self.settings.gate is not None else {},
            "process": {**_process_figures(),
                        "relay_connections": relay.get("connections", 0),
                        "relay_connections_waiting": relay.get("connections_waiting", 0)},
        })

    @property
    def table(self) -> FormatTable:
        """The endpoints detour takes, as configured (formats.py, config `chat_hosts`)."""
        return self.settings.format_table()

    # ------------------------------------------------------------ TLS: decrypt only our hosts

    def tls_clienthello(self, data: tls.ClientHelloData):
        host = data.client_hello.sni or (data.context.server.address or ("",))[0]
        if host not in self.table.handled_hosts:
            data.ignore_connection = True

    # ------------------------------------------------------------ credentials out of sight

    def requestheaders(self, flow: http.HTTPFlow):
        """The first hook that sees a request, and it runs before mitmweb's View publishes the
        flow (`flows/add`): script addons come before the View in mitmweb's addon chain."""
        req = flow.request
        host = pretty_host(req)
        if host not in self.table.handled_hosts or flow.response is not None:
            return  # not a vendor host, or refused (the gateway)
        flow.metadata[META + ".host"] = host  # survives a vendor override
        query_key = formats.QUERY_CREDENTIALS.get(host)
        if query_key is not None and query_key[0] in req.query:
            # a key in the URL would be in every flow and log line: it goes in the header the
            # vendor takes it in as well, and is held like any other credential
            req.headers[query_key[1]] = req.query[query_key[0]]
            del req.query[query_key[0]]
        held = credentials_held(req.headers)
        if held:
            self._held[flow.id] = held
            redact_credentials(req.headers)
        endpoint = self.table.client_call(host, req.method, req.path)
        if endpoint is not None and endpoint.endpoint.kind == MODEL_CALL:
            self._refuse_unread(flow, endpoint.client_format)

    def _refuse_unread(self, flow: http.HTTPFlow, fmt: str) -> None:
        """A model call whose declared body is past limits.request_body is refused before
        mitmproxy reads that body (it would hold all of it before the request hook): the body
        is streamed to the relay and dropped on the way, and the relay answers the 413 in the
        client's format. The request hook then sees a flow to the relay and leaves it."""
        req = flow.request
        rt = self.settings.runtime
        limit = rt.config.limits.request_body
        try:
            size = int(req.headers.get("content-length", ""))
        except ValueError:
            return  # no length said: the request hook measures the body
        if size <= limit or rt.relay is None:
            return
        message = _too_large(limit)
        call = self._open_call(flow, fmt, self._held.get(flow.id, {}))
        mod = FORMATS[fmt]
        url = rt.relay.answer(413, {"content-type": mod.JSON_CONTENT_TYPE, ID_HEADER: flow.id},
                              mod.error_body(413, f"detour: {message}"))
        self._held.pop(flow.id, None)  # sent nowhere
        redact_credentials(req.headers)
        called = pretty_url(req)
        req.url = url
        if flow.server_conn.via:  # --mode upstream: the relay is ours, on loopback
            flow.server_conn = connection.Server(address=(req.host, req.port))
        req.headers["content-length"] = "0"  # what reaches the relay: nothing
        req.stream = _dropped
        flow.comment = f"detour: rejected (413) before reading {called}: {message}"
        flow.marked = MARK
        call.failed(message, 413)
        call.finish()

    def _restore(self, flow: http.HTTPFlow, held: dict[str, list[str]]) -> None:
        """The client's credentials go back on a flow that goes to its vendor untouched."""
        if held:
            self._due[flow.id] = held

    def running(self):
        ctx.master.addons.add(CredentialsPutBack(self))
        self._put_back.set()

    def put_back(self, flows) -> None:
        for flow in flows:
            held = self._due.pop(flow.id, None)
            if held is not None:
                for name, values in held.items():
                    flow.request.headers.set_all(name, values)
                self._unredacted[flow.id] = flow
            self.direct.put_on(flow)

    def done(self):
        # mitmproxy's Save writes the flows still open when it stops (it comes after us)
        for flow in list(self._unredacted.values()):
            self._redact_sent(flow)

    # ------------------------------------------------------------ the decision

    async def request(self, flow: http.HTTPFlow):
        """Fail closed: whatever goes wrong deciding a flow on a vendor host, the flow is
        answered here (a 500 in the client's format, recorded), never left for mitmproxy to
        forward to the vendor the route was meant to avoid."""
        try:
            await self._request(flow)
        except Exception as e:
            self._internal_error(flow, e)

    def _internal_error(self, flow: http.HTTPFlow, e: Exception) -> None:
        host = flow.metadata.get(META + ".host") or pretty_host(flow.request)
        if host not in self.table.handled_hosts:
            raise e  # not a flow detour takes
        log.error("detour: internal error on %s %s", flow.request.method,
                  flow.metadata.get(META, {}).get("url") or pretty_url(flow.request),
                  exc_info=e)
        message = internal_error(e)
        # a flow not yet known as a model call has no call: it is answered, not counted
        call = self._calls.get(flow.id)
        fmt = call.row.client_format if call is not None else self.table.host_formats[host]
        relayed = self._relay_flows.pop(flow.id, None)
        if relayed is not None:  # handed to the relay already: withdrawn, its call ended here
            self.settings.runtime.relay.withdraw(flow.id)
        self._reject(flow, fmt, call, 500, message)

    async def _request(self, flow: http.HTTPFlow):
        req = flow.request
        host = pretty_host(req)
        if host not in self.table.handled_hosts or flow.response is not None:
            return  # refused before its request hook (the gateway's 407 or 403)
        flow.metadata[META + ".host"] = host  # survives a vendor override
        if not self._put_back.is_set():
            # mitmproxy opens the port before `running`: a call that comes first waits for
            # it (bounded), so that the addon putting credentials back (CredentialsPutBack,
            # added at `running`) is in the chain when this request goes out
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(RUNNING_WAIT_SECONDS):
                    await self._put_back.wait()
        held = self._held.pop(flow.id, {})
        endpoint = self.table.client_call(host, req.method, req.path)
        rt = self.settings.runtime
        if endpoint is not None and endpoint.endpoint.kind not in (MODEL_CALL, COMPACTION):
            # a WebSocket upgrade, a model list, an account check, a token count, a setup
            # call: answered here, or left to the vendor as below
            if self._side_call(flow, endpoint, held) or await self.side_calls.answer(
                    flow, endpoint, MARK):
                return
            endpoint = None  # not answered here: it goes on as any other call on the host
        if endpoint is None:
            # not a model call: untouched, except that a configured vendor override applies
            # to the whole host
            origin = rt.config.vendors.get(host)
            if origin:
                _retarget(req, origin)
            self._restore(flow, held)
            return
        fmt = endpoint.client_format
        call = self._open_call(flow, fmt, held)
        if (bad := unsafe_header(req.headers)) is not None:
            # a client header is copied to the provider: a CR, LF or NUL in it would let the
            # client write headers of its own on the provider's wire
            return self._reject(flow, fmt, call, 400,
                                f"header {bad!r}: a value holding CR, LF or NUL is not sent on")
        limits = rt.config.limits
        if len(req.raw_content or b"") > limits.request_body:
            return self._reject(flow, fmt, call, 413, _too_large(limits.request_body))
        try:
            raw = decode_whole(req.raw_content or b"", req.headers.get("content-encoding", ""),
                               limits.decompressed, "the request body once decompressed")
        except TooLarge as e:
            return self._reject(flow, fmt, call, 413,
                                f"{e} (limits.decompressed in config.yaml)")
        except ValueError as e:
            return self._reject(flow, fmt, call, 400, f"cannot decode the request body: {e}")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return self._reject(flow, fmt, call, 400, f"the request body is not JSON: {e}")
        if not isinstance(body, dict):
            return self._reject(flow, fmt, call, 400, "the request body must be a JSON object")
        model = endpoint.model(body)  # where the table says: a body field, a path part, ...
        if not isinstance(model, str) or not model:
            return self._reject(flow, fmt, call, 400, "model: a model name (string) is required")
        stream = endpoint.stream(body)
        call.requested(model, stream)
        gate = self.settings.gate
        if gate is not None and (refusal := await gate.admit(
                call.row.user, model, req.headers.get("user-agent", ""))) is not None:
            return self._reject(flow, fmt, call, 429, refusal.message,
                                {"retry-after": str(refusal.retry_after)})
        config = rt.config
        candidates = plan(config, rt.providers, model,
                          user_agent=req.headers.get("user-agent", ""),
                          quotas=rt.forwarder.quotas, cooldowns=rt.cooldowns)
        # a reverse mode's target is where the client's call was meant to go
        origin = self.settings.reverse_origins.get(host) or config.vendor_origin(host)
        vendor_url = origin + req.path
        if all(c.provider is None for c in candidates):
            return self._passthrough(flow, fmt, call, origin, held)
        idle = getattr(FORMATS[fmt], "idle_answer", None)
        if idle is not None and (answer := idle(body)) is not None:
            # asks the model nothing (Ollama's load or unload): answered here, as the server would
            return self._idle(flow, fmt, call, answer)
        compacted = None
        if endpoint.endpoint.kind == COMPACTION:
            # asked of the routed provider as a summary request (addons/side_calls.py);
            # passthrough would send that request to the vendor's compaction endpoint
            compacted = functools.partial(side_calls.compacted_history, body)
            try:
                body = side_calls.summary_request(body)
            except canonical.TranslationError as e:
                return self._reject(flow, fmt, call, 400, str(e))
            raw, stream = orjson.dumps(body), False
            candidates = [c for c in candidates if c.provider is not None]
        headers = lowered(req.headers) | _joined(held)
        job = Job(flow.id, fmt, headers, vendor_url, raw, body, model, stream, candidates, call,
                  sse=endpoint.sse)
        # a request one candidate cannot take (translated: a field its format cannot hold) goes
        # on to the next; refused only when no candidate can take it
        job.candidates = self._fitting(job, candidates)
        if not job.candidates:
            return self._reject(flow, fmt, call, 400,
                                "no candidate can take this request: " + "; ".join(job.unfit))
        if all(c.provider is None for c in job.candidates):
            self._passthrough(flow, fmt, call, origin, held)
            flow.comment += " | skipped: " + "; ".join(job.unfit)
            call.skipped_before_routing(job.unfit)
            return
        called = pretty_url(req)
        flow.metadata[META] = {"client_format": fmt, "model": model, "stream": stream,
                               "url": called}
        flow.marked = MARK
        # the job keeps the client's headers (a passthrough candidate needs them); the flow
        # that mitmweb shows and Save writes does not
        redact_credentials(flow.request.headers)
        if compacted is None and self.direct.take(flow, job):
            return
        if stream:
            relay = await self.settings.ready_relay()
            if relay is None:
                return self._reject(flow, fmt, call, 503, "the relay is not running; try again")
            url = relay.submit(job, flow.client_conn.id)
            flow.comment = f"detour: {fmt} {model} -> relay (streamed), from {called}"
            self._relay_flows[flow.id] = flow
            flow.request.url = url
            if flow.server_conn.via:  # --mode upstream: the relay is ours, on loopback
                flow.server_conn = connection.Server(address=(req.host, req.port))
            flow.request.headers.pop("content-encoding", None)
            # the relay takes the request from the job, not from what mitmproxy sends it: the
            # flow keeps the body only where it can still be looked at (held for a stream's
            # whole life, it was a third of what detour held per open stream)
            flow.request.content = raw if flows_looked_at() else b""
            return
        await self._inline_answer(flow, job, compacted)

    def _idle(self, flow: http.HTTPFlow, fmt: str, call: Call, answer: bytes) -> None:
        redact_credentials(flow.request.headers)
        flow.response = http.Response.make(200, answer, {
            "content-type": FORMATS[fmt].JSON_CONTENT_TYPE, ID_HEADER: flow.id})
        flow.comment = f"detour: {fmt} {call.row.model_requested}: asks the model nothing " \
                       "(a load or unload), answered here"
        flow.marked = MARK
        call.status(200)
        call.finish()

    def _side_call(self, flow: http.HTTPFlow, endpoint, held: dict[str, list[str]]) -> bool:
        """A call on a model endpoint that is not a model call (addons/side_calls.py); True
        when it was answered here."""
        kind = endpoint.endpoint.kind
        if kind == SOCKET_UPGRADE and side_calls.is_socket_upgrade(flow.request.headers):
            side_calls.refuse_socket(flow, endpoint.client_format, ID_HEADER)
            flow.marked = MARK
            return True
        if kind not in (MODEL_LIST, ACCOUNT_CHECK) or hasattr(
                formats.CODECS[endpoint.client_format], "model_list"):
            return False  # the others, and Gemini's list: SideCalls
        names, vendor = side_calls.routed_models(self.settings.runtime.config,
                                                 flow.request.headers.get("user-agent", ""))
        if vendor:  # the vendor is asked; a list gets detour's names on the way back
            if kind == MODEL_LIST:
                flow.metadata[META + ".models"] = names
            return False
        if kind == MODEL_LIST:
            codex = endpoint.endpoint.path == CODEX_MODELS_PATH
            body = side_calls.model_list_body(names, codex_shape=codex)
            flow.comment = f"detour: the models routed for this client ({len(names)})"
        elif kind == ACCOUNT_CHECK:
            body = side_calls.account_check_body(_joined(held).get("authorization", ""))
            flow.comment = "detour: ChatGPT account check answered (its models are rerouted)"
        else:
            return False
        flow.response = http.Response.make(
            200, body, {"content-type": "application/json", ID_HEADER: flow.id})
        flow.marked = MARK
        return True

    def _open_call(self, flow: http.HTTPFlow, fmt: str, held: dict[str, list[str]]) -> Call:
        """The call of a model call, kept until it finishes. Its row is scrubbed of the
        configuration's secrets and of the client's own credentials (a vendor may echo them)."""
        rt = self.settings.runtime
        credentials = _joined(held)
        call = Call(flow.id, client_name(flow.request.headers), fmt, self._store,
                    rt.forwarder.scrubber, credentials_of(credentials),
                    flow.metadata.get("detour.user", ""))
        call.client_subscription = subscription_login(credentials)
        self._calls[flow.id] = call
        return call

    def _store(self, row) -> None:
        """A call finished: its row goes to the store, and the call out of what is open."""
        self._calls.pop(row.flow_id, None)
        self._taps.pop(row.flow_id, None)
        self.settings.runtime.store.add(row)
        if self.settings.gate is not None:
            self.settings.gate.recorded(row)

    def _stopping(self) -> None:
        """The proxy stops (after the relay ended its jobs, before the store closes): every
        call still open ends now."""
        for tasks in self._inline.values():
            for task in tasks:
                task.cancel()
        self.direct.stopping()
        for call in list(self._calls.values()):
            call.ended("proxy stopped")
            call.finish()

    def _fitting(self, job: Job, candidates: list) -> list:
        """The candidates that can take the request, checked (a translated one: its request
        built, kept for the send) up to the first provider candidate that can; the forwarder
        checks the ones after it only if it gets to them, so a call its first candidate
        answers is translated once. Past a passthrough candidate the check goes on: whether
        only passthrough candidates can take it decides observe mode."""
        fits = self.settings.runtime.forwarder.fits
        for i, cand in enumerate(candidates):
            if cand.provider is not None and fits(job, cand):
                return [c for c in candidates[:i] if fits(job, c)] + candidates[i:]
        return [c for c in candidates if fits(job, c)]

    async def _inline_answer(self, flow: http.HTTPFlow, job: Job, reshape=None) -> None:
        """`reshape`: what a successful answer's body becomes (a compaction's history)."""
        rt = self.settings.runtime
        conn = flow.client_conn.id
        # kept in self._inline until done; asyncio's own create_task: mitmproxy's looks up an
        # environment variable for every task it names (~2% of this hook's time)
        task = asyncio.get_running_loop().create_task(rt.forwarder.complete(job),
                                                      name=f"detour call {flow.id}")
        self._inline.setdefault(conn, set()).add(task)
        try:
            status, headers, body = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # mitmproxy itself is shutting the hook down
            if not job.call.done:  # else the proxy stopping ended it
                job.call.client_left()
                self._finish(flow, job)
            return
        finally:
            tasks = self._inline.get(conn)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self._inline[conn]
        job.call.first_byte()
        if reshape is not None and status == 200:
            try:
                body = reshape(body)
            except (ValueError, canonical.TranslationError) as e:
                status, body = 502, FORMATS[job.client_format].error_body(
                    502, f"detour: the provider's summary cannot be used: {e}")
                job.call.failed(f"compaction: {e}", 502)
        headers[ID_HEADER] = flow.id
        flow.response = make_response(status, body, headers)
        self._finish(flow, job)

    def client_disconnected(self, client):
        for task in self._inline.pop(client.id, ()):
            task.cancel()

    # ------------------------------------------------------------ relay flows

    def responseheaders(self, flow: http.HTTPFlow):
        if META + ".host" in flow.metadata:
            flow.response.headers[ID_HEADER] = flow.id
        self._redact_sent(flow)
        if self.direct.responseheaders(flow):
            return
        if flow.id in self._relay_flows:
            # a failure is one small error body: kept whole, mitmweb shows it
            flow.response.stream = flow.response.status_code < 300
            # the relay has answered: from now on the flow shows what the client called, in
            # mitmdump's line and in mitmweb, not the relay's one-time address
            url = flow.metadata.get(META, {}).get("url")
            if url:
                flow.request.url = url
            return
        tap = self._taps.get(flow.id)
        if tap is None:
            return
        ctype = flow.response.headers.get("content-type", "")
        row = tap.call.row
        # an event stream, the format's own stream (Ollama's NDJSON), or a streamed call
        # answered in JSON (Gemini's array without alt=sse): passed on as it comes
        if streamed_answer(ctype, row.client_format) or (
                row.stream and flow.response.status_code < 300 and "json" in ctype):
            flow.response.stream = tap

    def error(self, flow: http.HTTPFlow):
        self._held.pop(flow.id, None)  # the request never reached its hook
        self._due.pop(flow.id, None)
        self._redact_sent(flow)
        if self.direct.error(flow):
            return
        if flow.id in self._relay_flows:
            self.settings.runtime.relay.cancel(flow.id)
            return
        tap = self._taps.pop(flow.id, None)
        if tap is not None:
            tap.call.failed(flow.error.msg if flow.error else "error")
            tap.call.finish()

    def _relay_finished(self, job: Job) -> None:
        flow = self._relay_flows.pop(job.flow_id, None)
        if flow is not None:
            self._finish(flow, job)
        else:
            self._end(job)

    # ------------------------------------------------------------ passthrough (observe)

    def _passthrough(self, flow: http.HTTPFlow, fmt: str, call: Call, origin: str,
                     held: dict[str, list[str]]) -> None:
        model = call.row.model_requested
        host = flow.metadata[META + ".host"]  # the request's host, before any override
        call.answered_by(host, "client", model)
        call.routed(1, [{"provider": PASSTHROUGH, "account": "client", "model": model}])
        if not origin.endswith("://" + host):
            _retarget(flow.request, origin)  # a configured vendor override
        self._restore(flow, held)
        self._taps[flow.id] = PassthroughTap(call, fmt)
        flow.comment = f"detour: {fmt} {model} -> passthrough"

    def _redact_sent(self, flow: http.HTTPFlow) -> None:
        """Once a vendor host's request has gone out, its credentials have no business in the
        flow mitmweb shows and `save_stream_file` writes."""
        if META + ".host" in flow.metadata:
            redact_credentials(flow.request.headers)
            self._unredacted.pop(flow.id, None)

    def response(self, flow: http.HTTPFlow):
        self._redact_sent(flow)
        if self.direct.response(flow):
            return
        names = flow.metadata.pop(META + ".models", None)
        if names is not None and flow.response.status_code == 200:
            merged = side_calls.merged_model_list(
                flow.response.get_content(strict=False) or b"", names)
            if merged is not None:
                flow.response.set_content(merged)
        tap = self._taps.pop(flow.id, None)
        if tap is None:
            return
        try:
            self._observed(flow, tap)
        except Exception as e:  # the answer is the vendor's and goes on; its row is kept
            log.error("detour: internal error reading usage of %s", flow.id, exc_info=e)
            if not tap.call.done:
                tap.call.failed(internal_error(e))
                tap.call.finish()

    def _observed(self, flow: http.HTTPFlow, tap: PassthroughTap) -> None:
        call = tap.call
        status = flow.response.status_code
        call.status(status)
        if flow.response.stream:
            usage = None
            if tap.broken is None:
                tap.decoder.close()
                usage = tap.decoder.usage
        else:
            usage, unread = _usage_of_whole(call.row.client_format, flow.response)
            if unread:
                call.ended(unread)
        if usage is not None:
            self.settings.runtime.forwarder.set_usage(call, usage, pretty_url(flow.request),
                                                      call.client_subscription)
        if status >= 400:  # the vendor's words, scrubbed when the call finishes
            call.failed(flow.response.get_text(strict=False)[:300]
                        if not flow.response.stream else f"HTTP {status}")
        if tap.broken or tap.error:
            call.ended(tap.broken or tap.error)
        if flow.response.timestamp_start and flow.request.timestamp_start:
            call.first_byte_at(round((flow.response.timestamp_start
                                      - flow.request.timestamp_start) * 1000, 2))
        call.finish()

    # ------------------------------------------------------------ endings

    def _reject(self, flow, fmt: str, call: Call | None, status: int, message: str,
                headers: dict[str, str] | None = None) -> None:
        """Bad input: an error in the client's own format; the proxy serves on. The call (if
        the flow is a model call, and not one already finished) ends with it."""
        mod = FORMATS[fmt]
        redact_credentials(flow.request.headers)
        flow.response = http.Response.make(status, mod.error_body(status, f"detour: {message}"),
                                           {"content-type": mod.JSON_CONTENT_TYPE,
                                            ID_HEADER: flow.id, **(headers or {})})
        flow.comment = f"detour: rejected ({status}): {message}"
        flow.marked = MARK
        if call is not None and not call.done:
            call.failed(message, status)
            call.finish()

    def _end(self, job: Job):
        """Finish a forwarded call, its route story told whole: what each asked candidate was
        not sent, and the candidates left out before any was asked. Returns its row."""
        job.call.noted_dropped(job.dropped)
        job.call.skipped_before_routing(job.unfit)
        return job.call.finish()

    def _finish(self, flow: http.HTTPFlow, job: Job) -> None:
        row = self._end(job)  # scrubbed: the comment and the flow's metadata show it
        if row is None:
            return
        route = " -> ".join(
            f"{a['provider']}/{a['account']} {a.get('status') or a.get('error', '')}".strip()
            + (f" (dropped: {', '.join(a['dropped'])})" if a.get("dropped") else "")
            for a in row.route if "provider" in a)
        if job.unfit:
            route = "skipped: " + "; ".join(job.unfit) + " | " + route
        # a relayed flow shows the relay's address in mitmweb: say what the client called
        url = flow.metadata.get(META, {}).get("url")
        origin = f" (called {url})" if url and url != pretty_url(flow.request) else ""
        flow.comment = (
            f"detour: {job.client_format} {job.model}{origin} -> "
            f"{row.provider or '-'} ({row.model_upstream or '-'}) {row.status}"
            f" | {route}" + (f" | {row.error}" if row.error else ""))
        flow.metadata[META] = dict(flow.metadata.get(META, {}), route=row.route,
                                   status=row.status, error=row.error)
        if row.error:
            # the proxy's own log says what the client called and why it failed (the error
            # names each attempt of the route and its cause)
            level = logging.INFO if row.error.startswith("client-aborted") else logging.WARNING
            log.log(level, "detour: %s %s %s -> %s: %s", flow.request.method,
                    url or pretty_url(flow.request), job.model, row.status,
                    row.error.removeprefix("detour: "))


class CredentialsPutBack:
    """The last addon in mitmproxy's chain: puts a client's credentials back on a flow that goes
    to its vendor untouched. mitmproxy runs an `update` event after every hook; the one after
    the request hook reaches this addon after mitmweb's View has published the flow (redacted),
    and before the request is sent. (Put back in the request hook itself, they would be in
    that `flows/update`.)"""

    def __init__(self, interceptor: Interceptor):
        self.interceptor = interceptor

    def update(self, flows) -> None:
        self.interceptor.put_back(flows)


def _joined(held: dict[str, list[str]]) -> dict[str, str]:
    """Held header values as one value per name (cookies joined as a Cookie header joins)."""
    return {name: ("; " if name == "cookie" else ", ").join(values)
            for name, values in held.items()}


def redact_credentials(headers) -> None:
    """Replace secrets by a recognisable stub (scheme and last 4 characters kept)."""
    for name in unredacted_credentials(headers):
        value = headers.get(name)
        if value and not value.endswith("[redacted]"):
            # a cookie header is all secret: the space is between cookies, not after a scheme
            scheme, _, secret = value.rpartition(" ") if name != "cookie" else ("", "", value)
            tail = secret[-4:] if len(secret) >= 16 else ""
            headers[name] = f"{scheme + ' ' if scheme else ''}...{tail}[redacted]"


def unsafe_header(headers) -> str | None:
    """The name of the first header whose name or value holds a CR, LF or NUL, if any."""
    return unsafe_name(headers)


def _retarget(req: http.Request, origin: str) -> None:
    """Send a request to a configured vendor base (scheme://host:port[/prefix]): the path is
    kept, under the base's path prefix if it has one (a gateway at https://gw/anthropic)."""
    u = urlsplit(origin)
    req.scheme = u.scheme
    req.host = u.hostname
    req.port = u.port or (443 if u.scheme == "https" else 80)
    prefix = u.path.rstrip("/")
    if prefix:
        req.path = prefix + req.path


def _dropped(chunk: bytes) -> list[bytes]:
    """A request stream callable that lets nothing through (mitmproxy sends none of it)."""
    return []


def _too_large(limit: int) -> str:
    return (f"the request body is larger than {limit} bytes "
            f"(limits.request_body in config.yaml)")


def _process_figures() -> dict[str, int]:
    """This process's resident memory, open file descriptors and asyncio tasks (Linux /proc;
    -1 where it cannot be read)."""
    rss = fds = -1
    try:
        with open("/proc/self/statm") as f:
            rss = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        fds = len(os.listdir("/proc/self/fd")) - 1  # without the one listdir opened
    except OSError:
        pass
    return {"rss_bytes": rss, "open_fds": fds, "asyncio_tasks": len(asyncio.all_tasks())}


def _usage_of_whole(fmt: str, response: http.Response) -> tuple[canonical.Usage | None,
                                                                 str | None]:
    """A vendor's whole answer's usage, or None and why it could not be read."""
    if response.status_code >= 300:
        return None, None
    try:
        return FORMATS[fmt].decode_response(orjson.loads(response.get_content())).usage, None
    except (ValueError, canonical.TranslationError) as e:
        return None, f"usage not read: {type(e).__name__}: {e}"[:300]
