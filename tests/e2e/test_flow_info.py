"""What a hook learns about both ends of a flow: flow.client, flow.server, timestamps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.conftest import Origin, OriginCerts, curl, start_proxy
from tests.scripting import write

pytestmark = pytest.mark.e2e

SCRIPT = """
    import json, os
    def response(flow):
        t = flow.timestamps
        with open(os.environ["FLOW_INFO_OUT"], "a") as out:
            out.write(json.dumps({
                "client": vars(flow.client),
                "server": vars(flow.server),
                "ordered": t.request_start <= t.request_end <= t.response_start <= t.response_end,
                "url": flow.request.url,
            }) + "\\n")
"""


async def test_hooks_see_tls_details_of_both_legs(
    tmp_path: Path, origin_certs: OriginCerts, origin: Origin, plain_origin: Origin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    out = tmp_path / "info.jsonl"
    monkeypatch.setenv("FLOW_INFO_OUT", str(out))
    script = write(tmp_path / "info.py", SCRIPT)
    proxy = start_proxy(tmp_path / "home", "--upstream-ca", str(origin_certs.ca_path),
                        "-s", str(script))  # fmt: skip
    try:
        await curl(proxy, origin.url("/tls", "a.localhost"))
        await curl(proxy, plain_origin.url("/plain", scheme="http"), https=False)
        await proxy.wait_for_log("/plain -> 200")
    finally:
        proxy.stop()
    tls, plain = (json.loads(line) for line in out.read_text().splitlines())
    assert tls["url"] == origin.url("/tls", "a.localhost")
    assert tls["client"]["sni"] == "a.localhost"
    assert tls["client"]["tls_version"].startswith("TLS")
    assert tls["client"]["cipher"]
    assert tls["client"]["alpn"] == "http/1.1"
    assert "http/1.1" in tls["client"]["alpn_offered"]
    assert tls["client"]["address"].startswith("127.0.0.1:")
    assert tls["server"]["address"] == f"127.0.0.1:{origin.port}"
    assert tls["server"]["tls_version"].startswith("TLS")
    assert tls["server"]["certificate_subject"]
    assert tls["ordered"]
    # The twin: plain HTTP has no TLS on either leg.
    assert plain["client"]["tls_version"] is None
    assert plain["client"]["sni"] is None
    assert plain["server"]["tls_version"] is None
    assert plain["server"]["address"] == f"127.0.0.1:{plain_origin.port}"
