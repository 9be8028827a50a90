"""How a model call is sent: try the route's candidates in order until one answers well, then
translate its answer (whole or streamed) back into the client's format.

Nothing here decides *which* account (routing.py does) and nothing here knows mitmproxy: the
relay (streamed calls) and the router's request hook (whole calls) both drive a `Forwarder`.
A fallback is possible until the first byte reaches the client; so a candidate counts as
answering well only once it sent a 2xx status *and* the start of a real answer: a stream's first
content event (an error event before any content, as overloaded providers and OpenRouter send,
is a failed attempt), or a whole answer that decodes.

Each candidate's request is built in one way whatever the formats (`Forwarder.build`): its
codec, URL and credential from the format table (formats.py), detour's changes to the request
from policies.py, then the codec's encoder (or, same format, the client's own bytes).
"""

import asyncio
import copy
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator
from http.cookiejar import CookieJar, DefaultCookiePolicy
from urllib.parse import urlencode
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from addons import formats, policies
from addons.call import Call
from addons.config import DIRECT, Config, Provider, Timeouts
from addons.credentials.code_assist import CodeAssistProjects, ProjectUnknown
from addons.credentials.provider import NeedsLogin, RefreshFailed
from addons.decoding import BoundedDecoder, TooLarge
from addons.failure_policy import (ErrorBody, Failed, Scope, Verdict, Weight, rest_seconds,
                                   skipped_weight, vendor_wait, verdict)
from addons.prices import API, CONFIG, SUBSCRIPTION, configured_cost
from addons.quota import QuotaBook, RecentErrors
from addons.routing import Candidate, CooldownBook, Rest, model_key, passthrough_key
from addons.scrubber import SecretScrubber, credentials_of
from addons.transport import BodyDeadline, StreamsTransport, lean_body, ssl_context
from translators import canonical, openai_chat, passthrough
from translators.sse import JsonArrayFraming

log = logging.getLogger(__name__)

# client/provider wire format -> its codec (the format table: addons/formats.py)
FORMATS = formats.CODECS

# never forwarded from the client to a vendor, nor from a provider back to the client
HOP_BY_HOP = frozenset({
    "host", "content-length", "connection", "keep-alive", "proxy-connection", "te", "trailer",
    "transfer-encoding", "upgrade", "proxy-authorization", "proxy-authenticate",
    "accept-encoding", "content-encoding",
})
MAX_ERROR_BODY = 64 * 1024
DRAIN_SECONDS = 0.05  # how long a failed stream's end is awaited (to keep its connection)
SSE_FIELDS = (b"data:", b"event:", b":", b"id:", b"retry:")
NDJSON_HEADS = (b"{",)  # an NDJSON stream's first line is an object (Ollama's)
LEADING = b"\xef\xbb\xbf \t\r\n"  # what may come before a stream's first line
# stream events that do not yet commit a provider to an answer: an error may still follow
NOT_CONTENT = (canonical.MessageStart, canonical.Ping)
PASSTHROUGH_TIMEOUTS = Timeouts()
# Attempt fields that are bookkeeping, not the route story a usage row keeps
NOT_IN_ROUTE = frozenset({"key", "rest_model", "retry_after", "failed", "verdict", "weight",
                          "error_body", "token_generation"})


@dataclass
class Job:
    """One intercepted model call's request, as the forwarder needs it; what happens to it is
    told to its `call`, the usage row's only writer."""

    flow_id: str
    client_format: str
    client_headers: dict[str, str]  # lower-cased
    vendor_url: str  # where passthrough sends it (original URL, or its configured override)
    raw_body: bytes
    body: dict[str, Any]
    model: str
    stream: bool
    candidates: list[Candidate]
    call: Call
    _canonical: canonical.Request | None = None
    # what build() made of each candidate (id(candidate) -> build's answer), so that the
    # check before routing and the send encode once
    built: dict[int, tuple[str, str, dict[str, str], bytes]] = field(default_factory=dict)
    # whether each candidate checked so far can take the request (id(candidate) -> fits)
    fit: dict[int, bool] = field(default_factory=dict)
    # "provider/account" -> what of the client's request that candidate was not sent
    dropped: dict[str, tuple[str, ...]] = field(default_factory=dict)
    # candidates left out before any was tried, and why: "provider/account: reason"
    unfit: list[str] = field(default_factory=list)
    # after let_go: what the answer is fitted to (answer_shape's arguments), and a fresh
    # client stream encoder to copy (client_encoder)
    _shape_of: tuple | None = None
    _encoder_proto: Any = None
    # a streamed answer goes to the client as server-sent events; False: as the elements of
    # one JSON array (Gemini's streamGenerateContent without alt=sse)
    sse: bool = True

    @property
    def row(self):
        """The call's usage row as it stands (to read: the call writes it)."""
        return self.call.row

    @property
    def delivered(self) -> bool:
        """The client has the answer's final event (see Call.delivered)."""
        return self.call.delivered

    def let_go(self) -> None:
        """The request has gone to the candidate that answers it; no other will be sent it.
        What the answer needs is kept (its shape, the client's stream options), the request
        itself let go: held for a stream's whole life, its parsed body (~100 KB for Claude
        Code's 48 KB request), canonical form and encoded copies were most of what detour
        held per open stream."""
        if self._encoder_proto is not None:
            return
        shape = answer_shape(self)
        self._shape_of = (shape.model, shape.tool, shape.id_prefix)
        self._encoder_proto = FORMATS[self.client_format].client_stream_encoder(self.body)
        self.body, self.raw_body, self._canonical = {}, b"", None
        self.built.clear()

    def canonical(self) -> canonical.Request:
        """The client's request in canonical form, decoded once, only if a translated candidate
        is tried (passthrough and same-format candidates never need it)."""
        if self._canonical is None:
            self._canonical = FORMATS[self.client_format].decode_request(self.body)
        return self._canonical


