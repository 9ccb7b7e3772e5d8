"""Smoke tests for scripts/bench.py: the CA measurement runs and the table judges targets right.

Nothing here is timed: the targets live in the benchmark, never in tests.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))

from bench_ca import measure_ca
from bench_client import parse_head
from bench_proxy import Outcome
from bench_table import Row, Target, render_row, render_table


def test_ca_rows_measure_positive_finite_figures() -> None:
    result = measure_ca(new_hosts=3, cached_batches=3, row_hosts=4)
    figures = [result.new_host_median, result.cached_median, result.row_total, result.row_median]
    assert all(math.isfinite(value) and value > 0 for value in figures)
    assert result.row_hosts == 4


def verdict_of(line: str) -> str:
    return line.strip("|").split("|")[-1].strip()


def test_absolute_target_met_and_missed() -> None:
    target = Target("<=", 2.0)
    met = render_row(Row("mint", "ms", 1.5, target=target))
    missed = render_row(Row("mint", "ms", 2.5, target=target))
    assert verdict_of(met) == "yes"
    assert verdict_of(missed) == "NO"
    assert "1.50 ms" in met
    assert "<= 2.00 ms" in met


def test_relative_target_uses_the_mitmdump_figure_of_the_same_run() -> None:
    target = Target(">=", 3.0, relative=True, reference=500.0)
    met = render_row(Row("keep-alive", "req/s", 1600.0, 500.0, target))
    missed = render_row(Row("keep-alive", "req/s", 1400.0, 500.0, target))
    assert verdict_of(met) == "yes"
    assert "3.20x" in met
    assert verdict_of(missed) == "NO"


def test_relative_target_without_a_comparison_falls_back_to_the_issue_reference() -> None:
    target = Target(">=", 3.0, relative=True, reference=500.0)
    assert verdict_of(render_row(Row("k", "req/s", 1600.0, None, target))) == "yes (vs issue ref)"
    assert verdict_of(render_row(Row("k", "req/s", 1400.0, None, target))) == "NO (vs issue ref)"


def test_a_failed_measurement_never_meets_its_target() -> None:
    failed = "failed: timed out after 60 s"
    line = render_row(Row("download", "MiB/s", failed, None, Target(">=", 1.0)))
    assert "failed: timed out after 60 s" in line
    assert verdict_of(line) == "NO"


def test_table_has_the_header_and_one_line_per_row() -> None:
    table = render_table([Row("a", "ms", 1.0), Row("b", "ms", 2.0)])
    lines = table.splitlines()
    assert lines[0] == "| workload | mitmlite | mitmdump | ratio | target | met? |"
    assert len(lines) == 4


def test_client_parses_a_response_head() -> None:
    status, headers = parse_head(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nX-A: b")
    assert status == 204
    assert headers == {b"content-length": b"0", b"x-a": b"b"}


def hook_results(empty_per_s: float) -> dict[tuple[str, str], list[Outcome]]:
    return {
        ("hooks", "mitmlite"): [{"per_s": 1000.0}],
        ("hooks", "mitmlite -s empty.py"): [{"per_s": empty_per_s}],
        ("hooks", "mitmlite -s noop.py"): [{"per_s": 800.0}],
    }


def test_hook_rows_empty_script_below_target_is_a_miss() -> None:
    from bench import Results, hook_rows

    rows = hook_rows(Results(hook_results(empty_per_s=850.0)))
    lines = render_table(rows, "with script", "mitmlite, no script").splitlines()
    assert verdict_of(lines[2]) == "NO"  # 0.85x: more than 10 % below no script


def test_hook_rows_compare_with_mitmlite_without_scripts() -> None:
    from bench import Results, hook_rows

    results = Results(
        {
            ("hooks", "mitmlite"): [{"per_s": 1000.0}],
            ("hooks", "mitmlite -s empty.py"): [{"per_s": 950.0}],
            ("hooks", "mitmlite -s noop.py"): [{"per_s": 800.0}],
            ("hooks-page", "mitmlite"): [{"per_s": 500.0, "cpu_ms_per_op": 1.0}],
            ("hooks-page", "mitmlite -s rewrite.py"): [{"per_s": 90.0, "cpu_ms_per_op": 11.0}],
        }
    )
    rows = hook_rows(results)
    table = render_table(rows, "with script", "mitmlite, no script")
    lines = table.splitlines()
    assert lines[0].startswith("| workload | with script | mitmlite, no script |")
    empty, noop = lines[2], lines[3]
    assert "empty hook script" in empty
    assert verdict_of(empty) == "yes"  # 0.95x is within 10 %
    assert verdict_of(noop) == "—"  # measured, but issue 4 sets no target for it
    assert "0.8x" in noop
    assert ">= 0.9x no script" in empty
    assert "11.0 ms" in lines[5] or "11.00 ms" in lines[5]


def test_machine_speed_reference_measures_real_tls_work() -> None:
    from bench_speed import tls_ms_per_mib

    cost = tls_ms_per_mib(mib=2)
    # AES-GCM both ways costs about 1 ms per MiB on these 2-core VMs; far outside means the
    # measurement is not of TLS records (an empty loop, a failed handshake).
    assert 0.05 < cost < 50, cost


def test_nginx_missing_is_a_one_line_reason_and_present_is_none(tmp_path: Path) -> None:
    from bench_origin import nginx_missing

    absent = tmp_path / "nginx"
    assert nginx_missing(str(absent)) == (
        "nginx (the benchmark's TLS origin) is not installed: `make bench` installs it when run "
        "as root, or `apt-get install nginx`"
    )
    absent.write_text("#!/bin/sh\n")
    absent.chmod(0o755)
    assert nginx_missing(str(absent)) is None
