"""Loading hook scripts: import errors, hook discovery, reload on change of scripts and helpers."""

from __future__ import annotations

import importlib.util
import os
import py_compile
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from mitmlite.errors import ConfigError
from mitmlite.scripts import HOOK_NAMES, ScriptError, Scripts, format_user_traceback
from tests.scripting import isolated_imports, write  # noqa: F401 - autouse fixture


def load(*paths: Path) -> tuple[Scripts, list[str]]:
    reports: list[str] = []
    scripts = Scripts(paths, reports.append)
    scripts.load()
    return scripts, reports


def counting(tmp_path: Path, body: str) -> str:
    """A script body that appends one line to imports.log each time it is executed."""
    log = tmp_path / "imports.log"
    header = f"with open({str(log)!r}, 'a') as _f:\n    _f.write('x')\n"
    return header + textwrap.dedent(body)


def imports(tmp_path: Path) -> int:
    log = tmp_path / "imports.log"
    return len(log.read_text()) if log.exists() else 0


def flow(path: str = "/") -> SimpleNamespace:
    return SimpleNamespace(request=SimpleNamespace(path=path))


# --- loading ---------------------------------------------------------------------------------


def test_load_finds_top_level_hooks(tmp_path: Path) -> None:
    script = write(
        tmp_path / "rewrite.py",
        """
        def request(flow):
            flow.request.path = "/rewritten"

        async def response(flow):
            pass
        """,
    )
    scripts, reports = load(script)
    assert scripts.defines("request")
    assert scripts.defines("response")
    [(loaded, hook)] = scripts.hooks("request")
    assert loaded.name == "rewrite.py"
    assert loaded.path == script.resolve()
    assert script.resolve() in loaded.stamps
    f = flow()
    hook(f)
    assert f.request.path == "/rewritten"
    assert reports == []


def test_load_ignores_what_is_not_a_top_level_hook(tmp_path: Path) -> None:
    script = write(
        tmp_path / "nohooks.py",
        """
        requestheaders = "not callable"

        class response:
            pass

        def Request(flow):
            pass

        def helper():
            def error(flow):
                pass
            return error
        """,
    )
    scripts, _ = load(script)
    for name in HOOK_NAMES:
        assert not scripts.defines(name)
        assert scripts.hooks(name) == []


def test_hooks_come_in_script_order(tmp_path: Path) -> None:
    first = write(tmp_path / "first.py", "def request(flow): flow.request.path += '/first'\n")
    second = write(tmp_path / "second.py", "def request(flow): flow.request.path += '/second'\n")
    none = write(tmp_path / "none.py", "def response(flow): pass\n")
    scripts, _ = load(second, none, first)
    assert [s.name for s, _ in scripts.hooks("request")] == ["second.py", "first.py"]
    assert [s.name for s, _ in scripts.hooks("response")] == ["none.py"]
    f = flow("")
    for _, hook in scripts.hooks("request"):
        hook(f)
    assert f.request.path == "/second/first"


def test_class_based_addons_are_hooks_too(tmp_path: Path) -> None:
    # mitmproxy's most common form: a script that only has `addons = [...]` must not do nothing.
    script = write(
        tmp_path / "addon.py",
        """
        class AddHeader:
            def __init__(self):
                self.count = 0

            def request(self, flow):
                self.count += 1
                flow.request.count = self.count

        def request(flow):
            flow.request.path += "/function"

        addons = [AddHeader()]
        """,
    )
    scripts, _ = load(script)
    hooks = [hook for _, hook in scripts.hooks("request")]
    assert len(hooks) == 2  # the module's function first, then the addon's method
    f = flow("")
    for _ in range(2):
        for hook in hooks:
            hook(f)
    assert f.request.count == 2  # one object, its state kept between calls
    assert f.request.path == "/function/function"
    assert not scripts.defines("response")


def test_an_addons_value_that_is_not_a_list_adds_no_hooks(tmp_path: Path) -> None:
    script = write(tmp_path / "odd.py", "addons = 'request'\n")
    scripts, _ = load(script)
    assert not scripts.defines("request")