@dataclass
class Attempt:
    provider: str
    account: str
    model: str
    status: int | None = None  # HTTP status, None when no answer came
    error: str | None = None
    ms: float = 0.0
    skipped: bool = False  # resting after an earlier failure: not asked at all
    timed_out: bool = False  # asked, but no status line came in time
    stream_error: str | None = None  # the kind of an error event that came before any content
    rest: str | None = None  # the rest it earned (or, skipped, the rest it was in): a Rest value
    despite_rest: bool = False  # resting for a transient failure, asked since all others rest
    over_budget: bool = False  # a whole call out of its total time: the route stops there
    reauthorized: bool = False  # an OAuth token refused (401), refreshed, asked again
    unreachable: bool = False  # no connection could be made (refused, no route, TLS failure)
    rest_s: float | None = None  # how long the rest it earned lasts (seconds)
    rest_scope: str | None = None  # what it rests: "model" (this account for this model) or
    # "account" (every model of it)
    # not part of the route story:
    key: str = field(default="", repr=False)  # its cooldown key: the account (or passthrough)
    # the upstream model its account's per-model rests are kept for (None: passthrough)
    rest_model: str | None = field(default=None, repr=False)
    retry_after: float | None = field(default=None, repr=False)  # the vendor's wait, if said
    error_body: ErrorBody = field(default=ErrorBody(), repr=False)  # its error answer's codes
    failed: Failed | None = field(default=None, repr=False)  # how, when not by a status
    # what its failure (or, skipped, its rest) means: failure_policy.py
    verdict: Verdict | None = field(default=None, repr=False)
    weight: Weight = field(default=Weight.FAILED, repr=False)
    token_generation: int = field(default=0, repr=False)  # the OAuth token's version sent

    @property
    def tried(self) -> bool:
        return not self.skipped

    def describe(self) -> str:
        return f"{self.provider}/{self.account} ({self.model}): {self.cause()}"

    def cause(self) -> str:
        if self.skipped:
            return self.error or "resting"
        what = f"HTTP {self.status}" if self.status else "no answer"
        return what + (f", {self.error}" if self.error else "")


@dataclass
class Opened:
    """A candidate that answered well: its response, already read up to its first content."""

    candidate: Candidate
    response: httpx.Response
    provider_format: str
    first_chunk: bytes  # every byte read so far (a stream: up to its first content event)
    chunks: AsyncIterator[bytes]
    is_sse: bool
    data: bytes = b""  # a whole (non-SSE) answer, already read and decoded
    whole: canonical.Response | None = None
    decoder: Any = None  # a stream: the provider-format decoder `first_chunk` was fed to
    events: list = field(default_factory=list)  # ... and the events it gave


class Failure(Exception):
    """No candidate answered well; `status` and `message` are what the client is told."""

    def __init__(self, status: int, message: str, retry_after: float | None = None,
                 worth_retrying: bool = True):
        super().__init__(message)
        self.status = status
        self.message = message
        self.retry_after = retry_after
        # False: a client retrying at once would meet the same wall (no provider could even be
        # reached); the SDKs honour `x-should-retry: false`, so the user sees the cause now
        # instead of after minutes of silent retries (Claude Code: 10 retries, ~3 minutes)
        self.worth_retrying = worth_retrying


def internal_error(e: BaseException) -> str:
    """What a client is told when detour itself failed: that it was detour, and what broke
    (the traceback goes to the log, once)."""
    return f"detour internal error: {type(e).__name__}"


