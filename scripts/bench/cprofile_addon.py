"""A mitmproxy script that profiles the event loop's thread with cProfile:

    mitmdump -s addons/router.py -s scripts/bench/cprofile_addon.py   # DETOUR_PROFILE=out.prof

Profiling starts once mitmproxy runs and stops at shutdown (SIGINT), when the stats are written
to $DETOUR_PROFILE. The timer is cProfile's own (wall clock, the cheapest: a CPU-time timer
costs a system call per function call and made the proxy 10x slower, distorting the shares);
the time spent waiting in epoll is idle and left out by `cpu_profile.py`, so pin the proxy to
a core of its own. Other threads (the usage store's SQLite writer, DNS lookups) are not in it.
"""

import cProfile
import os


class CpuProfile:
    def __init__(self):
        self.profile: cProfile.Profile | None = None

    def running(self):
        self.profile = cProfile.Profile()
        self.profile.enable()

    def done(self):
        if self.profile is not None:
            self.profile.disable()
            self.profile.dump_stats(os.environ["DETOUR_PROFILE"])
            self.profile = None


addons = [CpuProfile()]
