"""The load client of scripts/bench.py: one workload per process, blocking sockets and ssl.

It runs in a process of its own so it never competes with the proxy for one GIL, and speaks just
enough HTTP/1.1 (a fixed request, a response head, a Content-Length or chunked body counted
rather than kept) to cost a few tens of microseconds per request: the proxy, not the client,
must be the bottleneck. Each run prints one JSON object on stdout: how many operations it did in
how long, and the CPU seconds the client itself, the proxy and the origin used in that window.
On failure it prints ``{"error": "..."}`` and exits with status 1.

Usage: python scripts/bench_client.py WORKLOAD --proxy-port P --origin-port O --ca FILE ...
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_procfs import cpu_seconds, total_cpu_seconds

HOST = "127.0.0.1"
SOCKET_TIMEOUT = 20.0
CHUNK = 1 << 20
MAX_HEAD = 64 * 1024
WORKLOADS = ("warm", "keepalive", "keepalive-page", "tunnels", "download", "upload", "idle")


class BenchError(Exception):
    """A response or proxy behaviour the benchmark did not expect."""


@dataclass(frozen=True, slots=True)
class Setup:
    """Where to connect and what to expect back."""

    proxy_port: int
    origin_port: int
    context: ssl.SSLContext
    small_size: int
    big_size: int

    @property
    def authority(self) -> str:
        return f"{HOST}:{self.origin_port}"

    def request(self, method: str, path: str, extra: str = "") -> bytes:
        return f"{method} {path} HTTP/1.1\r\nHost: {self.authority}\r\n{extra}\r\n".encode()


class Conn:
    """A socket with a read buffer and a minimal HTTP/1.1 response reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.scratch = bytearray(CHUNK)

    def _fill(self) -> None:
        data = self.sock.recv(CHUNK)
        if not data:
            raise BenchError("connection closed before the response was complete")
        self.buf += data

    def read_head(self) -> tuple[int, dict[bytes, bytes]]:
        """Status and headers (lower-cased names) of the next final response."""
        while True:
            while (end := self.buf.find(b"\r\n\r\n")) < 0:
                if len(self.buf) > MAX_HEAD:
                    raise BenchError("response head too large")
                self._fill()
            head = bytes(self.buf[:end])
            del self.buf[: end + 4]
            status, headers = parse_head(head)
            if not 100 <= status < 200 or status == 101:
                return status, headers

    def read_body(self, status: int, headers: dict[bytes, bytes]) -> int:
        """Consume the body of a response to a GET or POST; returns its length."""
        if status in (204, 304):
            return 0
        if headers.get(b"transfer-encoding", b"").lower().endswith(b"chunked"):
            return self._read_chunked()
        if b"content-length" in headers:
            size = int(headers[b"content-length"])
            self._skip(size)
            return size
        return self._read_to_close()

    def _skip(self, size: int) -> None:
        take = min(size, len(self.buf))
        del self.buf[:take]
        remaining = size - take
        view = memoryview(self.scratch)
        while remaining > 0:
            got = self.sock.recv_into(view, min(remaining, CHUNK))
            if got == 0:
                raise BenchError(f"connection closed with {remaining} body bytes missing")
            remaining -= got

    def _line(self) -> bytes:
        while (end := self.buf.find(b"\r\n")) < 0:
            self._fill()
        line = bytes(self.buf[:end])
        del self.buf[: end + 2]
        return line

    def _read_chunked(self) -> int:
        total = 0
        while size := int(self._line().split(b";")[0], 16):
            self._skip(size + 2)
            total += size
        while self._line():
            pass  # trailers
        return total

    def _read_to_close(self) -> int:
        total = len(self.buf)
        self.buf.clear()
        while got := self.sock.recv_into(self.scratch):
            total += got
        return total

    def exchange(self, request: bytes, expect_status: int, expect_size: int | None) -> int:
        """Send ``request`` and read the whole response; checks status and body length."""
        self.sock.sendall(request)
        return self.response(expect_status, expect_size)

    def response(self, expect_status: int, expect_size: int | None) -> int:
        status, headers = self.read_head()
        size = self.read_body(status, headers)
        if status != expect_status:
            raise BenchError(f"expected status {expect_status}, got {status}")
        if expect_size is not None and size != expect_size:
            raise BenchError(f"expected a {expect_size}-byte body, got {size} bytes")
        return size

    def close(self) -> None:
        self.sock.close()


