"""Bad input from clients: each gets a clear error, and the proxy keeps serving everyone else."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from tests.e2e.conftest import Origin, OriginCerts, Proxy, curl, start_proxy

pytestmark = pytest.mark.e2e
DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@pytest.fixture(scope="module")
def strict_proxy(
    tmp_path_factory: pytest.TempPathFactory, origin_certs: OriginCerts
) -> Iterator[Proxy]:
    """A proxy with short deadlines, so slow clients are cut off within the test's patience."""
    home = tmp_path_factory.mktemp("strict-home")
    running = start_proxy(
        home,
        "--upstream-ca",
        str(origin_certs.ca_path),
        "--header-timeout",
        "1",
        "--handshake-timeout",
        "1",
        "--idle-timeout",
        "2",
    )
    yield running
    running.stop()


async def exchange(proxy: Proxy, data: bytes, *, half_close: bool = False) -> bytes:
    """Send raw bytes to the proxy and read until it closes (bounded)."""
    stream = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    async with stream:
        await stream.send_all(data)
        if half_close:
            await stream.send_eof()
        received = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                received += chunk
    return received


async def still_serves(proxy: Proxy, origin: Origin) -> None:
    result = await curl(proxy, origin.url("/next"))
    assert result.stdout == b"origin /next", result.stderr


async def test_garbage_bytes_get_a_400(proxy: Proxy, origin: Origin) -> None:
    reply = await exchange(proxy, b"\x00\x01garbage\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"malformed request" in reply
    await still_serves(proxy, origin)


async def test_tls_sent_to_the_plain_port_is_explained(proxy: Proxy, origin: Origin) -> None:
    # curl with an https:// proxy URL against the plain listener: its ClientHello arrives
    # where a proxy request should. An HTTP answer would be noise to a TLS client, so the
    # connection is closed and the log says what to change.
    result = await curl(proxy, "--proxy", f"https://127.0.0.1:{proxy.port}", "--proxy-insecure",
                        origin.url("/never"), max_time=10)  # fmt: skip
    assert result.returncode != 0
    await proxy.wait_for_log("client started TLS on the plain-HTTP proxy port")
    assert "/never" not in origin.state.requests
    await still_serves(proxy, origin)


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        (b"site.localhost", b"has no port"),
        (b"site.localhost:0", b"outside 1-65535"),
        (b"site.localhost:70000", b"outside 1-65535"),
        (b":443", b"empty host"),
    ],
)
async def test_malformed_connect_target_gets_a_400(
    proxy: Proxy, origin: Origin, target: bytes, reason: bytes
) -> None:
    reply = await exchange(proxy, b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n"), reply
    assert reason in reply.lower(), reply
    await still_serves(proxy, origin)


async def test_origin_form_to_the_proxy_gets_a_400(proxy: Proxy, origin: Origin) -> None:
    reply = await exchange(proxy, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b"origin-form" in reply


async def test_oversized_headers_get_a_431(proxy: Proxy, origin: Origin) -> None:
    head = b"GET http://site.localhost/ HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 100_000
    reply = await exchange(proxy, head + b"\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert reply.endswith(b"request header block exceeds 64 KiB\n")
    await still_serves(proxy, origin)


async def test_client_vanishing_mid_handshake(proxy: Proxy, origin: Origin) -> None:
    hello = (DATA_DIR / "clienthello_curl.bin").read_bytes()
    connect = b"CONNECT site.localhost:%d HTTP/1.1\r\nHost: x\r\n\r\n" % origin.port
    reply = await exchange(proxy, connect + hello[: len(hello) // 2], half_close=True)
    assert reply.startswith(b"HTTP/1.1 200 Connection established\r\n")
    await proxy.wait_for_log("client closed the connection inside its ClientHello")
    await still_serves(proxy, origin)


async def test_malformed_client_hello_is_logged(proxy: Proxy, origin: Origin) -> None:
    connect = b"CONNECT site.localhost:%d HTTP/1.1\r\nHost: x\r\n\r\n" % origin.port
    reply = await exchange(proxy, connect + b"\x16\x03\x01\x00\x05\x02\x00\x00\x01\x00")
    assert reply == b"HTTP/1.1 200 Connection established\r\n\r\n"
    await proxy.wait_for_log("handshake message type 2 is not ClientHello (1)")
    await still_serves(proxy, origin)


async def test_slowloris_is_cut_off_while_others_are_served(
    strict_proxy: Proxy, origin: Origin
) -> None:
    slow = await trio.open_tcp_stream("127.0.0.1", strict_proxy.port)
    async with slow:
        await slow.send_all(b"GET http://site.localhost/ HTTP/1.1\r\nHost: si")
        await still_serves(strict_proxy, origin)  # the slow client holds nobody up
        with trio.fail_after(5):
            reply = await slow.receive_some(65536)
    assert reply.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert reply.endswith(b"request head not received within 1 s\n")
    await still_serves(strict_proxy, origin)


async def test_silent_tunnel_is_closed_after_the_handshake_timeout(
    strict_proxy: Proxy, origin: Origin
) -> None:
    connect = b"CONNECT site.localhost:%d HTTP/1.1\r\nHost: x\r\n\r\n" % origin.port
    with trio.fail_after(8):
        reply = await exchange(strict_proxy, connect)
    assert reply == b"HTTP/1.1 200 Connection established\r\n\r\n"
    await still_serves(strict_proxy, origin)


async def test_connection_limit_queues_extra_clients(
    tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    limited = start_proxy(
        tmp_path, "--upstream-ca", str(origin_certs.ca_path), "--max-connections", "1"
    )
    try:
        holder = await trio.open_tcp_stream("127.0.0.1", limited.port)
        with trio.move_on_after(1) as waited:
            await curl(limited, origin.url("/queued"), max_time=5)
        assert waited.cancelled_caught  # the only slot is taken: the second client waits
        await holder.aclose()
        result = await curl(limited, origin.url("/served"))
        assert result.stdout == b"origin /served"
    finally:
        limited.stop()


async def test_a_request_framed_both_ways_is_refused_and_never_forwarded(
    proxy: Proxy, plain_origin: Origin
) -> None:
    # The request-smuggling shape (RFC 9112 §6.1): a server reading by length would take the
    # rest as a request of its own, on an upstream connection other clients share.
    url = plain_origin.url("/echo", host="127.0.0.1", scheme="http").encode()
    hidden = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    reply = await exchange(
        proxy,
        b"POST " + url + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + hidden,
    )
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert reply.endswith(b"request has both Content-Length and Transfer-Encoding\n")
    assert plain_origin.state.requests == []
    # The twin: the same body framed only by chunking goes through.
    reply = await exchange(
        proxy,
        b"POST " + url + b" HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n4\r\nbody\r\n0\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert plain_origin.state.requests == ["/echo"]
