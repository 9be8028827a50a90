"""`/metrics` (Prometheus) and `/healthz` on a loopback port the addon serves
(`detour_metrics_port`, 9464 by default; 0 turns it off), and the operator's views `/accounts`
and `/routes`: what the mitmproxy commands `detour.accounts` and `detour.routes` return, for
`detour status` (mitmdump has no command API of its own; proxy.json says the port).

The counters and histograms are fed by the usage store's writer thread, from the rows it
writes, once priced (so a call counts once, whatever path it took, and nothing is done on
mitmproxy's event loop per call); the gauges (accounts resting, calls open, rows queued) are
read from the running addons at each scrape. `/healthz` answers 200 when the addon is loaded,
its configuration valid (the last edit of config.yaml loaded), the database writable and the
relay accepting connections; 503 naming the failing checks otherwise.
"""

import asyncio
import errno
import json
import logging
import os
import time

import h11
from mitmproxy import ctx
from mitmproxy.utils.asyncio_utils import create_task
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from addons.operator_commands import OperatorCommands
from addons.routing import NO_KEY, Candidate
from addons.settings import DetourSettings

log = logging.getLogger(__name__)

DEFAULT_PORT = 9464  # Prometheus' registry of exporter ports: the one of OpenTelemetry exporters
# the option's default from the environment: for processes whose command line is fixed (a
# container's) that share one network (several on one host, `network_mode: host`)
PORT_ENV = "DETOUR_METRICS_PORT"
FALLBACK_PORTS = 10  # the default taken: the next ports tried, then one the system picks
LABELS = ("provider", "account", "model", "client")
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write", "reasoning")
LATENCY_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)
TTFB_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 120)
CHECK_TIMEOUT = 2.0  # seconds a health check may take (a locked database, a stuck relay)
MAX_REQUEST = 8192  # bytes of a request to this port


def default_port() -> int:
    value = os.environ.get(PORT_ENV, "").strip()
    if value.isdigit() and int(value) < 65536:
        return int(value)
    if value:
        log.warning("detour: %s=%r is not a port; using %d", PORT_ENV, value, DEFAULT_PORT)
    return DEFAULT_PORT


class UsageMetrics:
    """The counters of written usage rows, in a registry of their own."""

    def __init__(self):
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter("detour_requests", "Intercepted model calls, by the status the "
                                "client got", [*LABELS, "status"], registry=r)
        self.tokens = Counter("detour_tokens", "Tokens, by kind (input excludes cached tokens)",
                              [*LABELS, "kind"], registry=r)
        self.cost = Counter("detour_cost_usd", "Cost in USD of priced calls; basis "
                            "subscription: the API-equivalent of a subscription login",
                            [*LABELS, "basis"], registry=r)
        self.unpriced = Counter("detour_unpriced_requests", "Calls with tokens whose model has "
                                "no known price", LABELS, registry=r)
        self.errors = Counter("detour_errors", "Calls the client got a status >= 400 for, or no "
                              "answer (kind: the status, or how it ended)", [*LABELS, "kind"],
                              registry=r)
        self.fallbacks = Counter("detour_fallbacks", "Calls that needed more than one attempt "
                                 "(labels: who answered, or failed last)", LABELS, registry=r)
        self.cooldowns = Counter("detour_cooldowns", "Rests given to accounts after a failed "
                                 "attempt, by reason", ["provider", "account", "model", "reason"],
                                 registry=r)
        self.latency = Histogram("detour_request_duration_seconds", "Whole call, from request "
                                 "to the answer's end", LABELS, buckets=LATENCY_BUCKETS,
                                 registry=r)
        self.ttfb = Histogram("detour_time_to_first_byte_seconds", "From request to the first "
                              "byte of the answer", LABELS, buckets=TTFB_BUCKETS, registry=r)

    def observe(self, records: list[dict]) -> None:
        """Count written usage records (the store's writer thread calls this)."""
        for rec in records:
            model = rec.get("model_upstream") or rec.get("model_requested") or ""
            labels = (rec.get("provider") or "", rec.get("account") or "", model,
                      rec.get("client_tool") or "")
            status = rec.get("status") or 0
            self.requests.labels(*labels, str(status)).inc()
            for kind in TOKEN_KINDS:
                n = rec.get(f"{kind}_tokens") or 0
                if n:
                    self.tokens.labels(*labels, kind).inc(n)
            cost = rec.get("cost_usd")
            if cost is not None:
                self.cost.labels(*labels, rec.get("cost_basis") or "api").inc(cost)
            elif (rec.get("input_tokens") or 0) + (rec.get("output_tokens") or 0):
                self.unpriced.labels(*labels).inc()
            if status >= 400 or status == 0:
                self.errors.labels(*labels, error_kind(status, rec.get("error"))).inc()
            if (rec.get("attempts") or 0) > 1:
                self.fallbacks.labels(*labels).inc()
            if (rec.get("attempts") or 0) > 1 or status >= 400 or status == 0:
                self._rests(rec.get("route"))
            if rec.get("latency_ms") is not None:
                self.latency.labels(*labels).observe(rec["latency_ms"] / 1000)
            if rec.get("ttfb_ms") is not None:
                self.ttfb.labels(*labels).observe(rec["ttfb_ms"] / 1000)

    def _rests(self, route) -> None:
        try:
            attempts = json.loads(route) if isinstance(route, str) else route or []
        except ValueError:
            return
        for a in attempts:
            if isinstance(a, dict) and a.get("rest") and not a.get("skipped"):
                self.cooldowns.labels(a.get("provider") or "", a.get("account") or "",
                                      a.get("model") or "", a["rest"]).inc()


