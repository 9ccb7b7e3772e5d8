"""Graceful shutdown: SIGTERM/Ctrl-C lets flows in progress finish, a second one quits at once.

Each test starts its own proxy (the session proxy must keep running) and stops it by signal.
"""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.e2e.conftest import Origin, OriginCerts, Proxy, curl, start_proxy

pytestmark = pytest.mark.e2e


async def wait_exit(proxy: Proxy, seconds: float) -> int:
    with trio.fail_after(seconds):
        while (code := proxy.process.poll()) is None:  # noqa: ASYNC110 - a subprocess, no event
            await trio.sleep(0.02)
    return code


def refuses_connections(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(2)
        return sock.connect_ex(("127.0.0.1", port)) != 0


@pytest.fixture
def own_proxy(tmp_path: Path, origin_certs: OriginCerts) -> Iterator[Proxy]:
    har = tmp_path / "flows.har"
    proxy = start_proxy(
        tmp_path / "home", "--upstream-ca", str(origin_certs.ca_path), "--har", str(har)
    )
    yield proxy
    proxy.stop()


async def test_sigterm_lets_a_flow_in_progress_finish_and_writes_the_har(
    own_proxy: Proxy, origin: Origin, tmp_path: Path
) -> None:
    done: list[bytes] = []

    async def slow_request() -> None:
        result = await curl(own_proxy, origin.url("/slow"))
        done.append(result.stdout)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_request)
        with trio.fail_after(10):
            while origin.state.requests != ["/slow"]:  # noqa: ASYNC110 - polled origin state
                await trio.sleep(0.02)
        own_proxy.process.send_signal(signal.SIGTERM)
        await own_proxy.wait_for_log("stopped accepting")
        assert refuses_connections(own_proxy.port)
        origin.state.release.set()  # now the origin answers the flow in progress
    assert done == [b"finally"]
    assert await wait_exit(own_proxy, 10) == 0
    har = json.loads((tmp_path / "flows.har").read_text())
    (entry,) = har["log"]["entries"]
    assert entry["request"]["url"] == origin.url("/slow")
    assert entry["response"]["status"] == 200


async def test_second_signal_quits_without_waiting(own_proxy: Proxy, origin: Origin) -> None:
    async def stuck_request() -> None:
        await curl(own_proxy, origin.url("/slow"), max_time=20)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(stuck_request)
        with trio.fail_after(10):
            while origin.state.requests != ["/slow"]:  # noqa: ASYNC110 - polled origin state
                await trio.sleep(0.02)
        own_proxy.process.send_signal(signal.SIGINT)
        await own_proxy.wait_for_log("stopped accepting")
        own_proxy.process.send_signal(signal.SIGINT)
        # The flow is still held by the origin: only the second signal can end the process
        # this soon (the grace time is 10 s).
        assert await wait_exit(own_proxy, 5) == 0
        assert "again: closing every connection now" in own_proxy.log()
        origin.state.release.set()


async def test_idle_keep_alive_connections_do_not_hold_the_shutdown(
    own_proxy: Proxy, plain_origin: Origin
) -> None:
    # curl closes its connections when it exits, so hold one open by hand: a keep-alive client
    # between requests must not delay the exit.
    origin = plain_origin
    sock = await trio.open_tcp_stream("127.0.0.1", own_proxy.port)
    request = f"GET http://127.0.0.1:{origin.port}/idle HTTP/1.1\r\nHost: x\r\n\r\n"
    await sock.send_all(request.encode())
    with trio.fail_after(5):
        reply = await sock.receive_some(65536)
    assert reply.startswith(b"HTTP/1.1 ")
    own_proxy.process.send_signal(signal.SIGTERM)
    assert await wait_exit(own_proxy, 5) == 0
    await sock.aclose()
