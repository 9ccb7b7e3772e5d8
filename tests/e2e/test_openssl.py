"""``openssl s_client -proxy``: the minted chain as OpenSSL sees it, verified strictly.

Success tests send one GET with ``Connection: close`` and ``-ign_eof``, so s_client keeps reading
until the proxy closes; it then exits 0 only if the proxy ended the TLS session with close_notify
(a bare TCP close is "unexpected eof while reading", exit 1).
"""

from __future__ import annotations

import ipaddress
import re

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from tests.e2e.conftest import Origin, OriginCerts, Proxy, Result, require

pytestmark = pytest.mark.e2e

_PEM = re.compile(rb"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----\n", re.S)


async def s_client(
    proxy: Proxy, host: str, port: int, *args: str, request_host: str | None = None
) -> Result:
    """Run s_client through the proxy with -showcerts -verify_return_error and a GET on stdin."""
    exe = require("openssl")
    request = (
        f"GET /via-openssl HTTP/1.1\r\nHost: {request_host or host}\r\nConnection: close\r\n\r\n"
    ).encode()
    cmd = [
        exe, "s_client", "-proxy", f"127.0.0.1:{proxy.port}", "-connect", f"{host}:{port}",
        "-showcerts", "-verify_return_error", "-ign_eof", *args,
    ]  # fmt: skip
    with trio.fail_after(30):
        done = await trio.run_process(
            cmd, stdin=request, capture_stdout=True, capture_stderr=True, check=False
        )
    return Result(done.returncode, done.stdout, done.stderr.decode(errors="replace"))


def printed_chain(result: Result) -> list[x509.Certificate]:
    return [x509.load_pem_x509_certificate(pem) for pem in _PEM.findall(result.stdout)]


def ca_subject(proxy: Proxy) -> x509.Name:
    return x509.load_pem_x509_certificate(proxy.ca_path.read_bytes()).subject


def sans(cert: x509.Certificate) -> list[object]:
    ext = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    return list(ext.value)


async def test_s_client_verifies_the_minted_chain(proxy: Proxy, origin: Origin) -> None:
    result = await s_client(
        proxy, "site.localhost", origin.port,
        "-servername", "site.localhost", "-verify_hostname", "site.localhost",
        "-CAfile", str(proxy.ca_path),
    )  # fmt: skip
    out = result.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out + result.stderr
    assert result.returncode == 0, result.stderr  # the proxy ended the TLS with close_notify
    # What OpenSSL printed while building the chain, and in its "Certificate chain" section.
    ca = ca_subject(proxy)
    common_name = ca.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    ca_text = f"CN = {common_name!s}, O = mitmlite"
    assert f"depth=1 {ca_text}" in result.stderr
    assert "depth=0 CN = site.localhost" in result.stderr
    assert " 0 s:CN = site.localhost\n" in out
    assert f"   i:{ca_text}\n" in out
    assert "subject=CN = site.localhost" in out
    # The leaf and the CA themselves, parsed from -showcerts.
    chain = printed_chain(result)
    assert len(chain) == 2, out
    leaf, root = chain
    assert sans(leaf) == [x509.DNSName("site.localhost")]
    assert leaf.issuer == ca
    assert root.subject == ca
    assert root.public_bytes(Encoding.PEM) == proxy.ca_path.read_bytes()
    leaf.verify_directly_issued_by(root)
    # The request went through the tunnel, and the origin's answer came back.
    assert out.count("origin /via-openssl") == 1
    assert origin.state.requests == ["/via-openssl"]


async def test_s_client_trusting_another_ca_fails(
    proxy: Proxy, origin: Origin, origin_certs: OriginCerts
) -> None:
    # The twin: the origin's own CA does not vouch for the minted leaf.
    result = await s_client(
        proxy, "site.localhost", origin.port,
        "-servername", "site.localhost", "-CAfile", str(origin_certs.ca_path),
    )  # fmt: skip
    out = result.stdout.decode(errors="replace")
    assert result.returncode != 0
    assert "Verify return code: 0 (ok)" not in out
    assert re.search(r"Verify return code: (19|20|21) ", out), out
    assert "certificate verify failed" in result.stderr
    assert "origin /via-openssl" not in out
    assert origin.state.requests == []


async def test_s_client_checks_the_host_name(proxy: Proxy, origin: Origin) -> None:
    # The chain is good, but a leaf minted for site.localhost is not valid for b.localhost.
    result = await s_client(
        proxy, "site.localhost", origin.port,
        "-servername", "site.localhost", "-verify_hostname", "b.localhost",
        "-CAfile", str(proxy.ca_path),
    )  # fmt: skip
    out = result.stdout.decode(errors="replace")
    assert result.returncode != 0
    assert "Verify return code: 62 (hostname mismatch)" in out, out + result.stderr
    assert origin.state.requests == []


async def test_s_client_ip_target_gets_an_ip_san(proxy: Proxy, origin: Origin) -> None:
    result = await s_client(
        proxy, "127.0.0.1", origin.port,
        "-noservername", "-verify_ip", "127.0.0.1", "-CAfile", str(proxy.ca_path),
    )  # fmt: skip
    out = result.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out, out + result.stderr
    assert result.returncode == 0, result.stderr  # the proxy ended the TLS with close_notify
    leaf = printed_chain(result)[0]
    assert sans(leaf) == [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    assert leaf.issuer == ca_subject(proxy)
    assert "origin /via-openssl" in out


async def test_s_client_ip_target_wrong_ip_fails(proxy: Proxy, origin: Origin) -> None:
    result = await s_client(
        proxy, "127.0.0.1", origin.port,
        "-noservername", "-verify_ip", "127.0.0.2", "-CAfile", str(proxy.ca_path),
    )  # fmt: skip
    out = result.stdout.decode(errors="replace")
    assert result.returncode != 0
    assert "Verify return code: 64 (IP address mismatch)" in out, out + result.stderr
    assert origin.state.requests == []
