"""Rows, targets and the markdown table of scripts/bench.py.

A row holds mitmlite's figure, optionally mitmdump's from the same run, and a target: either an
absolute bound (``>= 300 MiB/s``) or a bound relative to mitmdump (``>= 3x``). A relative target
without a mitmdump figure is judged against the reference figure the issue quotes for mitmdump,
and the table says so. A failed measurement is a string (``failed: ...``) and never meets a target.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

Value = float | str  # a measurement, or the reason it failed
Op = Literal[">=", "<=", "<"]


@dataclass(frozen=True, slots=True)
class Target:
    """A bound on mitmlite's figure; ``relative`` bounds are multiples of mitmdump's figure."""

    op: Op
    bound: float
    relative: bool = False
    reference: float | None = None  # mitmdump's figure as quoted in the issue, for relative bounds
    against: str = "mitmdump"  # what the second column holds, for the target's text

    def limit(self, theirs: Value | None) -> tuple[float, bool] | None:
        """The absolute limit, and whether it came from the reference; None when unknown."""
        if not self.relative:
            return self.bound, False
        if isinstance(theirs, float):
            return self.bound * theirs, False
        if self.reference is not None:
            return self.bound * self.reference, True
        return None

    def holds(self, ours: float, limit: float) -> bool:
        if self.op == ">=":
            return ours >= limit
        if self.op == "<=":
            return ours <= limit
        return ours < limit

    def text(self, unit: str) -> str:
        if self.relative:
            return f"{self.op} {self.bound:g}x {self.against}"
        return f"{self.op} {number(self.bound)} {unit}"


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table."""

    workload: str
    unit: str
    ours: Value
    theirs: Value | None = None
    target: Target | None = None


def number(value: float) -> str:
    """Three significant figures or more, thousands separated: 2,100; 87.4; 0.430; 0.00123."""
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:,.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.3g}"


def cell(value: Value | None, unit: str) -> str:
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    return f"{number(value)} {unit}"


def ratio(ours: Value, theirs: Value | None) -> str:
    if isinstance(ours, float) and isinstance(theirs, float) and theirs != 0:
        return f"{number(ours / theirs)}x"
    return "—"


def verdict(row: Row) -> str:
    """``yes`` / ``NO`` (``... vs issue ref`` when judged on the issue's mitmdump figure)."""
    if row.target is None:
        return "—"
    if isinstance(row.ours, str):
        return "NO"
    limit = row.target.limit(row.theirs)
    if limit is None:
        return "n/a"
    bound, from_reference = limit
    answer = "yes" if row.target.holds(row.ours, bound) else "NO"
    return f"{answer} (vs issue ref)" if from_reference else answer


def render_row(row: Row) -> str:
    target = row.target.text(row.unit) if row.target is not None else "—"
    cells = [
        row.workload,
        cell(row.ours, row.unit),
        cell(row.theirs, row.unit),
        ratio(row.ours, row.theirs),
        target,
        verdict(row),
    ]
    return "| " + " | ".join(text.replace("|", "/") for text in cells) + " |"


def render_table(rows: list[Row], ours: str = "mitmlite", theirs: str = "mitmdump") -> str:
    """The markdown table: | workload | mitmlite | mitmdump | ratio | target | met? |."""
    lines = [
        f"| workload | {ours} | {theirs} | ratio | target | met? |",
        "|---|---:|---:|---:|---|---|",
    ]
    lines += [render_row(row) for row in rows]
    return "\n".join(lines)
