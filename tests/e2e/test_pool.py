"""Upstream connections shared across client connections, seen from the origin."""

from __future__ import annotations

import pytest
import trio

from tests.e2e.conftest import Origin, Proxy, curl

pytestmark = pytest.mark.e2e


async def settle(proxy: Proxy, text: str) -> None:
    await proxy.wait_for_log(text)
    await trio.sleep(0.2)  # the first tunnel's close reaches the proxy after curl exits


async def test_two_curls_share_one_upstream_connection(proxy: Proxy, origin: Origin) -> None:
    first = await curl(proxy, origin.url("/first", "b.localhost"))
    assert first.stdout == b"origin /first"
    await settle(proxy, f"{origin.url('/first', 'b.localhost')} -> 200")
    second = await curl(proxy, origin.url("/second", "b.localhost"))
    assert second.stdout == b"origin /second"
    assert origin.state.connections == 1


async def test_ntlm_connections_are_not_shared(proxy: Proxy, origin: Origin) -> None:
    url = origin.url("/ntlm", "c.localhost")
    await curl(proxy, "-H", "Authorization: NTLM TlRMTVNTUAABAAAA", url)
    await settle(proxy, f"{url} -> 200")
    await curl(proxy, origin.url("/after", "c.localhost"))
    assert origin.state.connections == 2


async def test_another_server_name_gets_its_own_connection(proxy: Proxy, origin: Origin) -> None:
    await curl(proxy, origin.url("/x", "a.localhost"))
    await settle(proxy, f"{origin.url('/x', 'a.localhost')} -> 200")
    # Same address and port, another name: a connection verified for a.localhost is not reused.
    await curl(proxy, origin.url("/y", "site.localhost"))
    assert origin.state.connections == 2
