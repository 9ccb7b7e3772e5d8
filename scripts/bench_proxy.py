"""The proxy rows of scripts/bench.py: start a proxy, drive one workload, read its CPU and RSS.

Every measurement gets a freshly started proxy (so a peak RSS belongs to that workload alone),
one warm-up tunnel (the leaf is minted, the upstream context built) and then one load-client
process (scripts/bench_client.py). Every wait is bounded: a proxy that does not start, a client
that errs or hangs, becomes a ``Failure`` with the reason instead of stopping the benchmark.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from bench_origin import Origin, free_port, wait_for_port
from bench_procfs import peak_rss_kib, rss_kib

CLIENT = Path(__file__).resolve().parent / "bench_client.py"
START_TIMEOUT = 30.0
WARM_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
RSS_POLL = 0.005
MiB = 1 << 20


@dataclass(frozen=True, slots=True)
class Failure:
    """Why a measurement produced no figure."""

    reason: str


Metrics = dict[str, float]
Outcome = Metrics | Failure


@dataclass(frozen=True, slots=True)
class ProxySpec:
    """How to start one proxy under test and where its CA certificate appears."""

    name: str
    argv: Callable[[int], list[str]]
    ca_file: Path
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True, slots=True)
class Running:
    """A started proxy."""

    spec: ProxySpec
    pid: int
    port: int
    log: Path


@dataclass(frozen=True, slots=True)
class Settings:
    """Sizes and durations of the proxy workloads."""

    duration: float
    big_size: int
    idle_tunnels: int


def mitmlite_spec(
    bin_dir: Path, workdir: Path, origin: Origin, script: tuple[str, str] | None = None
) -> ProxySpec:
    """mitmlite with its defaults, trusting the origin's CA, its CA home in ``workdir``.

    ``script`` is (name, source) of a hook script to load with ``-s``.
    """
    home = workdir / "mitmlite-home"
    exe = str(bin_dir / "mitmlite")
    extra: list[str] = []
    name = "mitmlite"
    if script is not None:
        path = workdir / f"{script[0]}.py"
        path.write_text(script[1])
        extra = ["-s", str(path)]
        name = f"mitmlite -s {path.name}"

    def argv(port: int) -> list[str]:
        listen = f"127.0.0.1:{port}"
        return [exe, "-q", "--listen", listen, "--upstream-ca", str(origin.ca_file), *extra]

    env = {"MITMLITE_HOME": str(home)}
    return ProxySpec(name, argv, home / "rootCA.pem", env=env)


def mitmdump_spec(venv: Path, extra: list[str], workdir: Path, origin: Origin) -> ProxySpec:
    """mitmdump 11 with its defaults plus ``extra`` ``--set`` options, confdir in ``workdir``."""
    confdir = workdir / "mitmproxy-conf"
    exe = str(venv / "bin" / "mitmdump")
    sets = ["--set", f"ssl_verify_upstream_trusted_ca={origin.ca_file}", "--set"]
    sets += [f"confdir={confdir}"]
    for option in extra:
        sets += ["--set", option]

    def argv(port: int) -> list[str]:
        return [exe, "-q", "--listen-host", "127.0.0.1", "-p", str(port), *sets]

    name = "mitmdump" + "".join(f" {option}" for option in extra)
    return ProxySpec(name, argv, confdir / "mitmproxy-ca-cert.pem", note=" ".join(sets))


def _tail(path: Path, lines: int = 3) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])


def _wait_for_file(path: Path, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{path.name} did not appear")
        pause.wait(0.05)


@contextmanager
def start_proxy(spec: ProxySpec, logdir: Path) -> Iterator[Running]:
    """Start the proxy on a free port; yield once it listens and its CA exists; stop it after."""
    port = free_port()
    log_path = logdir / f"{spec.name.split()[0]}-{port}.log"
    env = {**os.environ, **spec.env}
    with log_path.open("wb") as log:
        proc = subprocess.Popen(spec.argv(port), stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            try:
                wait_for_port(port, START_TIMEOUT, proc)
                _wait_for_file(spec.ca_file, START_TIMEOUT, proc)
            except RuntimeError as exc:
                raise StartError(f"{spec.name} {exc}: {_tail(log_path)}") from exc
            yield Running(spec, proc.pid, port, log_path)
        finally:
            _stop(proc)


class StartError(Exception):
    """The proxy did not come up."""


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=STOP_TIMEOUT)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def client_argv(workload: str, proxy: Running, origin: Origin, settings: Settings) -> list[str]:
    """The command line of one load-client process."""
    return [
        sys.executable,
        str(CLIENT),
        workload,
        f"--proxy-port={proxy.port}",
        f"--proxy-pid={proxy.pid}",
        f"--origin-port={origin.port}",
        f"--origin-pids={','.join(map(str, origin.pids()))}",
        f"--ca={proxy.spec.ca_file}",
        f"--small-size={origin.small_size}",
        f"--big-size={origin.big_size}",
        f"--duration={settings.duration}",
        f"--count={settings.idle_tunnels}",
    ]


def parse_result(stdout: str, returncode: int | None, stderr: str) -> Outcome:
    """The client's last JSON line, or a Failure saying what went wrong."""
    lines = [line for line in stdout.strip().splitlines() if line.startswith("{")]
    if not lines:
        detail = stderr.strip().splitlines()[-1:] or [f"exit status {returncode}"]
        return Failure(f"client produced no result ({detail[0]})")
    result = json.loads(lines[-1])
    if "error" in result:
        return Failure(str(result["error"]))
    return {key: float(value) for key, value in result.items()}


