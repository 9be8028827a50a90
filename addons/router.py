"""mitmproxy entry point: `mitmdump -s addons/router.py [--set detour_home=DIR]`.

A thin shim: the addons live in the `addons` package, imported normally, because mitmproxy
executes a script outside `sys.modules` (dataclasses and relative imports break there) and
does not reload the modules a script imports.
"""

import sys
from pathlib import Path

_root = str(Path(__file__).resolve().parent.parent)
if _root not in sys.path:
    sys.path.insert(0, _root)

from addons.gateway import Gateway  # noqa: E402
from addons.credentials.owner import TokenOwner  # noqa: E402
from addons.error_reply import ErrorReply  # noqa: E402
from addons.hook_dispatch import HookDispatch  # noqa: E402
from addons.intercept import Interceptor  # noqa: E402
from addons.metrics import MetricsServer  # noqa: E402
from addons.operator_commands import OperatorCommands  # noqa: E402
from addons.proxy_instance import ProxyInstance  # noqa: E402
from addons.read_loop import ReadLoop  # noqa: E402
from addons.request_log import RequestLog  # noqa: E402
from addons.settings import DetourSettings  # noqa: E402
from addons.untouched import UntouchedCalls  # noqa: E402

_settings = DetourSettings()
# the request log sees a request before the interceptor changes it (its tail, added at the
# end of the chain, sees the answer as the client gets it)
addons = [_settings, ProxyInstance(_settings), Gateway(_settings), RequestLog(_settings),
          Interceptor(_settings), OperatorCommands(_settings), UntouchedCalls(_settings),
          MetricsServer(_settings), TokenOwner(_settings),
          ReadLoop(),  # mitmproxy's read loop, its last read let go (addons/read_loop.py)
          ErrorReply(),  # a direct call's failure told in the client's format (error_reply.py)
          HookDispatch()]  # last: mitmproxy's hook walk as a table (addons/hook_dispatch.py)
