"""The direct path: a model call mitmproxy's own connection carries to its one provider.

A fallback is possible only while a call has another candidate to try; the relay (relay.py)
exists for that, at the cost of its own work per event and a connection of our own per call.
When a call has exactly one usable candidate (the others rest, and none could be asked anyway)
and mitmproxy can reach that provider the way the configuration says (no `proxy:` of the
provider's own, TLS trust the same as mitmproxy's), the request hook rewrites the flow to the
provider instead: its URL, the translated body (`Forwarder.build`, once per job), its headers.
mitmproxy sends it and the answer is translated on the way back:

- a 2xx event stream, in `responseheaders`: a stream callable (synchronous, once per read)
  feeds the relay's own stream translator (forwarding.AnswerStream) and returns the client's
  bytes (same format: the provider's bytes, checked by translators/passthrough.py);
- anything else, in `response`: a whole answer decoded and re-encoded (bounded by
  limits.answer_body and limits.decompressed), a stream request's whole answer as events, a
  failure as the relay tells it (an error in the client's format naming the provider, the
  status and headers failure_policy.py gives).

The provider's credential is on the flow only while mitmproxy sends it: it is put on in the
`update` after the request hook (mitmweb has published the flow by then) and redacted again in
`responseheaders` or `error`. mitmproxy's timeouts do not cover first_byte, read or total: a
watchdog task per flow closes mitmproxy's provider connection when one passes, and the call
records the timeout; a stream still sending past limits.stream_seconds is ended by its stream
callable with a well-formed error event first. When mitmproxy's connection fails (refused, a
TLS handshake that fails, the watchdog closing it, the provider breaking off), the `error` hook
leaves the client's reply for error_reply.py to send in place of mitmproxy's own words (its
HTML 502 page before the answer's head, a cut connection after it): the relay's error JSON, or
the error event ending the stream.

Left to the relay and the forwarder: a call with a fallback, an OAuth login's call (a token the
provider refuses is refreshed and asked again there), an HTTP/2 client's (its parallel calls
would queue behind mitmproxy's few connections per upstream address), a Code Assist account
whose project is still to be found, a provider reached another way than mitmproxy's.
"""

import asyncio
import contextlib
import logging
import time

import orjson
from mitmproxy import ctx, http

from addons.config import DIRECT, Provider
from addons.decoding import BoundedDecoder, TooLarge, decode_whole
from addons.failure_policy import Failed, vendor_wait
from addons.forwarding import (FORMATS, HOP_BY_HOP, AnswerStream, Attempt, Job, answer_shape,
                               client_encoder, dump_json, error_of, not_a_stream, snippet,
                               stream_heads, stream_start, streamed_answer)
from addons import error_reply, formats
from addons.routing import Candidate
from addons.responses import make_response
from translators import canonical

log = logging.getLogger(__name__)

ID_HEADER = "x-detour-id"
REDACTED = "[redacted]"
# seconds past limits.stream_seconds a stream may still send its next read, which ends the
# client's stream with a well-formed error event; a provider silent then is cut instead
STREAM_END_GRACE = 2.0
MAX_HEAD = 256  # bytes of an answer's start kept until it looks like a stream


class DirectCall:
    """One call on the direct path: its job, its one candidate and attempt, its watchdog."""

    __slots__ = ("job", "cand", "att", "resting", "provider_format", "secrets", "stream",
                 "watchdog", "deadline", "stream_end", "first_content", "wake",
                 "timed_out", "started", "flow")

    def __init__(self, flow: http.HTTPFlow, job: Job, cand: Candidate, att: Attempt,
                 resting: list[Attempt], provider_format: str, secrets: dict[str, str]):
        self.flow = flow
        self.job = job
        self.cand = cand
        self.att = att  # the one candidate's attempt
        # the attempts of the candidates not asked because they rest: in the route (after the
        # one asked) only when it failed, as the relay, which reaches them only then, says it
        self.resting = resting
        self.provider_format = provider_format
        self.secrets = secrets  # header -> value, put on only while mitmproxy sends it
        self.stream: DirectStream | None = None
        self.watchdog: asyncio.Task | None = None
        self.deadline = 0.0  # loop time the current budget ends at
        self.stream_end = 0.0  # loop time limits.stream_seconds ends the call at
        self.first_content = False
        # wakes the watchdog: at the first content (from first_byte to the stream's own
        # budgets) and when the stream callable ended the client's stream at stream_end
        self.wake = asyncio.Event()
        self.timed_out: str | None = None  # why the watchdog ended the attempt
        self.started = time.perf_counter()


