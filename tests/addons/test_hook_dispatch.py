"""The hook table calls what mitmproxy's own dispatch calls, in its order, with its error
handling, and follows changes of the addon tree."""

import asyncio

import pytest
from mitmproxy import exceptions, hooks
from mitmproxy.addons import script
from mitmproxy.test import taddons

from addons.hook_dispatch import HookTable


class Recorder:
    def __init__(self, name: str, calls: list, children=None):
        self.name = name
        self.calls = calls
        if children is not None:
            self.addons = children

    def update(self, flows):
        self.calls.append(("update", self.name))


class AsyncRecorder(Recorder):
    async def update(self, flows):
        self.calls.append(("async update", self.name))


class Silent:
    """No hook of interest: skipped."""


class Failing(Recorder):
    def update(self, flows):
        self.calls.append(("fail", self.name))
        raise ValueError("boom")


class Halting(Recorder):
    def update(self, flows):
        self.calls.append(("halt", self.name))
        raise exceptions.AddonHalt()


def chain(calls: list) -> list:
    """A chain as mitmproxy has one: plain addons, one with children (a script's), an async
    hook, an item whose hook raises (its later children skipped, the next item called)."""
    return [Recorder("a", calls), Silent(),
            Recorder("script", calls, [Recorder("s1", calls), AsyncRecorder("s2", calls)]),
            Failing("f", calls, [Recorder("f-child", calls)]),
            Recorder("z", calls)]


async def calls_of(use_table: bool, events: int = 2) -> list:
    calls: list = []
    with taddons.context() as tctx:
        manager = tctx.master.addons
        for addon in chain(calls):
            manager.add(addon)
        if use_table:
            HookTable(manager)
        for _ in range(events):
            await manager.trigger_event(hooks.UpdateHook([]))
    return calls


async def test_the_same_calls_in_the_same_order_as_mitmproxy():
    mine, theirs = await calls_of(True), await calls_of(False)
    assert mine == theirs
    assert mine[:5] == [("update", "a"), ("update", "script"), ("update", "s1"),
                        ("async update", "s2"), ("fail", "f")]
    assert ("update", "f-child") not in mine and ("update", "z") in mine


@pytest.mark.parametrize("use_table", [True, False])
async def test_an_addon_halt_ends_the_event(use_table):
    calls: list = []
    with taddons.context() as tctx:
        manager = tctx.master.addons
        for addon in (Recorder("a", calls), Halting("h", calls), Recorder("z", calls)):
            manager.add(addon)
        if use_table:
            HookTable(manager)
        await manager.trigger_event(hooks.UpdateHook([]))
    assert calls == [("update", "a"), ("halt", "h")]


async def test_the_table_follows_addons_added_and_removed():
    calls: list = []
    with taddons.context() as tctx:
        manager = tctx.master.addons
        manager.add(Recorder("first", calls, [Recorder("child", calls)]))
        table = HookTable(manager)
        await manager.trigger_event(hooks.UpdateHook([]))
        late = Recorder("late", calls)
        manager.add(late)
        calls.clear()
        await manager.trigger_event(hooks.UpdateHook([]))
        assert calls == [("update", "first"), ("update", "child"), ("update", "late")]
        manager.remove(late)
        calls.clear()
        await manager.trigger_event(hooks.UpdateHook([]))
        assert calls == [("update", "first"), ("update", "child")]
        table.uninstall()
        assert manager.trigger_event == table.original
        assert "register" not in vars(manager) and "remove" not in vars(manager)


SCRIPT = """
class Seen:
    def update(self, flows):
        flows.append({name!r})

addons = [Seen()]
"""


async def test_the_table_follows_a_script_loaded_reloaded_and_unloaded(tmp_path):
    """mitmproxy's own script addons: `--scripts` set, the file loaded anew, the option
    cleared."""
    path = tmp_path / "a_script.py"
    path.write_text(SCRIPT.format(name="old"))

    async def seen() -> list:
        flows: list = []
        await manager.trigger_event(hooks.UpdateHook(flows))
        return flows

    with taddons.context() as tctx:
        manager = tctx.master.addons
        loader = script.ScriptLoader()
        manager.add(loader)
        HookTable(manager)
        assert await seen() == []
        tctx.configure(loader, scripts=[str(path)])
        for _ in range(500):  # the script's watcher task loads it (bounded: ~5 s)
            if loader.addons and loader.addons[0].ns is not None:
                break
            await asyncio.sleep(0.01)
        assert await seen() == ["old"]
        path.write_text(SCRIPT.format(name="new"))
        loader.addons[0].loadscript()  # what the watcher does when the file changes
        assert await seen() == ["new"]
        tctx.configure(loader, scripts=[])
        assert await seen() == []


async def test_a_hook_attribute_that_is_not_callable_is_left_to_mitmproxy():
    calls: list = []
    with taddons.context() as tctx:
        manager = tctx.master.addons
        broken = Silent()
        broken.update = "not a hook"
        manager.add(Recorder("a", calls))
        manager.add(broken)
        HookTable(manager)
        await manager.trigger_event(hooks.UpdateHook([]))  # mitmproxy's walk logs the error
    assert calls == [("update", "a")]