class Forwarder:
    def __init__(self, config: Config, cooldowns: CooldownBook,
                 transport: httpx.AsyncBaseTransport | None = None):
        self.config = config
        self.cooldowns = cooldowns
        self.transport = transport  # tests script upstreams with httpx.MockTransport
        # outlive reloads, as the forwarder does: what each account's vendor last said of its
        # rate limits, and each account's last few failures (the operator's view)
        self.quotas = QuotaBook()
        self.recent_errors = RecentErrors()
        self.scrubber = SecretScrubber()  # the configuration's secrets (settings sets it)
        self._clients: dict[tuple, httpx.AsyncClient] = {}
        # stored accounts' credentials (addons/credentials): OAuth tokens, kept fresh
        self.credentials = None
        # Google accounts' Code Assist projects (kind gemini-cli), found once per account
        self.projects = CodeAssistProjects()
        # each way out's transport, and the headers its client puts on every request
        self._transports: dict[tuple, httpx.AsyncBaseTransport] = {}
        self._client_headers: dict[tuple, list[tuple[str, str]]] = {}
        self._urls: dict[str, httpx.URL] = {}

    # mitmproxy's own upstream proxy (`--mode upstream:URL`, credentials in the URL), if any:
    # providers without a `proxy:` of their own are reached through it, as every other flow is
    upstream_proxy: str | None = None

    def _way_out(self, spec: Provider | None) -> tuple:
        verify, ca_file = (spec.verify, spec.ca_file) if spec else (True, None)
        proxy = spec.proxy if spec and spec.proxy else self.upstream_proxy
        if proxy == DIRECT:
            proxy = None
        return verify, ca_file, proxy

    def proxy_of(self, provider: str) -> str | None:
        """The outbound proxy a provider's calls go through (None: none); its logins' token
        refreshes take the same way."""
        return self._way_out(self.config.providers.get(provider))[2]

    def client(self, spec: Provider | None) -> httpx.AsyncClient:
        """The HTTP client for a provider (None: passthrough to a vendor), one per way out:
        trust (verify, ca_file) and outbound proxy."""
        key = self._way_out(spec)
        c = self._clients.get(key)
        if c is None:
            verify, ca_file, proxy = key
            tls = ssl_context(verify, ca_file)
            # the lean transport speaks to providers directly; through an outbound proxy
            # (CONNECT, SOCKS) httpx's default transport does the work
            transport = self.transport or (
                StreamsTransport(tls) if proxy is None else httpx.AsyncHTTPTransport(
                    verify=tls, proxy=httpx.Proxy(proxy), trust_env=False))
            # trust_env=False: HTTPS_PROXY in our own environment must never loop us back
            # through mitmproxy; timeouts are set per request from the provider's config. No
            # cookie is kept: one client serves every account of every provider behind this
            # way out, and a cookie one account's answer set must not ride on another's calls.
            c = httpx.AsyncClient(trust_env=False, timeout=None, transport=transport,
                                  cookies=CookieJar(DefaultCookiePolicy(allowed_domains=[])))
            self._clients[key] = c
            self._transports[key] = transport
            self._client_headers[key] = list(c.headers.items())
        return c

    async def send(self, spec: Provider | None, url: str, headers: dict[str, str], body: bytes,
                   timeouts: Timeouts) -> httpx.Response:
        """POST a candidate's request on its way out's transport, its body streamed back. The
        request is what the way out's client would have sent (its default headers under ours,
        no cookie: its jar refuses every one), built without the client: its per-request work
        (merging, cookie jar, redirect and auth steps) cost three times the request itself."""
        key = self._way_out(spec)
        transport = self._transports.get(key)
        if transport is None:
            self.client(spec)
            transport = self._transports[key]
        own = {name.lower() for name in headers}
        fields = [(k, v) for k, v in self._client_headers[key] if k not in own]
        fields += headers.items()
        request = httpx.Request("POST", self._parsed(url), headers=fields, content=body,
                                extensions={"timeout": {
                                    "connect": timeouts.connect, "read": timeouts.read,
                                    "write": timeouts.read, "pool": timeouts.connect}})
        response = await transport.handle_async_request(request)
        try:
            response.request  # StreamsTransport sets it, without the body it sent
        except RuntimeError:
            response.request = request  # as the client sets it (a test's scripted transport
            # does not)
        return response

    def _parsed(self, url: str) -> httpx.URL:
        """A provider URL parsed once (httpx parses and re-quotes a string URL on every request:
        a tenth of a whole call's own CPU in the request hook); a few per candidate at most."""
        parsed = self._urls.get(url)
        if parsed is None:
            if len(self._urls) >= 256:
                self._urls.clear()
            parsed = self._urls[url] = httpx.URL(url)
        return parsed

    async def aclose(self) -> None:
        clients = list(self._clients.values())
        self._clients.clear()
        self._transports.clear()
        for c in clients:
            await c.aclose()

    # ------------------------------------------------------------ building a provider request

    @staticmethod
    def needs_translation(job: Job, cand: Candidate) -> bool:
        return (cand.provider is not None
                and formats.provider_kind(cand.provider.spec.kind).codec.NAME
                != job.client_format)

    def fits(self, job: Job, cand: Candidate) -> bool:
        """Whether a candidate can take the request: a translated one only if its request
        builds (kept for the send); why not goes to `job.unfit`, once. Checked once per job."""
        fit = job.fit.get(id(cand))
        if fit is None:
            fit = job.fit[id(cand)] = self._fits(job, cand)
        return fit

    def _fits(self, job: Job, cand: Candidate) -> bool:
        if not self.needs_translation(job, cand):
            return True
        try:
            self.build(job, cand)
        except canonical.TranslationError as e:
            job.unfit.append(f"{cand.provider_name}/{cand.account_label} ({cand.model}): "
                             f"cannot translate the request: {e}")
            return False
        return True

    def build(self, job: Job, cand: Candidate) -> tuple[str, str, dict[str, str], bytes]:
        """(provider format, url, headers, body) for one candidate (made once per job);
        TranslationError when this candidate cannot take the request."""
        built = job.built.get(id(cand))
        if built is None:
            built = job.built[id(cand)] = self._build(job, cand)
        return built

    def _build(self, job: Job, cand: Candidate) -> tuple[str, str, dict[str, str], bytes]:
        """Pick the provider's codec from the format table, apply the policies, encode (or,
        same format, keep the client's bytes where nothing changed), put the credential on."""
        if cand.provider is None:
            headers = {k: v for k, v in job.client_headers.items() if k not in HOP_BY_HOP}
            return job.client_format, job.vendor_url, headers, job.raw_body
        spec = cand.provider.spec
        kind = formats.provider_kind(spec.kind)
        codec = kind.codec
        same = codec.NAME == job.client_format
        target = policies.Target(FORMATS[job.client_format], codec, spec, cand.model, job.stream)
        dialect = formats.dialect_name(spec.dialect, spec.base_url) if kind.dialects else None
        if same:
            # same format in and out: the client's bytes, only the model (and a cap) change
            body, dropped = policies.apply_to_body(job.body, target)
            body, dropped = self._fit(kind, cand, body, dropped)
            data = job.raw_body if body is job.body else dump_json(body)
        else:
            req, dropped = policies.apply(job.canonical(), target)
            if dialect is not None:
                wire = codec.encode_request(req, openai_chat.DIALECTS[dialect],
                                            content_parts=spec.content_parts,
                                            max_tokens_field=spec.max_tokens_field)
            else:
                wire = codec.encode_request(req)
            wire, dropped = self._fit(kind, cand, wire, dropped)
            data = dump_json(wire)
        self._note_dropped(job, cand, dropped)
        headers = {"content-type": "application/json", "user-agent": "detour/0.1"}
        headers.update(kind.fixed_headers)
        if kind.body_headers is not None:
            headers.update(kind.body_headers(body if same else wire))
        if same:
            for h in kind.forwarded_headers:
                if h in job.client_headers:
                    headers[h] = job.client_headers[h]
        query: dict[str, str] = {}
        base_url = spec.base_url
        if self.credentials is not None and cand.account.stored_id is not None:
            self.credentials.put_on(cand.account, kind, dialect, headers, query)
            base_url = self.credentials.base_url(cand.account, spec)
        elif cand.account.secret:
            formats.credential_of(kind, dialect).apply(cand.account.secret, headers, query)
        headers["accept"] = codec.STREAM_CONTENT_TYPE.partition(";")[0] if job.stream else (
            "application/json")
        headers.update(spec.headers)
        url = kind.url(base_url, cand.model, job.stream)
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query)
        return codec.NAME, url, headers, data

    def _fit(self, kind: formats.ProviderKind, cand: Candidate, body: dict,
             dropped: tuple[str, ...]) -> tuple[dict, tuple[str, ...]]:
        """A provider-format body as the candidate's kind takes it: the kind's own fit, its
        account's Code Assist project, the kind's finishing step (Antigravity's fields)."""
        body, dropped = kind.fit_body(body, dropped)
        if kind.account_project:
            body = kind.codec.for_project(body, self.project_of(cand))
        if kind.finish_body is not None:
            body = kind.finish_body(body)
        return body, dropped

    def project_of(self, cand: Candidate) -> str | None:
        """The Code Assist project of a gemini-cli candidate's account, if known yet."""
        return self.projects.known(cand.provider_name, cand.account, self.credentials)

    def needs_project(self, cand: Candidate) -> bool:
        """A gemini-cli candidate whose account's project is still to be found."""
        return (cand.provider is not None
                and formats.provider_kind(cand.provider.spec.kind).account_project
                and self.project_of(cand) is None)

    async def _find_project(self, job: Job, cand: Candidate, att: Attempt) -> bool:
        """Find the account's Code Assist project (once per account) and rebuild the request
        naming it; False (with `att` saying why) when none can be had: a 401 is the token's
        fault (refreshed once and asked again, as for a model call)."""
        spec = cand.provider.spec
        creds = self.credentials
        token = creds.token(cand.account) if creds is not None and creds.is_oauth(
            cand.account) else cand.account.secret
        try:
            await self.projects.discover(cand.provider_name, cand.account, creds,
                                         self.client(spec), spec.base_url, token)
        except ProjectUnknown as e:
            att.error = self.scrub(job, str(e))
            if e.status is not None and e.status >= 300:
                att.status = e.status
            else:
                att.failed = Failed.BROKEN
            return False
        job.built.pop(id(cand), None)
        return True

    @staticmethod
    def _note_dropped(job: Job, cand: Candidate, dropped: tuple[str, ...]) -> None:
        if dropped:
            job.dropped[f"{cand.provider_name}/{cand.account_label}"] = dropped

    # ------------------------------------------------------------ trying candidates

    def cooldown_key(self, job: Job, cand: Candidate) -> str:
        """What a failure rests: one account of one provider, or for passthrough the vendor's
        origin and the client's own credential (by fingerprint)."""
        if cand.provider is None:
            return passthrough_key(job.vendor_url, job.client_headers)
        return cand.key

    async def open(self, job: Job) -> Opened:
        """Try candidates in order; return the first that answered 2xx with the start of a real
        answer, or raise Failure naming every attempt. When every candidate is resting, the one
        resting only for a transient failure (5xx, timeout, refused connection) whose rest ends
        first is asked anyway: refusing without asking anyone would lock a one-key user out
        over a single hiccup."""
        attempts: list[Attempt] = []
        skip_provider: set[str] = set()
        spare: tuple[float, Candidate, Attempt] | None = None
        for cand in job.candidates:
            if cand.provider_name in skip_provider:
                continue
            if not self.fits(job, cand):
                # checked only now (the interceptor checks up to the first that fits): left
                # out as if before routing, its reason in the route's skipped entries
                continue
            att = self.resting_attempt(job, cand)
            if att is not None:
                attempts.append(att)
                rest = self.cooldowns.rest(att.key, att.rest_model)
                if rest is not None and rest.reason is Rest.TRANSIENT and (spare is None or rest.until < spare[0]):
                    spare = (rest.until, cand, att)
                continue
            att = self.fresh_attempt(job, cand)
            attempts.append(att)
            opened = await self._attempt(job, cand, att)
            if opened is not None:
                self.record(job, attempts)
                return opened
            if att.over_budget:
                break
            if att.verdict is not None and att.verdict.skip_provider:
                # the request itself was refused: another account of the same provider would
                # refuse it too
                skip_provider.add(cand.provider_name)
        else:
            if spare is not None and spare[1].provider_name not in skip_provider:
                _, cand, att = spare
                att.skipped, att.rest, att.error, att.despite_rest = False, None, None, True
                opened = await self._attempt(job, cand, att)
                if opened is not None:
                    self.record(job, attempts)
                    return opened
        self.record(job, attempts)
        raise self.failure(job, attempts)

    def resting_attempt(self, job: Job, cand: Candidate) -> Attempt | None:
        """A candidate not asked because it rests, as the route tells it; None if it does not."""
        key = self.cooldown_key(job, cand)
        rest_model = cand.model if cand.provider is not None else None
        why = self.credentials.unusable(cand.account) if self.credentials else None
        if why is not None:  # a spent login: never asked, and the client is told why
            return Attempt(cand.provider_name, cand.account_label, cand.model, skipped=True,
                           rest=Rest.AUTH.value, key=key, rest_model=rest_model,
                           weight=Weight.RESTING, error=why)
        rest = self.cooldowns.rest(key, rest_model)
        if rest is None:
            return None
        left = rest.until - time.monotonic()
        return Attempt(cand.provider_name, cand.account_label, cand.model, skipped=True,
                       rest=rest.reason.value, key=key, rest_model=rest_model,
                       weight=skipped_weight(rest.reason),
                       error=f"cooling down for {left:.0f}s" + (
                           f" after {rest.cause}" if rest.cause else ""))

    def fresh_attempt(self, job: Job, cand: Candidate) -> Attempt:
        """A candidate about to be asked: its attempt, keyed for the rests it may earn."""
        return Attempt(cand.provider_name, cand.account_label, cand.model,
                       key=self.cooldown_key(job, cand),
                       rest_model=cand.model if cand.provider is not None else None)

    async def _attempt(self, job: Job, cand: Candidate, att: Attempt) -> Opened | None:
        t0 = time.perf_counter()
        self.cooldowns.used(att.key)
        try:
            opened = await self._try(job, cand, att)
            if (opened is None and att.status == 401 and self.credentials is not None
                    and self.credentials.is_oauth(cand.account)
                    and await self.credentials.after_unauthorized(cand.account,
                                                                  att.token_generation)):
                # an OAuth token refused: one refresh, one more try on the same account
                att.status = att.error = att.failed = att.retry_after = None
                att.error_body = ErrorBody()
                att.reauthorized = True
                opened = await self._try(job, cand, att)
        finally:
            att.ms = round((time.perf_counter() - t0) * 1000, 1)
        self.settled(cand, att, opened is not None)
        return opened

    def settled(self, cand: Candidate, att: Attempt, ok: bool) -> None:
        """An attempt's end for the account's state (the relay's and the direct path's): a
        success ends its backoff; a failure rests it (`cool`) and is noted among its recent
        errors; a rate-limit window the vendor said is at 0 rests it until that window
        resets."""
        if ok:
            self.cooldowns.succeeded(att.key, att.rest_model)
        else:
            self.cool(cand, att)
            self.recent_errors.note(att.key, self.scrubber.scrub(att.cause()))
        self._rest_if_exhausted(att)

    def _rest_if_exhausted(self, att: Attempt) -> None:
        """A window the vendor said is at 0 rests its account until that window resets: the
        next call goes elsewhere instead of earning a 429."""
        exhausted = self.quotas.exhausted(att.key)
        if exhausted is not None:
            seconds, windows = exhausted
            # per model, like a 429 (vendors limit rates per model)
            key = model_key(att.key, att.rest_model) if att.rest_model else att.key
            self.cooldowns.cool(key, seconds, Rest.RATE_LIMIT,
                                f"rate-limit headers: {windows} at 0")

    async def _try(self, job: Job, cand: Candidate, att: Attempt) -> Opened | None:
        """One candidate asked; None (with `att` saying why) unless it answered well."""
        try:
            fmt, url, headers, body = self.build(job, cand)
        except canonical.TranslationError as e:
            att.error = f"cannot translate the request: {e}"
            att.status = 400
            att.failed = Failed.UNTRANSLATABLE
            return None
        creds = self.credentials
        if creds is not None and creds.is_oauth(cand.account):
            try:
                await creds.fresh(cand.account)  # waits only for an expired token's refresh
            except NeedsLogin as e:
                att.status, att.error = 401, str(e)
                return None
            except RefreshFailed as e:
                att.error, att.failed = str(e), Failed.BROKEN
                return None
            att.token_generation = creds.generation(cand.account)
        if self.needs_project(cand):
            if not await self._find_project(job, cand, att):
                return None
            fmt, url, headers, body = self.build(job, cand)
        if creds is not None and creds.is_oauth(cand.account):
            headers = dict(headers)  # the built request keeps no token: it may be refreshed
            spec = cand.provider.spec
            kind = formats.provider_kind(spec.kind)
            creds.put_on(cand.account, kind, formats.dialect_name(spec.dialect, spec.base_url)
                         if kind.dialects else None, headers, {})
            # a refresh may name another API for the login (Copilot's endpoints.api)
            base_url = creds.base_url(cand.account, spec)
            if not url.startswith(base_url + "/"):
                url = kind.url(base_url, cand.model, job.stream)
        spec = cand.provider.spec if cand.provider else None
        timeouts = spec.timeouts if spec else PASSTHROUGH_TIMEOUTS
        # a stream must show its headers within first_byte (the fallback waits on them); a
        # whole answer comes with its headers only once generated, so the whole of it gets
        # the SDKs' total budget
        budget = timeouts.first_byte if job.stream else timeouts.total
        resp = None
        try:
            # the budget runs until the answer's first content (a stream) or its end: a
            # provider sending pings, or one byte now and then, cannot hold the call open
            async with asyncio.timeout(budget):
                resp = await self.send(spec, url, headers, body, timeouts)
                att.status = resp.status_code
                # what is left of the account's rate limits: said on successes and 429s alike
                self.quotas.observe(att.key, resp.headers.raw)
                if resp.status_code >= 300:
                    text, att.error_body = await _read_error(resp)
                    att.error = self.scrub(job, text)
                    att.retry_after = vendor_wait(resp.headers, att.error_body)
                    await resp.aclose()
                    return None
                opened = await self._check_answer(cand, resp, fmt, att)
        except TimeoutError:
            att.timed_out = True
            if job.stream:
                att.error = f"no answer within {budget:g}s (timeouts.first_byte)"
                att.failed = Failed.NO_ANSWER_IN_TIME
            else:
                att.error = f"no complete answer within {budget:g}s (timeouts.total)"
                att.over_budget = True
                att.failed = Failed.OVER_BUDGET
        except httpx.TimeoutException as e:
            att.error = f"timed out ({type(e).__name__})"
            att.failed = Failed.TIMEOUT
        except httpx.ConnectError as e:
            att.error = _connect_failure(e)
            att.unreachable = True
            att.failed = Failed.UNREACHABLE
        except httpx.HTTPError as e:
            att.error = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
            att.failed = Failed.BROKEN
        except BaseException:
            if resp is not None:
                await resp.aclose()
            raise
        else:
            if opened is not None:
                return opened
            att.failed = Failed.BAD_ANSWER
        if resp is not None:
            await resp.aclose()
        return None

    async def _check_answer(self, cand: Candidate, resp: httpx.Response, fmt: str,
                            att: Attempt) -> Opened | None:
        """A 2xx is not yet a good answer: an event stream must start like one and bring
        content before any error, and a whole answer must decode; otherwise the next candidate
        can still take over."""
        limits = self.config.limits
        chunks = bounded_body(resp, limits.decompressed, limits.stream_seconds)
        ctype = resp.headers.get("content-type", "")
        if streamed_answer(ctype, fmt):
            return await self._open_stream(cand, resp, fmt, chunks, att, stream_heads(ctype))
        pieces, size = [], 0
        try:
            async for piece in chunks:
                size += len(piece)
                if size > limits.answer_body:
                    att.error = (f"its answer is larger than {limits.answer_body} bytes "
                                 f"(limits.answer_body)")
                    return None
                pieces.append(piece)
        except AnswerLimit as e:
            att.error = str(e)
            return None
        except httpx.HTTPError as e:
            att.error = f"broke off its answer: {type(e).__name__}"
            return None
        data = b"".join(pieces)
        if not data:
            att.error = "empty body"
            return None
        try:
            whole = FORMATS[fmt].decode_response(orjson.loads(data))
        except (ValueError, canonical.TranslationError) as e:
            att.error = f"unreadable answer ({str(e)[:120]}): {snippet(data)}"
            return None
        return Opened(cand, resp, fmt, data, chunks, False, data, whole)

    async def _open_stream(self, cand: Candidate, resp: httpx.Response, fmt: str,
                           chunks: AsyncIterator[bytes], att: Attempt,
                           heads: tuple[bytes, ...] = SSE_FIELDS) -> Opened | None:
        """Read a stream up to its first content event, keeping every byte and event read:
        the client gets them as they were, once, when this candidate is chosen."""
        decoder = FORMATS[fmt].StreamDecoder()
        raw: list[bytes] = []
        events: list[canonical.Event] = []
        ended = looks_right = False
        while True:
            try:
                chunk = await anext(chunks)
            except StopAsyncIteration:
                ended = True
                new = decoder.close()
            else:
                if not chunk:
                    continue
                raw.append(chunk)
                if not looks_right:
                    head = b"".join(raw)
                    looks_right = stream_start(head, heads)
                    if looks_right is False:
                        att.error = not_a_stream(head)
                        return None
                new = decoder.feed(chunk)
            events += new
            for ev in new:
                if type(ev) is canonical.StreamError:
                    if not raw:
                        att.error = "empty body"
                    else:
                        att.stream_error = ev.kind
                        att.error = self.scrubber.scrub(
                            f"error event before any content: {ev.kind}: {ev.message}")
                        if not ended:
                            await _drain_briefly(chunks)
                    return None
                if not isinstance(ev, NOT_CONTENT):
                    return Opened(cand, resp, fmt, b"".join(raw), chunks, True,
                                  decoder=decoder, events=events)
            if ended:
                att.error = "stream ended before any content"
                return None

    def cool(self, cand: Candidate, att: Attempt) -> None:
        """Rest a failed candidate as failure_policy.py says: its kind of rest (a 429 or
        rate-limit event, an exhausted quota or balance, 401/403, a transient failure) for as
        long as the vendor said, else a backoff that grows with each consecutive failure of
        that kind; on the account for this model or the whole account (the verdict's scope,
        or the provider's `rate_limits: per-account`). Never a rest for a refused request or
        an answer cut by the whole-call budget, nor for a passthrough's 401/403 (the client's
        own key is the client's to fix)."""
        v = att.verdict = verdict(att.status, att.stream_error, att.failed, att.error or "",
                                  att.error_body)
        att.weight = v.weight
        reason = v.rest
        if reason is None or reason is Rest.AUTH and cand.provider is None:
            return
        cause = att.cause()[:200]
        att.rest = reason.value
        per_account = v.scope is Scope.ACCOUNT or (
            cand.provider is not None and cand.provider.spec.rate_limits == "per-account")
        key = (att.key if per_account or att.rest_model is None
               else model_key(att.key, att.rest_model))
        if att.rest_model is not None:
            att.rest_scope = (Scope.ACCOUNT if per_account else Scope.MODEL).value
        cooldown = self.config.cooldown_seconds
        seconds = self.cooldowns.fail(
            key, reason, lambda streak: rest_seconds(reason, streak, att.retry_after, cooldown),
            cause)
        att.rest_s = round(seconds, 3)

    def record(self, job: Job, attempts: list[Attempt]) -> None:
        job.call.routed(sum(a.tried for a in attempts), [
            {k: v for k, v in vars(a).items()
             if v is not None and v is not False and k not in NOT_IN_ROUTE}
            for a in attempts
        ])

    def failure(self, job: Job, attempts: list[Attempt]) -> Failure:
        """What the client is told when no candidate answered: from what actually happened."""
        tried = [a for a in attempts if a.tried]
        detail = "; ".join(a.describe() for a in attempts) or "no candidates"
        message = f"detour: no provider answered {job.model!r}: {detail}"
        if not attempts:
            return Failure(502, message)
        weights = [a.weight for a in tried]
        if Weight.OVER_BUDGET in weights:
            return Failure(504, message)
        if tried and all(w is Weight.REFUSED for w in weights):
            return Failure(tried[-1].status or 400, message)
        if all(a.weight is Weight.LIMIT for a in attempts):
            # every account is resting for its limits: come back when the first one wakes
            waits = [w for a in attempts
                     if (w := self.cooldowns.remaining(a.key, a.rest_model)) > 0]
            return Failure(429, message, retry_after=min(waits) if waits else None)
        if tried and all(w is Weight.TIMEOUT for w in weights):
            return Failure(504, message)
        if tried and all(w is Weight.UNREACHABLE for w in weights):
            return Failure(502, message, worth_retrying=False)
        return Failure(502, message)

    # ------------------------------------------------------------ answers

    @staticmethod
    def stream_content_type(job: Job) -> str:
        codec = FORMATS[job.client_format]
        return codec.STREAM_CONTENT_TYPE if job.sse else codec.JSON_CONTENT_TYPE

    async def complete(self, job: Job) -> tuple[int, dict[str, str], bytes]:
        """A whole (non-streamed) call: status, headers, body in the client's format."""
        client_mod = FORMATS[job.client_format]
        try:
            opened = await self.open(job)
        except Failure as f:
            return self.failure_response(job, f)
        resp, data = opened.whole, opened.data
        if opened.is_sse:
            # asked for a whole answer, got a stream: fold it
            try:
                dec, events = opened.decoder, list(opened.events)
                async for chunk in opened.chunks:
                    events += dec.feed(chunk)
                resp = canonical.collect_response(events + dec.close())
            except (httpx.HTTPError, canonical.TranslationError) as e:
                return self.failure_response(job, Failure(
                    502, f"detour: {opened.candidate.key} broke off its answer: {e!r}"))
            finally:
                await opened.response.aclose()
        self.account(job, opened.candidate, resp.usage, resp.model)
        if opened.provider_format == job.client_format and not opened.is_sse:
            body = data  # same format: the provider's bytes, untouched
        else:
            body = dump_json(client_mod.encode_response(answer_shape(job).response(resp)))
        job.call.status(200)
        return 200, {"content-type": client_mod.JSON_CONTENT_TYPE,
                     "x-detour-route": opened.candidate.public_name}, body

    def failure_response(self, job: Job, f: Failure) -> tuple[int, dict[str, str], bytes]:
        """The whole error answer in the client's format (told to the call)."""
        message = self.scrub(job, f.message)
        job.call.failed(message, f.status)
        headers = {"content-type": "application/json"}
        if f.retry_after is not None:
            headers["retry-after"] = str(max(1, round(f.retry_after)))
        if not f.worth_retrying:
            headers["x-should-retry"] = "false"
        return f.status, headers, FORMATS[job.client_format].error_body(
            f.status, self.for_client(job, message))

    async def stream(self, job: Job, opened: Opened) -> AsyncIterator[bytes]:
        """The client-format byte stream of an opened candidate, translated chunk by chunk
        (AnswerStream). A failure after the first byte cannot fall back any more: it ends the
        stream with a well-formed error event in the client's format."""
        cand = opened.candidate
        answer = AnswerStream(self, job, cand.key, opened.provider_format, opened.decoder)
        try:
            if not opened.is_sse:
                # asked for a stream, got one whole answer: stream it anyway
                resp = opened.whole
                self.account(job, cand, resp.usage, resp.model)
                yield client_encoder(job).encode_all(canonical.response_to_events(resp))
                return
            # what was read while the candidate was being opened, then the rest as it comes
            out = answer.opened(opened.first_chunk, opened.events)
            while True:
                if out:
                    yield out
                    if answer.final and answer.error is None and not answer.ended:
                        job.call.deliver()
                if answer.ended:
                    return  # nothing after a break reaches the client, nor is read any further
                try:
                    chunk = await anext(opened.chunks)
                except StopAsyncIteration:
                    break
                out = answer.feed(chunk)
            out = answer.close()
            if out:
                yield out
        except httpx.HTTPError as e:
            yield answer.broke(f"{cand.key} broke off the stream: " + (
                str(e) if isinstance(e, AnswerLimit) else type(e).__name__))
        except (ValueError, canonical.TranslationError) as e:
            yield answer.broke(f"{cand.key} sent an answer detour cannot translate: {e}")
        finally:
            await opened.response.aclose()
            if opened.is_sse:
                self.account(job, cand, answer.decoder.usage, None)
            if answer.error:
                job.call.failed(self.scrub(job, answer.error))  # logged with the flow

    def stream_error(self, job: Job, encoder, kind: str, message: str) -> bytes:
        """One error event in the client's format, ending a stream already under way."""
        if encoder is None:
            # bytes passed through untouched: a fresh encoder, whose grammar allows an error
            # event anywhere a stream can be
            encoder = client_encoder(job)
        try:
            return encoder.encode(canonical.StreamError(
                kind, self.for_client(job, self.scrub(job, message))))
        except canonical.StreamProtocolError:
            return b""

    # ------------------------------------------------------------ secrets out of provider text

    def scrubber_of(self, job: Job) -> SecretScrubber:
        """The configuration's secrets and this client's own credentials (a passthrough
        candidate's vendor may echo those)."""
        return self.scrubber.adding(credentials_of(job.client_headers))

    def scrub(self, job: Job, text: str) -> str:
        return self.scrubber_of(job).scrub(text) if text else text

    @staticmethod
    def for_client(job: Job, message: str) -> str:
        """A message as the client may read it: accounts by their place in the provider's list,
        not by their label (an env var's name, a key file's path); the row keeps the labels."""
        for cand in job.candidates:
            if cand.account is not None:
                message = message.replace(cand.key, cand.public_name)
        return message

    def scrubbed_event(self, job: Job, ev: canonical.StreamError) -> canonical.StreamError:
        return dataclasses.replace(ev, message=self.scrub(job, ev.message))

    def account(self, job: Job, cand: Candidate, usage: canonical.Usage, model: str | None) -> None:
        job.call.answered_by(cand.provider_name if cand.provider else _host_of(job.vendor_url),
                             cand.account_label, model or cand.model)
        if cand.provider is not None:
            self.set_usage(job.call, usage, cand.provider.spec.base_url,
                           cand.account.subscription)
        else:  # the client's own credential: its subscription login, or its API key
            self.set_usage(job.call, usage, job.vendor_url, job.call.client_subscription)

    def set_usage(self, call: Call, usage: canonical.Usage, provider_url: str = "",
                  subscription: bool = False) -> None:
        """The call's tokens and their cost (addons/prices.py): the API price, or for a
        subscription login the API price it would have cost, marked as such. A configured
        price is applied now; a default one by the usage store's writer, off the event loop
        (the price table takes a second to load)."""
        basis = SUBSCRIPTION if subscription else API
        price = self.config.prices.get(call.row.model_upstream)
        if price is not None:
            call.used(usage, configured_cost(price, usage), basis, CONFIG)
        else:
            call.used(usage, None)
            call.price_later(provider_url, basis)


