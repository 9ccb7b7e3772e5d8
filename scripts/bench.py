"""mitmlite's benchmark: CA minting costs and proxy throughput, as a markdown table on stdout.

CA rows (issue 2 §5) are measured in this process. Proxy rows (issue 3 §6) start nginx as a local
TLS origin, then mitmlite (and, with ``--compare mitmdump``, mitmproxy 11.0.2's mitmdump from a
separate venv) as subprocesses, and drive them with load-client processes
(scripts/bench_client.py). Runs interleave per workload (mitmlite, mitmdump, mitmlite, mitmdump)
and each figure is the median over its runs. Progress goes to stderr.

Usage: python scripts/bench.py [--quick] [--only ca|proxy] [--duration S] [--compare mitmdump]
"""

from __future__ import annotations

import argparse
import datetime as dt
import functools
import os
import platform
import ssl
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench_ca import CAResult, measure_ca
from bench_origin import NGINX, Origin, nginx_missing, run_origin
from bench_proxy import (
    Failure,
    MiB,
    Outcome,
    ProxySpec,
    Settings,
    measure,
    mitmdump_spec,
    mitmlite_spec,
)
from bench_speed import tls_ms_per_mib
from bench_table import Row, Target, Value, render_table

import mitmlite

MITMPROXY_VERSION = "11.0.2"
DEFAULT_MITMPROXY_VENV = Path("/tmp/mitmlite-bench-mitmproxy")
WORKLOADS = ("keepalive", "tunnels", "download", "upload", "idle", "hooks")
# Issue 4's rows: keep-alive through mitmlite with hook scripts, against mitmlite without.
HOOK_SCRIPTS = {
    "empty": "# no hooks at all: loading a script must cost a flow nothing\n",
    "noop": "def request(flow):\n    pass\n\n\ndef response(flow):\n    pass\n",
    "rewrite": (
        "def response(flow):\n"
        "    if flow.request.path == '/page':\n"
        "        flow.response.text = flow.response.text.replace('example', 'rewritten')\n"
    ),
}
# (row workload, client workload, script names run against plain mitmlite)
HOOK_RUNS = (("hooks", "keepalive", ("empty", "noop")), ("hooks-page", "keepalive-page",
             ("rewrite",)))  # fmt: skip
BODY_WORKLOADS = ("download", "upload")
STREAMING = "stream_large_bodies=1m"
INSTALL_TIMEOUT = 900.0

SpecMaker = Callable[[Path, Origin], ProxySpec]