class DirectPath:
    """The hooks' side of the direct path; the interceptor calls it (see module docstring)."""

    def __init__(self, settings, finished):
        self.settings = settings
        self.finished = finished  # (flow, job): the interceptor ends the call and tells its story
        self.calls: dict[str, DirectCall] = {}

    # ------------------------------------------------------------ which calls

    def sole_candidate(self, job: Job) -> tuple[Candidate, Attempt, list[Attempt]] | None:
        """The one candidate a call can be sent to, its attempt and those of the candidates
        resting, when no fallback is possible; else None (the relay or the inline forwarder
        takes the call). An OAuth login's candidate is the forwarder's: a token the provider
        refuses is refreshed and asked again there."""
        fwd = self.settings.runtime.forwarder
        usable, resting = [], []
        for cand in job.candidates:
            att = fwd.resting_attempt(job, cand)
            if att is None:
                usable.append(cand)
            elif att.rest == "transient":
                return None  # it would be asked anyway if the others failed
            else:
                resting.append(att)
        if len(usable) != 1 or usable[0].provider is None:
            return None
        cand = usable[0]
        creds = fwd.credentials
        if creds is not None and creds.is_oauth(cand.account):
            return None
        if not self.reachable(cand.provider.spec):
            return None
        return cand, fwd.fresh_attempt(job, cand), resting

    def reachable(self, spec: Provider) -> bool:
        """mitmproxy's own connection reaches the provider as the configuration says: the same
        outbound proxy (none of its own, or `direct` outside upstream mode) and the same TLS
        trust (certifi and checked, or nothing checked under ssl_insecure)."""
        fwd = self.settings.runtime.forwarder
        if spec.proxy and not (spec.proxy == DIRECT and fwd.upstream_proxy is None):
            return False
        opts = ctx.options
        if spec.ca_file or opts.ssl_verify_upstream_trusted_ca \
                or opts.ssl_verify_upstream_trusted_confdir:
            return False
        return spec.verify != opts.ssl_insecure

    def take(self, flow: http.HTTPFlow, job: Job) -> bool:
        """Send the call through mitmproxy's own connection if it can go there; True if it does."""
        if not ctx.options.detour_direct or not error_reply.installed():
            return False  # (without error_reply its failures would be told in mitmproxy's words)
        if not job.stream:
            # a whole call has no relay hop to spare: the forwarder answers it in the request
            # hook, and costs less CPU per call than mitmproxy's connection and the `response`
            # hook (scripts/bench, whole calls at c=1 and c=16, 1 MB bodies)
            return False
        if flow.request.is_http2:
            # an HTTP/2 client's parallel calls would queue behind mitmproxy's few connections
            # per upstream address: the relay serves them side by side
            return False
        sole = self.sole_candidate(job)
        if sole is None:
            return False
        cand, att, resting = sole
        fwd = self.settings.runtime.forwarder
        if fwd.needs_project(cand):
            return False  # the forwarder finds the account's Code Assist project first
        try:
            provider_format, url, headers, body = fwd.build(job, cand)
        except canonical.TranslationError:
            return False  # the forwarder tells it as an attempt that failed
        if "?" in url and _query_secret(cand):
            return False  # a credential in the URL would show in mitmweb
        secrets = _secret_headers(cand, headers)
        req = flow.request
        called = req.pretty_url
        req.method = "POST"
        # the client's own `connection: close` stays: mitmproxy closes the client's
        # connection after the answer by it (and so does the provider's)
        close = "close" in req.headers.get("connection", "").lower()
        req.headers = http.Headers([(b"host", b"")])
        if close:
            req.headers["connection"] = "close"
        req.url = url  # scheme, host, port, path: where mitmproxy connects (and Host/:authority)
        for name, value in headers.items():
            if name not in HOP_BY_HOP:
                req.headers[name] = REDACTED if name in secrets else value
        req.content = body
        job.let_go()
        dc = DirectCall(flow, job, cand, att, resting, provider_format, secrets)
        self.calls[flow.id] = dc
        fwd.cooldowns.used(att.key)  # least-recently-used routing reads it
        flow.comment = (f"detour: {job.client_format} {job.model} -> {cand.provider_name} "
                        f"(direct{', streamed' if job.stream else ''}), from {called}")
        limits = self.settings.runtime.config.limits
        t = cand.provider.spec.timeouts
        budget = t.first_byte if job.stream else t.total
        now = asyncio.get_running_loop().time()
        dc.deadline = now + budget
        dc.stream_end = now + limits.stream_seconds
        dc.watchdog = asyncio.get_running_loop().create_task(
            self._watch(dc, t.read, limits.stream_seconds), name=f"detour direct {flow.id}")
        return True

    # ------------------------------------------------------------ credentials

    def put_on(self, flow: http.HTTPFlow) -> None:
        dc = self.calls.get(flow.id)
        if dc is not None and flow.response is None and flow.error is None:
            for name, value in dc.secrets.items():
                flow.request.headers[name] = value

    def redact(self, dc: DirectCall) -> None:
        for name in dc.secrets:
            if name in dc.flow.request.headers:
                dc.flow.request.headers[name] = REDACTED

    # ------------------------------------------------------------ the answer

    def responseheaders(self, flow: http.HTTPFlow) -> bool:
        dc = self.calls.get(flow.id)
        if dc is None:
            return False
        self.redact(dc)
        resp = flow.response
        job = dc.job
        dc.att.status = resp.status_code
        # what is left of the account's rate limits: said on successes and 429s alike
        self.settings.runtime.forwarder.quotas.observe(dc.att.key, resp.headers.fields)
        ctype = resp.headers.get("content-type", "")
        sse = streamed_answer(ctype, dc.provider_format)
        if resp.status_code < 300 and sse and job.stream:
            limits = self.settings.runtime.config.limits
            try:
                dc.stream = DirectStream(self, dc, resp.headers.get("content-encoding", ""),
                                         limits.decompressed, stream_heads(ctype))
            except ValueError:
                return True  # an encoding nobody reads: told as a broken answer in `response`
            job.call.status(200)
            resp.headers = http.Headers(**{
                "content-type": self.settings.runtime.forwarder.stream_content_type(job),
                "cache-control": "no-cache"})
            resp.headers["x-detour-route"] = dc.cand.public_name
            resp.headers[ID_HEADER] = flow.id
            if not flow.request.is_http2:  # the length changes: chunked to an HTTP/1 client
                resp.headers["transfer-encoding"] = "chunked"
            resp.stream = dc.stream
            if not flows_looked_at():
                # the translated request has gone out and is answered: not held for the
                # stream's whole life where nobody can look at the flow (intercept.py keeps a
                # relayed flow's body on the same terms)
                flow.request.content = b""
            return True
        # a whole answer, or a failure: read whole (bounded) and told in `response`
        try:
            size = int(resp.headers.get("content-length", "0"))
        except ValueError:
            size = 0
        if size > self._whole_limit(dc):
            self._end_attempt(dc, Failed.BAD_ANSWER, f"its answer is larger than "
                              f"{self._whole_limit(dc)} bytes (limits.answer_body)")
        return True

    def _whole_limit(self, dc: DirectCall) -> int:
        if dc.att.status is not None and dc.att.status >= 300:
            return 1 << 20  # a failure's words are short: more is not read
        return self.settings.runtime.config.limits.answer_body

    def response(self, flow: http.HTTPFlow) -> bool:
        dc = self.calls.pop(flow.id, None)
        if dc is None:
            return False
        self._stop_watch(dc)
        self.redact(dc)
        try:
            if dc.stream is not None:
                self._streamed(dc)
            else:
                self._whole(dc)
        finally:
            if not dc.job.call.done:
                self.finished(flow, dc.job)
        return True

    def _streamed(self, dc: DirectCall) -> None:
        fwd = self.settings.runtime.forwarder
        s = dc.stream
        if s.failed is not None:
            dc.att.failed, dc.att.error = s.failed, s.error
        self._settle(dc, False if s.failed is not None else True if dc.first_content else None)
        fwd.account(dc.job, dc.cand, s.decoder.usage, None)
        if s.error:
            dc.job.call.failed(fwd.scrub(dc.job, s.error))

    def _whole(self, dc: DirectCall) -> None:
        flow, job, att = dc.flow, dc.job, dc.att
        fwd = self.settings.runtime.forwarder
        client_mod = FORMATS[job.client_format]
        resp = flow.response
        answer = None
        if att.failed is None:
            try:
                data = decode_whole(resp.raw_content or b"",
                                    resp.headers.get("content-encoding", ""),
                                    self._whole_limit(dc), "its answer once decompressed")
            except TooLarge as e:
                att.failed, att.error = Failed.BAD_ANSWER, f"{e} (limits)"
            except ValueError as e:
                att.failed, att.error = Failed.BROKEN, str(e)
            else:
                if att.status >= 300:
                    text, att.error_body = error_of(data)
                    att.error = fwd.scrub(job, text)
                    att.retry_after = vendor_wait(resp.headers, att.error_body)
                else:
                    answer = self._decoded(dc, data, resp)
        if answer is None:
            self._settle(dc, False)
            status, headers, body = fwd.failure_response(
                job, fwd.failure(job, self._attempts(dc, False)))
            flow.response = http.Response.make(status, body, headers | {ID_HEADER: flow.id})
            return
        self._settle(dc, True)
        whole, data, same = answer
        fwd.account(job, dc.cand, whole.usage, whole.model)
        if job.stream:  # asked for a stream, got one whole answer: stream it anyway
            body = client_encoder(job).encode_all(canonical.response_to_events(whole))
            ctype = fwd.stream_content_type(job)
        else:
            body = data if same else dump_json(client_mod.encode_response(
                answer_shape(job).response(whole)))
            ctype = client_mod.JSON_CONTENT_TYPE
        job.call.status(200)
        job.call.first_byte()
        flow.response = make_response(200, body, {
            "content-type": ctype, "x-detour-route": dc.cand.public_name, ID_HEADER: flow.id})

    def _decoded(self, dc: DirectCall, data: bytes, resp: http.Response):
        """(answer, its bytes, same format and untouched) or None with the attempt's cause."""
        att, fmt = dc.att, dc.provider_format
        if not data:
            att.failed, att.error = Failed.BAD_ANSWER, "empty body"
            return None
        try:
            if streamed_answer(resp.headers.get("content-type", ""), fmt):
                dec = FORMATS[fmt].StreamDecoder()
                events = dec.feed(data) + dec.close()
                if any(type(ev) is canonical.StreamError for ev in events):
                    err = next(ev for ev in events if type(ev) is canonical.StreamError)
                    att.stream_error = err.kind
                    att.error = self.settings.runtime.forwarder.scrubber.scrub(
                        f"error event before any content: {err.kind}: {err.message}")
                    return None
                return canonical.collect_response(events), data, False
            whole = FORMATS[fmt].decode_response(orjson.loads(data))
        except (ValueError, canonical.TranslationError) as e:
            att.failed = Failed.BAD_ANSWER
            att.error = f"unreadable answer ({str(e)[:120]}): {snippet(data)}"
            return None
        return whole, data, fmt == dc.job.client_format

    def _settle(self, dc: DirectCall, ok: bool | None) -> None:
        """The attempt's end, as the forwarder's are: the account's state (`settled`; None:
        the client left before any content, which says nothing of the account) and the route
        the usage row keeps."""
        dc.att.ms = round((time.perf_counter() - dc.started) * 1000, 1)
        fwd = self.settings.runtime.forwarder
        if ok is not None:
            fwd.settled(dc.cand, dc.att, ok)
        fwd.record(dc.job, self._attempts(dc, ok))

    @staticmethod
    def _attempts(dc: DirectCall, ok: bool | None) -> list[Attempt]:
        """The route: the one candidate asked, then, only if it failed, those resting (the
        relay reaches them, resting, only then)."""
        return [dc.att, *dc.resting] if ok is False else [dc.att]

    def error(self, flow: http.HTTPFlow) -> bool:
        """The client left, the provider could not be reached or broke off, or the watchdog
        closed the connection: mitmproxy has answered the client (or cannot any more)."""
        dc = self.calls.pop(flow.id, None)
        if dc is None:
            return False
        self._stop_watch(dc)
        self.redact(dc)
        fwd = self.settings.runtime.forwarder
        job, att = dc.job, dc.att
        msg = flow.error.msg if flow.error else "error"
        client_gone = msg in ("Client disconnected.", "peer closed connection") \
            or msg.startswith("Client disconnected")
        if dc.stream is not None:
            if client_gone and dc.timed_out is None:
                job.call.client_left()
                self._settle(dc, True if dc.first_content else None)
            else:
                if dc.timed_out is None:
                    att.failed, att.error = Failed.BROKEN, f"broke off the stream: {msg}"
                self._settle(dc, False)
                why = fwd.scrub(job, f"{dc.cand.key} {att.error}")
                answer = dc.stream.answer
                if not answer.ended:  # the client's stream ends with an error event
                    error_reply.leave(flow, error_reply.Tail(answer.broke(why)))
                job.call.failed(why)
            fwd.account(job, dc.cand, dc.stream.decoder.usage, None)
        else:
            if client_gone and dc.timed_out is None:
                job.call.client_left()
            else:
                if dc.timed_out is None:
                    low = msg.lower()
                    unreachable = any(w in low for w in
                                      ("connect", "refused", "tls", "certificate"))
                    att.failed = Failed.UNREACHABLE if unreachable else Failed.BROKEN
                    att.unreachable = unreachable
                    refused = "refused" in low or "errno 111" in low
                    att.error = (f"connection {'refused' if refused else 'failed'} ({msg})"
                                 if unreachable else msg)
                self._settle(dc, False)
                f = fwd.failure(job, self._attempts(dc, False))
                status, headers, body = fwd.failure_response(job, f)
                error_reply.leave(flow, error_reply.Whole(
                    http.Response.make(status, body, headers | {ID_HEADER: flow.id})))
        if not job.call.done:
            self.finished(flow, job)
        return True

    def stopping(self) -> None:
        for dc in list(self.calls.values()):
            self._stop_watch(dc)
        self.calls.clear()

    # ------------------------------------------------------------ budgets

    async def _watch(self, dc: DirectCall, read: float, stream_seconds: float) -> None:
        """Close mitmproxy's provider connection when the call's budget passes: first_byte
        (streams: until the first content event), total (whole calls), then read between two
        reads and limits.stream_seconds for the whole stream."""
        loop = asyncio.get_running_loop()
        end = dc.stream_end
        while True:
            now = loop.time()
            if dc.stream is not None and dc.stream.expired:
                break  # the client's stream was ended at stream_end: the provider's goes
            if dc.first_content:
                # a read past stream_end ends the client's stream well formed (DirectStream);
                # a provider silent then is cut a moment later
                dc.deadline = min(dc.stream.last_read + read, end + STREAM_END_GRACE)
            if now >= dc.deadline:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(dc.deadline - now):
                    await dc.wake.wait()
            dc.wake.clear()
        t = dc.cand.provider.spec.timeouts
        expired = dc.stream is not None and dc.stream.expired
        if not dc.first_content and dc.job.stream and not expired:
            failed, why = Failed.NO_ANSWER_IN_TIME, \
                f"no answer within {t.first_byte:g}s (timeouts.first_byte)"
            dc.att.timed_out = True
        elif not dc.job.stream:
            failed, why = Failed.OVER_BUDGET, \
                f"no complete answer within {t.total:g}s (timeouts.total)"
            dc.att.timed_out = dc.att.over_budget = True
        elif expired or loop.time() >= end:
            failed, why = Failed.BROKEN, \
                f"its answer ran past {stream_seconds:g}s (limits.stream_seconds)"
        else:
            failed, why = Failed.TIMEOUT, f"timed out (no data for {read:g}s, timeouts.read)"
        self._end_attempt(dc, failed, why)

    def _end_attempt(self, dc: DirectCall, failed: Failed, why: str) -> None:
        """Close mitmproxy's connection to the provider: the flow errors (the `error` hook)."""
        dc.att.failed, dc.att.error, dc.timed_out = failed, why, why
        close_server_connection(dc.flow)

    @staticmethod
    def _stop_watch(dc: DirectCall) -> None:
        if dc.watchdog is not None and dc.watchdog is not asyncio.current_task():
            dc.watchdog.cancel()
        dc.watchdog = None