def parse_head(head: bytes) -> tuple[int, dict[bytes, bytes]]:
    """``HTTP/1.1 200 OK\\r\\nName: value...`` -> (200, {b"name": b"value"})."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise BenchError(f"not an HTTP response: {lines[0][:80]!r}")
    headers: dict[bytes, bytes] = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers


def open_tunnel(setup: Setup) -> Conn:
    """CONNECT through the proxy and complete TLS with it (it presents its minted leaf)."""
    raw = socket.create_connection((HOST, setup.proxy_port), timeout=SOCKET_TIMEOUT)
    try:
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        authority = setup.authority
        raw.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        plain = Conn(raw)
        status, _ = plain.read_head()
        if status != 200:
            raise BenchError(f"CONNECT answered with {status}")
        if plain.buf:
            raise BenchError("proxy sent bytes after its CONNECT reply")
        return Conn(setup.context.wrap_socket(raw, server_hostname=HOST))
    except BaseException:
        raw.close()
        raise


@dataclass(frozen=True, slots=True)
class Window:
    """Clocks read at the start of a measured window."""

    wall: float
    client: float
    proxy: float
    origin: float


@dataclass(frozen=True, slots=True)
class Meters:
    """Which processes to charge CPU time to."""

    proxy_pid: int
    origin_pids: tuple[int, ...]

    def start(self) -> Window:
        return Window(
            wall=time.perf_counter(),
            client=time.process_time(),
            proxy=cpu_seconds(self.proxy_pid),
            origin=total_cpu_seconds(self.origin_pids),
        )

    def stop(self, start: Window, **extra: float) -> dict[str, float]:
        return {
            "elapsed": time.perf_counter() - start.wall,
            "client_cpu": time.process_time() - start.client,
            "proxy_cpu": cpu_seconds(self.proxy_pid) - start.proxy,
            "origin_cpu": total_cpu_seconds(self.origin_pids) - start.origin,
            **extra,
        }


def run_warm(setup: Setup, meters: Meters, args: argparse.Namespace) -> dict[str, float]:
    """One tunnel, one small GET: mints the leaf and checks the proxy works end to end."""
    start = meters.start()
    conn = open_tunnel(setup)
    try:
        conn.exchange(setup.request("GET", "/small"), 200, setup.small_size)
    finally:
        conn.close()
    return meters.stop(start, count=1)


def run_keepalive(setup: Setup, meters: Meters, args: argparse.Namespace) -> dict[str, float]:
    """Sequential small GETs on one tunnel for ``--duration`` seconds."""
    conn = open_tunnel(setup)
    request = setup.request("GET", "/small")
    try:
        conn.exchange(request, 200, setup.small_size)
        count = 0
        start = meters.start()
        deadline = start.wall + args.duration
        while time.perf_counter() < deadline:
            conn.exchange(request, 200, setup.small_size)
            count += 1
        return meters.stop(start, count=count)
    finally:
        conn.close()


def run_keepalive_page(setup: Setup, meters: Meters, args: argparse.Namespace) -> dict[str, float]:
    """Sequential GETs of the 1 MiB gzip page on one tunnel (a hook may change its size)."""
    conn = open_tunnel(setup)
    request = setup.request("GET", "/page")
    try:
        conn.exchange(request, 200, None)
        count = 0
        received = 0
        start = meters.start()
        deadline = start.wall + args.duration
        while time.perf_counter() < deadline:
            received += conn.exchange(request, 200, None)
            count += 1
        return meters.stop(start, count=count, bytes=received)
    finally:
        conn.close()


def run_tunnels(setup: Setup, meters: Meters, args: argparse.Namespace) -> dict[str, float]:
    """New tunnels back to back: CONNECT, TLS handshake, one small GET, close."""
    request = setup.request("GET", "/small")
    count = 0
    start = meters.start()
    deadline = start.wall + args.duration
    while time.perf_counter() < deadline:
        conn = open_tunnel(setup)
        try:
            conn.exchange(request, 200, setup.small_size)
        finally:
            conn.close()
        count += 1
    return meters.stop(start, count=count)


def run_download(setup: Setup, meters: Meters, args: argparse.Namespace) -> dict[str, float]:
    """GET the big file through one tunnel (opened before the clock starts)."""
    conn = open_tunnel(setup)
    try:
        start = meters.start()
        conn.exchange(setup.request("GET", "/big"), 200, setup.big_size)
        return meters.stop(start, bytes=setup.big_size)
    finally:
        conn.close()


def run_upload(setup: Setup, meters: Meters, args: argparse.Namespace) -> dict[str, float]:
    """POST a body of the big size through one tunnel; the origin reads all of it, then 204."""
    conn = open_tunnel(setup)
    block = memoryview(bytes(range(256)) * (CHUNK // 256))
    try:
        start = meters.start()
        conn.sock.sendall(setup.request("POST", "/upload", f"Content-Length: {setup.big_size}\r\n"))
        remaining = setup.big_size
        while remaining > 0:
            piece = block[: min(remaining, CHUNK)]
            conn.sock.sendall(piece)
            remaining -= len(piece)
        conn.response(204, 0)
        return meters.stop(start, bytes=setup.big_size)
    finally:
        conn.close()


def run_idle(setup: Setup, meters: Meters, args: argparse.Namespace) -> dict[str, float]:
    """Open ``--count`` tunnels with one GET each, report, and hold them until stdin says go."""
    conns: list[Conn] = []
    request = setup.request("GET", "/small")
    start = meters.start()
    try:
        for _ in range(args.count):
            conns.append(open_tunnel(setup))
            conns[-1].exchange(request, 200, setup.small_size)
        report(meters.stop(start, count=len(conns)))
        sys.stdin.readline()  # the parent has measured; EOF (a dead parent) also ends the hold
        return {"released": len(conns)}
    finally:
        for conn in conns:
            conn.close()


RUNNERS: dict[str, Callable[[Setup, Meters, argparse.Namespace], dict[str, float]]] = {
    "warm": run_warm,
    "keepalive": run_keepalive,
    "keepalive-page": run_keepalive_page,
    "tunnels": run_tunnels,
    "download": run_download,
    "upload": run_upload,
    "idle": run_idle,
}


def report(result: dict[str, Any]) -> None:
    """One JSON line on stdout, flushed so the parent can act on it at once."""
    sys.stdout.write(json.dumps(result) + "\n")
    sys.stdout.flush()


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--proxy-port", type=int, required=True)
    parser.add_argument("--proxy-pid", type=int, required=True)
    parser.add_argument("--origin-port", type=int, required=True)
    parser.add_argument("--origin-pids", default="", help="comma-separated")
    parser.add_argument("--ca", type=Path, required=True, help="the proxy's CA certificate")
    parser.add_argument("--small-size", type=int, required=True)
    parser.add_argument("--big-size", type=int, default=0)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=1000)
    return parser.parse_args(argv)


def client_context(cafile: Path) -> ssl.SSLContext:
    """Trust only the proxy's CA, verify the name, speak HTTP/1.1 (as ``curl --http1.1``)."""
    context = ssl.create_default_context(cafile=str(cafile))
    context.set_alpn_protocols(["http/1.1"])
    return context


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    setup = Setup(
        proxy_port=args.proxy_port,
        origin_port=args.origin_port,
        context=client_context(args.ca),
        small_size=args.small_size,
        big_size=args.big_size,
    )
    origin_pids = tuple(int(pid) for pid in args.origin_pids.split(",") if pid)
    meters = Meters(proxy_pid=args.proxy_pid, origin_pids=origin_pids)
    try:
        result = RUNNERS[args.workload](setup, meters, args)
    except (OSError, BenchError, ValueError) as exc:
        report({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    report(result)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