def progress(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the machine


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.partition(":")[2].strip()
    return platform.processor() or "unknown CPU"


def first_line(argv: list[str]) -> str:
    """The first line a command prints (stdout or stderr), e.g. a version."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"unavailable ({exc})"
    lines = (out.stdout + out.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def header() -> str:
    """Date, machine, CPU model, cores and Python: the context every figure needs."""
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return (
        f"mitmlite {mitmlite.__version__} benchmark, {now}; {platform.machine()}; {cpu_model()}; "
        f"{os.cpu_count()} cores; Python {platform.python_version()}; {ssl.OPENSSL_VERSION}"
    )


def load_average() -> str:
    """The 1-minute load average: other work on the machine skews every figure."""
    return f"{os.getloadavg()[0]:.2f}"


# ---------------------------------------------------------------- CA rows


def ca_rows(result: CAResult) -> list[Row]:
    """Issue 2 §5: new host ≤ 2 ms, cached host ≤ 20 µs, 1,000 distinct hosts in a row."""
    hosts = f"{result.row_hosts:,} distinct hosts in a row"
    return [
        Row("CA: mint leaf + build context, new host (median CPU)", "ms",
            result.new_host_median * 1e3, target=Target("<=", 2.0)),
        Row("CA: cached host (median CPU)", "µs", result.cached_median * 1e6,
            target=Target("<=", 20.0)),
        Row(f"CA: {hosts}, total CPU", "s", result.row_total),
        Row(f"CA: {hosts}, median CPU per host", "ms", result.row_median * 1e3,
            target=Target("<=", 2.0)),
    ]  # fmt: skip


# ---------------------------------------------------------------- proxy runs


@dataclass
class Results:
    """Every measurement by (workload, proxy name), in run order."""

    runs: dict[tuple[str, str], list[Outcome]]

    def value(self, workload: str, tool: str | None, metric: str) -> Value | None:
        """Median over the successful runs; the first failure when none succeeded."""
        outcomes = self.runs.get((workload, tool or ""), [])
        figures = [o[metric] for o in outcomes if not isinstance(o, Failure) and metric in o]
        if figures:
            return statistics.median(figures)
        failures = [o.reason for o in outcomes if isinstance(o, Failure)]
        return f"failed: {failures[0]}" if failures else None

    def failures(self) -> list[str]:
        return [
            f"{workload} on {tool}, run {index + 1}: {outcome.reason}"
            for (workload, tool), outcomes in self.runs.items()
            for index, outcome in enumerate(outcomes)
            if isinstance(outcome, Failure)
        ]


def brief(outcome: Outcome) -> str:
    if isinstance(outcome, Failure):
        return f"FAILED: {outcome.reason}"
    return ", ".join(f"{key}={value:.4g}" for key, value in outcome.items())


def run_workloads(
    makers: list[SpecMaker],
    body_makers: list[SpecMaker],
    settings: Settings,
    runs: int,
    workloads: tuple[str, ...] = WORKLOADS,
) -> tuple[Results, list[ProxySpec]]:
    """Each workload on every proxy, interleaved A B A B, each on a freshly started proxy."""
    results = Results({})
    with tempfile.TemporaryDirectory(prefix="mitmlite-bench-") as tmp:
        workdir = Path(tmp)
        with run_origin(workdir / "origin", settings.big_size) as origin:
            specs = [make(workdir, origin) for make in makers]
            body_specs = [make(workdir, origin) for make in body_makers]
            for workload in workloads:
                if workload == "hooks":
                    run_hook_workloads(results, specs[0], workdir, origin, settings, runs)
                    continue
                tools = specs + (body_specs if workload in BODY_WORKLOADS else [])
                for run in range(runs):
                    for spec in tools:
                        progress(f"{workload} on {spec.name} (run {run + 1}/{runs})")
                        outcome = measure(workload, spec, origin, settings, workdir)
                        results.runs.setdefault((workload, spec.name), []).append(outcome)
                        progress(f"  -> {brief(outcome)}")
    return results, specs + body_specs


def run_hook_workloads(
    results: Results,
    plain: ProxySpec,
    workdir: Path,
    origin: Origin,
    settings: Settings,
    runs: int,
) -> None:
    """Issue 4: keep-alive with hook scripts loaded, interleaved with mitmlite without."""
    bin_dir = Path(sys.executable).parent
    for label, client_workload, scripts in HOOK_RUNS:
        tools = [plain] + [
            mitmlite_spec(bin_dir, workdir, origin, (name, HOOK_SCRIPTS[name])) for name in scripts
        ]
        for run in range(runs):
            for spec in tools:
                progress(f"{label} on {spec.name} (run {run + 1}/{runs})")
                outcome = measure(client_workload, spec, origin, settings, workdir)
                results.runs.setdefault((label, spec.name), []).append(outcome)
                progress(f"  -> {brief(outcome)}")


def hook_rows(results: Results) -> list[Row]:
    """Issue 4's rows: figures with scripts against mitmlite without, in the same run."""
    rows: list[Row] = []
    ran = {workload for workload, _ in results.runs}
    if "hooks" in ran:
        plain = results.value("hooks", "mitmlite", "per_s")
        # Issue 4's target is for an empty script; no-op hooks (a Flow built and both bodies
        # buffered per request) are measured for the record, without a target of their own.
        labels = {"empty": "an empty hook script", "noop": "no-op request+response hooks"}
        within = Target(">=", 0.9, relative=True, against="no script")
        for name, label in labels.items():
            ours = results.value("hooks", f"mitmlite -s {name}.py", "per_s") or "failed"
            target = within if name == "empty" else None
            rows.append(Row(f"keep-alive GETs, {label} (vs no script)", "req/s", ours, plain,
                            target))  # fmt: skip
    if "hooks-page" in ran:
        spec = "mitmlite -s rewrite.py"
        plain_rate = results.value("hooks-page", "mitmlite", "per_s")
        ours = results.value("hooks-page", spec, "per_s") or "failed"
        rows += [
            Row("1 MiB gzip page, response hook rewrites its text (vs no script)", "req/s",
                ours, plain_rate, None),
            Row("  proxy CPU per rewritten page (vs no script)", "ms",
                results.value("hooks-page", spec, "cpu_ms_per_op") or "failed",
                results.value("hooks-page", "mitmlite", "cpu_ms_per_op"), None),
        ]  # fmt: skip
    return rows


def ensure_mitmproxy(venv: Path) -> Path:
    """A venv with mitmproxy 11.0.2 (reused when already there); returns the venv."""
    mitmdump = venv / "bin" / "mitmdump"
    if mitmdump.exists() and MITMPROXY_VERSION in first_line([str(mitmdump), "--version"]):
        return venv
    progress(f"installing mitmproxy=={MITMPROXY_VERSION} into {venv}")
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, f"mitmproxy=={MITMPROXY_VERSION}"], check=True, timeout=INSTALL_TIMEOUT)
    return venv