class DirectStream:
    """The stream callable: provider bytes in, client bytes out (forwarding.AnswerStream),
    synchronously, once per read and once more with b"" at the end. Mid-stream it returns a
    list (`[]` holds back: a b"" would end the client's chunked body)."""

    __slots__ = ("dc", "inflate", "answer", "error", "failed", "last_read", "delivered",
                 "stream_seconds", "expired", "heads", "head")

    def __init__(self, path: DirectPath, dc: DirectCall, encoding: str, limit: int,
                 heads: tuple[bytes, ...]):
        self.dc = dc
        # what the answer must start with (an SSE field, an NDJSON object), checked as the
        # relay does before the first content; None once it did
        self.heads: tuple[bytes, ...] | None = heads
        self.head = b""
        self.inflate = BoundedDecoder(encoding, limit, "its answer once decompressed")
        self.answer = AnswerStream(path.settings.runtime.forwarder, dc.job, dc.cand.key,
                                   dc.provider_format)
        self.error: str | None = None  # what the client was told went wrong, if anything
        self.failed: Failed | None = None  # the attempt failed (before its first content)
        self.delivered = False  # the client has the answer's final event
        self.last_read = asyncio.get_running_loop().time()
        self.stream_seconds = path.settings.runtime.config.limits.stream_seconds
        self.expired = False  # ended at the call's stream_end

    @property
    def decoder(self):
        return self.answer.decoder

    def __call__(self, chunk: bytes):
        end = not chunk
        answer = self.answer
        if answer.ended:
            return b"" if end else []
        self.last_read = now = asyncio.get_running_loop().time()
        if not end and now >= self.dc.stream_end:
            # a provider trickling past the call's deadline: the client's stream ends here,
            # well formed (b"" ends an HTTP/1 client's chunked body); the watchdog closes the
            # provider's connection
            out = answer.broke(f"{self.dc.cand.key} broke off the stream: its answer ran past "
                               f"{self.stream_seconds:g}s (limits.stream_seconds)")
            self._failed(Failed.BROKEN)
            self.expired = True
            self.dc.wake.set()
            self.dc.job.call.first_byte()
            return [out, b""]
        try:
            if end:
                out = b"".join(answer.feed(piece) for piece in self.inflate.flush())
                out += answer.close()
            else:
                out = b"".join(answer.feed(piece) if self.heads is None else self._first(piece)
                               for piece in self.inflate.feed(chunk))
        except TooLarge as e:
            out = answer.broke(f"{self.dc.cand.key} {e} (limits.decompressed)")
            self._failed(Failed.BAD_ANSWER)
        except (ValueError, canonical.TranslationError) as e:
            out = answer.broke(f"{self.dc.cand.key} sent an answer detour cannot translate: {e}")
            self._failed(Failed.BAD_ANSWER)
        except Exception as e:  # inside mitmproxy's connection handling: never raise
            log.error("detour: internal error translating %s", self.dc.flow.id, exc_info=e)
            out = answer.broke(f"{self.dc.cand.key} detour internal error: {type(e).__name__}")
            self._failed(None)
        else:
            self._after(answer)
        if out:
            self.dc.job.call.first_byte()
        if end:
            return out
        return [out] if out else []

    def _first(self, piece: bytes) -> bytes:
        """A piece read before the answer looked like a stream: ValueError if it cannot be one
        (an HTML page, a JSON error with a 200), as the relay tells it."""
        self.head = (self.head + piece)[:MAX_HEAD]
        start = stream_start(self.head, self.heads)
        if start:
            self.heads = None
        elif start is False:
            raise ValueError(not_a_stream(self.head))
        return self.answer.feed(piece)

    def _after(self, answer: AnswerStream) -> None:
        if answer.content and not self.dc.first_content:
            self.dc.first_content = True
            self.dc.wake.set()
        if answer.error is not None and self.error is None:
            self.error = answer.error
            if not self.dc.first_content:
                # what the relay would have counted a failed attempt: the account rests
                self.dc.att.stream_error = answer.error_kind
                self.failed = Failed.BAD_ANSWER
        if answer.final and answer.error is None and not self.delivered:
            self.delivered = True
            self.dc.job.call.deliver()

    def _failed(self, failed: Failed | None) -> None:
        self.error = self.answer.error
        if not self.dc.first_content:
            self.failed = failed