def error_kind(status: int, error: str | None) -> str:
    """A short label for how a call failed: its status, or the first word of how it ended."""
    if status:
        return str(status)
    words = (error or "").split(":")[0].split()
    return words[0][:40] if words else "no-answer"


class RuntimeGauges:
    """Gauges read at each scrape from the running addons."""

    def __init__(self, settings: DetourSettings):
        self.settings = settings

    def describe(self):
        return []  # built at each collect: nothing to check at registration

    def collect(self):
        rt = self.settings.runtime
        if rt is None:
            return
        resting = GaugeMetricFamily("detour_account_resting", "1 while an account rests (for "
                                    "every model, or for one: scope)",
                                    labels=["provider", "account", "scope"])
        left = GaugeMetricFamily("detour_account_rest_seconds", "Seconds left of an account's "
                                 "longest rest (0: ready)", labels=["provider", "account"])
        now = time.monotonic()
        for name, provider in rt.providers.items():
            for account in provider.accounts or (NO_KEY,):
                rests = rt.cooldowns.rests_of(Candidate(provider, account, "").key, now)
                whole = None in rests
                resting.add_metric([name, account.label, "account"], 1.0 if whole else 0.0)
                resting.add_metric([name, account.label, "model"],
                                   1.0 if any(m for m in rests) else 0.0)
                longest = max((r.until - now for r in rests.values()), default=0.0)
                left.add_metric([name, account.label], max(0.0, longest))
        yield resting
        yield left
        stats = rt.store.stats()
        yield GaugeMetricFamily("detour_usage_rows_queued", "Usage rows waiting to be written",
                                value=stats["rows_queued"])
        relay = rt.relay.stats() if rt.relay else {}
        yield GaugeMetricFamily("detour_relay_jobs", "Streamed calls the relay holds",
                                value=relay.get("jobs_waiting", 0) + relay.get("jobs_running", 0))
        yield GaugeMetricFamily("detour_config_valid", "1 when the last edit of config.yaml "
                                "loaded", value=0.0 if self.settings.config_error else 1.0)


