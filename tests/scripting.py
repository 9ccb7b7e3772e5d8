"""Shared by the script and hook tests: import isolation and writing scripts that look edited."""

from __future__ import annotations

import os
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def isolated_imports(tmp_path: Path) -> Iterator[None]:
    """Scripts and their helpers land in sys.modules; each test ends without them. (Only those:
    dropping a library module imported during the test would make a second copy of it later.)"""
    path = list(sys.path)
    yield
    for name, module in list(sys.modules.items()):
        filename = getattr(module, "__file__", None) or ""
        if name.startswith("mitmlite_script_") or filename.startswith(str(tmp_path.resolve())):
            del sys.modules[name]
    sys.path[:] = path


def write(path: Path, source: str) -> Path:
    """Write a script and move its mtime forward, so an edit is seen even on coarse clocks."""
    before = path.stat().st_mtime_ns if path.exists() else None
    path.write_text(textwrap.dedent(source))
    if before is not None:
        bumped = max(path.stat().st_mtime_ns, before) + 2_000_000_000
        os.utime(path, ns=(bumped, bumped))
    return path
