"""What `pip install .` gives: the `mitmlite` command, `python -m mitmlite`, py.typed, deps."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> zipfile.ZipFile:
    out = tmp_path_factory.mktemp("wheel")
    # Build from a copy: setuptools leaves build/ and *.egg-info in the tree it builds, and a
    # stale build/lib could ship modules that no longer exist.
    source = tmp_path_factory.mktemp("source") / "mitmlite"
    shutil.copytree(ROOT, source, ignore=_not_sources)
    # With build isolation, as `pip install .` does: the build backend comes from the index
    # (pyproject's build-system), not from whatever this venv happens to hold.
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(source)],
        check=True, capture_output=True,
    )  # fmt: skip
    (path,) = out.glob("mitmlite-*.whl")
    return zipfile.ZipFile(path)


_SKIPPED = shutil.ignore_patterns(
    ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache", ".git"
)


def _not_sources(directory: str, names: list[str]) -> set[str]:
    skipped = set(_SKIPPED(directory, names))
    if Path(directory) == ROOT:
        skipped.add("ca")  # the checkout's CA (key material), not the mitmlite.ca package
    return skipped


def test_wheel_ships_the_package_and_py_typed(wheel: zipfile.ZipFile) -> None:
    names = set(wheel.namelist())
    assert "mitmlite/py.typed" in names
    assert "mitmlite/__main__.py" in names
    assert "mitmlite/ca/authority.py" in names
    assert not any(name.startswith(("tests/", "scripts/", "ca/")) for name in names)


def test_wheel_declares_the_command_and_dependencies(wheel: zipfile.ZipFile) -> None:
    meta_dir = next(n.split("/")[0] for n in wheel.namelist() if ".dist-info/" in n)
    entry_points = wheel.read(f"{meta_dir}/entry_points.txt").decode()
    assert "mitmlite = mitmlite.cli:main" in entry_points
    metadata = wheel.read(f"{meta_dir}/METADATA").decode()
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    for dep in ("trio", "h11", "cryptography", "click", "brotli", "zstandard"):
        line = next((r for r in requires if r.split()[1].lower().startswith(dep)), None)
        assert line is not None, f"{dep} not declared"
        assert ">=" in line, f"{dep} has no lower bound: {line}"


def test_python_dash_m_runs_the_cli() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "mitmlite", "--version"], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("mitmlite, version ")