class MetricsServer:
    """The addon: its option, its loopback HTTP server, and the metrics."""

    def __init__(self, settings: DetourSettings):
        self.settings = settings
        self.metrics = UsageMetrics()
        self.metrics.registry.register(RuntimeGauges(settings))
        self.port: int | None = None  # where it listens, once it does
        self.started = asyncio.Event()  # set once it listens, or gave up (proxy.json waits)
        self.views = OperatorCommands(settings)
        self._server: asyncio.Server | None = None
        self._observing = False

    def load(self, loader):
        loader.add_option(
            "detour_metrics_port", int, default_port(),
            "Loopback port of detour's Prometheus /metrics and its /healthz (127.0.0.1 only); "
            "0 turns them off. The default taken (another proxy has it), the next free port "
            "is served (proxy.json and `detour status` say which); another port taken is "
            f"logged once and skipped. Default: ${PORT_ENV} or {DEFAULT_PORT}.",
        )

    def running(self):
        rt = self.settings.runtime
        if not self._observing:
            rt.store.observers.append(self.metrics.observe)
            self._observing = True
        if ctx.options.detour_metrics_port:
            create_task(self._start(ctx.options.detour_metrics_port),
                        name="detour metrics start", keep_ref=True)

    def configure(self, updated):
        if "detour_metrics_port" in updated and self._server is not None:
            self._stop()
            if ctx.options.detour_metrics_port:
                create_task(self._start(ctx.options.detour_metrics_port),
                            name="detour metrics start", keep_ref=True)

    def done(self):
        self._stop()

    def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
            self.port = None

    async def _start(self, port: int) -> None:
        # the default port is one per machine: a second proxy (another DETOUR_HOME, `detour
        # run` beside a running one) takes the next free one, or one the system picks;
        # proxy.json says which. A port set on purpose is that port or none.
        tries = [port, *range(port + 1, port + 1 + FALLBACK_PORTS), 0] \
            if port == DEFAULT_PORT else [port]
        for attempt in tries:
            try:
                self._server = await asyncio.start_server(self._serve, "127.0.0.1", attempt)
                break
            except OSError as e:
                if attempt == tries[-1] or e.errno != errno.EADDRINUSE:
                    # asyncio's own message is long ("error while attempting to bind ..."):
                    # the cause
                    why = os.strerror(e.errno) if e.errno else str(e)
                    log.warning("detour: metrics not served: cannot listen on 127.0.0.1:%d "
                                "(%s); set detour_metrics_port to another port, or 0",
                                attempt, why)
                    self.started.set()
                    return
        self.port = self._server.sockets[0].getsockname()[1]
        self.started.set()
        if self.port != port:
            log.info("detour: metrics port %d is taken (another proxy?): serving on %d instead",
                     port, self.port)
        log.info("detour: metrics on http://127.0.0.1:%d/metrics, health on /healthz", self.port)

    # ------------------------------------------------------------ HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_REQUEST)
        try:
            async with asyncio.timeout(10):
                request = await _read_request(conn, reader)
                if request is None:
                    return
                status, ctype, body = await self._answer(request)
            headers = [("content-type", ctype), ("content-length", str(len(body))),
                       ("connection", "close"), ("cache-control", "no-store")]
            writer.write(conn.send(h11.Response(status_code=status, headers=headers))
                         + conn.send(h11.Data(data=body)) + conn.send(h11.EndOfMessage()))
            await writer.drain()
        except (TimeoutError, OSError, h11.ProtocolError):
            pass
        except Exception as e:  # noqa: BLE001 - a scrape must never take the proxy down
            log.error("detour: metrics: internal error", exc_info=e)
        finally:
            writer.close()

    async def _answer(self, request: h11.Request) -> tuple[int, str, bytes]:
        path = request.target.decode("latin-1").split("?", 1)[0]
        if request.method not in (b"GET", b"HEAD"):
            return 405, "text/plain", b"GET only\n"
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, generate_latest(self.metrics.registry)
        if path == "/healthz":
            checks = await self.health()
            ok = all(c["ok"] for c in checks.values())
            body = json.dumps({"status": "ok" if ok else "failing", "checks": checks}, indent=2)
            return (200 if ok else 503), "application/json", body.encode() + b"\n"
        if path in ("/accounts", "/routes"):
            if self.settings.runtime is None:
                return 503, "text/plain", b"detour is not loaded\n"
            view = self.views.accounts() if path == "/accounts" else self.views.routes()
            return 200, "application/json", view.encode() + b"\n"
        return 404, "text/plain", b"not found: try /metrics, /healthz, /accounts or /routes\n"

    async def health(self) -> dict[str, dict]:
        """Each check: {"ok": bool, "detail": str}."""
        rt = self.settings.runtime
        checks = {"addon": {"ok": rt is not None, "detail": "loaded" if rt else "not loaded"}}
        if rt is None:
            return checks
        error = self.settings.config_error
        checks["config"] = {"ok": error is None,
                            "detail": f"{rt.config_path}: " + ("valid" if error is None else
                                                               f"last edit refused: {error}")}
        try:
            async with asyncio.timeout(CHECK_TIMEOUT):
                problem = await asyncio.to_thread(rt.store.check_writable, CHECK_TIMEOUT)
        except TimeoutError:
            problem = "no answer in time"
        # Postgres: its URL, no password
        checks["database"] = {"ok": problem is None,
                              "detail": problem or f"{rt.store.where}: writable"}
        checks["relay"] = await _relay_check(rt.relay)
        shared = getattr(self.settings.gate, "shared", None)  # `state:` (addons/gateway.py)
        if shared is not None:
            checks["shared_state"] = shared.health()
        credentials = self.settings.credentials
        if credentials is not None and rt.config.database:  # accounts in Postgres
            # ok either way: calls are served with the accounts last read
            problem = self.settings.accounts_problem
            checks["accounts"] = {"ok": True, "readable": problem is None,
                                  "detail": f"{credentials.store.where}: " + (
                                      "read" if problem is None else
                                      f"unreadable ({problem}): serving with the accounts "
                                      "last read")}
        return checks


async def _relay_check(relay) -> dict:
    if relay is None or not relay.ports:
        return {"ok": False, "detail": "not running"}
    port = relay.ports[0]
    try:
        async with asyncio.timeout(CHECK_TIMEOUT):
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.close()
        await writer.wait_closed()
    except (OSError, TimeoutError) as e:
        return {"ok": False, "detail": f"port {port} does not accept: {e}"}
    return {"ok": True, "detail": f"accepting on {len(relay.ports)} ports"}


async def _read_request(conn: h11.Connection, reader: asyncio.StreamReader):
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await reader.read(4096)
            conn.receive_data(data)
            if not data:
                return None
            continue
        if isinstance(event, h11.Request):
            return event
        return None
