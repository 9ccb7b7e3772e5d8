"""Passthrough tunnels and ClientHello capture, with curl.

A passthrough tunnel is proven by the certificate the client sees: curl trusting only the
*origin's* test CA succeeds through a tunnel mitmlite did not touch, and fails (its twin) through
one mitmlite intercepted, whose leaf comes from the mitmlite CA.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.e2e.conftest import Origin, OriginCerts, Proxy, curl, start_proxy
from tests.scripting import write

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    started: list[Proxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def launch(proxies: list[Proxy], home: Path, certs: OriginCerts, *args: str) -> Proxy:
    proxy = start_proxy(home, "--upstream-ca", str(certs.ca_path), *args)
    proxies.append(proxy)
    return proxy


async def origin_ca_curl(proxy: Proxy, certs: OriginCerts, url: str) -> int:
    """curl through the proxy trusting only the origin's CA; returns curl's exit code."""
    result = await curl(proxy, "--cacert", str(certs.ca_path), "-o", "/dev/null", url)
    return result.returncode


async def test_ignore_hosts_tunnels_untouched_and_intercepts_the_rest(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    proxy = launch(proxies, tmp_path / "home", origin_certs, "--ignore-hosts", r"^a\.localhost:")
    assert await origin_ca_curl(proxy, origin_certs, origin.url("/p", "a.localhost")) == 0
    await proxy.wait_for_log(f"a.localhost:{origin.port} passthrough (--ignore-hosts) closed")
    # The twin: b.localhost is intercepted, so a client trusting only the origin CA refuses it.
    assert await origin_ca_curl(proxy, origin_certs, origin.url("/p", "b.localhost")) == 60


async def test_allow_hosts_intercepts_only_those(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    proxy = launch(proxies, tmp_path / "home", origin_certs, "--allow-hosts", r"^b\.localhost:")
    assert await origin_ca_curl(proxy, origin_certs, origin.url("/p", "a.localhost")) == 0
    assert await origin_ca_curl(proxy, origin_certs, origin.url("/p", "b.localhost")) == 60
    result = await curl(proxy, origin.url("/seen", "b.localhost"))
    assert result.stdout == b"origin /seen"


async def test_auto_passthrough_learns_from_a_client_that_refuses_our_certificate(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    proxy = launch(proxies, tmp_path / "home", origin_certs, "--auto-passthrough")
    url = origin.url("/pinned", "c.localhost")
    assert await origin_ca_curl(proxy, origin_certs, url) == 60  # refuses the mitmlite leaf
    await proxy.wait_for_log("client does not trust the mitmlite CA for c.localhost")
    await proxy.wait_for_log("tunnelled untouched from its next connection on")
    assert await origin_ca_curl(proxy, origin_certs, url) == 0  # now passed through
    # Only that host was learnt: another one is still intercepted.
    assert await origin_ca_curl(proxy, origin_certs, origin.url("/p", "a.localhost")) == 60


async def test_without_auto_passthrough_a_refusing_client_keeps_failing(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    proxy = launch(proxies, tmp_path / "home", origin_certs)
    url = origin.url("/pinned", "c.localhost")
    assert await origin_ca_curl(proxy, origin_certs, url) == 60
    assert await origin_ca_curl(proxy, origin_certs, url) == 60
    assert "tunnelled untouched" not in proxy.log()


async def test_clienthello_log_and_verbose_line(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    hellos = tmp_path / "hellos.jsonl"
    proxy = launch(proxies, tmp_path / "home", origin_certs, "--clienthello-log", str(hellos),
                   "-v", "--ignore-hosts", r"^a\.localhost:")  # fmt: skip
    await curl(proxy, origin.url("/one", "site.localhost"))
    await origin_ca_curl(proxy, origin_certs, origin.url("/two", "a.localhost"))
    await proxy.wait_for_log("passthrough (--ignore-hosts) closed")
    records = [json.loads(line) for line in hellos.read_text().splitlines()]
    assert [r["sni"] for r in records] == ["site.localhost", "a.localhost"]  # both recorded
    first = records[0]
    assert first["target"] == f"site.localhost:{origin.port}"
    assert first["ja4"].startswith("t13d")
    assert len(first["ja3"]) == 32
    assert "http/1.1" in first["alpn"]
    assert first["cipher_suites"]
    assert first["signature_algorithms"]
    assert "ClientHello sni=site.localhost alpn=" in proxy.log()
    assert f"ja4={first['ja4']}" in proxy.log()


async def test_tls_clienthello_hook_can_ignore_a_connection(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    script = write(tmp_path / "hello.py", """
        seen = []
        def tls_clienthello(data):
            seen.append(data.ja4)
            if data.sni == "a.localhost":
                data.ignore_connection = True
    """)  # fmt: skip
    proxy = launch(proxies, tmp_path / "home", origin_certs, "-s", str(script))
    assert await origin_ca_curl(proxy, origin_certs, origin.url("/p", "a.localhost")) == 0
    await proxy.wait_for_log("passthrough (a tls_clienthello hook) closed")
    assert await origin_ca_curl(proxy, origin_certs, origin.url("/p", "b.localhost")) == 60


async def test_a_server_that_speaks_first_reaches_the_client_at_once(
    proxy: Proxy, nursery: trio.Nursery
) -> None:
    # SMTP, IMAP, FTP and MySQL servers greet first; their clients wait for it, often for less
    # than the proxy's 10 s handshake timeout.
    async def greet(stream: trio.SocketStream) -> None:
        async with stream:
            await stream.send_all(b"220 mail.localhost ESMTP\r\n")
            while data := await stream.receive_some(65536):
                await stream.send_all(b"250 " + data)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, greet, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    async with client:
        await client.send_all(b"CONNECT mail.localhost:%d HTTP/1.1\r\nHost: x\r\n\r\n" % port)
        with trio.fail_after(3):
            reply = b""
            while b"220 " not in reply:
                reply += await client.receive_some(65536)
            established = b"HTTP/1.1 200 Connection established\r\n\r\n"
            assert reply == established + b"220 mail.localhost ESMTP\r\n"
            await client.send_all(b"EHLO me\r\n")
            assert await client.receive_some(65536) == b"250 EHLO me\r\n"