class AnswerStream:
    """A provider's answer stream into the client's format, sans IO: provider bytes in
    (`opened`, `feed`, `close`), client bytes out. The relay (Forwarder.stream) and the direct
    path's stream callable (direct.py) both drive one.

    Same format: the provider's bytes pass untouched, whole events only, checked by the decoder
    that runs anyway for usage (translators/passthrough.py); a broken stream ends with an error
    event of ours and nothing after it (`ended`). Otherwise every event is decoded to canonical
    form and encoded in the client's format. A provider's error event is scrubbed (it may echo
    the key it was sent) and told in `error`; `final` says the answer's last event came,
    `content` that a content event did (before it, a failure may still rest the account)."""

    __slots__ = ("fwd", "job", "cand_key", "check", "decoder", "encoder", "error",
                 "error_kind", "final", "content", "ended")

    def __init__(self, fwd: Forwarder, job: Job, cand_key: str, provider_format: str,
                 decoder=None):
        self.fwd, self.job, self.cand_key = fwd, job, cand_key
        mod = FORMATS[provider_format]
        # same format: the provider's bytes as they come, checked event by event (SSE), unless
        # the client asked for another framing of them (detour always asks a Gemini provider
        # for SSE); a stream framed otherwise (Ollama's NDJSON) is translated like any other
        same = provider_format == job.client_format and job.sse and (
            "text/event-stream" in mod.STREAM_CONTENT_TYPE)
        self.check = passthrough.CheckedPassthrough(
            mod.StreamDecoder, mod.is_error_event, mod.may_follow_stop) if same else None
        self.decoder = decoder or (self.check.decoder if same else mod.StreamDecoder())
        self.encoder = None if same else client_encoder(job)
        self.error: str | None = None
        self.error_kind: str | None = None  # the kind of the provider's error event, if one came
        self.final = False
        self.content = False
        self.ended = False

    def opened(self, head: bytes, head_events: list) -> bytes:
        """What was read (and decoded by `decoder`) while the candidate was being opened."""
        passed, events = b"", head_events
        if self.check is not None:
            passed, events = self.check.opened(self.decoder, head, head_events)
            self.decoder = self.check.decoder
        return self._out(passed, events, False)

    def feed(self, chunk: bytes) -> bytes:
        if self.ended:
            return b""
        passed, events = (self.check.feed(chunk) if self.check is not None
                          else (b"", self.decoder.feed(chunk)))
        return self._out(passed, events, False)

    def close(self) -> bytes:
        if self.ended:
            return b""
        passed, events = (self.check.close() if self.check is not None
                          else (b"", self.decoder.close()))
        return self._out(passed, events, True)

    def broke(self, why: str) -> bytes:
        """The provider's stream failed (a read, a limit, an answer that does not translate):
        the client's stream ends with an error event."""
        self.ended = True
        self.error = why
        return self.fwd.stream_error(self.job, self.encoder, "api_error", why)

    def _out(self, out: bytes, events: list, end: bool) -> bytes:
        fwd, job, encoder = self.fwd, self.job, self.encoder
        for ev in events:
            kind = type(ev)
            if kind is canonical.StreamError:
                ev = fwd.scrubbed_event(job, ev)
                if encoder is None:  # the provider's own bytes, which carry its words
                    out = fwd.scrubber_of(job).scrub_bytes(out)
                self.error = f"{self.cand_key}: {ev.kind}: {ev.message}"
                self.error_kind = ev.kind
            elif kind is canonical.MessageStop:
                self.final = True
            elif kind not in NOT_CONTENT:
                self.content = True
            if encoder is not None:
                out += encoder.encode(ev)
        check = self.check
        if check is not None and check.broken is not None:
            self.ended = True
            return out + fwd.stream_error(job, None, check.broken.kind, self.error)
        if end and not self.final and self.error is None:
            self.ended = True
            self.error = f"{self.cand_key}: stream ended before its final event"
            return out + fwd.stream_error(job, encoder, "api_error", self.error)
        return out


