"""The onboarding site, http://mitmlite.ca/, served by the proxy itself to curl and Chromium.

The name does not resolve anywhere (the tests have no network and no DNS): every answer here can
only have come from the proxy.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from tests.e2e.conftest import Proxy, curl
from tests.e2e.test_chromium import dump_dom, make_home

pytestmark = pytest.mark.e2e


def fingerprint(proxy: Proxy) -> str:
    cert = x509.load_pem_x509_certificate(proxy.ca_path.read_bytes())
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


async def test_page_over_plain_http_shows_the_fingerprint(proxy: Proxy) -> None:
    result = await curl(proxy, "-i", "http://mitmlite.ca/", https=False)
    assert result.returncode == 0, result.stderr
    text = result.stdout.decode()
    assert text.startswith("HTTP/1.1 200")
    assert fingerprint(proxy) in text
    await proxy.wait_for_log("GET http://mitmlite.ca/ -> 200")


async def test_pem_and_der_downloads_are_the_ca_certificate(proxy: Proxy) -> None:
    pem = await curl(proxy, "http://mitmlite.ca/cert/pem", https=False)
    assert pem.stdout == proxy.ca_path.read_bytes()
    der = await curl(proxy, "http://mitmlite.ca/mitmlite-ca.cer", https=False)
    cert = x509.load_der_x509_certificate(der.stdout)
    assert cert == x509.load_pem_x509_certificate(proxy.ca_path.read_bytes())
    assert b"PRIVATE" not in pem.stdout


async def test_page_over_https_through_connect(proxy: Proxy) -> None:
    result = await curl(proxy, "https://mitmlite.ca/")
    assert result.returncode == 0, result.stderr
    assert fingerprint(proxy) in result.stdout.decode()


async def test_unknown_path_is_404_and_near_names_are_not_magic(proxy: Proxy) -> None:
    result = await curl(proxy, "-o", "/dev/null", "-w", "%{http_code}", "http://mitmlite.ca/x",
                        https=False)  # fmt: skip
    assert result.stdout == b"404"
    # A look-alike name is forwarded like any other host, and there is nothing listening.
    other = await curl(proxy, "-o", "/dev/null", "-w", "%{http_code}",
                       "http://mitmlite.ca.localhost:9/", https=False)  # fmt: skip
    assert other.stdout == b"502"


async def test_chromium_loads_the_page_through_the_proxy(proxy: Proxy, tmp_path: Path) -> None:
    home = await make_home(tmp_path / "home", None)  # nothing trusted yet: that is the point
    result = await dump_dom(proxy, home, tmp_path / "profile", "http://mitmlite.ca/")
    dom = result.stdout.decode(errors="replace")
    assert result.returncode == 0, result.stderr
    assert fingerprint(proxy) in dom
    assert "mitmlite-ca.pem" in dom
