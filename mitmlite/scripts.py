"""Loading user hook scripts, and reloading them when they change on disk.

Owns importing each ``-s`` script under its own module name, finding its hook functions, noticing
edits to the script or to the helper modules beside it (a ``stat`` per file, before each flow), and
formatting user tracebacks without our own frames. Must not call hooks: ``hooks`` does that, and
is the only place user code runs after import. Not pure: imports code and stats files.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from types import CodeType, ModuleType
from typing import Any

from mitmlite.errors import ConfigError

HOOK_NAMES: tuple[str, ...] = (
    "requestheaders",
    "request",
    "responseheaders",
    "response",
    "error",
    "tls_clienthello",
    "load",
    "done",
)

# (mtime_ns, size) of a file, or None while it is missing. The size catches an edit made within
# the same mtime tick on file systems with coarse timestamps.
Stamp = tuple[int, int] | None
Hook = Callable[..., Any]

_PACKAGE_DIR = Path(__file__).resolve().parent
# Installed code is never a "helper": a script directory that contains a virtualenv must not make
# us stat, or re-import, every third-party module the script pulls in.
_INSTALLED = tuple(
    Path(p).resolve()
    for key in ("stdlib", "platstdlib", "purelib", "platlib")
    if (p := sysconfig.get_paths().get(key))
)


class ScriptError(ConfigError):
    """A script cannot be loaded; ``traceback`` holds the details for a verbose log."""

    def __init__(self, message: str, traceback: str = "") -> None:
        super().__init__(message)
        self.traceback = traceback


@dataclass(eq=False)
class LoadedScript:
    """One script as imported: its module and the stamps of every file it was built from."""

    path: Path
    name: str
    module: ModuleType
    stamps: dict[Path, Stamp] = field(default_factory=dict)
    helpers: dict[str, ModuleType] = field(default_factory=dict)


class _ScriptLoader(importlib.machinery.SourceFileLoader):
    """Compile the script from source every time: a ``.pyc`` is validated by mtime seconds and
    size only, so an edit within the same second could otherwise run stale code."""

    def get_code(self, fullname: str) -> CodeType:
        return compile(self.get_data(self.path), self.path, "exec", dont_inherit=True)


class Scripts:
    """The ``-s`` scripts, in command-line order."""

    def __init__(self, paths: Sequence[Path], report: Callable[[str], None]) -> None:
        self._paths = [Path(p) for p in paths]
        self._report = report
        self._loaded: list[LoadedScript] = []
        self._hooks: dict[str, list[tuple[LoadedScript, Hook]]] = {}
        self._files: frozenset[str] = frozenset()

    @property
    def scripts(self) -> list[LoadedScript]:
        return list(self._loaded)

    def load(self) -> None:
        """Import every script; the first that fails raises ScriptError (start-up exits 2)."""
        self._loaded = []
        for index, path in enumerate(self._paths):
            module_name = f"mitmlite_script_{index}_{_identifier(path.stem)}"
            try:
                self._loaded.append(self._import(path, module_name))
            except _LoadFailure as failure:
                message = failure.reason
                if not failure.plain:
                    message = f"cannot load script {path.name}: {message}"
                raise ScriptError(message, failure.traceback) from failure.__cause__
        self._index()

    def reload_if_changed(self) -> bool:
        """Re-import each script whose file or helper changed; True if any was reloaded.

        Costs one ``stat`` per stamped file when nothing changed. A reload that fails keeps the
        previous module (and its helpers) and is reported once, until the files change again.
        """
        reloaded = False
        fresh: set[str] = set()  # helpers already re-imported in this round (shared by scripts)
        for position, script in enumerate(self._loaded):
            current = {path: _stamp(path) for path in script.stamps}
            if current == script.stamps:
                continue
            new = self._reload(script, current, fresh)
            if new is not None:
                self._loaded[position] = new
                fresh |= new.helpers.keys()
                reloaded = True
        if reloaded:
            self._index()
        return reloaded

    def hooks(self, name: str) -> list[tuple[LoadedScript, Hook]]:
        """The hooks called ``name``, in script order: each script's top-level function, then
        the methods of the objects in its ``addons`` list (mitmproxy's class-based form)."""
        return self._hooks.get(name, [])

    def defines(self, name: str) -> bool:
        return name in self._hooks

    def user_files(self) -> frozenset[str]:
        """Every script and helper file, as tracebacks name them."""
        return self._files

    def _reload(
        self, old: LoadedScript, current: dict[Path, Stamp], fresh: set[str]
    ) -> LoadedScript | None:
        module_name = old.module.__name__
        dropped = {name: module for name, module in old.helpers.items() if name not in fresh}
        for name in dropped:
            sys.modules.pop(name, None)
        importlib.invalidate_caches()  # finders cache directory listings: see new helper files
        try:
            return self._import(old.path, module_name)
        except _LoadFailure as failure:
            sys.modules[module_name] = old.module
            sys.modules.update(dropped)
            # Remember what we tried, so the failure is reported once, not before every flow.
            old.stamps = current | failure.stamps
            self._report(
                f"reload of {old.name} failed, keeping the previous version: {failure.reason}\n"
                + failure.traceback
            )
            return None

    def _import(self, path: Path, module_name: str) -> LoadedScript:
        """Execute the script as a fresh module; raises _LoadFailure."""
        resolved = path.resolve()
        directory = resolved.parent
        if not resolved.exists():
            raise _LoadFailure(f"script {path} does not exist", {resolved: None}, plain=True)
        if not resolved.is_file():
            stamps = {resolved: _stamp(resolved)}
            raise _LoadFailure(f"script {path} is not a file", stamps, plain=True)
        loader = _ScriptLoader(module_name, str(resolved))
        spec = importlib.util.spec_from_file_location(module_name, resolved, loader=loader)
        assert spec is not None  # noqa: S101 -- always a spec when a loader is given
        module = importlib.util.module_from_spec(spec)
        before = set(sys.modules)
        previous = sys.modules.get(module_name)
        # Registered while it runs, as a real import is: dataclasses and pickle look it up.
        sys.modules[module_name] = module
        try:
            with _importing_from(directory):
                loader.exec_module(module)
        except Exception as exc:
            # Leave sys.modules as it was: no half-imported helper, the previous script module.
            appeared = _helpers(directory, set(sys.modules) - before)
            for name in appeared:
                del sys.modules[name]
            if previous is None:
                sys.modules.pop(module_name, None)
            else:
                sys.modules[module_name] = previous
            raise _failure(exc, resolved, appeared.values()) from exc
        # A helper another script imported first is already loaded: it is this one's too.
        shared = {name for s in self._loaded for name in s.helpers if name in sys.modules}
        helpers = _helpers(directory, (set(sys.modules) - before) | shared)
        stamps = {resolved: _stamp(resolved)} | _stamps(helpers.values())
        return LoadedScript(resolved, path.name, module, stamps, helpers)

    def _index(self) -> None:
        hooks: dict[str, list[tuple[LoadedScript, Hook]]] = {}
        for script in self._loaded:
            namespace = script.module.__dict__
            addons = namespace.get("addons")
            holders = [namespace]
            if isinstance(addons, list | tuple):
                holders += [_attributes(addon) for addon in addons]
            for holder in holders:
                for name in HOOK_NAMES:
                    hook = holder.get(name)
                    # A class of that name is not a hook (calling it would build an object).
                    if callable(hook) and not isinstance(hook, type):
                        hooks.setdefault(name, []).append((script, hook))
        self._hooks = hooks
        self._files = frozenset(str(p) for s in self._loaded for p in s.stamps)


def _attributes(addon: object) -> dict[str, Any]:
    """An addon object's hook methods by name, bound to it."""
    return {name: getattr(addon, name) for name in HOOK_NAMES if hasattr(addon, name)}


def _failure(exc: Exception, script: Path, appeared: Collection[ModuleType]) -> _LoadFailure:
    # The files the failure went through are watched too, so fixing a helper that failed to
    # import (and so never reached sys.modules) triggers the next attempt.
    where = _user_frames(exc, script.parent)
    stamps = {script: _stamp(script)} | _stamps(appeared)
    stamps |= {file: _stamp(file) for file, _ in where}
    files = {str(file) for file in stamps}
    return _LoadFailure(_reason(exc, where), stamps, format_user_traceback(exc, files))


class _LoadFailure(Exception):
    def __init__(
        self, reason: str, stamps: dict[Path, Stamp], traceback: str = "", plain: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.stamps = stamps
        self.traceback = traceback
        self.plain = plain  # the reason is the whole message ("script x.py does not exist")


def format_user_traceback(exc: BaseException, user_files: Collection[str]) -> str:
    """The traceback of ``exc`` starting at the first frame in a user file, without ours."""
    report = traceback.TracebackException.from_exception(exc)
    _trim(report, user_files, set())
    return "".join(report.format()).rstrip("\n")


def _trim(
    report: traceback.TracebackException, user_files: Collection[str], seen: set[int]
) -> None:
    if id(report) in seen:
        return
    seen.add(id(report))
    frames = list(report.stack)
    start = next((i for i, f in enumerate(frames) if f.filename in user_files), None)
    if start is None:  # e.g. a hook imported from a library: drop only our machinery
        start = next((i for i, f in enumerate(frames) if not _machinery(f.filename)), len(frames))
    report.stack = traceback.StackSummary.from_list(frames[start:])
    for chained in (report.__cause__, report.__context__):
        if chained is not None:
            _trim(chained, user_files, seen)


def _machinery(filename: str) -> bool:
    """Frames of mitmlite, trio, outcome and the import system, which only call user code."""
    if filename.startswith("<frozen importlib"):
        return True
    path = Path(filename)
    return path.is_relative_to(_PACKAGE_DIR) or any(
        part in ("trio", "outcome", "importlib") for part in path.parts[-4:-1]
    )


def _reason(exc: BaseException, where: list[tuple[Path, int | None]]) -> str:
    """One line: the exception, and where in the user's files it was raised."""
    reason = describe(exc)
    if isinstance(exc, SyntaxError) or not where:
        return reason  # a SyntaxError's message already names the file and line
    path, line = where[-1]
    return f"{reason} ({path.name}, line {line})"


def _user_frames(exc: BaseException, directory: Path) -> list[tuple[Path, int | None]]:
    """The frames of ``exc`` in ``directory``'s tree, innermost last (a SyntaxError's file too)."""
    frames = [(f.filename, f.lineno) for f in traceback.extract_tb(exc.__traceback__)]
    if isinstance(exc, SyntaxError) and exc.filename:
        frames.append((exc.filename, exc.lineno))
    found = [(Path(name).resolve(), line) for name, line in frames if not name.startswith("<")]
    return [(path, line) for path, line in found if _in_tree(path, directory)]


def describe(exc: BaseException) -> str:
    """``ExcType: message`` on one line."""
    message = " ".join(str(exc).splitlines()).strip()
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _helpers(directory: Path, names: set[str]) -> dict[str, ModuleType]:
    """The modules among ``names`` whose source is in ``directory``'s tree, installed code aside."""
    found: dict[str, ModuleType] = {}
    for name in sorted(names):
        module = sys.modules.get(name)
        filename = getattr(module, "__file__", None)
        if module is None or not filename or name.startswith("mitmlite_script_"):
            continue
        if _in_tree(Path(filename).resolve(), directory):
            found[name] = module
    return found


def _in_tree(path: Path, directory: Path) -> bool:
    installed = any(path.is_relative_to(p) for p in _INSTALLED) or "site-packages" in path.parts
    return path.is_relative_to(directory) and not installed


def _stamps(modules: Collection[ModuleType]) -> dict[Path, Stamp]:
    paths = (Path(m.__file__).resolve() for m in modules if m.__file__)
    return {path: _stamp(path) for path in paths}


def _stamp(path: Path) -> Stamp:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size)


@contextmanager
def _importing_from(directory: Path) -> Iterator[None]:
    """``import helper`` finds a helper.py beside the script while the script runs; no
    ``__pycache__`` is written into the user's directory (and none can go stale)."""
    entry = str(directory)
    sys.path.insert(0, entry)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        yield
    finally:
        sys.dont_write_bytecode = dont_write
        with suppress(ValueError):  # the script removed it itself
            sys.path.remove(entry)


def _identifier(stem: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stem)


__all__ = [
    "HOOK_NAMES",
    "LoadedScript",
    "ScriptError",
    "Scripts",
    "describe",
    "format_user_traceback",
]