def test_two_scripts_with_one_file_name_do_not_collide(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = write(tmp_path / "a" / "s.py", "def request(flow): flow.request.path = 'a'\n")
    b = write(tmp_path / "b" / "s.py", "def request(flow): flow.request.path = 'b'\n")
    scripts, _ = load(a, b)
    results = []
    for _, hook in scripts.hooks("request"):
        f = flow()
        hook(f)
        results.append(f.request.path)
    assert results == ["a", "b"]


def test_a_script_imports_a_helper_beside_it(tmp_path: Path) -> None:
    write(tmp_path / "helper_beside.py", "PATH = '/from-helper'\n")
    script = write(
        tmp_path / "uses_helper.py",
        """
        import helper_beside

        def request(flow):
            flow.request.path = helper_beside.PATH
        """,
    )
    scripts, _ = load(script)
    f = flow()
    scripts.hooks("request")[0][1](f)
    assert f.request.path == "/from-helper"
    [loaded] = scripts.scripts
    assert (tmp_path / "helper_beside.py").resolve() in loaded.stamps
    # The script's directory is on sys.path only while the script runs.
    assert str(tmp_path.resolve()) not in sys.path
    # No __pycache__ is left in the user's directory (a stale .pyc could hide an edit).
    assert not (tmp_path / "__pycache__").exists()


def test_a_helper_outside_the_script_tree_is_not_stamped(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "here").mkdir()
    write(tmp_path / "lib" / "helper_elsewhere.py", "X = 1\n")
    script = write(
        tmp_path / "here" / "s.py",
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path / "lib")!r})
        import helper_elsewhere
        sys.path.pop(0)
        """,
    )
    scripts, _ = load(script)
    assert list(scripts.scripts[0].stamps) == [script.resolve()]


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("x = 1\ndef request(flow)\n    pass\n", "SyntaxError: expected ':' (bad.py, line 2)"),
        ("import nonexistent_module_xyz\n", "ModuleNotFoundError: No module named"),
        ("x = 1\n\nraise RuntimeError('boom')\n", "RuntimeError: boom (bad.py, line 3)"),
    ],
    ids=["syntax", "import", "raises"],
)
def test_a_script_that_fails_to_load_is_one_clear_error(
    tmp_path: Path, source: str, reason: str
) -> None:
    script = write(tmp_path / "bad.py", source)
    with pytest.raises(ScriptError) as caught:
        load(script)
    message = str(caught.value)
    assert message.startswith(f"cannot load script bad.py: {reason}")
    assert "\n" not in message
    assert "Traceback" not in message
    assert isinstance(caught.value, ConfigError)  # the command line exits with 2
    assert "bad.py" in caught.value.traceback
    # A failed import leaves nothing behind.
    assert not any(name.startswith("mitmlite_script_") for name in sys.modules)


def test_a_failing_import_names_the_script_line(tmp_path: Path) -> None:
    script = write(tmp_path / "bad.py", "\n\nimport nonexistent_module_xyz\n")
    with pytest.raises(ScriptError, match=r"\(bad\.py, line 3\)$"):
        load(script)


def test_the_failing_script_is_named_among_several(tmp_path: Path) -> None:
    good = write(tmp_path / "good.py", "def request(flow): pass\n")
    bad = write(tmp_path / "worse.py", "1 / 0\n")
    with pytest.raises(ScriptError, match=r"^cannot load script worse\.py: ZeroDivisionError"):
        load(good, bad)


def test_a_missing_script_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.py"
    with pytest.raises(ScriptError) as caught:
        load(missing)
    assert str(caught.value) == f"script {missing} does not exist"
    with pytest.raises(ScriptError, match=r"^script .* is not a file$"):
        load(tmp_path)


# --- reloading -------------------------------------------------------------------------------


def test_an_unchanged_script_is_not_reimported(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", counting(tmp_path, "def request(flow): pass\n"))
    scripts, reports = load(script)
    assert imports(tmp_path) == 1
    assert scripts.reload_if_changed() is False
    assert scripts.reload_if_changed() is False
    assert imports(tmp_path) == 1
    assert reports == []


def test_an_edited_script_is_reloaded(tmp_path: Path) -> None:
    script = write(
        tmp_path / "s.py", counting(tmp_path, "def request(flow): flow.request.path = 'v1'\n")
    )
    scripts, reports = load(script)
    write(script, counting(tmp_path, "def request(flow): flow.request.path = 'v2'\n"))
    assert scripts.reload_if_changed() is True
    assert imports(tmp_path) == 2
    f = flow()
    scripts.hooks("request")[0][1](f)
    assert f.request.path == "v2"
    assert scripts.reload_if_changed() is False
    assert reports == []


def test_a_reload_can_add_and_remove_hooks(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow): pass\n")
    scripts, _ = load(script)
    write(script, "def response(flow): pass\n")
    assert scripts.reload_if_changed()
    assert not scripts.defines("request")
    assert scripts.defines("response")


def test_a_broken_edit_keeps_the_previous_version(tmp_path: Path) -> None:
    script = write(
        tmp_path / "s.py", counting(tmp_path, "def request(flow): flow.request.path = 'v1'\n")
    )
    scripts, reports = load(script)
    old_module = scripts.scripts[0].module
    write(script, counting(tmp_path, "def request(flow):\n    1 / 0 +\n"))
    assert scripts.reload_if_changed() is False
    [report] = reports
    first, *details = report.splitlines()
    assert first.startswith("reload of s.py failed, keeping the previous version: SyntaxError")
    assert "s.py" in "\n".join(details)
    f = flow()
    scripts.hooks("request")[0][1](f)
    assert f.request.path == "v1"
    assert sys.modules[old_module.__name__] is old_module
    # Reported once, not before every flow, until the file changes again.
    assert scripts.reload_if_changed() is False
    assert len(reports) == 1
    write(script, counting(tmp_path, "def request(flow): flow.request.path = 'v3'\n"))
    assert scripts.reload_if_changed() is True
    scripts.hooks("request")[0][1](f)
    assert f.request.path == "v3"


def test_a_reload_that_raises_names_the_line(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow): pass\n")
    scripts, reports = load(script)
    write(script, "def request(flow): pass\n\nraise ValueError('no')\n")
    assert not scripts.reload_if_changed()
    [report] = reports
    assert report.splitlines()[0] == (
        "reload of s.py failed, keeping the previous version: ValueError: no (s.py, line 3)"
    )
    assert "Traceback (most recent call last):" in report
    assert 'raise ValueError("no")' in report or "raise ValueError('no')" in report
    assert "importlib" not in report
    assert "scripts.py" not in report


def test_a_deleted_script_keeps_the_previous_version(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow): flow.request.path = 'v1'\n")
    scripts, reports = load(script)
    script.unlink()
    assert not scripts.reload_if_changed()
    [report] = reports
    assert "reload of s.py failed, keeping the previous version: script" in report
    assert "does not exist" in report
    assert scripts.defines("request")
    assert not scripts.reload_if_changed()
    assert len(reports) == 1


def test_an_edited_helper_reloads_the_script_and_the_helper(tmp_path: Path) -> None:
    helper = write(tmp_path / "helper_edit_ok.py", "PATH = '/v1'\n")
    script = write(
        tmp_path / "s.py",
        counting(
            tmp_path,
            """
            import helper_edit_ok

            def request(flow):
                flow.request.path = helper_edit_ok.PATH
            """,
        ),
    )
    scripts, reports = load(script)
    assert scripts.reload_if_changed() is False
    write(helper, "PATH = '/v2'\n")
    assert scripts.reload_if_changed() is True
    assert imports(tmp_path) == 2
    f = flow()
    scripts.hooks("request")[0][1](f)
    assert f.request.path == "/v2"
    assert sys.modules["helper_edit_ok"].PATH == "/v2"
    assert reports == []


def test_a_broken_helper_edit_keeps_the_previous_helper(tmp_path: Path) -> None:
    helper = write(tmp_path / "helper_edit_bad.py", "PATH = '/v1'\n")
    script = write(
        tmp_path / "s.py",
        """
        import helper_edit_bad

        def request(flow):
            flow.request.path = helper_edit_bad.PATH
        """,
    )
    scripts, reports = load(script)
    old_helper = sys.modules["helper_edit_bad"]
    write(helper, "PATH = \n")
    assert scripts.reload_if_changed() is False
    [report] = reports
    assert report.startswith("reload of s.py failed, keeping the previous version: SyntaxError")
    assert sys.modules["helper_edit_bad"] is old_helper
    f = flow()
    scripts.hooks("request")[0][1](f)
    assert f.request.path == "/v1"


def test_a_new_helper_is_found_on_reload(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow): pass\n")
    scripts, _ = load(script)
    helper = write(tmp_path / "helper_new_later.py", "PATH = '/new'\n")
    write(script, "import helper_new_later\ndef request(flow): pass\n")
    assert scripts.reload_if_changed()
    assert helper.resolve() in scripts.scripts[0].stamps


def test_scripts_sharing_a_helper_both_reload_with_it(tmp_path: Path) -> None:
    helper = write(tmp_path / "helper_shared.py", "PATH = '/v1'\n")
    source = "import helper_shared\ndef request(flow): flow.request.path = helper_shared.PATH\n"
    a = write(tmp_path / "a.py", source)
    b = write(tmp_path / "b.py", source)
    scripts, _ = load(a, b)
    write(helper, "PATH = '/v2'\n")
    assert scripts.reload_if_changed()
    paths = []
    for _, hook in scripts.hooks("request"):
        f = flow()
        hook(f)
        paths.append(f.request.path)
    assert paths == ["/v2", "/v2"]
    # Both see the one new helper module, not a copy each.
    modules = [s.module.helper_shared for s in scripts.scripts]
    assert modules[0] is modules[1] is sys.modules["helper_shared"]


# --- tracebacks ------------------------------------------------------------------------------


def test_a_user_traceback_starts_at_the_user_frame(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow):\n    return {}['missing']\n")
    scripts, _ = load(script)
    hook = scripts.hooks("request")[0][1]
    try:
        hook(flow())
    except KeyError as exc:
        text = format_user_traceback(exc, scripts.user_files())
        untrimmed = format_user_traceback(exc, ())
    assert text.startswith("Traceback (most recent call last):")
    assert f'File "{script.resolve()}", line 2, in request' in text
    assert "test_scripts.py" not in text
    assert text.endswith("KeyError: 'missing'")
    # Without knowing the user's files, only our machinery is dropped: the test's frame stays.
    assert "test_scripts.py" in untrimmed


def test_a_helper_that_fails_to_import_is_watched_until_fixed(tmp_path: Path) -> None:
    script = write(tmp_path / "s.py", "def request(flow): flow.request.path = '/v1'\n")
    scripts, reports = load(script)
    helper = write(tmp_path / "helper_fix_later.py", "PATH = 1 / 0\n")
    write(script, "import helper_fix_later\ndef request(flow): flow.request.path = '/v2'\n")
    assert not scripts.reload_if_changed()
    [report] = reports
    assert report.splitlines()[0] == (
        "reload of s.py failed, keeping the previous version: "
        "ZeroDivisionError: division by zero (helper_fix_later.py, line 1)"
    )
    assert not scripts.reload_if_changed()
    write(helper, "PATH = '/fixed'\n")  # only the helper changes
    assert scripts.reload_if_changed()
    f = flow()
    scripts.hooks("request")[0][1](f)
    assert f.request.path == "/v2"


def test_a_stale_bytecode_cache_is_never_used(tmp_path: Path) -> None:
    """A .pyc is checked by source mtime seconds and size: an edit within one second that keeps
    the size would run the old code if scripts were loaded through it."""
    script = write(tmp_path / "s.py", "def request(flow): flow.request.path = '/v1'\n")
    stat = script.stat()
    py_compile.compile(str(script), cfile=importlib.util.cache_from_source(str(script)))
    script.write_text("def request(flow): flow.request.path = '/v2'\n")
    os.utime(script, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    scripts, _ = load(script)
    f = flow()
    scripts.hooks("request")[0][1](f)
    assert f.request.path == "/v2"
