"""Running hooks: order, sync and async, isolation of failures, cancellation, threads, reload."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio
import trio.testing

from mitmlite.flow import ClientInfo, Flow, Request
from mitmlite.hooks import HookRunner, in_thread
from mitmlite.scripts import Scripts
from tests.scripting import isolated_imports, write  # noqa: F401 - autouse fixture


class Runner:
    """A HookRunner over scripts written into a test's directory, with its reports collected."""

    def __init__(self, *paths: Path) -> None:
        self.reports: list[str] = []
        self.scripts = Scripts(paths, self.reports.append)
        self.scripts.load()
        self.hooks = HookRunner(self.scripts, self.reports.append)

    def module_list(self, index: int, name: str) -> list[object]:
        value = getattr(self.scripts.scripts[index].module, name)
        assert isinstance(value, list)
        return value


def make_flow(path: str = "/") -> Flow:
    request = Request(method="GET", scheme="https", host="a.test", port=443, path=path)
    return Flow(request=request, client=ClientInfo(address="1.2.3.4:5"))


# --- calling hooks ---------------------------------------------------------------------------


async def test_a_plain_hook_changes_the_flow(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow):\n    flow.request.path = '/sync'\n")
    runner = Runner(script)
    flow = make_flow()
    assert runner.hooks.wants("request")
    await runner.hooks.run("request", flow)
    assert flow.request.path == "/sync"
    assert runner.reports == []


async def test_only_the_named_hook_runs(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def response(flow):\n    flow.request.path = '/no'\n")
    runner = Runner(script)
    flow = make_flow()
    assert not runner.hooks.wants("request")
    await runner.hooks.run("request", flow)
    assert flow.request.path == "/"


async def test_an_async_hook_runs_in_the_trio_loop(tmp_path: Path) -> None:
    script = write(
        tmp_path / "s.py",
        """
        import trio

        async def request(flow):
            await trio.sleep(0)
            flow.request.path = "/async"
        """,
    )
    runner = Runner(script)
    flow = make_flow()
    await runner.hooks.run("request", flow)
    assert flow.request.path == "/async"


async def test_hooks_run_in_script_order_with_one_flow(tmp_path: Path) -> None:
    a = write(tmp_path / "a.py", "def request(flow):\n    flow.request.path += 'a/'\n")
    b = write(tmp_path / "b.py", "async def request(flow):\n    flow.request.path += 'b/'\n")
    runner = Runner(b, a)
    flow = make_flow()
    await runner.hooks.run("request", flow)
    assert flow.request.path == "/b/a/"


async def test_a_hook_that_raises_is_reported_and_the_next_runs(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.py",
        """
        def request(flow):
            flow.request.path = "/half-done"
            return 1 / 0
        """,
    )
    good = write(tmp_path / "good.py", "def request(flow):\n    flow.metadata['good'] = True\n")
    runner = Runner(bad, good)
    flow = make_flow()
    await runner.hooks.run("request", flow)
    [report] = runner.reports
    first, *rest = report.splitlines()
    assert first == (
        "error in hook request of bad.py for GET https://a.test/half-done: "
        "ZeroDivisionError: division by zero"
    )
    details = "\n".join(rest)
    assert details.startswith("Traceback (most recent call last):")
    assert f'File "{bad.resolve()}", line 4, in request' in details
    assert "return 1 / 0" in details
    assert "hooks.py" not in details
    assert "trio" not in details
    assert details.endswith("ZeroDivisionError: division by zero")
    # The next hook ran, and the flow keeps what the failing hook did before it raised.
    assert flow.metadata == {"good": True}
    assert flow.request.path == "/half-done"


async def test_a_hook_that_does_not_raise_is_not_reported(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow):\n    return 1 / 1\n")
    runner = Runner(script)
    await runner.hooks.run("request", make_flow())
    assert runner.reports == []


async def test_an_async_hook_that_raises_in_a_helper_is_traced_through_it(tmp_path: Path) -> None:
    write(tmp_path / "helper_traced.py", "def fail():\n    raise LookupError('no such thing')\n")
    script = write(
        tmp_path / "s.py",
        """
        import trio
        import helper_traced

        async def response(flow):
            await trio.sleep(0)
            helper_traced.fail()
        """,
    )
    runner = Runner(script)
    await runner.hooks.run("response", make_flow("/x"))
    [report] = runner.reports
    assert report.startswith(
        "error in hook response of s.py for GET https://a.test/x: LookupError: no such thing\n"
    )
    assert "line 7, in response" in report
    assert "helper_traced.py" in report
    assert "hooks.py" not in report


async def test_cancellation_goes_through_a_hook(tmp_path: Path) -> None:
    script = write(
        tmp_path / "s.py",
        """
        import trio

        async def request(flow):
            await trio.sleep_forever()
        """,
    )
    after = write(tmp_path / "after.py", "def request(flow):\n    flow.metadata['after'] = 1\n")
    runner = Runner(script, after)
    flow = make_flow()
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.hooks.run, "request", flow)
            await trio.testing.wait_all_tasks_blocked()
            scope.cancel()
    assert scope.cancelled_caught
    assert runner.reports == []
    assert flow.metadata == {}  # the hooks after the cancelled one did not run


async def test_keyboard_interrupt_goes_through_a_hook(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow):\n    raise KeyboardInterrupt\n")
    runner = Runner(script)
    with pytest.raises(KeyboardInterrupt):
        await runner.hooks.run("request", make_flow())
    assert runner.reports == []


# --- concurrency -----------------------------------------------------------------------------

