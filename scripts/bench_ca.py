"""The CA rows of scripts/bench.py: CPU time to mint leaves and build their SSL contexts.

Measured in-process with ``time.thread_time_ns`` (CPU time of this thread only, so neither other
processes nor waiting count) on a ``LeafCache`` in a temp dir under a freshly created CA: the
first lookup of a host mints a leaf, writes its chain file and builds the ``SSLContext``; a later
lookup of the same host is a cache hit.
"""

from __future__ import annotations

import datetime as dt
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mitmlite.ca.authority import RootCA
from mitmlite.ca.cache import DEFAULT_MAX_HOSTS, LeafCache
from mitmlite.ca.files import init_ca

CACHED_BATCH = 100  # cache hits timed per clock read: one hit is close to the clock's own cost


@dataclass(frozen=True, slots=True)
class CAResult:
    """Seconds of CPU time; medians are per host (or per cache hit)."""

    new_host_median: float
    cached_median: float
    row_total: float
    row_median: float
    row_hosts: int


def cpu_each(action: Callable[[str], object], hosts: list[str]) -> list[float]:
    """CPU seconds of ``action(host)`` for each host, timed one by one."""
    samples: list[float] = []
    for host in hosts:
        start = time.thread_time_ns()
        action(host)
        samples.append((time.thread_time_ns() - start) / 1e9)
    return samples


def cpu_per_hit(cache: LeafCache, host: str, batches: int) -> list[float]:
    """CPU seconds per cache hit, from ``batches`` batches of ``CACHED_BATCH`` hits each."""
    cache.context_for(host)
    samples: list[float] = []
    for _ in range(batches):
        start = time.thread_time_ns()
        for _ in range(CACHED_BATCH):
            cache.context_for(host)
        samples.append((time.thread_time_ns() - start) / 1e9 / CACHED_BATCH)
    return samples


def hosts(prefix: str, count: int) -> list[str]:
    """``count`` distinct host names."""
    return [f"{prefix}-{index}.bench.example" for index in range(count)]


def new_cache(root: RootCA, directory: Path, max_hosts: int) -> LeafCache:
    """A leaf cache with its own (empty) leaf directory, large enough to never evict here."""
    return LeafCache(root, directory, max_hosts=max(max_hosts, DEFAULT_MAX_HOSTS))


def measure_ca(new_hosts: int = 200, cached_batches: int = 200, row_hosts: int = 1000) -> CAResult:
    """Run the three CA measurements on a fresh CA in a temp dir that is removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="mitmlite-bench-ca-") as tmp:
        workdir = Path(tmp)
        root = init_ca(workdir / "ca", dt.datetime.now(dt.UTC)).root
        warm = new_cache(root, workdir / "warm", 5)
        cpu_each(warm.context_for, hosts("warmup", 5))  # imports and first-call costs
        new = cpu_each(
            new_cache(root, workdir / "new", new_hosts).context_for, hosts("new", new_hosts)
        )
        cached = cpu_per_hit(warm, "warmup-0.bench.example", cached_batches)
        row_cache = new_cache(root, workdir / "row", row_hosts)
        start = time.thread_time_ns()
        row = cpu_each(row_cache.context_for, hosts("row", row_hosts))
        total = (time.thread_time_ns() - start) / 1e9
    return CAResult(
        new_host_median=statistics.median(new),
        cached_median=statistics.median(cached),
        row_total=total,
        row_median=statistics.median(row),
        row_hosts=row_hosts,
    )