def client_encoder(job: Job):
    """The stream encoder of the client's format, as the client asked for it."""
    if job._encoder_proto is not None:  # the request was let go: a fresh one's copy
        inner = copy.deepcopy(job._encoder_proto)
    else:
        inner = FORMATS[job.client_format].client_stream_encoder(job.body)
    if not job.sse:
        inner = JsonArrayFraming(inner)
    return canonical.ShapedEncoder(inner, answer_shape(job))


def streamed_answer(content_type: str, fmt: str) -> bool:
    """An answer of this content type, from a provider of this format, is a stream: server-
    sent events, or the format's own stream type (Ollama's NDJSON)."""
    return "text/event-stream" in content_type or (
        FORMATS[fmt].STREAM_CONTENT_TYPE in content_type)


def answer_shape(job: Job) -> canonical.AnswerShape:
    """What a translated answer is fitted to: the client's response_format (if its request was
    decoded, i.e. a translated candidate took it), its id format, its requested model."""
    if job._shape_of is not None:
        return canonical.AnswerShape(*job._shape_of)
    req = job._canonical
    tool = canonical.answer_tool(req) if req is not None else None
    return canonical.AnswerShape(job.model, tool.name if tool else None,
                                 FORMATS[job.client_format].MESSAGE_ID_PREFIX)


