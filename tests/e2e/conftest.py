"""End-to-end fixtures: mitmlite as a subprocess, origins in the test's trio loop, real clients.

Origins get certificates from trustme (not from our CA code) for names under ``.localhost``,
which mitmlite resolves to loopback (RFC 6761), so tests need no /etc/hosts and no network.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import ssl
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.origin import OriginState, serve_origin_tcp

NAMES = ["site.localhost", "a.localhost", "b.localhost", "c.localhost", "127.0.0.1", "::1"]
STARTUP_SECONDS = 20


def require(tool: str) -> str:
    """The tool's path, or a skip with the reason (CI turns skips into failures)."""
    path = shutil.which(tool)
    if path is None:
        pytest.skip(f"{tool} is not installed (apt-get install it; .ci/run does)")
    return path


@dataclass
class Proxy:
    """A running mitmlite subprocess and everything it printed."""

    process: subprocess.Popen[str]
    port: int
    ca_path: Path
    home: Path
    lines: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return "\n".join(self.lines)

    async def wait_for_log(self, text: str, seconds: float = 5) -> None:
        """Wait until the proxy has printed ``text``; fails the test after ``seconds``."""
        with trio.fail_after(seconds):
            # A thread fills self.lines from the subprocess pipe: there is no trio event to wait on.
            while text not in self.log():  # noqa: ASYNC110
                await trio.sleep(0.02)

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        if self.process.stdout is not None:
            self.process.stdout.close()


def start_proxy(home: Path, *args: str) -> Proxy:
    """Start ``mitmlite`` on an ephemeral loopback port and wait for its banner."""
    env = {**os.environ, "MITMLITE_HOME": str(home), "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "mitmlite", "--listen", "127.0.0.1:0", *args]
    process = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env
    )
    assert process.stdout is not None
    lines: list[str] = []
    ready = threading.Event()
    port_holder: list[int] = []

    def drain() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line.rstrip("\n"))
            if line.startswith("mitmlite listening on "):
                port_holder.append(int(line.split(",")[0].rsplit(":", 1)[1]))
                ready.set()
        ready.set()

    threading.Thread(target=drain, daemon=True).start()
    if not ready.wait(STARTUP_SECONDS) or not port_holder:
        process.kill()
        raise RuntimeError("mitmlite did not start:\n" + "\n".join(lines))
    return Proxy(process, port_holder[0], home / "rootCA.pem", home, lines)


@dataclass(frozen=True)
class OriginCerts:
    """The trusted origin CA, and server contexts with good and bad certificates."""

    ca_path: Path
    good: ssl.SSLContext
    wrong_host: ssl.SSLContext
    expired: ssl.SSLContext
    self_signed: ssl.SSLContext
    untrusted: ssl.SSLContext
    client_cert_required: ssl.SSLContext  # mTLS: a client certificate from this CA, or an alert


def _server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.set_alpn_protocols(["http/1.1"])
    cert.configure_cert(ctx)
    return ctx


def _self_signed_context(directory: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "site.localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("site.localhost")]), False)
        .sign(key, hashes.SHA256())
    )
    pem = directory / "self-signed.pem"
    pem.write_bytes(
        cert.public_bytes(serialization.Encoding.PEM)
        + key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ctx.load_cert_chain(pem)
    return ctx


@pytest.fixture(scope="session")
def origin_certs(tmp_path_factory: pytest.TempPathFactory) -> OriginCerts:
    directory = tmp_path_factory.mktemp("origin-ca")
    ca = trustme.CA()
    ca_path = directory / "origin-ca.pem"
    ca.cert_pem.write_to_path(str(ca_path))
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    return OriginCerts(
        ca_path=ca_path,
        good=_server_context(ca.issue_cert(*NAMES)),
        wrong_host=_server_context(ca.issue_cert("elsewhere.localhost")),
        expired=_server_context(
            ca.issue_cert(*NAMES, not_before=past, not_after=past + dt.timedelta(days=1))
        ),
        self_signed=_self_signed_context(directory),
        untrusted=_server_context(trustme.CA().issue_cert(*NAMES)),
        client_cert_required=_mtls_context(ca),
    )


def _mtls_context(ca: trustme.CA) -> ssl.SSLContext:
    ctx = _server_context(ca.issue_cert(*NAMES))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture(scope="session")
def proxy(tmp_path_factory: pytest.TempPathFactory, origin_certs: OriginCerts) -> Iterator[Proxy]:
    """One mitmlite for the session; tests that need other options start their own."""
    home = tmp_path_factory.mktemp("mitmlite-home")
    running = start_proxy(home, "--upstream-ca", str(origin_certs.ca_path))
    yield running
    running.stop()


@dataclass
class Origin:
    """A running test origin."""

    port: int
    state: OriginState

    def url(self, path: str, host: str = "site.localhost", scheme: str = "https") -> str:
        return f"{scheme}://{host}:{self.port}{path}"


async def start_origin(nursery: trio.Nursery, tls: ssl.SSLContext | None) -> Origin:
    state = OriginState()
    port = await nursery.start(serve_origin_tcp, state, tls)
    return Origin(port, state)


@pytest.fixture
async def origin(nursery: trio.Nursery, origin_certs: OriginCerts) -> Origin:
    """An HTTPS origin with a certificate the proxy trusts through --upstream-ca."""
    return await start_origin(nursery, origin_certs.good)


@pytest.fixture
async def plain_origin(nursery: trio.Nursery) -> Origin:
    """A plain-HTTP origin."""
    return await start_origin(nursery, None)


@dataclass(frozen=True)
class Result:
    returncode: int
    stdout: bytes
    stderr: str


async def curl(
    proxy: Proxy, *args: str, https: bool = True, max_time: float = 60, stdin: bytes = b""
) -> Result:
    """Run curl through the proxy (https_proxy or http_proxy), trusting the mitmlite CA."""
    exe = require("curl")
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["https_proxy" if https else "http_proxy"] = proxy.url
    env["no_proxy"] = ""
    cmd = [exe, "-sS", "--cacert", str(proxy.ca_path), "--max-time", str(max_time), *args]
    with trio.fail_after(max_time + 10):
        done = await trio.run_process(
            cmd, stdin=stdin, capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    return Result(done.returncode, done.stdout, done.stderr.decode(errors="replace"))
