"""Shared CA fixtures: roots are expensive (RSA 3072), so they are sync session fixtures.

Also the independent oracles the CA tests share: ``openssl verify`` and a trio TLS server that a
Python ``ssl`` client and curl connect to.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import ipaddress
import ssl
import subprocess
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from mitmlite.ca.authority import PrivateKey, RootCA, create_root
from mitmlite.ca.files import key_to_pem

NOW = dt.datetime.now(dt.UTC)
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def write_pair(directory: Path, root: RootCA) -> Path:
    """Write ``rootCA.pem`` and ``rootCA-key.pem`` (mkcert's layout); return the cert path."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "rootCA.pem").write_bytes(pem(root.cert))
    key_path = directory / "rootCA-key.pem"
    key_path.write_bytes(key_to_pem(root.key))
    key_path.chmod(0o600)
    return directory / "rootCA.pem"


def mkcert_root(now: dt.datetime) -> RootCA:
    """A root built the way mkcert builds one (cert.go newCA): RSA 3072, keyCertSign only,
    and an SKI that is SHA-1 over the whole SubjectPublicKeyInfo, not RFC 5280 method 1."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=3072)
    spki = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mkcert development CA"),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "tester@testhost"),
            x509.NameAttribute(NameOID.COMMON_NAME, "mkcert tester@testhost"),
        ]
    )
    usage = x509.KeyUsage(False, False, False, False, False, True, False, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(usage, critical=True)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(hashlib.sha1(spki).digest()), critical=False)  # noqa: S324
        .sign(key, hashes.SHA256())
    )
    return RootCA(cert=cert, key=key)


@pytest.fixture(scope="session")
def root() -> RootCA:
    return create_root("mitmlite test CA", NOW)


@pytest.fixture(scope="session")
def other_root() -> RootCA:
    return create_root("mitmlite test CA", NOW)


@pytest.fixture(scope="session")
def rsa_root() -> RootCA:
    return create_root("mitmlite RSA test CA", NOW, "rsa")


@pytest.fixture(scope="session")
def mkcert() -> RootCA:
    return mkcert_root(NOW)


@pytest.fixture(scope="session")
def leaf_key() -> PrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def openssl_verify(ca: Path, leaf: Path, host: str) -> subprocess.CompletedProcess[str]:
    """``openssl verify -x509_strict`` for a server leaf, by name or by IP address."""
    try:
        ipaddress.ip_address(host)
        check = ["-verify_ip", host]
    except ValueError:
        check = ["-verify_hostname", host]
    argv = ["openssl", "verify", "-x509_strict", "-purpose", "sslserver", *check]
    return subprocess.run(
        [*argv, "-CAfile", str(ca), str(leaf)], capture_output=True, text=True, check=False
    )


def strict_client(ca: Path) -> ssl.SSLContext:
    """A Python client context with RFC 5280 strict checks (Python 3.13's default)."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    assert ctx.check_hostname
    return ctx


async def serve_tls(ctx: ssl.SSLContext, *, task_status: trio.TaskStatus[int]) -> None:
    """Serve one canned HTTP response over TLS on 127.0.0.1; report the port."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])

    async def handle(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, ctx, server_side=True)
        try:
            await tls.do_handshake()
            await tls.receive_some()
            await tls.send_all(RESPONSE)
            await tls.aclose()
        except trio.BrokenResourceError:
            await trio.aclose_forcefully(tls)

    await trio.serve_listeners(handle, listeners)


async def handshake(port: int, client: ssl.SSLContext, host: str) -> bytes:
    """Connect with ``client`` verifying ``host``; return the response."""
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    tls = trio.SSLStream(stream, client, server_hostname=host)
    try:
        await tls.send_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        return bytes(await tls.receive_some())
    finally:
        await trio.aclose_forcefully(tls)


async def handshake_fails(port: int, client: ssl.SSLContext, host: str) -> str:
    """Connect as :func:`handshake` does, expecting certificate verification to fail."""
    with pytest.raises(trio.BrokenResourceError) as err:
        await handshake(port, client, host)
    cause = err.value.__cause__
    assert isinstance(cause, ssl.SSLCertVerificationError), repr(cause)
    return str(cause.verify_message)