# ---------------------------------------------------------------- proxy rows


@dataclass(frozen=True, slots=True)
class Names:
    """Which proxy names fill the mitmlite and mitmdump columns."""

    ours: str
    theirs: str | None
    streaming: str | None


def proxy_rows(results: Results, names: Names, settings: Settings) -> list[Row]:
    """Issue 3 §6 (rows of workloads that ran), the issue's mitmdump figures as references."""

    def row(
        label: str, unit: str, workload: str, metric: str, target: Target | None
    ) -> tuple[Row, str]:
        ours = results.value(workload, names.ours, metric) or "failed: no result"
        theirs = results.value(workload, names.theirs, metric)
        return Row(label, unit, ours, theirs, target), workload

    size = f"{settings.big_size / MiB:g} MiB"
    rss = Target("<", 16.0)
    rows = [
        row("keep-alive small GETs on one tunnel", "req/s", "keepalive", "per_s",
            Target(">=", 3.0, relative=True, reference=500.0)),
        row("  proxy CPU per request", "ms", "keepalive", "cpu_ms_per_op",
            Target("<=", 1 / 3, relative=True, reference=1.9)),
        row("new CONNECT+TLS tunnels (one GET each)", "tunnels/s", "tunnels", "per_s",
            Target(">=", 3.0, relative=True, reference=70.0)),
        row("  proxy CPU per tunnel", "ms", "tunnels", "cpu_ms_per_op", None),
    ]  # fmt: skip
    for workload in BODY_WORKLOADS:
        rows += [
            row(f"{size} {workload}", "MiB/s", workload, "mib_per_s", Target(">=", 300.0)),
            row(f"  {workload}: proxy RSS growth", "MiB", workload, "rss_growth_mib", rss),
            row(f"  {workload}: proxy CPU per MiB", "ms", workload, "cpu_ms_per_mib", None),
        ]
    rows += [
        row(f"{settings.idle_tunnels:,} idle intercepted tunnels: RSS per tunnel", "KiB",
            "idle", "kib_per_tunnel", Target("<=", 64.0)),
    ]  # fmt: skip
    ran = {workload for workload, _ in results.runs}
    rows += streaming_rows(results, names, size)
    return [line for line, workload in rows if workload in ran]


def streaming_rows(results: Results, names: Names, size: str) -> list[tuple[Row, str]]:
    """The body rows again, against mitmdump with streaming on (its fairest setting)."""
    if names.streaming is None:
        return []
    rows: list[tuple[Row, str]] = []
    for workload in BODY_WORKLOADS:
        for label, unit, metric, target in (
            (f"{size} {workload}", "MiB/s", "mib_per_s", Target(">=", 300.0)),
            (f"  {workload}: proxy RSS growth", "MiB", "rss_growth_mib", Target("<", 16.0)),
        ):
            ours = results.value(workload, names.ours, metric) or "failed: no result"
            theirs = results.value(workload, names.streaming, metric)
            label = f"{label} (vs mitmdump {STREAMING})"
            rows.append((Row(label, unit, ours, theirs, target), workload))
    return rows


