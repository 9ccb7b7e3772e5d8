"""Shared test configuration: in CI (MITMLITE_STRICT_SKIPS=1) any skipped test fails the run."""

from __future__ import annotations

import os

import pytest

STRICT_SKIPS = os.environ.get("MITMLITE_STRICT_SKIPS") == "1"


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """A skip means a check did not run: CI must not report that as a pass."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if STRICT_SKIPS and skipped and exitstatus == 0:
        if reporter is not None:
            reporter.write_line(
                f"MITMLITE_STRICT_SKIPS=1: {len(skipped)} skipped test(s) count as failures",
                red=True,
            )
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