def flows_looked_at() -> bool:
    """Whether a flow can be looked at once its request has gone out: mitmweb's (or the
    console's) flow list, `save_stream_file`, mitmdump printing bodies (`flow_detail` >= 3)."""
    options = ctx.options
    return (ctx.master.addons.get("view") is not None
            or ("save_stream_file" in options and bool(options.save_stream_file))
            or ("flow_detail" in options and options.flow_detail >= 3))


def close_server_connection(flow: http.HTTPFlow) -> None:
    """Close mitmproxy's connection to the provider: mitmproxy reads it closed, and the flow
    ends with its `error` hook (the client's connection is mitmproxy's to answer)."""
    proxyserver = ctx.master.addons.get("proxyserver")
    handler = proxyserver.connections.get(flow.client_conn.id) if proxyserver else None
    io = handler.transports.get(flow.server_conn) if handler else None
    if io is not None and io.writer is not None:
        io.writer.transport.abort()


def _secret_headers(cand: Candidate, headers: dict[str, str]) -> dict[str, str]:
    """The headers of a provider request that carry its credential."""
    secret = cand.account.secret if cand.account else None
    if not secret:
        return {}
    return {name: value for name, value in headers.items() if secret in value}


def _query_secret(cand: Candidate) -> bool:
    spec = cand.provider.spec
    kind = formats.provider_kind(spec.kind)
    dialect = formats.dialect_name(spec.dialect, spec.base_url) if kind.dialects else None
    query: dict[str, str] = {}
    formats.credential_of(kind, dialect).apply("x", {}, query)
    return bool(query)
