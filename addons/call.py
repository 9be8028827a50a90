"""One intercepted model call, from the request hook to its usage row.

Whoever learns something about a call (the interceptor, the forwarder, the relay, the
passthrough tap) tells its `Call` through a small method; `finish()` then writes the usage row,
once: it scrubs the row's text of every secret the call knows (the configuration's and the
client's own credentials) and hands it to the store. Every ending goes through it: an inline
answer, a relay job done, a client gone, the proxy stopping, an internal error, a rejected
request, a passthrough response or error. A second `finish()` is a bug: logged (at debug) in
production, raised under tests (`Call.strict`), and the row is not written twice.
"""

import logging
import time
from collections.abc import Callable

from addons import prices
from addons.scrubber import SecretScrubber
from addons.usage import UsageRow, now_iso
from addons.user_agents import client_tool
from translators import canonical

log = logging.getLogger(__name__)


class FinishedTwice(RuntimeError):
    """A call was finished a second time (only raised when `Call.strict`)."""


class Call:
    """What happened to one intercepted model call; `row` is its usage row as it stands (read
    it, never write it: the methods do)."""

    # tests set this: a second finish raises instead of being logged
    strict = False

    __slots__ = ("row", "started", "delivered", "done", "scrubber", "credentials",
                 "client_subscription", "_sink")

    def __init__(self, flow_id: str, client: str, client_format: str,
                 sink: Callable[[UsageRow], None], scrubber: SecretScrubber | None = None,
                 credentials: list[str] | None = None, user: str = ""):
        tool, version = client_tool(client)
        self.row = UsageRow(now_iso(), flow_id, client, client_format, "", False,
                            client_tool=tool, client_version=version, user=user)
        self.started = time.perf_counter()
        # the client-format final event (Anthropic message_stop, Chat [DONE]) was handed to the
        # client: the call succeeded, even if the client leaves before the provider's stream ends
        self.delivered = False
        self.done = False
        # every secret this call's text may echo: the configuration's (`scrubber`) and the
        # client's own credentials (added only when there is text to scrub)
        self.scrubber = scrubber or SecretScrubber()
        self.credentials = credentials or []
        # the client's own credential is a subscription login (OAuth), not an API key: what
        # its passthrough calls cost is the API price they would have had (addons/prices.py)
        self.client_subscription = False
        self._sink = sink

    @property
    def flow_id(self) -> str:
        return self.row.flow_id

    # ------------------------------------------------------------ what happened

    def requested(self, model: str, stream: bool) -> None:
        self.row.model_requested = model
        self.row.stream = stream

    def routed(self, attempts: int, route: list[dict]) -> None:
        """The candidates asked (or skipped) and what each did."""
        self.row.attempts = attempts
        self.row.route = route

    def skipped_before_routing(self, reasons: list[str]) -> None:
        """Candidates left out before any was asked (they cannot take the request)."""
        if reasons:
            self.row.route[:0] = [{"skipped": reason} for reason in reasons]

    def noted_dropped(self, dropped: dict[str, tuple[str, ...]]) -> None:
        """What of the client's request each asked candidate ("provider/account") was not sent."""
        for attempt in self.row.route:
            what = dropped.get(f"{attempt.get('provider')}/{attempt.get('account')}")
            if what and attempt.get("status"):
                attempt["dropped"] = list(what)

    def answered_by(self, provider: str, account: str, model: str) -> None:
        row = self.row
        row.provider, row.account, row.model_upstream = provider, account, model

    def used(self, usage: canonical.Usage, cost_usd: float | None, cost_basis: str | None = None,
             price_source: str | None = None) -> None:
        """Tokens and their cost (None: no price known); `cost_basis` says what the cost is
        ("api" or "subscription": an API-equivalent), `price_source` where its price came from."""
        row = self.row
        row.input_tokens = usage.input_tokens
        row.output_tokens = usage.output_tokens
        row.cache_read_tokens = usage.cache_read_tokens
        row.cache_write_tokens = usage.cache_write_tokens
        row.reasoning_tokens = usage.reasoning_tokens
        row.cost_usd = cost_usd
        row.cost_basis = cost_basis if cost_usd is not None else None
        row.price_source = price_source if cost_usd is not None else None

    def price_later(self, provider_url: str, cost_basis: str) -> None:
        """No configured price: the usage store's writer looks up the model's default price
        (addons/prices.py) for the provider at this URL; `cost_basis` holds if it finds one."""
        self.row.price_url = provider_url
        self.row.cost_basis = cost_basis
        prices.warm_up()

    def status(self, status: int) -> None:
        """The status the client was (or is being) sent."""
        self.row.status = status

    def failed(self, error: str, status: int | None = None) -> None:
        """What went wrong, as the client was told (replaces an earlier cause)."""
        self.row.error = error
        if status is not None:
            self.row.status = status

    def ended(self, why: str) -> None:
        """How the call ended, unless something went wrong before (which says more)."""
        if not self.row.error:
            self.row.error = why

    def client_left(self, detail: str = "") -> None:
        """The client went away; not an abort once it had the answer's final event (the OpenAI
        SDK closes at `data: [DONE]`)."""
        if not self.delivered:
            self.ended("client-aborted" + detail)

    def deliver(self) -> None:
        self.delivered = True

    def first_byte(self) -> None:
        if self.row.ttfb_ms is None:
            self.row.ttfb_ms = _ms_since(self.started)

    def first_byte_at(self, ms: float) -> None:
        """Time to first byte as mitmproxy measured it (a passthrough answer)."""
        self.row.ttfb_ms = ms

    # ------------------------------------------------------------ the one ending

    def finish(self) -> UsageRow | None:
        """Write the usage row (scrubbed), once. Returns it, or None if the call had finished
        already (a bug)."""
        if self.done:
            if Call.strict:
                raise FinishedTwice(f"call {self.flow_id} finished twice")
            log.debug("detour: bug: call %s finished twice; its row is written once",
                      self.flow_id, stack_info=True)
            return None
        self.done = True
        row = self.row
        if row.latency_ms is None:
            row.latency_ms = _ms_since(self.started)
        self._scrub(row)
        self._sink(row)
        return row

    def _scrub(self, row: UsageRow) -> None:
        """The row's text is the last sink of what providers wrote."""
        if not row.error and not any("error" in a or "skipped" in a for a in row.route):
            return
        scrub = self.scrubber.adding(self.credentials).scrub
        if row.error:
            row.error = scrub(row.error)
        for attempt in row.route:
            for name in ("error", "skipped"):
                if isinstance(attempt.get(name), str):
                    attempt[name] = scrub(attempt[name])


def _ms_since(t0: float) -> float:
    return round((time.perf_counter() - t0) * 1000, 2)
