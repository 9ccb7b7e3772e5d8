"""The malloc settings that keep the relay's 256 KiB buffers from costing page faults."""

from __future__ import annotations

import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mitmlite import allocator
from mitmlite.allocator import (
    M_MMAP_THRESHOLD,
    M_TRIM_THRESHOLD,
    MMAP_THRESHOLD,
    TRIM_THRESHOLD,
    tune_for_bulk_io,
)
from mitmlite.streams import TRANSPORT_READ


class FakeMallopt:
    def __init__(self, result: int = 1) -> None:
        self.calls: list[tuple[int, int]] = []
        self.result = result

    def __call__(self, option: int, value: int) -> int:
        self.calls.append((option, value))
        return self.result


def test_sets_both_thresholds_above_the_relay_buffer_sizes() -> None:
    mallopt = FakeMallopt()
    assert tune_for_bulk_io(environ={}, mallopt=mallopt) is True
    assert mallopt.calls == [(M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD)]
    assert MMAP_THRESHOLD >= 4 * TRANSPORT_READ  # a read, its join and h11's copies fit
    assert TRIM_THRESHOLD >= MMAP_THRESHOLD


@pytest.mark.parametrize(
    "name", ["MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES"]
)
def test_leaves_malloc_alone_when_the_user_tuned_it(name: str) -> None:
    mallopt = FakeMallopt()
    assert tune_for_bulk_io(environ={name: "1"}, mallopt=mallopt) is False
    assert mallopt.calls == []


def test_reports_a_refused_setting() -> None:
    assert tune_for_bulk_io(environ={}, mallopt=FakeMallopt(result=0)) is False


def test_off_glibc_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(platform, "libc_ver", lambda: ("", ""))
    assert allocator._glibc_mallopt() is None
    assert tune_for_bulk_io(environ={}) is False


glibc_only = pytest.mark.skipif(
    platform.libc_ver()[0] != "glibc", reason="mallopt settings exist on glibc only"
)

# Allocates and frees 256 KiB blocks as the relay's body path does (socket read, h11's buffer
# and its extracted copy) and prints the page faults that cost.
CHURN = textwrap.dedent(
    """
    import resource, sys
    from mitmlite.allocator import tune_for_bulk_io
    if sys.argv[1] == "tuned":
        assert tune_for_bulk_io(environ={})
    chunk = b"x" * (256 * 1024)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(200):
        buffer = bytearray()
        buffer += chunk
        copy = bytes(buffer)
        del buffer[:], copy
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """
)


def page_faults(mode: str) -> int:
    env_free = {"PATH": "/usr/bin:/bin"}  # no MALLOC_* from the caller's environment
    result = subprocess.run(
        [sys.executable, "-c", CHURN, mode],
        capture_output=True,
        text=True,
        check=True,
        env=env_free,
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    return int(result.stdout.strip())


@glibc_only
def test_tuned_process_reuses_heap_memory_for_large_buffers() -> None:
    tuned = page_faults("tuned")
    untuned = page_faults("untuned")
    # Measured here: about 230 faults tuned, 32,000 untuned (64 pages per block, each time).
    assert untuned > 10_000, f"the untuned churn should fault fresh pages ({untuned})"
    assert tuned * 10 < untuned, f"tuned {tuned} vs untuned {untuned} page faults"


# Frees a few hundred MiB of heap blocks in an order that leaves them spread through the heap (a
# block kept between each pair), as concurrent transfers do, then reports RSS (MiB) before and
# after release_free_heap.
SPREAD = textwrap.dedent(
    """
    import sys
    from mitmlite.allocator import release_free_heap, tune_for_bulk_io
    def rss():
        for line in open("/proc/self/status"):
            if line.startswith("VmRSS"):
                return int(line.split()[1]) // 1024
    assert tune_for_bulk_io(environ={})
    blocks = [bytearray(512 * 1024) for _ in range(800)]
    for block in blocks:
        block[::4096] = b"x" * len(block[::4096])  # touch every page
    kept = blocks[1::2]
    del blocks
    before = rss()
    threshold = int(sys.argv[1])
    ran = release_free_heap(threshold)
    print(before, rss(), ran, len(kept))
    """
)


def spread_release(threshold: int) -> tuple[int, int, bool]:
    result = subprocess.run(
        [sys.executable, "-c", SPREAD, str(threshold)],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
        cwd=str(Path(__file__).resolve().parent.parent),
    )
    before, after, ran, _ = result.stdout.split()
    return int(before), int(after), ran == "True"


@glibc_only
def test_free_heap_spread_through_the_heap_goes_back_to_the_kernel() -> None:
    before, after, ran = spread_release(64 << 20)
    assert ran
    assert before - after > 150, f"RSS {before} -> {after} MiB"  # ~200 MiB of it was free


@glibc_only
def test_little_free_heap_is_left_alone() -> None:
    # The twin: under the threshold nothing is trimmed (a steady load keeps its pages).
    before, after, ran = spread_release(1 << 40)
    assert not ran
    assert before - after < 20, f"RSS {before} -> {after} MiB"
