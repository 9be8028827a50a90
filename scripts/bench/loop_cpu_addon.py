"""A mitmproxy script that charges the event loop thread's CPU, exactly and exclusively, to what
ran it: every event-loop callback (a task's coroutine, and for mitmproxy's hook tasks the hook;
a transport's read with its protocol), every addon hook call (each step of an async one), the
garbage collector, and the functions named in $LOOP_CPU_FUNCS (`module:Class.method,...`).

    mitmdump [-s addons/router.py] -s scripts/bench/loop_cpu_addon.py   # LOOP_CPU_OUT=DIR

Time goes to the innermost frame open (a hook inside a task step, a named function inside the
hook), so the keys add up to the thread's CPU: `time.thread_time`, user + system, not sampled.
Each frame costs two clock reads (a system call each, ~0.3 us): a few per cent on top of a
whole call. SIGUSR1 starts a phase (the counters cleared), SIGUSR2 writes the phase to
LOOP_CPU_OUT/PID-N.json ({"cpu": seconds by key, "count": entries by key, "thread": the
thread's CPU in the phase}). What mitmproxy's eager task factory starts runs in its creator's
frame: a hook task's first step is charged to the task (or hook) that started it.
"""

import asyncio
import asyncio.events
import functools
import gc
import importlib
import json
import os
import signal
import time
import types
from collections import Counter

from mitmproxy import ctx

_clock = time.thread_time
_cpu: Counter = Counter()
_count: Counter = Counter()
_stack = ["(between callbacks)"]
_last = [0.0]
_phase = {"start": 0.0, "n": 0}


def _enter(key: str) -> None:
    now = _clock()
    _cpu[_stack[-1]] += now - _last[0]
    _stack.append(key)
    _last[0] = now
    _count[key] += 1


def _leave() -> None:
    now = _clock()
    _cpu[_stack.pop()] += now - _last[0]
    _last[0] = now


def _label(handle: asyncio.Handle) -> str:
    callback = handle._callback
    owner = getattr(callback, "__self__", None)
    if isinstance(owner, asyncio.Task):
        coro = owner.get_coro()
        name = getattr(coro, "__qualname__", type(coro).__name__)
        frame = getattr(coro, "cr_frame", None)
        hook = frame.f_locals.get("hook") if frame is not None else None
        if hook is not None and name.endswith(".hook_task"):
            name += ":" + hook.name
        return "loop: task " + name
    if owner is not None:
        protocol = getattr(owner, "_protocol", None)
        return (f"loop: {type(owner).__name__}.{getattr(callback, '__name__', '?')}"
                + (f" [{type(protocol).__name__}]" if protocol is not None else ""))
    return "loop: " + getattr(callback, "__qualname__", type(callback).__name__)


_handle_run = asyncio.events.Handle._run


def _run(handle: asyncio.Handle):
    _enter(_label(handle))
    try:
        return _handle_run(handle)
    finally:
        _leave()


@types.coroutine
def _timed(coro, key: str):
    """Drives `coro` step by step, each step charged to `key`."""
    value, error = None, None
    while True:
        _enter(key)
        try:
            yielded = coro.throw(error) if error is not None else coro.send(value)
        except StopIteration as e:
            return e.value
        finally:
            _leave()
        error = None
        try:
            value = yield yielded
        except BaseException as e:  # noqa: BLE001 - thrown into the coroutine, as await does
            value, error = None, e


def _charged(func, key: str):
    if asyncio.iscoroutinefunction(func):
        def charged(*args, **kwargs):
            return _timed(func(*args, **kwargs), key)
    else:
        def charged(*args, **kwargs):
            _enter(key)
            try:
                result = func(*args, **kwargs)
            finally:
                _leave()
            return _timed(result, key) if asyncio.iscoroutine(result) else result
    if isinstance(func, types.BuiltinFunctionType):
        return charged
    return functools.wraps(func)(charged)


def _charge_functions(specs: str) -> None:
    """`module:Name.attr` each: a module's function (as the modules that imported it by name
    see it only if they read it through the module) or a class's method, replaced in place."""
    for spec in filter(None, (s.strip() for s in specs.split(","))):
        module, _, path = spec.partition(":")
        owner = importlib.import_module(module)
        *parents, attr = path.split(".")
        for name in parents:
            owner = getattr(owner, name)
        func = owner.__dict__[attr] if isinstance(owner, type) else getattr(owner, attr)
        if isinstance(func, (staticmethod, classmethod)):
            raise ValueError(f"{spec}: a static or class method is not charged")
        setattr(owner, attr, _charged(func, "fn " + path))


def _on_gc(phase: str, info: dict) -> None:
    if phase == "start":
        _enter("gc")
    else:
        _leave()


def _start_phase() -> None:
    _cpu.clear()
    _count.clear()
    _phase["start"] = _last[0] = _clock()


def _write_phase() -> None:
    now = _clock()
    _cpu[_stack[-1]] += now - _last[0]
    _last[0] = now
    _phase["n"] += 1
    out = os.path.join(os.environ["LOOP_CPU_OUT"], f"{os.getpid()}-{_phase['n']}.json")
    with open(out + ".part", "w") as f:
        json.dump({"cpu": dict(_cpu), "count": dict(_count), "thread": now - _phase["start"]}, f)
    os.replace(out + ".part", out)  # whole, or not there yet


class LoopCpu:
    def running(self):
        manager = ctx.master.addons
        iter_hooks = manager._iter_hooks

        def charged_hooks(addon, event):
            for owner, func in iter_hooks(addon, event):
                yield owner, _charged(func, f"hook {event.name} {type(owner).__name__}")
        manager._iter_hooks = charged_hooks
        asyncio.events.Handle._run = _run
        _charge_functions(os.environ.get("LOOP_CPU_FUNCS", ""))
        gc.callbacks.append(_on_gc)
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGUSR1, _start_phase)
        loop.add_signal_handler(signal.SIGUSR2, _write_phase)
        _last[0] = _clock()


addons = [LoopCpu()]