def dump_json(obj: Any) -> bytes:
    """Compact UTF-8 JSON: orjson (~8x the json module on 48 KB bodies), or, for what orjson
    refuses but JSON holds (integers beyond 64 bits, lone surrogates, nesting past 255), the
    translators' own writer; a TranslationError for what JSON cannot hold (inf, NaN, nesting
    too deep)."""
    try:
        data = orjson.dumps(obj)
    except orjson.JSONEncodeError:
        return canonical.dumps_compact(obj)
    # orjson's bytes keep the buffer they grew in (~5x a 48 KB body, part of it resident),
    # and a provider body is held for a stream's life: a copy holds just its length
    return data if len(data) < 16384 else bytes(memoryview(data))


def stream_heads(content_type: str) -> tuple[bytes, ...]:
    """What a streamed answer of this content type starts with: an SSE field, or (NDJSON, as
    Ollama's) an object."""
    return SSE_FIELDS if "text/event-stream" in content_type else NDJSON_HEADS


def stream_start(head: bytes, heads: tuple[bytes, ...]) -> bool | None:
    """How an answer's first bytes read as a stream: True (they start like one), False (they
    cannot: an HTML page, a JSON error sent with a 200), None (too few to tell yet)."""
    head = head.lstrip(LEADING)
    if head.startswith(heads):
        return True
    return None if any(f.startswith(head) for f in heads) else False


