"""The TLS origin for scripts/bench.py: nginx on 127.0.0.1 with a config written to a temp dir.

It serves ``/small`` (a small static file), ``/big`` (the download) and ``/upload``, which reads
the whole request body into memory before answering ``204`` (the body is read by the proxy module,
which then asks a plain-HTTP twin server for the 204 without passing the body on), so an upload
is only finished when the origin has really received every byte. The certificate comes from a
fresh trustme CA whose certificate the proxies are told to trust.
"""

from __future__ import annotations

import gzip
import os
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import trustme
from bench_procfs import children

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
NGINX_MISSING = (
    "nginx (the benchmark's TLS origin) is not installed: `make bench` installs it when run as "
    "root, or `apt-get install nginx`"
)
SMALL_SIZE = 1024
START_TIMEOUT = 15.0


@dataclass(frozen=True, slots=True)
class Origin:
    """A running origin: where it listens, which CA signed it, which processes to charge."""

    port: int
    ca_file: Path
    small_size: int
    big_size: int
    master_pid: int

    def pids(self) -> tuple[int, ...]:
        return (self.master_pid, *children(self.master_pid))


def nginx_missing(path: str = NGINX) -> str | None:
    """Why the origin cannot start (one line), or None when nginx is there to run."""
    return None if os.access(path, os.X_OK) else NGINX_MISSING


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, timeout: float, alive: subprocess.Popen[bytes]) -> None:
    """Poll until ``port`` accepts a connection; raise if the process exits or time runs out."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while time.monotonic() < deadline:
        if alive.poll() is not None:
            raise RuntimeError(f"exited with status {alive.returncode} before listening")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1.0):
                return
        except OSError:
            pause.wait(0.05)
    raise RuntimeError(f"not listening on port {port} after {timeout:g} s")


GZIP_PAGE_SIZE = 1 << 20  # the decoded size of /page


def write_files(root: Path, big_size: int) -> None:
    """The static files: 1 KiB of text and ``big_size`` bytes that do not compress."""
    (root / "small").write_bytes(b"x" * (SMALL_SIZE - 1) + b"\n")
    # The hook row's page: 1 MiB of HTML stored gzip-compressed, as a CDN would serve it.
    paragraph = b"<p>mitmlite rewrites this paragraph of example text in a hook.</p>\n"
    html = b"<html><body>\n" + paragraph * (GZIP_PAGE_SIZE // len(paragraph)) + b"</body></html>\n"
    (root / "page").write_bytes(gzip.compress(html[:GZIP_PAGE_SIZE], compresslevel=6))
    block = os.urandom(1 << 20)
    with (root / "big").open("wb") as out:
        remaining = big_size
        while remaining > 0:
            out.write(block[: min(remaining, len(block))])
            remaining -= len(block)


def nginx_config(prefix: Path, port: int, twin_port: int, big_size: int) -> str:
    """The whole nginx.conf; the body buffer holds a whole upload so nothing goes to disk."""
    user = "user root root;\n" if os.geteuid() == 0 else ""
    temp = prefix / "tmp"
    buffer = big_size + (1 << 20)
    return f"""{user}worker_processes 1;
worker_rlimit_nofile 16384;
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 600s;
    default_type application/octet-stream;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {prefix}/origin-chain.pem;
        ssl_certificate_key {prefix}/origin-key.pem;
        ssl_protocols TLSv1.2 TLSv1.3;
        root {prefix}/www;
        location = /page {{
            types {{ }}
            default_type "text/html; charset=utf-8";
            add_header Content-Encoding gzip;
        }}
        location = /upload {{
            client_max_body_size 0;
            client_body_buffer_size {buffer};
            proxy_pass http://127.0.0.1:{twin_port}/done;
            proxy_pass_request_body off;
            proxy_set_header Content-Length "";
        }}
    }}
    server {{
        listen 127.0.0.1:{twin_port};
        location = /done {{ return 204; }}
    }}
}}
"""


def write_tree(prefix: Path, big_size: int) -> tuple[Path, int]:
    """Certificates, files and config under ``prefix``; returns (config path, TLS port)."""
    (prefix / "www").mkdir(parents=True)
    (prefix / "tmp").mkdir()
    ca = trustme.CA()
    leaf = ca.issue_cert("127.0.0.1", "localhost")
    ca.cert_pem.write_to_path(str(prefix / "origin-ca.pem"))
    leaf.private_key_pem.write_to_path(str(prefix / "origin-key.pem"))
    chain = b"".join(blob.bytes() for blob in leaf.cert_chain_pems)
    (prefix / "origin-chain.pem").write_bytes(chain)
    write_files(prefix / "www", big_size)
    port = free_port()
    config = prefix / "nginx.conf"
    config.write_text(nginx_config(prefix, port, free_port(), big_size))
    return config, port


@contextmanager
def run_origin(prefix: Path, big_size: int) -> Iterator[Origin]:
    """Start nginx on a free port, yield it once it listens, stop it on exit."""
    config, port = write_tree(prefix, big_size)
    argv = [NGINX, "-p", str(prefix), "-e", str(prefix / "error.log"), "-c", str(config)]
    check = subprocess.run([*argv, "-t"], capture_output=True, text=True, check=False)
    if check.returncode != 0:
        raise RuntimeError(f"nginx rejected its config: {check.stderr.strip()}")
    log = (prefix / "nginx.out").open("wb")
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port, START_TIMEOUT, proc)
        yield Origin(port, prefix / "origin-ca.pem", SMALL_SIZE, big_size, proc.pid)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
