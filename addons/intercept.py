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
"""

import asyncio
import json
import logging
import time
from urllib.parse import urlsplit

import orjson
from mitmproxy import command, connection, ctx, http, tls
from mitmproxy.utils.asyncio_utils import create_task

from addons.config import PASSTHROUGH
from addons.decoding import TooLarge, decode_whole
from addons.formats import HANDLED_HOSTS, HOST_FORMATS, client_call
from addons.forwarding import FORMATS, Forwarder, Job, internal_error
from addons.routing import plan
from addons.scrubber import CREDENTIAL_HEADERS, credentials_of
from addons.settings import DetourSettings
from addons.usage import UsageRow, now_iso
from translators import canonical

log = logging.getLogger(__name__)

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

    __slots__ = ("row", "decoder", "started", "credentials", "broken")

    def __init__(self, row: UsageRow, client_format: str, credentials: list[str]):
        self.row = row
        self.decoder = FORMATS[client_format].StreamDecoder()
        self.started = time.perf_counter()
        self.credentials = credentials  # the vendor may echo them in an error
        self.broken: str | None = None  # why usage stopped being read, if it did

    def __call__(self, chunk: bytes) -> bytes:
        # a stream callable: synchronous, once per chunk, and once more with b"" at the end.
        # It runs inside mitmproxy's connection handling: an exception here would crash the
        # proxy, so whatever goes wrong only stops the usage reading (and is noted)
        if chunk and self.broken is None:
            try:
                self.decoder.feed(chunk)
            except Exception as e:
                self.broken = f"usage not read: {type(e).__name__}: {e}"[:300]
                log.warning("detour: observing %s: %s", self.row.flow_id, self.broken,
                            exc_info=not isinstance(e, canonical.TranslationError))
        return chunk


class Interceptor:
    def __init__(self, settings: DetourSettings):
        self.settings = settings
        self._inline: dict[str, set[asyncio.Task]] = {}  # client connection id -> our tasks
        settings.on_finished(self._relay_finished)
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
        # model calls whose request hook is running: their row, for an internal error to record
        self._deciding: dict[str, UsageRow] = {}
        self._recorded: set[str] = set()  # ... of those, the ones already recorded

    # ------------------------------------------------------------ operator command

    @command.command("detour.status")
    def status(self) -> str:
        """detour's state as JSON: calls in flight, relay jobs, queued usage rows, resting
        accounts. Everything but the resting accounts is back to 0 when the proxy is idle."""
        rt = self.settings.runtime
        relay = rt.relay
        return json.dumps({
            "relayed_flows": len(self._relay_flows),
            "observed_flows": len(self._taps),
            "inline_calls": sum(len(t) for t in self._inline.values()),
            "relay_jobs_waiting": len(relay._jobs) if relay else 0,
            "relay_jobs_running": len(relay._running) if relay else 0,
            "usage_rows_queued": rt.store.queued,
            "cooling_down": {key: round(left) for key, left in rt.cooldowns.resting().items()},
        })

    # ------------------------------------------------------------ TLS: decrypt only our hosts

    def tls_clienthello(self, data: tls.ClientHelloData):
        host = data.client_hello.sni or (data.context.server.address or ("",))[0]
        if host not in HANDLED_HOSTS:
            data.ignore_connection = True

    # ------------------------------------------------------------ credentials out of sight

    def requestheaders(self, flow: http.HTTPFlow):
        """The first hook that sees a request, and it runs before mitmweb's View publishes the
        flow (`flows/add`): script addons come before the View in mitmweb's addon chain."""
        req = flow.request
        if req.pretty_host not in HANDLED_HOSTS:
            return
        flow.metadata[META + ".host"] = req.pretty_host  # survives a vendor override
        held = {name: req.headers.get_all(name) for name in CREDENTIAL_HEADERS
                if name in req.headers}
        if held:
            self._held[flow.id] = held
            redact_credentials(req.headers)

    def _restore(self, flow: http.HTTPFlow, held: dict[str, list[str]]) -> None:
        """The client's credentials go back on a flow that goes to its vendor untouched."""
        if held:
            self._due[flow.id] = held

    def running(self):
        ctx.master.addons.add(CredentialsPutBack(self))

    def put_back(self, flows) -> None:
        for flow in flows:
            held = self._due.pop(flow.id, None)
            if held is not None:
                for name, values in held.items():
                    flow.request.headers.set_all(name, values)
                self._unredacted[flow.id] = flow

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
        finally:
            self._deciding.pop(flow.id, None)
            self._recorded.discard(flow.id)

    def _internal_error(self, flow: http.HTTPFlow, e: Exception) -> None:
        host = flow.metadata.get(META + ".host") or flow.request.pretty_host
        if host not in HANDLED_HOSTS:
            raise e  # not a flow detour takes
        log.error("detour: internal error on %s %s", flow.request.method,
                  flow.metadata.get(META, {}).get("url") or flow.request.pretty_url,
                  exc_info=e)
        message = internal_error(e)
        row = self._deciding.get(flow.id)
        fmt = row.client_format if row is not None else HOST_FORMATS[host]
        relayed = self._relay_flows.pop(flow.id, None)
        if relayed is not None:  # handed to the relay already: withdrawn, recorded below
            self.settings.runtime.relay.withdraw(flow.id)
        # a call not yet known as a model call (or already recorded) is answered, not counted
        record = row is not None and flow.id not in self._recorded
        if row is None:
            row = UsageRow(now_iso(), flow.id, client_name(flow.request.headers), fmt, "", False)
        self._reject(flow, fmt, row, 500, message, record=record)

    async def _request(self, flow: http.HTTPFlow):
        req = flow.request
        if req.pretty_host not in HANDLED_HOSTS:
            return
        flow.metadata[META + ".host"] = req.pretty_host  # survives a vendor override
        held = self._held.pop(flow.id, {})
        call = client_call(req.pretty_host, req.method, req.path)
        rt = self.settings.runtime
        if call is None:
            # not a model call: untouched, except that a configured vendor override applies
            # to the whole host
            origin = rt.config.vendors.get(req.pretty_host)
            if origin:
                _retarget(req, origin)
            self._restore(flow, held)
            return
        fmt = call.client_format
        row = UsageRow(now_iso(), flow.id, client_name(req.headers), fmt, "", False)
        self._deciding[flow.id] = row
        if (bad := unsafe_header(req.headers)) is not None:
            # a client header is copied to the provider: a CR, LF or NUL in it would let the
            # client write headers of its own on the provider's wire
            return self._reject(flow, fmt, row, 400,
                                f"header {bad!r}: a value holding CR, LF or NUL is not sent on")
        limits = rt.config.limits
        if len(req.raw_content or b"") > limits.request_body:
            return self._reject(flow, fmt, row, 413, _too_large(limits.request_body))
        try:
            raw = decode_whole(req.raw_content or b"", req.headers.get("content-encoding", ""),
                               limits.decompressed, "the request body once decompressed")
        except TooLarge as e:
            return self._reject(flow, fmt, row, 413,
                                f"{e} (limits.decompressed in config.yaml)")
        except ValueError as e:
            return self._reject(flow, fmt, row, 400, f"cannot decode the request body: {e}")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            return self._reject(flow, fmt, row, 400, f"the request body is not JSON: {e}")
        if not isinstance(body, dict):
            return self._reject(flow, fmt, row, 400, "the request body must be a JSON object")
        model = call.model(body)  # where the table says: a body field, a path part, ...
        if not isinstance(model, str) or not model:
            return self._reject(flow, fmt, row, 400, "model: a model name (string) is required")
        row.model_requested = model
        row.stream = call.stream(body)
        config = rt.config
        candidates = plan(config, rt.providers, model)
        origin = config.vendor_origin(req.pretty_host)
        vendor_url = origin + req.path
        if all(c.provider is None for c in candidates):
            return self._passthrough(flow, fmt, row, origin, held)
        headers = {k.lower(): v for k, v in req.headers.items()} | _joined(held)
        job = Job(flow.id, fmt, headers, vendor_url, raw, body, model, row.stream, candidates,
                  row)
        # a request one candidate cannot take (translated: a field its format cannot hold) goes
        # on to the next; refused only when no candidate can take it
        job.candidates = [c for c in candidates if self._fits(job, c)]
        if not job.candidates:
            return self._reject(flow, fmt, row, 400,
                                "no candidate can take this request: " + "; ".join(job.unfit))
        if all(c.provider is None for c in job.candidates):
            self._passthrough(flow, fmt, row, origin, held)
            flow.comment += " | skipped: " + "; ".join(job.unfit)
            row.route = [{"skipped": reason} for reason in job.unfit] + row.route
            return
        flow.metadata[META] = {"client_format": fmt, "model": model, "stream": row.stream,
                               "url": req.pretty_url}
        flow.marked = MARK
        # the job keeps the client's headers (a passthrough candidate needs them); the flow
        # that mitmweb shows and Save writes does not
        redact_credentials(flow.request.headers)
        if row.stream:
            relay = await self.settings.ready_relay()
            if relay is None:
                return self._reject(flow, fmt, row, 503, "the relay is not running; try again")
            url = relay.submit(job)
            flow.comment = f"detour: {fmt} {model} -> relay (streamed), from {req.pretty_url}"
            self._relay_flows[flow.id] = flow
            flow.request.url = url
            if flow.server_conn.via:  # --mode upstream: the relay is ours, on loopback
                flow.server_conn = connection.Server(address=(req.host, req.port))
            flow.request.headers.pop("content-encoding", None)
            flow.request.content = raw
            return
        await self._inline_answer(flow, job)

    def _fits(self, job: Job, cand) -> bool:
        if cand.provider is None or not Forwarder.needs_translation(job, cand):
            return True
        try:
            self.settings.runtime.forwarder.build(job, cand)
        except canonical.TranslationError as e:
            job.unfit.append(f"{cand.provider_name}/{cand.account_label} ({cand.model}): "
                             f"cannot translate the request: {e}")
            return False
        return True

    async def _inline_answer(self, flow: http.HTTPFlow, job: Job) -> None:
        rt = self.settings.runtime
        conn = flow.client_conn.id
        task = create_task(rt.forwarder.complete(job), name=f"detour call {flow.id}",
                           keep_ref=True)
        self._inline.setdefault(conn, set()).add(task)
        try:
            status, headers, body = await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                raise  # mitmproxy itself is shutting the hook down
            job.row.error = "client-aborted"
            self._finish(flow, job)
            return
        finally:
            tasks = self._inline.get(conn)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self._inline[conn]
        job.row.ttfb_ms = job.row.latency_ms = _ms_since(job.started)
        headers[ID_HEADER] = flow.id
        flow.response = http.Response.make(status, body, headers)
        self._finish(flow, job)

    def client_disconnected(self, client):
        for task in self._inline.pop(client.id, ()):
            task.cancel()

    # ------------------------------------------------------------ relay flows

    def responseheaders(self, flow: http.HTTPFlow):
        if META + ".host" in flow.metadata:
            flow.response.headers[ID_HEADER] = flow.id
        self._redact_sent(flow)
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
        if tap is not None and "text/event-stream" in flow.response.headers.get("content-type", ""):
            flow.response.stream = tap

    def error(self, flow: http.HTTPFlow):
        self._held.pop(flow.id, None)  # the request never reached its hook
        self._due.pop(flow.id, None)
        self._redact_sent(flow)
        if flow.id in self._relay_flows:
            self.settings.runtime.relay.cancel(flow.id)
            return
        tap = self._taps.pop(flow.id, None)
        if tap is not None:
            tap.row.error = flow.error.msg if flow.error else "error"
            self._record(tap.row, tap.started)

    def _relay_finished(self, job: Job) -> None:
        flow = self._relay_flows.pop(job.flow_id, None)
        if flow is not None:
            self._finish(flow, job)
        else:
            self._record(job.row, job.started)

    # ------------------------------------------------------------ passthrough (observe)

    def _passthrough(self, flow: http.HTTPFlow, fmt: str, row: UsageRow, origin: str,
                     held: dict[str, list[str]]) -> None:
        row.provider = flow.request.pretty_host
        row.account = "client"
        row.model_upstream = row.model_requested
        row.attempts = 1
        row.route = [{"provider": PASSTHROUGH, "account": "client", "model": row.model_requested}]
        if not origin.endswith("://" + flow.request.pretty_host):
            _retarget(flow.request, origin)  # a configured vendor override
        self._restore(flow, held)
        self._taps[flow.id] = PassthroughTap(row, fmt, credentials_of(_joined(held)))
        flow.comment = f"detour: {fmt} {row.model_requested} -> passthrough"

    def _redact_sent(self, flow: http.HTTPFlow) -> None:
        """Once a vendor host's request has gone out, its credentials have no business in the
        flow mitmweb shows and `save_stream_file` writes."""
        if META + ".host" in flow.metadata:
            redact_credentials(flow.request.headers)
            self._unredacted.pop(flow.id, None)

    def response(self, flow: http.HTTPFlow):
        self._redact_sent(flow)
        tap = self._taps.pop(flow.id, None)
        if tap is None:
            return
        try:
            self._observed(flow, tap)
        except Exception as e:  # the answer is the vendor's and goes on; its row is kept
            log.error("detour: internal error reading usage of %s", flow.id, exc_info=e)
            tap.row.error = internal_error(e)
            self._record(tap.row, tap.started)

    def _observed(self, flow: http.HTTPFlow, tap: PassthroughTap) -> None:
        row = tap.row
        row.status = flow.response.status_code
        if flow.response.stream:
            usage = None
            if tap.broken is None:
                tap.decoder.close()
                usage = tap.decoder.usage
        else:
            usage = _usage_of_whole(row.client_format, flow.response)
        if usage is not None:
            self.settings.runtime.forwarder.set_usage(row, usage)
        if row.status >= 400:
            row.error = self._scrubber().adding(tap.credentials).scrub(
                flow.response.get_text(strict=False)[:300]) if not flow.response.stream \
                else f"HTTP {row.status}"
        if tap.broken and not row.error:
            row.error = tap.broken
        if flow.response.timestamp_start and flow.request.timestamp_start:
            row.ttfb_ms = round((flow.response.timestamp_start
                                 - flow.request.timestamp_start) * 1000, 2)
        self._record(row, tap.started)

    # ------------------------------------------------------------ endings

    def _reject(self, flow, fmt: str, row: UsageRow, status: int, message: str,
                record: bool = True) -> None:
        """Bad input: an error in the client's own format; the proxy serves on."""
        mod = FORMATS[fmt]
        redact_credentials(flow.request.headers)
        flow.response = http.Response.make(status, mod.error_body(status, f"detour: {message}"),
                                           {"content-type": mod.JSON_CONTENT_TYPE,
                                            ID_HEADER: flow.id})
        flow.comment = f"detour: rejected ({status}): {message}"
        flow.marked = MARK
        row.status, row.error = status, message
        if record:
            self._record(row, None)

    def _finish(self, flow: http.HTTPFlow, job: Job) -> None:
        row = job.row
        self._scrub_row(row)  # before the comment and the flow's metadata show it
        for attempt in row.route:  # what each asked candidate was not sent
            dropped = job.dropped.get(f"{attempt.get('provider')}/{attempt.get('account')}")
            if dropped and attempt.get("status"):
                attempt["dropped"] = list(dropped)
        route = " -> ".join(
            f"{a['provider']}/{a['account']} {a.get('status') or a.get('error', '')}".strip()
            + (f" (dropped: {', '.join(a['dropped'])})" if a.get("dropped") else "")
            for a in row.route)
        if job.unfit:
            route = "skipped: " + "; ".join(job.unfit) + " | " + route
            row.route[:0] = [{"skipped": reason} for reason in job.unfit]
        # a relayed flow shows the relay's address in mitmweb: say what the client called
        url = flow.metadata.get(META, {}).get("url")
        origin = f" (called {url})" if url and url != flow.request.pretty_url else ""
        flow.comment = self._scrubber().scrub(
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
                    url or flow.request.pretty_url, job.model, row.status,
                    row.error.removeprefix("detour: "))
        self._record(row, job.started)

    def _record(self, row: UsageRow, started: float | None) -> None:
        if started is not None and row.latency_ms is None:
            row.latency_ms = _ms_since(started)
        self._scrub_row(row)
        if row.flow_id in self._deciding:
            self._recorded.add(row.flow_id)
        self.settings.runtime.store.add(row)

    def _scrub_row(self, row: UsageRow) -> None:
        """A row's text is the last sink of what providers wrote: scrubbed once more."""
        scrub = self._scrubber().scrub
        if row.error:
            row.error = scrub(row.error)
        for attempt in row.route:
            for field in ("error", "skipped"):
                if isinstance(attempt.get(field), str):
                    attempt[field] = scrub(attempt[field])

    def _scrubber(self):  # a method: mitmproxy reads every attribute when it collects commands
        return self.settings.runtime.forwarder.scrubber


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
    for name in CREDENTIAL_HEADERS:
        value = headers.get(name)
        if value and not value.endswith("[redacted]"):
            # a cookie header is all secret: the space is between cookies, not after a scheme
            scheme, _, secret = value.rpartition(" ") if name != "cookie" else ("", "", value)
            tail = secret[-4:] if len(secret) >= 16 else ""
            headers[name] = f"{scheme + ' ' if scheme else ''}...{tail}[redacted]"


def unsafe_header(headers) -> str | None:
    """The name of the first header whose name or value holds a CR, LF or NUL, if any."""
    for name, value in headers.fields:
        if any(b in name or b in value for b in (b"\r", b"\n", b"\0")):
            return name.decode("latin-1", "replace")
    return None


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


def _too_large(limit: int) -> str:
    return (f"the request body is larger than {limit} bytes "
            f"(limits.request_body in config.yaml)")


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)


def _usage_of_whole(fmt: str, response: http.Response) -> canonical.Usage | None:
    if response.status_code >= 300:
        return None
    try:
        return FORMATS[fmt].decode_response(orjson.loads(response.get_content())).usage
    except (ValueError, canonical.TranslationError):
        return None