def run_client(
    argv: list[str], timeout: float, on_tick: Callable[[], None] | None = None
) -> Outcome:
    """Run a client to completion within ``timeout`` s, calling ``on_tick`` every few ms."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    try:
        while on_tick is not None and proc.poll() is None and time.monotonic() < deadline:
            on_tick()
            pause.wait(RSS_POLL)
        stdout, stderr = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Failure(f"timed out after {timeout:g} s")
    return parse_result(stdout, proc.returncode, stderr)


@dataclass(slots=True)
class RssWatch:
    """The highest VmRSS seen while polling a process."""

    pid: int
    highest: int = 0

    def poll(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.highest = max(self.highest, rss_kib(self.pid))


def measure_body(workload: str, proxy: Running, origin: Origin, settings: Settings) -> Outcome:
    """Download or upload: MiB/s, and the proxy's peak RSS growth during the transfer."""
    before, hwm_before = rss_kib(proxy.pid), peak_rss_kib(proxy.pid)
    watch = RssWatch(proxy.pid, before)
    result = run_client(
        client_argv(workload, proxy, origin, settings), 60 + settings.big_size / MiB, watch.poll
    )
    if isinstance(result, Failure):
        return result
    hwm_after = peak_rss_kib(proxy.pid)
    # VmHWM catches peaks between polls, but only counts if it rose during this transfer.
    peak = max(watch.highest, hwm_after if hwm_after > hwm_before else 0)
    mib = result["bytes"] / MiB
    return {
        **_load_shares(result),
        "mib_per_s": mib / result["elapsed"],
        "rss_growth_mib": (peak - before) / 1024,
        "peak_rss_mib": peak / 1024,
        "cpu_ms_per_mib": result["proxy_cpu"] * 1000 / mib,
    }


def measure_rate(workload: str, proxy: Running, origin: Origin, settings: Settings) -> Outcome:
    """Keep-alive requests or new tunnels: operations per second and proxy CPU per operation."""
    result = run_client(client_argv(workload, proxy, origin, settings), settings.duration + 60)
    if isinstance(result, Failure):
        return result
    count = result["count"]
    if count <= 0:
        return Failure("no operation completed")
    return {
        **_load_shares(result),
        "per_s": count / result["elapsed"],
        "cpu_ms_per_op": result["proxy_cpu"] * 1000 / count,
    }


def _read_line(stream: IO[str], timeout: float) -> str:
    ready, _, _ = select.select([stream], [], [], timeout)
    return stream.readline() if ready else ""


def measure_idle(proxy: Running, origin: Origin, settings: Settings) -> Outcome:
    """RSS growth per idle intercepted tunnel, with ``idle_tunnels`` of them held open."""
    before = rss_kib(proxy.pid)
    argv = client_argv("idle", proxy, origin, settings)
    timeout = 60 + settings.idle_tunnels * 0.2
    proc = subprocess.Popen(
        argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdin is not None
    assert proc.stdout is not None
    try:
        line = _read_line(proc.stdout, timeout)
        after = rss_kib(proxy.pid)
        with contextlib.suppress(BrokenPipeError):
            proc.stdin.write("done\n")
            proc.stdin.flush()
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return Failure("client did not release its tunnels")
    if not line:
        return Failure(f"no report within {timeout:g} s")
    result = parse_result(line, proc.returncode, stderr)
    if isinstance(result, Failure):
        return result
    count = result["count"]
    return {
        **_load_shares(result),
        "kib_per_tunnel": (after - before) / count,
        "rss_growth_mib": (after - before) / 1024,
        "tunnels_per_s": count / result["elapsed"],
    }


def _load_shares(result: Metrics) -> Metrics:
    """CPU of the client, proxy and origin as a share of one core over the measured window."""
    wall = result["elapsed"] or float("nan")
    return {
        "client_cpu_share": result["client_cpu"] / wall,
        "proxy_cpu_share": result["proxy_cpu"] / wall,
        "origin_cpu_share": result["origin_cpu"] / wall,
    }


def measure(
    workload: str, spec: ProxySpec, origin: Origin, settings: Settings, logdir: Path
) -> Outcome:
    """One measurement of ``workload`` on a freshly started, warmed-up proxy."""
    try:
        with start_proxy(spec, logdir) as proxy:
            warm = run_client(client_argv("warm", proxy, origin, settings), WARM_TIMEOUT)
            if isinstance(warm, Failure):
                return Failure(f"warm-up: {warm.reason}; log: {_tail(proxy.log)}")
            if workload in ("download", "upload"):
                outcome = measure_body(workload, proxy, origin, settings)
            elif workload == "idle":
                outcome = measure_idle(proxy, origin, settings)
            else:
                outcome = measure_rate(workload, proxy, origin, settings)
            if isinstance(outcome, Failure) and _tail(proxy.log):
                return Failure(f"{outcome.reason}; log: {_tail(proxy.log)}")
            return outcome
    except StartError as exc:
        return Failure(str(exc))
