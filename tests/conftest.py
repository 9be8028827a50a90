"""Test-wide settings. Hypothesis explores new examples on every local run; CI (which sets
CI=true) runs a derandomized profile, so a red build is always reproducible, never chance."""

import os

from hypothesis import settings

from addons.call import Call

# a call finished twice is a bug: under tests it raises instead of being logged
Call.strict = True

settings.register_profile("ci", derandomize=True, database=None, deadline=None,
                          print_blob=True)
# local runs keep exploring, without hypothesis's 200 ms per-example deadline: on a shared
# 2-core machine an example's time says more about the neighbours than about the code
settings.register_profile("dev", deadline=None)
if os.environ.get("CI", "").lower() not in ("", "0", "false", "no"):
    settings.load_profile("ci")
else:
    settings.load_profile("dev")
