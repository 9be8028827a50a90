"""A mitmproxy script that saves tracemalloc snapshots of the proxy on demand:

    DETOUR_TRACEMALLOC=/tmp/snaps mitmdump -s addons/router.py -s scripts/bench/tracemalloc_addon.py
    kill -USR1 <pid>    # -> /tmp/snaps/1.snap, 2.snap, ... (after a full garbage collection)

Tracing starts when the script loads (before the proxy serves anything), with 16 frames per
allocation, so a diff can be grouped by the line in detour or mitmproxy that asked for the
memory. Tracing makes the proxy slower and larger: read RSS from a run without it.
`scripts/bench/memory.py --tracemalloc` drives it.
"""

import asyncio
import gc
import os
import signal
import tracemalloc
from pathlib import Path

FRAMES = 16


class TracemallocSnapshots:
    def __init__(self):
        self.out = Path(os.environ["DETOUR_TRACEMALLOC"])
        self.count = 0
        tracemalloc.start(FRAMES)

    def running(self):
        asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, self.snapshot)

    def snapshot(self):
        gc.collect()  # what is held, not garbage waiting for a collection
        self.count += 1
        path = self.out / f"{self.count}.snap"
        tracemalloc.take_snapshot().dump(str(path) + ".part")
        os.replace(str(path) + ".part", path)  # whole or absent, for the reader polling it


addons = [TracemallocSnapshots()]
