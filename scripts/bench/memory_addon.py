"""A mitmproxy script for memory measurements of the proxy it runs in (`scripts/bench/memory.py`):

    mitmdump [-s addons/router.py] -s scripts/bench/memory_addon.py
    kill -USR2 <pid>    # garbage collection + malloc_trim(0), then $DETOUR_MEMORY_DIR/trimmed-N
    DETOUR_TRACEMALLOC=1 ...; kill -USR1 <pid>    # + a tracemalloc snapshot: snapshot-N.snap

Trim: after a full garbage collection, glibc gives the free pages of its heap back to the
system, so the RSS read next is what the process holds, not what an earlier peak (the first
call's price tables, ~70 MB for a moment) left free in the heap: streams opened after such a
peak fill that space without RSS growing, and a per-stream figure read from RSS alone comes
out too low.

Snapshots: tracing starts when the script loads, with 16 frames per allocation, so a diff can
be grouped by the line in detour or mitmproxy that asked for the memory. Tracing makes the
proxy slower and larger: read RSS from a run without it.
"""

import asyncio
import ctypes
import ctypes.util
import gc
import os
import signal
import sys
import tracemalloc
from pathlib import Path

FRAMES = 16


def _malloc_trim():
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to trim
        return None


class MemoryProbe:
    def __init__(self):
        self.out = Path(os.environ["DETOUR_MEMORY_DIR"])
        self.count = 0
        self.trim = _malloc_trim()
        if os.environ.get("DETOUR_TRACEMALLOC"):
            tracemalloc.start(FRAMES)

    def running(self):
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR2, self.trimmed)
        loop.add_signal_handler(signal.SIGUSR1, self.snapshot)

    def _collect(self) -> None:
        # detour loads its price tables in a thread when the first call needs a price
        # (addons/prices.warm_up: +12 MB kept); a load still running, or started after the
        # "before" reading, would land in the streams' figure: it ends first
        warming = getattr(sys.modules.get("addons.prices"), "_warming", None)
        if warming is not None:
            warming.join(timeout=60)
        gc.collect()  # what is held, not garbage waiting for a collection
        if self.trim is not None:
            self.trim(0)

    def _written(self, name: str, write) -> None:
        path = self.out / name
        write(str(path) + ".part")
        os.replace(str(path) + ".part", path)  # whole or absent, for the reader polling it

    def trimmed(self):
        self._collect()
        self.count += 1
        self._written(f"trimmed-{self.count}", lambda p: Path(p).write_text("ok"))

    def snapshot(self):
        self._collect()
        self.count += 1
        self._written(f"snapshot-{self.count}.snap",
                      lambda p: tracemalloc.take_snapshot().dump(p))


addons = [MemoryProbe()]
