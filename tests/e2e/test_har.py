"""--har: the file a run leaves behind, read back with haralyzer (a HAR parser we did not write)."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import trio
from haralyzer import HarEntry, HarParser  # type: ignore[import-untyped]

from tests.e2e.conftest import Origin, OriginCerts, curl, start_proxy

pytestmark = pytest.mark.e2e


async def test_har_holds_every_flow_with_headers_bodies_and_timings(
    tmp_path: Path, origin_certs: OriginCerts, origin: Origin, plain_origin: Origin
) -> None:
    har_path = tmp_path / "run.har"
    proxy = start_proxy(
        tmp_path / "home", "--upstream-ca", str(origin_certs.ca_path), "--har", str(har_path),
        "--har-body-size", "4096",
    )  # fmt: skip
    try:
        await curl(proxy, "-H", "X-Probe: har", origin.url("/gzip?x=1&y=two"))
        await curl(proxy, "--data-binary", '{"a": 1}', "-H", "Content-Type: application/json",
                   origin.url("/echo"))  # fmt: skip
        await curl(proxy, origin.url("/bytes/10000"))
        await curl(proxy, plain_origin.url("/plain", scheme="http"), https=False)
        await curl(proxy, origin.url("/x", host="nothing.localhost").replace(
            str(origin.port), "9"))  # fmt: skip
        await proxy.wait_for_log("nothing.localhost:9/x -> 502")
    finally:
        proxy.process.send_signal(signal.SIGTERM)
        with trio.fail_after(10):
            while proxy.process.poll() is None:  # noqa: ASYNC110 - a subprocess, no event
                await trio.sleep(0.02)
        proxy.stop()
    assert proxy.process.returncode == 0
    assert (har_path.stat().st_mode & 0o777) == 0o600  # it holds cookies and credentials
    data = json.loads(har_path.read_text())
    parser = HarParser(data)  # raises on a document that is not HAR
    entries = parser.har_data["entries"]
    assert data["log"]["version"] == "1.2"
    assert data["log"]["creator"]["name"] == "mitmlite"
    by_url = {e["request"]["url"]: e for e in entries}
    assert len(entries) == 5

    gz = by_url[origin.url("/gzip?x=1&y=two")]
    assert {"name": "X-Probe", "value": "har"} in gz["request"]["headers"]
    assert {"name": "y", "value": "two"} in gz["request"]["queryString"]
    assert gz["response"]["status"] == 200
    assert gz["response"]["content"]["text"].startswith("<html><body>compressed hello")
    assert gz["response"]["content"]["size"] > gz["response"]["bodySize"] > 0  # decoded > wire
    assert gz["serverIPAddress"] == "127.0.0.1"
    assert gz["_tls"]["server"]["version"].startswith("TLS")
    for phase in ("send", "wait", "receive"):
        assert gz["timings"][phase] >= 0
    # The first flow opened the upstream connection: TCP and TLS set-up are both known (ssl is
    # part of connect, per HAR 1.2). Reused connections get -1 (tests/test_har.py).
    assert gz["timings"]["connect"] >= gz["timings"]["ssl"] >= 0

    post = by_url[origin.url("/echo")]
    assert post["request"]["method"] == "POST"
    assert post["request"]["postData"]["text"] == '{"a": 1}'
    assert json.loads(post["response"]["content"]["text"])["body_length"] == 8

    big = by_url[origin.url("/bytes/10000")]
    assert big["response"]["bodySize"] == 10000
    assert big["response"]["content"].get("_truncated") is True  # 4096 bytes were kept
    assert "text" not in big["response"]["content"]

    plain = by_url[plain_origin.url("/plain", scheme="http")]
    assert plain["response"]["content"]["text"] == "origin /plain"
    assert "_tls" not in plain or not plain["_tls"].get("server")

    failed = next(e for e in entries if "nothing.localhost" in e["request"]["url"])
    assert failed["response"]["status"] == 502
    assert "cannot connect" in failed["_error"]

    # haralyzer's own view of an entry: start time parsed, method, status, server address.
    seen = HarEntry(gz)
    assert seen.startTime is not None
    assert (seen.request.method, seen.response.status) == ("GET", 200)
    assert seen.serverAddress == "127.0.0.1"
    assert seen.request.url == origin.url("/gzip?x=1&y=two")
