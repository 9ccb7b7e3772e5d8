"""--insecure: the one way to accept an unverifiable upstream, and it says so loudly."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import trio

from tests.e2e.conftest import OriginCerts, Proxy, curl, start_origin, start_proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def insecure_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proxy]:
    running = start_proxy(tmp_path_factory.mktemp("insecure-home"), "--insecure")
    yield running
    running.stop()


async def test_insecure_relays_a_self_signed_upstream_and_warns(
    insecure_proxy: Proxy, origin_certs: OriginCerts, nursery: trio.Nursery
) -> None:
    assert "WARNING: --insecure: upstream certificates are NOT verified" in insecure_proxy.log()
    bad = await start_origin(nursery, origin_certs.self_signed)
    result = await curl(insecure_proxy, bad.url("/content"))
    assert result.stdout == b"origin /content"
    await insecure_proxy.wait_for_log("/content [UNVERIFIED upstream: --insecure]")


async def test_without_insecure_the_same_upstream_is_refused(
    proxy: Proxy, origin_certs: OriginCerts, nursery: trio.Nursery
) -> None:
    bad = await start_origin(nursery, origin_certs.self_signed)
    result = await curl(proxy, "-i", bad.url("/content"))
    assert b"502 Bad Gateway" in result.stdout
    assert b"origin /content" not in result.stdout
    assert "WARNING: --insecure" not in proxy.log()
