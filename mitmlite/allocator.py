"""glibc malloc settings for a process that relays bodies in buffers of a few hundred KiB.

Bodies move through the relay in pieces of up to ``streams.TRANSPORT_READ`` (512 KiB): the
socket read, the TLS plaintext, h11's receive buffer, the encrypted output. glibc serves blocks
from 128 KiB up with mmap (its threshold then adapts, but only upwards and only to the size of a
freed block) and gives the top of its heap back to the kernel once 128 KiB of it is free. With
such blocks allocated and freed for every read, both happen all the time, and each time the
kernel maps, zeroes and faults in fresh pages: measured, h11 alone went from 0.11 to 1.5 ms of
CPU per MiB, and the proxy's 100 MiB download from about 350 to 200 MiB/s (issue 3).

Serving blocks up to 4 MiB from the heap and keeping up to 16 MiB of free heap top removes
that churn. The cost is that freed memory up to that amount may stay in the process's RSS
after a burst instead of going back to the kernel at once. Whoever set glibc's own knobs
(``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``, ``GLIBC_TUNABLES``) keeps them.
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