def not_a_stream(head: bytes) -> str:
    """Why an answer whose first bytes are `head` was refused (stream_start said False)."""
    return f"not an event stream: {snippet(head.lstrip(LEADING))}"


def snippet(data: bytes) -> str:
    return " ".join(data[:80].decode("utf-8", "replace").split())


def _host_of(url: str) -> str:
    return httpx.URL(url).host


async def _drain_briefly(chunks: AsyncIterator[bytes]) -> None:
    """Read what little is left of a failed stream, so its connection can serve the next call
    (a provider ends the response right after its error event); give up on anything more."""
    left = MAX_ERROR_BODY
    try:
        async with asyncio.timeout(DRAIN_SECONDS):
            async for chunk in chunks:
                left -= len(chunk)
                if left < 0:
                    return
    except (TimeoutError, httpx.HTTPError):
        pass


class AnswerLimit(httpx.TransportError):
    """A provider's answer past one of `limits:` (its size once decoded, a stream's time)."""


async def bounded_body(resp: httpx.Response, limit: int,
                       seconds: float | None) -> AsyncIterator[bytes]:
    """A provider's body, its content-encoding decoded in bounded steps (never more than
    `limit` bytes out: a 300 KB gzip bomb is not 300 MB here), ending within `seconds` of now
    whatever the provider sends (a read timeout is per read: a trickle never trips it).
    AnswerLimit past a limit, httpx.DecodingError for content that does not decode."""
    request = resp.request
    # an answer httpx already holds whole (a test's scripted one) comes decoded
    whole = resp.is_stream_consumed
    try:
        decoder = BoundedDecoder("" if whole else resp.headers.get("content-encoding", ""),
                                 limit, "its answer once decompressed")
    except ValueError as e:
        raise httpx.DecodingError(str(e), request=request) from None
    deadline = None if seconds is None else asyncio.get_running_loop().time() + seconds
    # the lean transport's body keeps the deadline itself (one timer per body, not per read)
    lean = None if whole else lean_body(resp, deadline)
    raw = lean or (_one(resp.content) if whole else resp.aiter_raw())
    try:
        while True:
            try:
                if lean is not None:
                    data = await anext(raw)
                else:
                    async with asyncio.timeout_at(deadline):
                        data = await anext(raw)
            except StopAsyncIteration:
                break
            except (TimeoutError, BodyDeadline):
                raise AnswerLimit(f"its answer ran past {seconds:g}s (limits.stream_seconds)",
                                  request=request) from None
            for piece in decoder.feed(data):
                yield piece
        for piece in decoder.flush():
            yield piece
    except TooLarge as e:
        raise AnswerLimit(f"{e} (limits.decompressed)", request=request) from None
    except ValueError as e:
        raise httpx.DecodingError(str(e), request=request) from None
    finally:
        await raw.aclose()


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _connect_failure(e: httpx.ConnectError) -> str:
    """A failed connection, saying plainly when it was refused (nothing listens there)."""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, ConnectionRefusedError):
        cause = cause.__cause__ or cause.__context__
    refused = cause is not None or "refused" in str(e).lower()
    return ("connection refused" if refused else "connection failed") + f" ({type(e).__name__}: {e})"


async def _read_error(resp: httpx.Response) -> tuple[str, ErrorBody]:
    """A provider's error answer, shortened, for the attempt log and the client's message,
    and what its body says beyond the status (failure_policy.ErrorBody)."""
    data = b""
    try:
        async for chunk in bounded_body(resp, MAX_ERROR_BODY, None):
            data += chunk
            if len(data) > MAX_ERROR_BODY:
                break
    except httpx.HTTPError:
        pass
    return error_of(data)


def error_of(data: bytes) -> tuple[str, ErrorBody]:
    """A provider's error body, shortened (its `error.message` if it has one), and what it says
    beyond the status."""
    text = data.decode("utf-8", "replace").strip()
    body = ErrorBody()
    try:
        obj = json.loads(text)
        body = ErrorBody.read(obj)
        if isinstance(obj, list) and obj and isinstance(obj[0], dict):
            obj = obj[0]  # Gemini may answer its error in a list
        err = obj.get("error", obj) if isinstance(obj, dict) else obj
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            text = err["message"]
    except ValueError:
        pass
    return " ".join(text.split())[:300], body

