"""glibc malloc settings for a process that relays bodies in buffers of a few hundred KiB.

Bodies move through the relay in pieces of up to ``streams.TRANSPORT_READ`` (256 KiB): the
socket read, the TLS plaintext, h11's receive buffer, the encrypted output. glibc serves blocks
from 128 KiB up with mmap (its threshold then adapts, but only upwards and only to the size of a
freed block) and gives the top of its heap back to the kernel once 128 KiB of it is free. With
such blocks allocated and freed for every read, both happen all the time, and each time the
kernel maps, zeroes and faults in fresh pages: measured, h11 alone went from 0.11 to 1.5 ms of
CPU per MiB, and the proxy's 100 MiB download from about 350 to 200 MiB/s (issue 3).

Serving blocks up to 4 MiB from the heap and keeping up to 16 MiB of free heap top removes
that churn. The cost is that freed memory may stay in the process's RSS after a burst instead
of going back to the kernel at once: the trim threshold only covers the top of the heap, and
after many concurrent transfers the free blocks lie all through it (a robustness run: 150
clients x 5 MB, RSS idle after each round 566 -> 1723 MB; ``malloc_trim`` took 1001 MB to
266). ``release_free_heap`` gives free pages back wherever they lie; the server calls it every
``RELEASE_SECONDS`` when more than ``RELEASE_FREE_BYTES`` of the heap is free. Whoever set
glibc's own knobs (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``)
keeps them.
"""

from __future__ import annotations

import ctypes
import os
import platform
from collections.abc import Callable, Mapping

# From glibc's malloc.h.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3

MMAP_THRESHOLD = 4 << 20
TRIM_THRESHOLD = 16 << 20

_USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
# Free heap memory worth returning: well above what one busy relay step holds, so a steady load
# is not made to fault its pages back in every few seconds.
RELEASE_FREE_BYTES = 64 << 20
RELEASE_SECONDS = 10.0

Mallopt = Callable[[int, int], int]


def tune_for_bulk_io(
    environ: Mapping[str, str] | None = None, mallopt: Mallopt | None = None
) -> bool:
    """Apply the settings above; True when they were applied.

    False (and nothing changed) off glibc, or when the user tuned malloc through the
    environment. ``mallopt`` is injectable for tests.
    """
    environ = os.environ if environ is None else environ
    if any(name in environ for name in _USER_SETTINGS):
        return False
    if mallopt is None:
        mallopt = _glibc_mallopt()
        if mallopt is None:
            return False
    # mallopt returns 1 on success, 0 on error.
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )


def _glibc_mallopt() -> Mallopt | None:
    if platform.libc_ver()[0] != "glibc":
        return None  # musl has mallopt too, but as a stub; other platforms have none
    try:
        libc = ctypes.CDLL("libc.so.6")
        function = libc.mallopt
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


class _MallInfo2(ctypes.Structure):
    # struct mallinfo2 from glibc's malloc.h (glibc 2.33+): every field a size_t.
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena", "ordblks", "smblks", "hblks", "hblkhd",
            "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost",
        )
    ]  # fmt: skip


def free_heap_bytes() -> int | None:
    """Bytes in free heap blocks across arenas (glibc's ``fordblks``); None off glibc 2.33+."""
    libc = _glibc()
    function = getattr(libc, "mallinfo2", None) if libc is not None else None
    if function is None:
        return None
    function.argtypes = ()
    function.restype = _MallInfo2
    return int(function().fordblks)


def release_free_heap(threshold: int = RELEASE_FREE_BYTES) -> bool:
    """``malloc_trim(0)`` when more than ``threshold`` bytes of the heap are free; True if run."""
    free = free_heap_bytes()
    libc = _glibc()
    if free is None or free <= threshold or libc is None:
        return False
    libc.malloc_trim.argtypes = (ctypes.c_size_t,)
    libc.malloc_trim.restype = ctypes.c_int
    libc.malloc_trim(0)
    return True


def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None