def load_table(results: Results) -> str:
    """Who used the CPU during each measured window (share of one core, median over runs)."""
    lines = [
        "| workload | proxy | proxy CPU | client CPU | nginx CPU |",
        "|---|---|---:|---:|---:|",
    ]
    for workload, tool in results.runs:
        shares = [
            results.value(workload, tool, f"{who}_cpu_share")
            for who in ("proxy", "client", "origin")
        ]
        cells = [f"{s:.0%}" if isinstance(s, float) else "—" for s in shares]
        lines.append(f"| {workload} | {tool} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------- main


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 s, 10 MiB, fewer hosts")
    parser.add_argument("--only", choices=("ca", "proxy"), help="only the CA or the proxy rows")
    parser.add_argument("--duration", type=float, help="seconds per rate workload [5; quick: 2]")
    parser.add_argument("--compare", choices=("mitmdump",), help="also run mitmdump 11.0.2")
    parser.add_argument("--mitmproxy-venv", type=Path, default=DEFAULT_MITMPROXY_VENV)
    parser.add_argument("--runs", type=int, default=2, help="runs per proxy and workload [2]")
    parser.add_argument("--size-mib", type=int, help="download/upload size [100; quick: 10]")
    parser.add_argument("--idle-tunnels", type=int, help="idle tunnels held [1000; quick: 200]")
    parser.add_argument(
        "--workloads",
        type=lambda text: tuple(text.split(",")),
        default=WORKLOADS,
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    return parser.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    duration = args.duration or (2.0 if args.quick else 5.0)
    size = args.size_mib or (10 if args.quick else 100)
    idle = args.idle_tunnels or (200 if args.quick else 1000)
    return Settings(duration=duration, big_size=size * MiB, idle_tunnels=idle)


def makers_from(args: argparse.Namespace) -> tuple[list[SpecMaker], list[SpecMaker], Names]:
    bin_dir = Path(sys.executable).parent
    makers: list[SpecMaker] = [functools.partial(mitmlite_spec, bin_dir)]
    if args.compare != "mitmdump":
        return makers, [], Names("mitmlite", None, None)
    venv = ensure_mitmproxy(args.mitmproxy_venv)
    makers.append(functools.partial(mitmdump_spec, venv, []))
    streaming: list[SpecMaker] = [functools.partial(mitmdump_spec, venv, [STREAMING])]
    return makers, streaming, Names("mitmlite", "mitmdump", f"mitmdump {STREAMING}")


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    missing = nginx_missing() if args.only in (None, "proxy") else None
    if missing is not None:
        print(f"bench: {missing}", file=sys.stderr)
        return 2
    load_before = load_average()
    speed_before = tls_ms_per_mib()
    rows: list[Row] = []
    hook_table: list[Row] = []
    notes: list[str] = []
    if args.only in (None, "ca"):
        progress("CA rows")
        count = 200 if args.quick else 1000
        rows += ca_rows(measure_ca(new_hosts=count // 5, row_hosts=count))
    if args.only in (None, "proxy"):
        makers, body_makers, names = makers_from(args)
        results, specs = run_workloads(makers, body_makers, settings, args.runs, args.workloads)
        rows += proxy_rows(results, names, settings)
        hook_table = hook_rows(results)
        notes += [f"- {spec.name}: started with `{' '.join(spec.argv(0))}`" for spec in specs]
        notes += [f"- failed: {failure}" for failure in results.failures()]
        notes += [
            "",
            "CPU during each measured window (share of one core):",
            "",
            load_table(results),
        ]
    print(header())
    print(f"Origin: {first_line([NGINX, '-v'])}, TLS on 127.0.0.1; runs per proxy: {args.runs}")
    print(f"Load average at start: {load_before}; at end: {load_average()}")
    print(
        f"Machine speed: OpenSSL encrypt+decrypt {speed_before:.2f} ms of CPU per MiB at start, "
        f"{tls_ms_per_mib():.2f} at end (a floor for CPU per MiB; VMs drift, so compare ratios)"
    )
    print()
    print(render_table(rows))
    if hook_table:
        print()
        print(render_table(hook_table, "with script", "mitmlite, no script"))
    if notes:
        print()
        print("\n".join(notes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
