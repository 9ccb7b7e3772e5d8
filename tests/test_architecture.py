"""DESIGN.md §3 made executable: import directions and what pure modules must not touch.

Reads ``mitmlite/**/*.py`` with ``ast`` (nothing is imported), so a violation anywhere, even an
import inside a function, fails here before it shapes the code around it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mitmlite"

# Pure modules: values or bytes in, values out or a typed error; no event loop, no sockets.
PURE = [
    "mitmlite/config.py",
    "mitmlite/errors.py",
    "mitmlite/http1.py",
    "mitmlite/flow.py",
    "mitmlite/messages.py",
    "mitmlite/onboarding.py",
    "mitmlite/encoding.py",
    "mitmlite/log.py",  # writes to a TextIO it is given, but imports no I/O framework
    "mitmlite/ca/names.py",
    "mitmlite/ca/authority.py",
    "mitmlite/ca/trust.py",
    "mitmlite/tls/clienthello.py",
    "mitmlite/tls/fingerprints.py",
]
IO_MODULES = frozenset({"trio", "socket", "ssl", "asyncio", "select", "selectors"})


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve_from(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if is_package else module.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imported_names(
    source: str, module: str = "mitmlite.x", *, is_package: bool = False
) -> set[str]:
    """Every module a source imports: top level, inside functions, relative, and dynamic."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve_from(node, module, is_package)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Call) and _is_dynamic_import(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                found.add(first.value)
    return found


def _is_dynamic_import(func: ast.expr) -> bool:
    if isinstance(func, ast.Name):
        return func.id == "__import__"
    return isinstance(func, ast.Attribute) and func.attr == "import_module"


def matches(name: str, banned: Iterable[str]) -> bool:
    return any(name == b or name.startswith(b + ".") for b in banned)


def forbidden_imports(
    source: str, banned: Iterable[str], module: str = "mitmlite.x", *, is_package: bool = False
) -> list[str]:
    """The imports in ``source`` that are ``banned`` modules or inside them, sorted."""
    banned = list(banned)
    names = imported_names(source, module, is_package=is_package)
    return sorted(name for name in names if matches(name, banned))


def uses_time_sleep(source: str) -> bool:
    """``time.sleep`` through any alias of ``time``, or ``from time import sleep``."""
    tree = ast.parse(source)
    aliases: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            aliases.update(a.asname or a.name for a in node.names if a.name == "time")
        elif (
            isinstance(node, ast.ImportFrom)
            and node.module == "time"
            and node.level == 0
            and any(a.name == "sleep" for a in node.names)
        ):
            return True
    return any(
        isinstance(node, ast.Attribute)
        and node.attr == "sleep"
        and isinstance(node.value, ast.Name)
        and node.value.id in aliases
        for node in ast.walk(tree)
    )


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def violations_of(path: Path, banned: Iterable[str]) -> list[str]:
    module = module_name(path)
    source = path.read_text(encoding="utf-8")
    return forbidden_imports(source, banned, module, is_package=path.name == "__init__.py")


MODULES = package_modules()


# --- the checker itself, on synthetic sources (the failing twins) ---------------------------------


@pytest.mark.parametrize(
    "source",
    [
        "import trio\n",
        "import trio.testing\n",
        "from trio import sleep\n",
        "import socket as s\n",
        "from ssl import SSLContext\n",
        "def f():\n    import asyncio\n",
        "mod = __import__('trio')\n",
        "import importlib\nm = importlib.import_module('socket')\n",
    ],
)
def test_checker_flags_io_imports(source: str) -> None:
    assert forbidden_imports(source, IO_MODULES)


@pytest.mark.parametrize(
    "source",
    [
        "import errno\n",
        "from dataclasses import dataclass\n",
        "import triomphe\n",  # a prefix is not the module
        "import sslkeylog\n",
        "from mitmlite.errors import ClientError\n",
        "x = 'import trio'\n",
    ],
)
def test_checker_passes_clean_sources(source: str) -> None:
    assert forbidden_imports(source, IO_MODULES) == []


