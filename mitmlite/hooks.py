"""Running the scripts' hooks: the one place user code runs once the scripts are imported.

Owns calling each script's hook in script order, plain or ``async def``, and isolating failures:
a hook that raises ``Exception`` is reported once (script, hook, URL, a traceback without our
frames) and the next hook runs; the flow keeps whatever the hook changed before it raised.
``trio.Cancelled`` and ``KeyboardInterrupt`` are not ours to catch. Must not load scripts
(``scripts`` does) nor know about connections: the relay calls ``before_flow`` and ``run`` at
fixed seams.

A plain hook runs on the event loop: while it runs, no other connection moves. A hook that waits
(on a socket, a file, a subprocess, a lock) should be ``async def`` and wait with trio, or be a
plain function wrapped in ``in_thread``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from mitmlite.flow import ClientHelloData, Flow
from mitmlite.scripts import LoadedScript, Scripts, describe, format_user_traceback

FLOW_HOOKS = ("requestheaders", "request", "responseheaders", "response", "error")
_LIFECYCLE = {"load": "for startup", "done": "for shutdown"}


class HookRunner:
    """Calls the hooks of loaded ``Scripts`` and reports their failures through ``report``."""

    def __init__(self, scripts: Scripts, report: Callable[[str], None]) -> None:
        self._scripts = scripts
        self._report = report

    def wants(self, name: str) -> bool:
        """Whether any script defines hook ``name`` (so the relay can skip buffering for it)."""
        return self._scripts.defines(name)

    def wants_flows(self) -> bool:
        """Whether any script has a flow hook; scripts with only load/done cost a flow nothing."""
        return any(self._scripts.defines(name) for name in FLOW_HOOKS)

    def before_flow(self) -> None:
        """Pick up edited scripts; cheap (one ``stat`` per script file) when nothing changed."""
        self._scripts.reload_if_changed()

    async def run(self, name: str, flow: Flow | ClientHelloData) -> None:
        """Call every script's hook ``name`` with ``flow`` (or a ClientHello), in script order."""
        for script, hook in self._scripts.hooks(name):
            try:
                await _call(hook, flow)
            except Exception as exc:
                if isinstance(flow, ClientHelloData):
                    where = f"for the ClientHello to {flow.host}:{flow.port}"
                else:
                    where = f"for {flow.request.method} {flow.request.url}"
                self._failed(name, script, where, exc)

    async def lifecycle(self, name: str) -> None:
        """Call every script's ``load`` (at start) or ``done`` (at stop), without arguments."""
        for script, hook in self._scripts.hooks(name):
            try:
                await _call(hook)
            except Exception as exc:
                self._failed(name, script, _LIFECYCLE.get(name, f"for {name}"), exc)

    def _failed(self, name: str, script: LoadedScript, where: str, exc: Exception) -> None:
        reason = describe(exc)
        details = format_user_traceback(exc, self._scripts.user_files())
        self._report(f"error in hook {name} of {script.name} {where}: {reason}\n{details}")


async def _call(hook: Callable[..., Any], *args: Flow | ClientHelloData) -> None:
    result = hook(*args)
    if inspect.isawaitable(result):
        await result


def in_thread(func: Callable[[Flow], None]) -> Callable[[Flow], Awaitable[None]]:
    """Run a slow plain hook in a worker thread, so it does not hold up other connections.

    A plain hook runs on the event loop, and while it runs no other connection moves. Wrap one
    that blocks (``requests.get``, ``time.sleep``, a database call) with this decorator::

        from mitmlite.hooks import in_thread

        @in_thread
        def request(flow):
            flow.request.headers["x-user"] = lookup_user_blocking(flow.request.host)

    The flow waits for the thread to finish (its changes are visible to the next hook), while
    other flows go on. The thread is not interrupted if the flow is cancelled: it runs to its end,
    then the cancellation takes effect. Threads come from trio's pool (at most 40 at a time by
    default); the function must not call trio.
    """

    @functools.wraps(func)
    async def run_in_thread(flow: Flow) -> None:
        await trio.to_thread.run_sync(func, flow)

    return run_in_thread
