"""mitmproxy's hook dispatch with a table per hook name: the same calls, in the same order,
without walking every addon for every event.

`AddonManager.trigger_event` makes, for every chain item and every event, an `invoke_addon`
coroutine, a `safecall` context manager and two generators (the item's addon tree, its hook
callables), whether or not the item has the hook: ~50 us per event in a running mitmdump,
~0.4 ms of a whole call's ~2 ms in plain mitmdump (8 events: four hooks and an `update` after
each; most addons have none of them). Measured in the proxy (`scripts/bench/whole_process.py`),
that walk was the largest single item of detour's process too.

Here the hook callables of each chain item are looked up once per hook name and kept while
the addon tree is the same objects (checked per event by identity: an addon added or removed,
a script loaded or reloaded makes a new tree, and a new table). What each event runs is what
mitmproxy runs: per chain item, its hooks in tree order inside one `safecall` (an error is
logged and the next item goes on), an `AddonHalt` ends the event, awaitable results awaited.
A hook method assigned to an addon object after its first event is not seen (mitmproxy would
see it); nothing in detour or mitmproxy does that.
"""

import inspect
import operator

from mitmproxy import ctx, exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall


def _tree(chain: list) -> list:
    """Every addon object under the chain, depth first (mitmproxy's `traverse` order)."""
    out: list = []
    stack = list(reversed(chain))
    while stack:
        addon = stack.pop()
        out.append(addon)
        children = getattr(addon, "addons", None)
        if children:
            stack.extend(reversed(list(children)))
    return out


class HookTable:
    """Replaces its manager's `trigger_event` (an instance attribute: the class is untouched)."""

    def __init__(self, manager: AddonManager):
        self.manager = manager
        self.tree: list = []
        self.plans: dict[str, list[list]] = {}
        self.original = manager.trigger_event
        manager.trigger_event = self.trigger_event

    def uninstall(self) -> None:
        if self.manager.trigger_event == self.trigger_event:
            self.manager.trigger_event = self.original

    def plan(self, event: hooks.Hook) -> list[list] | None:
        """Per chain item that has the hook: its callables (as `_iter_hooks` yields them);
        None when an item's hook attribute is not callable (mitmproxy's own walk reports it)."""
        manager = self.manager
        tree = _tree(manager.chain)
        if len(tree) != len(self.tree) or not all(map(operator.is_, tree, self.tree)):
            self.tree = tree
            self.plans = {}
        plan = self.plans.get(event.name)
        if plan is None:
            try:
                plan = [funcs for item in manager.chain
                        if (funcs := [func for _, func in manager._iter_hooks(item, event)])]
            except exceptions.AddonManagerError:
                return None
            self.plans[event.name] = plan
        return plan

    async def trigger_event(self, event: hooks.Hook) -> None:
        plan = self.plan(event)
        if plan is None:
            return await self.original(event)
        for funcs in plan:
            try:
                with safecall():
                    for func in funcs:
                        result = func(*event.args())
                        if result is not None and inspect.isawaitable(result):
                            await result
            except exceptions.AddonHalt:
                return


class HookDispatch:
    """The addon: the table goes in once mitmproxy runs, out when it is done."""

    def __init__(self):
        self.table: HookTable | None = None

    def running(self):
        if self.table is None:
            self.table = HookTable(ctx.master.addons)

    def done(self):
        if self.table is not None:
            self.table.uninstall()
            self.table = None
