"""Python's ``ssl`` (OpenSSL underneath) with strict X.509 verification through the tunnel.

Blocking sockets run in worker threads (the origin lives in the test's trio loop); every socket
has a timeout, so a proxy that stalls fails the test instead of hanging it.
"""

from __future__ import annotations

import http.client
import json
import socket
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio

from tests.e2e.conftest import Origin, OriginCerts, Proxy

pytestmark = pytest.mark.e2e

TIMEOUT = 10.0


def strict_context(cafile: Path) -> ssl.SSLContext:
    """Only ``cafile`` trusted, VERIFY_X509_STRICT on, no partial chains, host names checked."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    ctx.verify_flags &= ~ssl.VERIFY_X509_PARTIAL_CHAIN
    ctx.set_alpn_protocols(["http/1.1"])
    assert ctx.check_hostname
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    return ctx


def open_tunnel(proxy: Proxy, host: str, port: int) -> socket.socket:
    """A blocking socket to the proxy on which CONNECT ``host:port`` got a 200."""
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT)
    try:
        sock.sendall(f"CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode())
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            byte = sock.recv(1)  # one byte at a time: nothing after the head may be consumed
            assert byte, f"proxy closed the connection after {head!r}"
            head += byte
        assert head.startswith(b"HTTP/1.1 200 "), head
    except BaseException:
        sock.close()
        raise
    return sock


def get(tls: ssl.SSLSocket, host: str, port: int, path: str) -> tuple[int, bytes]:
    """One GET with Connection: close on an established TLS socket."""
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n".encode())
    response = http.client.HTTPResponse(tls)
    response.begin()
    return response.status, response.read()


async def in_thread(fn: Callable[[], Any]) -> Any:
    return await trio.to_thread.run_sync(fn)


def tunnel_get(
    proxy: Proxy, ctx: ssl.SSLContext, connect_host: str, server_hostname: str, port: int
) -> tuple[dict[str, Any], str | None, tuple[int, bytes]]:
    """CONNECT to ``connect_host``, handshake for ``server_hostname``: (peer cert, ALPN, GET)."""
    with (
        open_tunnel(proxy, connect_host, port) as sock,
        ctx.wrap_socket(sock, server_hostname=server_hostname) as tls,
    ):
        cert = tls.getpeercert()
        assert cert is not None
        return cert, tls.selected_alpn_protocol(), get(tls, connect_host, port, "/strict")


async def test_strict_verification_through_the_tunnel(proxy: Proxy, origin: Origin) -> None:
    ctx = strict_context(proxy.ca_path)
    cert, alpn, (status, body) = await in_thread(
        lambda: tunnel_get(proxy, ctx, "site.localhost", "site.localhost", origin.port)
    )
    assert cert["subjectAltName"] == (("DNS", "site.localhost"),)
    assert (("organizationName", "mitmlite"),) in cert["issuer"]
    assert alpn == "http/1.1"
    assert (status, body) == (200, b"origin /strict")
    assert origin.state.requests == ["/strict"]


async def test_context_trusting_only_the_origin_ca_fails(
    proxy: Proxy, origin: Origin, origin_certs: OriginCerts
) -> None:
    ctx = strict_context(origin_certs.ca_path)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        await in_thread(
            lambda: tunnel_get(proxy, ctx, "site.localhost", "site.localhost", origin.port)
        )
    # The proxy sends its root along with the leaf, so OpenSSL finds an untrusted root in the chain.
    assert info.value.verify_code == 19  # X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
    assert origin.state.requests == []


async def test_leaf_follows_the_sni(proxy: Proxy, origin: Origin) -> None:
    ctx = strict_context(proxy.ca_path)
    cert, _, (status, _) = await in_thread(
        lambda: tunnel_get(proxy, ctx, "a.localhost", "a.localhost", origin.port)
    )
    assert cert["subjectAltName"] == (("DNS", "a.localhost"),)  # a.localhost and nothing else
    assert status == 200


async def test_ip_target_without_sni_verifies_its_ip(proxy: Proxy, origin: Origin) -> None:
    # Python sends no SNI for an IP server_hostname: the leaf is minted for the CONNECT host.
    ctx = strict_context(proxy.ca_path)
    cert, _, (status, body) = await in_thread(
        lambda: tunnel_get(proxy, ctx, "127.0.0.1", "127.0.0.1", origin.port)
    )
    assert cert["subjectAltName"] == (("IP Address", "127.0.0.1"),)
    assert (status, body) == (200, b"origin /strict")


async def test_leaf_for_one_name_does_not_verify_for_another(proxy: Proxy, origin: Origin) -> None:
    # The hostname twin: no SNI again (IP server_hostname), but CONNECT to a.localhost, so the
    # leaf is minted for a.localhost and must fail the check against 127.0.0.1.
    ctx = strict_context(proxy.ca_path)
    with pytest.raises(ssl.SSLCertVerificationError) as info:
        await in_thread(lambda: tunnel_get(proxy, ctx, "a.localhost", "127.0.0.1", origin.port))
    assert info.value.verify_code == 64  # X509_V_ERR_IP_ADDRESS_MISMATCH
    assert origin.state.requests == []


def _several_requests(
    proxy: Proxy, ctx: ssl.SSLContext, port: int, paths: list[str]
) -> list[tuple[int, bytes]]:
    conn = http.client.HTTPSConnection("127.0.0.1", proxy.port, timeout=TIMEOUT, context=ctx)
    conn.set_tunnel("site.localhost", port)
    results = []
    try:
        first_sock = None
        for path in paths:
            conn.request("GET", path)
            response = conn.getresponse()
            results.append((response.status, response.read()))
            first_sock = first_sock or conn.sock
            assert conn.sock is first_sock  # kept alive: no reconnect between requests
    finally:
        conn.close()
    return results


async def test_http_client_set_tunnel_keeps_one_connection(proxy: Proxy, origin: Origin) -> None:
    ctx = strict_context(proxy.ca_path)
    paths = ["/one", "/two", "/echo", "/bytes/100000"]
    results = await in_thread(lambda: _several_requests(proxy, ctx, origin.port, paths))
    assert [status for status, _ in results] == [200, 200, 200, 200]
    assert results[0][1] == b"origin /one"
    assert results[1][1] == b"origin /two"
    echo = json.loads(results[2][1])
    assert ["Host", f"site.localhost:{origin.port}"] in echo["headers"]
    assert len(results[3][1]) == 100000
    assert origin.state.requests == paths
    assert origin.state.connections == 1


async def test_http_client_set_tunnel_untrusting_context_fails(
    proxy: Proxy, origin: Origin, origin_certs: OriginCerts
) -> None:
    ctx = strict_context(origin_certs.ca_path)
    with pytest.raises(ssl.SSLCertVerificationError):
        await in_thread(lambda: _several_requests(proxy, ctx, origin.port, ["/one"]))
    assert origin.state.requests == []


def _read_after_connection_close(proxy: Proxy, ctx: ssl.SSLContext, port: int) -> str:
    with open_tunnel(proxy, "site.localhost", port) as sock:
        tls = ctx.wrap_socket(sock, server_hostname="site.localhost", suppress_ragged_eofs=False)
        with tls:
            status, body = get(tls, "site.localhost", port, "/bytes/10")
            assert (status, len(body)) == (200, 10)
            try:
                return "close_notify" if tls.recv(1) == b"" else "more data"
            except ssl.SSLEOFError:
                return "TCP close without close_notify"


# RFC 8446 §6.1: each party MUST send close_notify before closing its write side. Without it a
# client cannot tell a complete close-delimited response from a truncated one.
async def test_connection_close_ends_with_close_notify(proxy: Proxy, origin: Origin) -> None:
    ctx = strict_context(proxy.ca_path)
    ending = await in_thread(lambda: _read_after_connection_close(proxy, ctx, origin.port))
    assert ending == "close_notify"