WAIT_FOR_OTHER = """
import trio

OTHER_ARRIVED = trio.Event()
ORDER = []

async def request(flow):
    if flow.request.path == "/first":
        await OTHER_ARRIVED.wait()
    else:
        OTHER_ARRIVED.set()
    ORDER.append(flow.request.path)
"""


async def test_an_async_hook_that_waits_does_not_hold_up_other_flows(tmp_path: Path) -> None:
    runner = Runner(write(tmp_path / "s.py", WAIT_FOR_OTHER))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.hooks.run, "request", make_flow("/first"))
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(runner.hooks.run, "request", make_flow("/second"))
    assert runner.module_list(0, "ORDER") == ["/second", "/first"]


BLOCKING = """
import threading

ARRIVED = {"/a": threading.Event(), "/b": threading.Event()}
RESULTS = []

def request(flow):
    me = flow.request.path
    other = "/b" if me == "/a" else "/a"
    ARRIVED[me].set()
    RESULTS.append(ARRIVED[other].wait(timeout=TIMEOUT))
"""


async def test_a_plain_hook_that_blocks_holds_up_every_flow(tmp_path: Path) -> None:
    """The documented cost of a blocking plain hook; ``in_thread`` below is the way out."""
    runner = Runner(write(tmp_path / "s.py", BLOCKING.replace("TIMEOUT", "0.2")))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(runner.hooks.run, "request", make_flow("/a"))
        nursery.start_soon(runner.hooks.run, "request", make_flow("/b"))
    # Whichever ran first waited in vain: the other could not even start.
    assert runner.module_list(0, "RESULTS") == [False, True]


async def test_in_thread_lets_a_blocking_hook_wait_for_other_flows(tmp_path: Path) -> None:
    source = BLOCKING.replace("TIMEOUT", "10").replace("def request", "@in_thread\ndef request")
    source = "from mitmlite.hooks import in_thread\n" + source
    runner = Runner(write(tmp_path / "s.py", source))
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(runner.hooks.run, "request", make_flow("/a"))
            nursery.start_soon(runner.hooks.run, "request", make_flow("/b"))
    assert runner.module_list(0, "RESULTS") == [True, True]


async def test_in_thread_runs_in_a_worker_thread_and_its_changes_are_seen() -> None:
    seen: list[int] = []

    @in_thread
    def request(flow: Flow) -> None:
        seen.append(threading.get_ident())
        flow.request.path = "/from-thread"

    flow = make_flow()
    await request(flow)
    assert flow.request.path == "/from-thread"
    assert seen
    assert seen != [threading.get_ident()]
    assert request.__name__ == "request"


async def test_a_plain_hook_runs_in_the_loop_thread(tmp_path: Path) -> None:
    script = write(
        tmp_path / "s.py",
        "import threading\nTHREADS = []\ndef request(flow):\n"
        "    THREADS.append(threading.get_ident())\n",
    )
    runner = Runner(script)
    await runner.hooks.run("request", make_flow())
    assert runner.module_list(0, "THREADS") == [threading.get_ident()]


async def test_an_in_thread_hook_that_raises_is_reported_without_our_frames(
    tmp_path: Path,
) -> None:
    script = write(
        tmp_path / "s.py",
        """
        from mitmlite.hooks import in_thread

        @in_thread
        def request(flow):
            raise ValueError("slow and wrong")
        """,
    )
    runner = Runner(script)
    await runner.hooks.run("request", make_flow())
    [report] = runner.reports
    assert report.startswith("error in hook request of s.py for GET https://a.test/: ValueError")
    assert "line 6, in request" in report
    assert "hooks.py" not in report
    assert "trio" not in report


# --- reload before a flow --------------------------------------------------------------------


async def test_before_flow_picks_up_an_edited_script(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow):\n    flow.request.path = '/v1'\n")
    runner = Runner(script)
    write(script, "async def request(flow):\n    flow.request.path = '/v2'\n")
    runner.hooks.before_flow()
    flow = make_flow()
    await runner.hooks.run("request", flow)
    assert flow.request.path == "/v2"


async def test_without_before_flow_the_old_version_runs(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow):\n    flow.request.path = '/v1'\n")
    runner = Runner(script)
    write(script, "def request(flow):\n    flow.request.path = '/v2'\n")
    flow = make_flow()
    await runner.hooks.run("request", flow)
    assert flow.request.path == "/v1"


# --- load and done ---------------------------------------------------------------------------


async def test_load_and_done_are_called_without_arguments(tmp_path: Path) -> None:
    script = write(
        tmp_path / "s.py",
        """
        import trio

        CALLS = []

        def load():
            CALLS.append("load")

        async def done():
            await trio.sleep(0)
            CALLS.append("done")
        """,
    )
    runner = Runner(script)
    await runner.hooks.lifecycle("load")
    await runner.hooks.lifecycle("done")
    assert runner.module_list(0, "CALLS") == ["load", "done"]
    assert runner.reports == []


async def test_load_and_done_errors_are_reported(tmp_path: Path) -> None:
    bad = write(
        tmp_path / "bad.py",
        "def load():\n    raise RuntimeError('no config')\n\ndef done():\n    {}['x']\n",
    )
    good = write(tmp_path / "good.py", "CALLS = []\ndef load():\n    CALLS.append('load')\n")
    runner = Runner(bad, good)
    await runner.hooks.lifecycle("load")
    await runner.hooks.lifecycle("done")
    assert [r.splitlines()[0] for r in runner.reports] == [
        "error in hook load of bad.py for startup: RuntimeError: no config",
        "error in hook done of bad.py for shutdown: KeyError: 'x'",
    ]
    assert "line 2, in load" in runner.reports[0]
    assert runner.module_list(1, "CALLS") == ["load"]  # the next script's load still ran