def test_checker_resolves_relative_imports() -> None:
    source = "from ..cli import main\nfrom . import server\n"
    names = imported_names(source, "mitmlite.ca.files")
    assert "mitmlite.cli" in names
    assert "mitmlite.ca.server" in names
    assert forbidden_imports("from .server import run\n", ["mitmlite.server"], "mitmlite.cli")
    assert forbidden_imports("from . import server\n", ["mitmlite.server"], "mitmlite.relay")
    pkg = imported_names("from .names import x\n", "mitmlite.ca", is_package=True)
    assert "mitmlite.ca.names" in pkg


def test_checker_sees_from_package_import_module() -> None:
    assert forbidden_imports("from mitmlite import log\n", ["mitmlite.log"]) == ["mitmlite.log"]
    assert forbidden_imports("from mitmlite import logging_x\n", ["mitmlite.log"]) == []


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import time\ntime.sleep(1)\n", True),
        ("import time as t\nt.sleep(1)\n", True),
        ("from time import sleep\n", True),
        ("import time\nx = time.sleep\n", True),
        ("import time\ntime.monotonic()\n", False),
        ("import trio\nawait_me = trio.sleep(1)\n", False),
        ("from time import strftime\n", False),
    ],
)
def test_time_sleep_checker(source: str, expected: bool) -> None:
    assert uses_time_sleep(source) is expected


def test_checker_flags_a_real_io_module() -> None:
    # Twin of the pure-module test on real files: streams.py is I/O code and imports trio.
    assert "trio" in violations_of(PACKAGE / "streams.py", IO_MODULES)


def test_scan_sees_the_whole_package() -> None:
    for name in ["mitmlite", "mitmlite.cli", "mitmlite.relay", "mitmlite.ca.authority"]:
        assert name in MODULES
    assert "mitmlite.tls.contexts" in MODULES


# --- the rules ------------------------------------------------------------------------------------


@pytest.mark.parametrize("relpath", PURE)
def test_pure_module_imports_no_io(relpath: str) -> None:
    path = ROOT / relpath
    assert path.is_file(), f"{relpath} is listed as pure but does not exist: update PURE"
    assert violations_of(path, IO_MODULES) == []


@pytest.mark.parametrize("relpath", PURE)
def test_pure_module_imports_only_pure_mitmlite_modules(relpath: str) -> None:
    # "pure modules -> nothing in mitmlite but errors" (and each other, e.g. flow -> encoding).
    pure = {module_name(ROOT / p) for p in PURE}
    path = ROOT / relpath
    module = module_name(path)
    names = imported_names(path.read_text(encoding="utf-8"), module)
    internal = {n for n in names if matches(n, ["mitmlite"])}
    assert sorted(n for n in internal if n != "mitmlite" and not matches(n, pure)) == []


def test_pure_import_rule_flags_an_impure_import() -> None:
    # Twin: log.py importing the relay would break the one-way flow.
    names = imported_names("from mitmlite.relay import Relay\n", "mitmlite.log")
    pure = {module_name(ROOT / p) for p in PURE}
    assert sorted(n for n in names if not matches(n, pure)) == [
        "mitmlite.relay",
        "mitmlite.relay.Relay",
    ]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_nothing_imports_cli_or_server(module: str) -> None:
    banned = []
    if module not in {"mitmlite.cli", "mitmlite.__main__"}:
        banned.append("mitmlite.cli")
    if module != "mitmlite.cli":
        banned.append("mitmlite.server")
    if module in {"mitmlite.cli", "mitmlite.server"}:
        banned = [b for b in banned if b != module]
    assert violations_of(MODULES[module], banned) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_imports_asyncio(module: str) -> None:
    assert violations_of(MODULES[module], ["asyncio"]) == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_module_uses_time_sleep(module: str) -> None:
    assert not uses_time_sleep(MODULES[module].read_text(encoding="utf-8"))


def test_relay_does_not_import_the_sinks() -> None:
    # The relay hands flows to a FlowSink protocol; log and har implement it (DESIGN §3).
    assert violations_of(PACKAGE / "relay.py", ["mitmlite.log", "mitmlite.har"]) == []


def test_relay_does_import_what_it_should() -> None:
    # Twin: the same check sees the relay's real internal imports.
    assert violations_of(PACKAGE / "relay.py", ["mitmlite.streams", "mitmlite.upstream"])
