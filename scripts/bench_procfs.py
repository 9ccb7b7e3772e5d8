"""Reading another process's CPU time and memory from /proc, for scripts/bench.py.

Linux only. CPU times come from ``/proc/PID/stat`` (utime + stime of every thread, in clock
ticks, so the resolution is 10 ms at the usual 100 Hz); memory from ``/proc/PID/status``
(``VmRSS`` now, ``VmHWM`` the peak since the process started).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds ``pid`` has used so far (all its threads)."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # The command name is in parentheses and may contain spaces: split after the last ')'.
    fields = text[text.rindex(")") + 2 :].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / _TICKS


def total_cpu_seconds(pids: Iterable[int]) -> float:
    """The sum of ``cpu_seconds`` over ``pids``, skipping processes that have gone."""
    total = 0.0
    for pid in pids:
        try:
            total += cpu_seconds(pid)
        except (OSError, ValueError, IndexError):
            continue
    return total


def memory_kib(pid: int, field: str) -> int:
    """A ``Vm*`` line of ``/proc/PID/status`` in KiB, e.g. ``memory_kib(pid, "VmRSS")``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise ValueError(f"no {field} in /proc/{pid}/status")


def rss_kib(pid: int) -> int:
    """Resident set size now."""
    return memory_kib(pid, "VmRSS")


def peak_rss_kib(pid: int) -> int:
    """The highest resident set size since the process started (VmHWM)."""
    return memory_kib(pid, "VmHWM")


def children(pid: int) -> list[int]:
    """Direct children of ``pid`` (e.g. nginx's workers), from every thread's children list."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except OSError:
            continue
    return found
