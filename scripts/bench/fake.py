"""The loopback fake vendors of `tests/fakes`, run for benchmarks:

    python -m scripts.bench.fake openai|anthropic [--tls] [--events N] [--delay S] [--stamp] ...

The same command line as `python -m tests.fakes.openai_provider` (every option of `run_cli`),
with two differences that matter in a long benchmark:
- the history of received requests is bounded (the test fakes keep every request and its
  parsed body for assertions: ~160 KB per Claude Code request, thousands per run);
- `--stamp`: after each streamed response, one line on stdout
  `stream <first> <last> <n>`: the `time.monotonic()` (CLOCK_MONOTONIC, comparable across
  processes) at which the first and the last of its n events had been written and drained;
- `--fail 500|429|stream-error`: every model call fails, with a 500, a 429 (no Retry-After),
  or a 200 stream whose first events are the role chunk / message_start and then the
  vendor's in-stream error (failover benchmarks); with `--fail-key KEY`, only the calls made
  with that key fail (two accounts of one provider on one fake);
- `--rate-limits`: every answer carries OpenAI's rate-limit headers (three windows' limit,
  remaining and reset), as the vendor sends them on every call (quota benchmarks);
- `--paced MODEL:DELAY:EVENTS` (repeatable): a call for that model is answered with EVENTS
  content deltas, DELAY seconds apart (one event per read at the proxy, as a real model's tokens
  arrive; a long DELAY holds streams open), instead of the default reply. One fake serves
  every kind of call of a benchmark, so one mitmdump (e.g. in reverse mode) reaches them all.
"""

import collections
import dataclasses
import sys
import time

from tests.fakes.anthropic_vendor import FakeAnthropic
from tests.fakes.openai_provider import FakeOpenAI
from tests.fakes.replies import Events, Status, StreamError
from tests.fakes.server import Stream, run_cli

KINDS = {"openai": FakeOpenAI, "anthropic": FakeAnthropic}
HISTORY = 8
# what api.openai.com sends on every answer (figures of a real one)
RATE_LIMIT_HEADERS = {
    "x-ratelimit-limit-requests": "5000", "x-ratelimit-remaining-requests": "4999",
    "x-ratelimit-reset-requests": "12ms", "x-ratelimit-limit-tokens": "160000",
    "x-ratelimit-remaining-tokens": "159976", "x-ratelimit-reset-tokens": "9ms",
}
FAILURES = {"500": Status(500), "429": Status(429), "stream-error": StreamError(after=1)}


def _stamped(events):
    first = last = None
    n = 0
    for event in events:
        yield event
        # the server asks for the next event once this one was written and drained
        last = time.monotonic()
        if first is None:
            first = last
        n += 1
    print(f"stream {first!r} {last!r} {n}", flush=True)


def bench_class(cls, stamp: bool, fail: str | None = None,
                paced: dict[str, Events] | None = None, rate_limits: bool = False,
                fail_key: str | None = None):
    paced = paced or {}

    class Bench(cls):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self._requests = collections.deque(maxlen=HISTORY)
            if rate_limits:
                self.response_headers.update(RATE_LIMIT_HEADERS)

        def take_reply(self, received):
            if fail and (fail_key is None or fail_key in (
                    received.headers.get("authorization", "").removeprefix("Bearer "),
                    received.headers.get("x-api-key"))):
                return FAILURES[fail]
            model = (received.json or {}).get("model")
            if isinstance(model, str) and model in paced:
                return paced[model]
            return super().take_reply(received)

        def render(self, reply, received, stream):
            plan = super().render(reply, received, stream)
            if stamp and isinstance(plan, Stream):
                plan = dataclasses.replace(plan, events=_stamped(plan.events))
            return plan

    Bench.__name__ = Bench.__qualname__ = cls.__name__
    Bench.__doc__ = cls.__doc__
    return Bench


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in KINDS:
        print(f"usage: python -m scripts.bench.fake {{{'|'.join(KINDS)}}} [--stamp] "
              "[options of the test fakes' CLI]", file=sys.stderr)
        return 2
    kind, rest = argv[0], argv[1:]
    stamp = "--stamp" in rest
    rate_limits = "--rate-limits" in rest
    rest = [a for a in rest if a not in ("--stamp", "--rate-limits")]
    fail = None
    if "--fail" in rest:
        i = rest.index("--fail")
        fail = rest[i + 1] if i + 1 < len(rest) else ""
        if fail not in FAILURES:
            print(f"--fail: one of {', '.join(FAILURES)}", file=sys.stderr)
            return 2
        del rest[i:i + 2]
    fail_key = None
    if "--fail-key" in rest:
        i = rest.index("--fail-key")
        fail_key = rest[i + 1] if i + 1 < len(rest) else ""
        del rest[i:i + 2]
    paced = {}
    while "--paced" in rest:
        i = rest.index("--paced")
        try:
            model, delay, n = rest[i + 1].rsplit(":", 2)
            paced[model] = Events(int(n), delay=float(delay))
        except (IndexError, ValueError):
            print("--paced MODEL:DELAY:EVENTS", file=sys.stderr)
            return 2
        del rest[i:i + 2]
    return run_cli(bench_class(KINDS[kind], stamp, fail, paced, rate_limits, fail_key), rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
