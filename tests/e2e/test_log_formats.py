"""The flow log as users read it (-v, -vv) and as machines read it (--log-format json)."""

from __future__ import annotations

import gzip
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Origin, OriginCerts, Proxy, curl, start_proxy

pytestmark = pytest.mark.e2e


@pytest.fixture
def verbose_proxy(tmp_path: Path, origin_certs: OriginCerts) -> Iterator[Proxy]:
    proxy = start_proxy(tmp_path / "home", "--upstream-ca", str(origin_certs.ca_path), "-vv")
    yield proxy
    proxy.stop()


@pytest.fixture
def json_proxy(tmp_path: Path, origin_certs: OriginCerts) -> Iterator[Proxy]:
    proxy = start_proxy(
        tmp_path / "home", "--upstream-ca", str(origin_certs.ca_path), "--log-format", "json"
    )
    yield proxy
    proxy.stop()


async def test_very_verbose_shows_headers_and_the_decoded_gzip_body(
    verbose_proxy: Proxy, origin: Origin
) -> None:
    result = await curl(verbose_proxy, "-H", "X-Probe: 42", origin.url("/gzip"))
    assert gzip.decompress(result.stdout).startswith(b"<html>")
    await verbose_proxy.wait_for_log("compressed hello compressed hello")
    log = verbose_proxy.log()
    assert "    X-Probe: 42" in log
    assert "    Content-Encoding: gzip" in log


async def test_default_log_has_no_headers(proxy: Proxy, origin: Origin) -> None:
    await curl(proxy, "-H", "X-Quiet-Probe: 7", origin.url("/gzip"))
    await proxy.wait_for_log(f"GET {origin.url('/gzip')} -> 200")
    assert "X-Quiet-Probe" not in proxy.log()
    assert "compressed hello" not in proxy.log()


async def test_json_log_is_one_object_per_line(json_proxy: Proxy, origin: Origin) -> None:
    await curl(json_proxy, origin.url("/bytes/1234"))
    await curl(json_proxy, origin.url("/x", host="nothing.localhost").replace(
        str(origin.port), "9"))  # fmt: skip
    await json_proxy.wait_for_log('"status": 502')
    flows = []
    for line in json_proxy.lines:
        if line.startswith("{"):
            flows.append(json.loads(line))
    ok = next(f for f in flows if f.get("url") == origin.url("/bytes/1234"))
    assert (ok["method"], ok["status"], ok["response_bytes"]) == ("GET", 200, 1234)
    failed = next(f for f in flows if f.get("status") == 502)
    assert failed["error"].startswith("cannot connect to nothing.localhost:9")
