"""--upstream-cert: the leaf carries the names the real server's certificate presents."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from tests.e2e.conftest import NAMES, Origin, OriginCerts, Proxy, curl, start_proxy
from tests.e2e.test_openssl import printed_chain, s_client, sans

pytestmark = pytest.mark.e2e


@pytest.fixture
def upstream_cert_proxy(tmp_path: Path, origin_certs: OriginCerts) -> Iterator[Proxy]:
    proxy = start_proxy(tmp_path / "home", "--upstream-ca", str(origin_certs.ca_path),
                        "--upstream-cert")  # fmt: skip
    yield proxy
    proxy.stop()


def expected(names: list[str]) -> list[object]:
    out: list[object] = []
    for name in names:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


async def test_leaf_carries_the_upstream_names_after_the_sni(
    upstream_cert_proxy: Proxy, origin: Origin
) -> None:
    result = await s_client(upstream_cert_proxy, "b.localhost", origin.port,
                            "-servername", "b.localhost", "-CAfile",
                            str(upstream_cert_proxy.ca_path))  # fmt: skip
    assert "Verify return code: 0 (ok)" in result.stdout.decode()
    leaf = printed_chain(result)[0]
    got = sans(leaf)
    assert got[0] == x509.DNSName("b.localhost")
    assert set(map(str, got)) == set(map(str, expected(NAMES)))  # every origin name, once


async def test_without_the_option_the_leaf_names_only_the_sni(proxy: Proxy, origin: Origin) -> None:
    result = await s_client(proxy, "b.localhost", origin.port, "-servername", "b.localhost",
                            "-CAfile", str(proxy.ca_path))  # fmt: skip
    assert sans(printed_chain(result)[0]) == [x509.DNSName("b.localhost")]


async def test_a_bad_upstream_certificate_is_still_a_502(
    upstream_cert_proxy: Proxy, origin: Origin
) -> None:
    # elsewhere.localhost is not in the origin's certificate: verification fails, the client
    # gets a leaf for its SNI alone and then the 502 with the reason.
    result = await curl(upstream_cert_proxy, "-i", origin.url("/x", "elsewhere.localhost"))
    assert result.returncode == 0, result.stderr
    assert b"\r\n\r\nHTTP/1.1 502 Bad Gateway" in result.stdout  # after the CONNECT answer
    assert b"certificate verify failed" in result.stdout


async def test_requests_still_flow(upstream_cert_proxy: Proxy, origin: Origin) -> None:
    result = await curl(upstream_cert_proxy, origin.url("/through", "c.localhost"))
    assert result.stdout == b"origin /through"
