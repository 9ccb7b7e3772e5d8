"""Protocols other than HTTP inside an intercepted TLS tunnel (IMAPS, SMTPS, MQTT over TLS...).

The proxy still takes the client's TLS and verifies the upstream's; between the two it relays
bytes as they come once they are not HTTP, whichever side speaks first, as mitmproxy does.
"""

from __future__ import annotations

import functools
import ssl

import pytest
import trio

from tests.e2e.conftest import OriginCerts, Proxy
from tests.e2e.test_python_ssl import TIMEOUT, open_tunnel, strict_context

pytestmark = pytest.mark.e2e


async def serve_line_protocol(
    nursery: trio.Nursery, context: ssl.SSLContext, *, greet: bool
) -> int:
    """A TLS server that greets first (IMAP style) if ``greet``, then echoes each line."""

    async def handler(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, context, server_side=True)
        try:
            if greet:
                await tls.send_all(b"* OK ready\r\n")
            while data := await tls.receive_some(65536):
                await tls.send_all(b"ECHO: " + data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await trio.aclose_forcefully(tls)

    listeners = await nursery.start(functools.partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


def converse(proxy: Proxy, port: int, *, expect_greeting: bool) -> list[bytes]:
    """Through the proxy to site.localhost:port: what the server says first, then an echo."""
    raw = open_tunnel(proxy, "site.localhost", port)
    with strict_context(proxy.ca_path).wrap_socket(raw, server_hostname="site.localhost") as tls:
        tls.settimeout(TIMEOUT)
        heard = [tls.recv(1024)] if expect_greeting else []
        tls.sendall(b"HELLO\r\n")
        heard.append(tls.recv(1024))
        return heard


async def test_a_client_speaking_first_is_relayed_decrypted(
    proxy: Proxy, origin_certs: OriginCerts, nursery: trio.Nursery
) -> None:
    port = await serve_line_protocol(nursery, origin_certs.good, greet=False)
    with trio.fail_after(2 * TIMEOUT):  # was a 408 after 30 s: it was read as HTTP
        heard = await trio.to_thread.run_sync(lambda: converse(proxy, port, expect_greeting=False))
    assert heard == [b"ECHO: HELLO\r\n"]


async def test_a_server_greeting_first_reaches_the_silent_client(
    proxy: Proxy, origin_certs: OriginCerts, nursery: trio.Nursery
) -> None:
    port = await serve_line_protocol(nursery, origin_certs.good, greet=True)
    with trio.fail_after(2 * TIMEOUT):
        heard = await trio.to_thread.run_sync(lambda: converse(proxy, port, expect_greeting=True))
    assert heard == [b"* OK ready\r\n", b"ECHO: HELLO\r\n"]


async def test_an_unverified_upstream_gets_no_bytes_relayed(
    proxy: Proxy, origin_certs: OriginCerts, nursery: trio.Nursery
) -> None:
    # The twin: the raw relay is only ever to an upstream whose certificate verified.
    port = await serve_line_protocol(nursery, origin_certs.self_signed, greet=True)

    def attempt() -> bytes:
        raw = open_tunnel(proxy, "site.localhost", port)
        context = strict_context(proxy.ca_path)
        with context.wrap_socket(raw, server_hostname="site.localhost") as tls:
            tls.settimeout(TIMEOUT)
            tls.sendall(b"HELLO\r\n")
            try:
                return tls.recv(1024)
            except (TimeoutError, ssl.SSLError, ConnectionError):
                return b""

    with trio.fail_after(2 * TIMEOUT):
        reply = await trio.to_thread.run_sync(attempt)
    assert b"ECHO" not in reply
    assert b"OK ready" not in reply
    await proxy.wait_for_log("upstream certificate verify failed")
