"""mitmproxy's hook dispatch with a table per hook name: the same calls, in the same order,
without walking every addon for every event.

`AddonManager.trigger_event` makes, for every chain item and every event, an `invoke_addon`
coroutine, a `safecall` context manager and two generators (the item's addon tree, its hook
callables), whether or not the item has the hook: ~50 us per event in a running mitmdump,
~0.4 ms of a whole call's ~2 ms in plain mitmdump (8 events: four hooks and an `update` after
each; most addons have none of them). Measured in the proxy (`scripts/bench/whole_process.py`),
that walk was the largest single item of detour's process too.

Here the hook callables of each chain item are looked up once per hook name and kept until
the addon tree changes: every change goes through the manager's `register` or `remove` (an
addon added or removed, `clear`, a script loaded, reloaded or unloaded: mitmproxy's script
addons do both), which the table wraps to drop its plans. (It compared the whole tree by
identity on every event before: ~5 us per event, 8 events per whole call.) What each event
runs is what mitmproxy runs: per chain item, its hooks in tree order inside one `safecall` (an
error is logged and the next item goes on), an `AddonHalt` ends the event, awaitable results
awaited. Not seen, where mitmproxy's walk would see them: a hook method assigned to an addon
object after its first event, and children put into an addon's `addons` without `register`
(mitmproxy would not give such children their `load` either); nothing in detour or mitmproxy
does either.
"""

import functools
import inspect

from mitmproxy import ctx, exceptions, hooks
from mitmproxy.addonmanager import AddonManager, safecall


class HookTable:
    """Replaces its manager's `trigger_event`, and wraps its `register` and `remove` (instance
    attributes: the class is untouched)."""

    WRAPPED = ("register", "remove")

    def __init__(self, manager: AddonManager):
        self.manager = manager
        self.plans: dict[str, list[list]] = {}
        self.original = manager.trigger_event
        manager.trigger_event = self.trigger_event
        for name in self.WRAPPED:
            setattr(manager, name, self._dropping_plans(getattr(manager, name)))

    def _dropping_plans(self, method):
        @functools.wraps(method)
        def changed(*args, **kwargs):
            try:
                return method(*args, **kwargs)
            finally:  # `add` appends to the chain after `register`, before any event runs
                self.plans = {}
        changed.detour_hook_table = self
        return changed

    def uninstall(self) -> None:
        manager = self.manager
        if manager.trigger_event == self.trigger_event:
            manager.trigger_event = self.original
        for name in self.WRAPPED:
            if getattr(getattr(manager, name), "detour_hook_table", None) is self:
                delattr(manager, name)  # the class's method again

    def plan(self, event: hooks.Hook) -> list[list] | None:
        """Per chain item that has the hook: its callables (as `_iter_hooks` yields them);
        None when an item's hook attribute is not callable (mitmproxy's own walk reports it)."""
        plan = self.plans.get(event.name)
        if plan is None:
            manager = self.manager
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
