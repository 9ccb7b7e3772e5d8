"""Upstream connections: host resolution, TCP and TLS under deadlines, errors mapped with reasons.

Test origins use certificates from trustme, never from mitmlite's own CA code.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gc
import re
import socket
import ssl
import warnings
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
import trustme

from mitmlite.errors import (
    ConfigError,
    UpstreamCertificateError,
    UpstreamError,
    UpstreamTimeoutError,
)
from mitmlite.http1 import authority
from mitmlite.streams import SEND_QUEUE
from mitmlite.tls.contexts import upstream_context
from mitmlite.upstream import (
    MAX_RESPONSE_HEAD,
    Destination,
    SessionCache,
    TCPConnector,
    Upstream,
    _tls_error,
    client_conn,
    open_tcp,
    resolve_host,
    start_tls,
)

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def ca_file(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("upstream-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return path


@pytest.fixture(scope="session")
def verifying_context(ca_file: Path) -> ssl.SSLContext:
    return upstream_context(extra_cas=[ca_file])


def server_context(cert: trustme.LeafCert) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(ctx)
    return ctx


@pytest.fixture(scope="session")
def good_server(ca: trustme.CA) -> ssl.SSLContext:
    return server_context(ca.issue_cert("good.test"))


async def serve_tls(stream: trio.abc.Stream, ctx: ssl.SSLContext, reply: bytes = b"") -> None:
    """The origin's side: handshake, optionally send ``reply``; a failed handshake just ends."""
    tls = trio.SSLStream(stream, ctx, server_side=True)
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        await tls.do_handshake()
        if reply:
            await tls.send_all(reply)


async def handshake_error(
    nursery: trio.Nursery, server: ssl.SSLContext, name: str, client: ssl.SSLContext
) -> UpstreamError:
    near, far = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_tls, far, server)
    try:
        with trio.fail_after(10), pytest.raises(UpstreamError) as info:
            await start_tls(near, name, client, 5)
    finally:
        await near.aclose()  # the origin's handshake ends too
    return info.value


async def closed_port() -> int:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port: int = listeners[0].socket.getsockname()[1]
    for listener in listeners:
        await listener.aclose()
    return port


# --- resolve_host ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST.", "localhost.", "app.localhost", "a.b.LocalHost"]
)
def test_localhost_names_resolve_to_loopback(host: str) -> None:
    assert resolve_host(host) == "127.0.0.1"


@pytest.mark.parametrize(
    "host",
    [
        "example.com",
        "Example.COM",
        "localhost.example",
        "notlocalhost",
        "xlocalhost",
        "::1",
        "10.0.0.1",
    ],
)
def test_other_names_are_unchanged(host: str) -> None:
    assert resolve_host(host) == host


# --- Destination ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dest", "origin"),
    [
        (Destination("a.test", 443, tls=True), "https://a.test"),
        (Destination("a.test", 8443, tls=True), "https://a.test:8443"),
        (Destination("a.test", 80, tls=False), "http://a.test"),
        (Destination("a.test", 443, tls=False), "http://a.test:443"),
        (Destination("::1", 8080, tls=False), "http://[::1]:8080"),
    ],
)
def test_destination_origin(dest: Destination, origin: str) -> None:
    assert dest.origin == origin


# --- open_tcp -------------------------------------------------------------------------------------


async def test_open_tcp_connects_to_a_listener() -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    try:
        stream = await open_tcp("localhost", port, 5)  # via resolve_host
        assert stream.socket.getpeername() == ("127.0.0.1", port)
        # Relay writes go out without waiting on trio's 16 KiB unsent limit (streams.py).
        limit = stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)
        assert limit == SEND_QUEUE
        await stream.aclose()
    finally:
        await listeners[0].aclose()


async def test_open_tcp_refused_is_a_502_with_the_reason() -> None:
    port = await closed_port()
    with pytest.raises(UpstreamError) as info:
        await open_tcp("127.0.0.1", port, 5)
    assert type(info.value) is UpstreamError
    assert str(info.value) == f"cannot connect to 127.0.0.1:{port}: Connection refused"
    assert info.value.status == 502
    assert isinstance(info.value.__cause__, OSError)


async def test_open_tcp_refused_names_the_host_as_given() -> None:
    port = await closed_port()
    with pytest.raises(UpstreamError, match=rf"^cannot connect to app\.localhost:{port}: "):
        await open_tcp("app.localhost", port, 5)


async def test_open_tcp_timeout_is_a_504(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    asked: list[tuple[str, int]] = []

    async def hang(host: str, port: int, **kwargs: object) -> trio.SocketStream:
        asked.append((host, port))
        await trio.sleep_forever()

    monkeypatch.setattr("mitmlite.upstream.trio.open_tcp_stream", hang)
    start = trio.current_time()
    with pytest.raises(UpstreamTimeoutError) as info:
        await open_tcp("slow.test", 8080, 3)
    assert str(info.value) == "connecting to slow.test:8080 timed out after 3 s"
    assert info.value.status == 504
    assert trio.current_time() - start == pytest.approx(3)
    assert asked == [("slow.test", 8080)]


async def test_open_tcp_timeout_connecting_to_an_address_is_a_504(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    # .localhost names resolve to an address, which is connected to directly.
    asked: list[tuple[str, int]] = []

    async def hang(address: str, port: int) -> trio.SocketStream:
        asked.append((address, port))
        await trio.sleep_forever()

    monkeypatch.setattr("mitmlite.upstream._connect_address", hang)
    with pytest.raises(UpstreamTimeoutError, match=r"^connecting to slow\.localhost:8080 timed"):
        await open_tcp("slow.localhost", 8080, 3)
    assert asked == [("127.0.0.1", 8080)]


async def test_open_tcp_fast_enough_is_no_timeout(
    monkeypatch: pytest.MonkeyPatch, autojump_clock: trio.testing.MockClock
) -> None:
    # Twin: a connect that takes less than the limit succeeds.
    a, b = trio.socket.socketpair()
    b.close()

    async def slow(host: str, port: int, **kwargs: object) -> trio.SocketStream:
        await trio.sleep(2.9)
        return trio.SocketStream(a)

    monkeypatch.setattr("mitmlite.upstream.trio.open_tcp_stream", slow)
    stream = await open_tcp("slow.test", 8080, 3)
    assert stream.socket is a
    await stream.aclose()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1"])
async def test_open_tcp_connects_to_an_address_directly(
    host: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def unused(*args: object, **kwargs: object) -> trio.SocketStream:
        raise AssertionError("an address needs no happy eyeballs")

    monkeypatch.setattr("mitmlite.upstream.trio.open_tcp_stream", unused)
    family = "::1" if ":" in host else "127.0.0.1"
    try:
        listeners = await trio.open_tcp_listeners(0, host=family)
    except OSError:
        pytest.skip("no IPv6 loopback on this machine")
    port = listeners[0].socket.getsockname()[1]
    with trio.fail_after(5):
        stream = await open_tcp(host, port, 5)
        server = await listeners[0].accept()
    await stream.send_all(b"hi")
    assert await server.receive_some() == b"hi"
    for closing in (stream, server, listeners[0]):
        await closing.aclose()


async def test_open_tcp_refused_address_leaves_no_socket_open() -> None:
    port = await closed_port()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        with pytest.raises(UpstreamError, match=f"^cannot connect to 127.0.0.1:{port}: "):
            await open_tcp("127.0.0.1", port, 5)
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []


# --- start_tls ------------------------------------------------------------------------------------


async def test_start_tls_verifies_a_good_origin(
    nursery: trio.Nursery, good_server: ssl.SSLContext, verifying_context: ssl.SSLContext
) -> None:
    near, far = trio.testing.memory_stream_pair()
    nursery.start_soon(serve_tls, far, good_server, b"hello")
    with trio.fail_after(10):
        tls = await start_tls(near, "good.test", verifying_context, 5)
        assert isinstance(tls, trio.SSLStream)
        assert tls.server_hostname == "good.test"
        assert await tls.receive_some() == b"hello"
    await tls.aclose()


async def test_start_tls_hostname_mismatch(
    nursery: trio.Nursery, good_server: ssl.SSLContext, verifying_context: ssl.SSLContext
) -> None:
    err = await handshake_error(nursery, good_server, "other.test", verifying_context)
    assert isinstance(err, UpstreamCertificateError)
    assert str(err) == (
        "upstream certificate verify failed: hostname mismatch, "
        "certificate is not valid for 'other.test'"
    )
    assert err.status == 502


async def test_start_tls_untrusted_issuer(
    nursery: trio.Nursery, good_server: ssl.SSLContext
) -> None:
    err = await handshake_error(nursery, good_server, "good.test", upstream_context())
    assert isinstance(err, UpstreamCertificateError)
    assert str(err) == "upstream certificate verify failed: unable to get local issuer certificate"


async def test_start_tls_untrusted_issuer_from_another_ca(
    nursery: trio.Nursery, good_server: ssl.SSLContext
) -> None:
    other = trustme.CA()
    with other.cert_pem.tempfile() as other_file:
        client = upstream_context(extra_cas=[Path(other_file)])
    err = await handshake_error(nursery, good_server, "good.test", client)
    assert isinstance(err, UpstreamCertificateError)
    assert str(err) == "upstream certificate verify failed: unable to get local issuer certificate"


async def test_start_tls_expired_certificate(
    nursery: trio.Nursery, ca: trustme.CA, verifying_context: ssl.SSLContext
) -> None:
    expired = ca.issue_cert(
        "good.test", not_before=NOW - dt.timedelta(days=30), not_after=NOW - dt.timedelta(days=1)
    )
    err = await handshake_error(nursery, server_context(expired), "good.test", verifying_context)
    assert isinstance(err, UpstreamCertificateError)
    assert str(err) == "upstream certificate verify failed: certificate has expired"


async def test_start_tls_handshake_timeout(
    autojump_clock: trio.testing.MockClock, verifying_context: ssl.SSLContext
) -> None:
    near, _far = trio.testing.memory_stream_pair()  # the origin never answers
    start = trio.current_time()
    with pytest.raises(UpstreamTimeoutError) as info:
        await start_tls(near, "good.test", verifying_context, 7)
    assert str(info.value) == "TLS handshake with good.test timed out after 7 s"
    assert info.value.status == 504
    assert trio.current_time() - start == pytest.approx(7)


async def test_start_tls_fractional_timeout_is_formatted_compactly(
    autojump_clock: trio.testing.MockClock, verifying_context: ssl.SSLContext
) -> None:
    near, _far = trio.testing.memory_stream_pair()
    with pytest.raises(UpstreamTimeoutError, match=r"timed out after 2\.5 s$"):
        await start_tls(near, "good.test", verifying_context, 2.5)


async def test_start_tls_peer_closes_during_handshake(
    nursery: trio.Nursery, verifying_context: ssl.SSLContext
) -> None:
    near, far = trio.testing.memory_stream_pair()

    async def hang_up() -> None:
        await far.receive_some()  # the ClientHello
        await far.aclose()

    nursery.start_soon(hang_up)
    with trio.fail_after(10), pytest.raises(UpstreamError) as info:
        await start_tls(near, "good.test", verifying_context, 5)
    assert type(info.value) is UpstreamError  # not a certificate error, not a timeout
    assert info.value.status == 502
    assert "good.test" in str(info.value)
    assert "\n" not in str(info.value)


async def test_start_tls_peer_speaks_plain_http(
    nursery: trio.Nursery, verifying_context: ssl.SSLContext
) -> None:
    near, far = trio.testing.memory_stream_pair()

    async def plain() -> None:
        await far.receive_some()
        await far.send_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")

    nursery.start_soon(plain)
    with trio.fail_after(10), pytest.raises(UpstreamError) as info:
        await start_tls(near, "good.test", verifying_context, 5)
    assert type(info.value) is UpstreamError
    assert str(info.value) == (
        "TLS handshake with good.test failed: the server does not speak TLS on this port "
        "(WRONG_VERSION_NUMBER)"
    )


# --- upstream_context -----------------------------------------------------------------------------


def test_upstream_context_verifies_by_default() -> None:
    ctx = upstream_context()
    assert ctx.verify_mode == ssl.CERT_REQUIRED
    assert ctx.check_hostname is True
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2


def test_upstream_context_insecure_disables_verification() -> None:
    ctx = upstream_context(insecure=True)
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.check_hostname is False


def test_upstream_context_loads_extra_cas(ca_file: Path) -> None:
    before = len(upstream_context().get_ca_certs())
    assert len(upstream_context(extra_cas=[ca_file]).get_ca_certs()) == before + 1


def test_upstream_context_missing_ca_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "ca.pem"
    with pytest.raises(ConfigError) as info:
        upstream_context(extra_cas=[missing])
    assert str(missing) in str(info.value)
    assert str(info.value).startswith(f"cannot load upstream CA {missing}: ")
    assert info.value.status is None


def test_upstream_context_garbage_ca_file(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match=re.escape(str(garbage))):
        upstream_context(extra_cas=[garbage])


# --- Upstream.reusable ----------------------------------------------------------------------------


def memory_upstream() -> Upstream:
    near, _far = trio.testing.memory_stream_pair()
    return Upstream("a.test", 80, near, h11.Connection(h11.CLIENT))


def test_idle_upstream_without_tcp_is_reusable() -> None:
    up = memory_upstream()
    assert up.key == ("a.test", 80)
    assert up.reusable()


def test_upstream_mid_request_is_not_reusable() -> None:
    up = memory_upstream()
    up.conn.send(h11.Request(method="POST", target="/", headers=[("Host", "a.test")]))
    assert up.conn.our_state is h11.SEND_BODY
    assert not up.reusable()


def test_upstream_waiting_for_response_is_not_reusable() -> None:
    up = memory_upstream()
    up.conn.send(h11.Request(method="GET", target="/", headers=[("Host", "a.test")]))
    up.conn.send(h11.EndOfMessage())
    assert up.conn.our_state is h11.DONE
    assert up.conn.their_state is h11.SEND_RESPONSE
    assert not up.reusable()


def test_upstream_after_connection_close_is_not_reusable() -> None:
    up = memory_upstream()
    headers = [("Host", "a.test"), ("Connection", "close")]
    up.conn.send(h11.Request(method="GET", target="/", headers=headers))
    up.conn.send(h11.EndOfMessage())
    up.conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    while up.conn.next_event() not in (h11.NEED_DATA, h11.PAUSED):
        pass
    assert up.conn.our_state is h11.MUST_CLOSE
    assert not up.reusable()


async def tcp_pair() -> tuple[trio.SocketStream, trio.SocketStream, trio.SocketListener]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    client = await trio.open_tcp_stream("127.0.0.1", port)
    server = await listener.accept()
    return client, server, listener


async def test_real_socket_idle_and_open_is_reusable() -> None:
    client, server, listener = await tcp_pair()
    try:
        up = Upstream("127.0.0.1", 1, client, h11.Connection(h11.CLIENT), tcp=client)
        assert up.reusable()
    finally:
        for resource in (client, server, listener):
            await resource.aclose()


async def test_real_socket_closed_by_peer_is_not_reusable() -> None:
    client, server, listener = await tcp_pair()
    try:
        up = Upstream("127.0.0.1", 1, client, h11.Connection(h11.CLIENT), tcp=client)
        await server.aclose()
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(client.socket)  # the FIN has arrived
        assert not up.reusable()
    finally:
        for resource in (client, server, listener):
            await resource.aclose()


async def test_real_socket_with_stray_bytes_is_not_reusable() -> None:
    client, server, listener = await tcp_pair()
    try:
        up = Upstream("127.0.0.1", 1, client, h11.Connection(h11.CLIENT), tcp=client)
        await server.send_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
        with trio.fail_after(5):
            await trio.lowlevel.wait_readable(client.socket)
        assert not up.reusable()
    finally:
        for resource in (client, server, listener):
            await resource.aclose()


async def test_closed_local_socket_is_not_reusable() -> None:
    client, server, listener = await tcp_pair()
    await client.aclose()
    up = Upstream("127.0.0.1", 1, client, h11.Connection(h11.CLIENT), tcp=client)
    assert not up.reusable()
    await server.aclose()
    await listener.aclose()


# --- TCPConnector ---------------------------------------------------------------------------------


async def serve_once(
    listener: trio.SocketListener, ctx: ssl.SSLContext | None, done: trio.Event
) -> None:
    stream = await listener.accept()
    try:
        if ctx is not None:
            await serve_tls(stream, ctx, b"hi")
        else:
            await stream.send_all(b"hi")
        await done.wait()
    finally:
        await stream.aclose()


async def run_connector(
    nursery: trio.Nursery,
    server_ctx: ssl.SSLContext | None,
    client_ctx: ssl.SSLContext,
    *,
    host: str = "127.0.0.1",
    tls: bool = False,
    server_name: str | None = None,
) -> Upstream:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]
    done = trio.Event()
    nursery.start_soon(serve_once, listeners[0], server_ctx, done)
    connector = TCPConnector(client_ctx, connect_timeout=5, handshake_timeout=5)
    try:
        with trio.fail_after(10):
            up = await connector(Destination(host, port, tls=tls, server_name=server_name))
            assert await up.stream.receive_some() == b"hi"
        await up.stream.aclose()
    finally:
        done.set()
        await listeners[0].aclose()
    assert up.key == (host, port)
    assert up.conn.our_role is h11.CLIENT
    return up


async def test_connector_plain_tcp_is_verified(
    nursery: trio.Nursery, verifying_context: ssl.SSLContext
) -> None:
    up = await run_connector(nursery, None, verifying_context, host="localhost")
    assert up.verified is True
    assert isinstance(up.stream, trio.SocketStream)
    assert up.tcp is up.stream


async def test_connector_plain_tcp_ignores_an_insecure_context(nursery: trio.Nursery) -> None:
    # Plain HTTP has nothing to verify, so --insecure does not mark it unverified.
    up = await run_connector(nursery, None, upstream_context(insecure=True))
    assert up.verified is True


async def test_connector_tls_verified(
    nursery: trio.Nursery, good_server: ssl.SSLContext, verifying_context: ssl.SSLContext
) -> None:
    up = await run_connector(
        nursery, good_server, verifying_context, tls=True, server_name="good.test"
    )
    assert up.verified is True
    assert isinstance(up.stream, trio.SSLStream)
    assert isinstance(up.tcp, trio.SocketStream)


async def test_connector_tls_insecure_is_unverified(
    nursery: trio.Nursery, good_server: ssl.SSLContext
) -> None:
    up = await run_connector(
        nursery, good_server, upstream_context(insecure=True), tls=True, server_name="wrong.test"
    )
    assert up.verified is False
    assert isinstance(up.stream, trio.SSLStream)


async def test_connector_tls_bad_certificate_raises(
    nursery: trio.Nursery, good_server: ssl.SSLContext
) -> None:
    with pytest.raises(UpstreamCertificateError, match="unable to get local issuer certificate"):
        await run_connector(
            nursery, good_server, upstream_context(), tls=True, server_name="good.test"
        )


async def test_connector_refused(verifying_context: ssl.SSLContext) -> None:
    port = await closed_port()
    connector = TCPConnector(verifying_context, connect_timeout=5, handshake_timeout=5)
    with pytest.raises(
        UpstreamError, match=f"^cannot connect to 127.0.0.1:{port}: Connection refused$"
    ):
        await connector(Destination("127.0.0.1", port, tls=True, server_name="good.test"))


# --- TLS session resumption -----------------------------------------------------------------------


async def serve_tls_forever(
    ctx: ssl.SSLContext, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    """Every connection: handshake, send ``hi`` (after the TLS 1.3 tickets), wait for the close."""

    async def handler(stream: trio.SocketStream) -> None:
        await serve_tls(stream, ctx, b"hi")
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.receive_some()
        await trio.aclose_forcefully(stream)

    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


def resuming_server(ca: trustme.CA, version: ssl.TLSVersion, *names: str) -> ssl.SSLContext:
    ctx = server_context(ca.issue_cert(*names))
    ctx.maximum_version = version
    return ctx


async def use(connector: TCPConnector, port: int, name: str, *, read: bool = True) -> bool:
    """Connect as ``name``; True when the handshake resumed a session."""
    with trio.fail_after(10):
        up = await connector(Destination("127.0.0.1", port, tls=True, server_name=name))
        assert isinstance(up.stream, trio.SSLStream)
        reused: bool = up.stream.session_reused
        if read:  # what the relay does with every response; it takes in TLS 1.3 tickets too
            assert await up.stream.receive_some() == b"hi"
        await up.stream.aclose()
    return reused


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2])
async def test_connector_resumes_the_session_of_the_same_name(
    nursery: trio.Nursery,
    ca: trustme.CA,
    verifying_context: ssl.SSLContext,
    version: ssl.TLSVersion,
) -> None:
    port = await nursery.start(serve_tls_forever, resuming_server(ca, version, "good.test"))
    connector = TCPConnector(verifying_context, connect_timeout=5, handshake_timeout=5)
    assert [await use(connector, port, "good.test") for _ in range(3)] == [False, True, True]


async def test_a_session_is_never_offered_to_another_name(
    nursery: trio.Nursery, ca: trustme.CA, verifying_context: ssl.SSLContext
) -> None:
    # Resuming skips the certificate and its verification: were the good.test session offered
    # for other.test, this connection would succeed without other.test ever being checked.
    server = resuming_server(ca, ssl.TLSVersion.TLSv1_3, "good.test")
    port = await nursery.start(serve_tls_forever, server)
    connector = TCPConnector(verifying_context, connect_timeout=5, handshake_timeout=5)
    assert await use(connector, port, "good.test") is False
    assert await use(connector, port, "good.test") is True
    with pytest.raises(UpstreamCertificateError, match=r"hostname mismatch.*'other\.test'"):
        await use(connector, port, "other.test")


async def test_a_name_valid_for_the_same_certificate_still_gets_its_own_handshake(
    nursery: trio.Nursery, ca: trustme.CA, verifying_context: ssl.SSLContext
) -> None:
    server = resuming_server(ca, ssl.TLSVersion.TLSv1_3, "a.test", "b.test")
    port = await nursery.start(serve_tls_forever, server)
    connector = TCPConnector(verifying_context, connect_timeout=5, handshake_timeout=5)
    assert await use(connector, port, "a.test") is False
    assert await use(connector, port, "b.test") is False
    assert await use(connector, port, "a.test") is True
    assert await use(connector, port, "b.test") is True


async def test_a_session_without_its_ticket_yet_is_not_offered(
    nursery: trio.Nursery, ca: trustme.CA, verifying_context: ssl.SSLContext
) -> None:
    # TLS 1.3 tickets come after the handshake; a connection that read nothing has none yet.
    server = resuming_server(ca, ssl.TLSVersion.TLSv1_3, "good.test")
    port = await nursery.start(serve_tls_forever, server)
    connector = TCPConnector(verifying_context, connect_timeout=5, handshake_timeout=5)
    assert await use(connector, port, "good.test", read=False) is False
    assert await use(connector, port, "good.test") is False
    assert await use(connector, port, "good.test") is True


async def test_session_cache_forgets_the_least_recently_used_name(
    nursery: trio.Nursery, ca: trustme.CA, verifying_context: ssl.SSLContext
) -> None:
    server = resuming_server(ca, ssl.TLSVersion.TLSv1_3, "a.test", "b.test", "c.test")
    port = await nursery.start(serve_tls_forever, server)
    connector = TCPConnector(verifying_context, 5, 5, sessions=SessionCache(limit=2))
    for name in ("a.test", "b.test", "c.test"):
        assert await use(connector, port, name) is False
    assert await use(connector, port, "c.test") is True
    assert await use(connector, port, "a.test") is False  # evicted by c.test


async def test_a_failed_verification_leaves_no_session(
    nursery: trio.Nursery, ca: trustme.CA, verifying_context: ssl.SSLContext
) -> None:
    port = await nursery.start(
        serve_tls_forever, resuming_server(ca, ssl.TLSVersion.TLSv1_3, "good.test")
    )
    connector = TCPConnector(verifying_context, connect_timeout=5, handshake_timeout=5)
    for _ in range(2):
        with pytest.raises(UpstreamCertificateError, match="hostname mismatch"):
            await use(connector, port, "other.test")
    assert connector.sessions.get(("127.0.0.1", port, "other.test")) is None


# --- client_conn: the response head limit --------------------------------------------------------


def _response_head_in_pieces(value_size: int) -> object:
    conn = client_conn()
    conn.send(h11.Request(method="GET", target="/", headers=[(b"Host", b"a.test")]))
    conn.send(h11.EndOfMessage())
    head = b"HTTP/1.1 200 OK\r\nX-Big: " + b"v" * value_size + b"\r\nContent-Length: 0\r\n\r\n"
    for start in range(0, len(head), 1024):  # as a slow origin or small TLS records deliver it
        conn.receive_data(head[start : start + 1024])
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event
    return h11.NEED_DATA


def test_a_response_head_of_100_kib_arriving_in_pieces_is_accepted() -> None:
    # h11's default (16 KiB) refused this: a 502 that mitmdump and browsers do not give.
    event = _response_head_in_pieces(100 * 1024)
    assert isinstance(event, h11.Response)
    assert len(dict(event.headers)[b"x-big"]) == 100 * 1024


def test_a_response_head_beyond_the_limit_is_refused() -> None:
    with pytest.raises(h11.RemoteProtocolError):
        _response_head_in_pieces(MAX_RESPONSE_HEAD + 1024)


def test_authority_brackets_ipv6() -> None:
    assert authority("::1", 443) == "[::1]:443"
    assert authority("a.test", 80) == "a.test:80"


@pytest.mark.parametrize(
    ("verify_message", "shown"),
    [
        ("Hostname mismatch, certificate is not valid for 'a.test'.", "hostname mismatch"),
        ("IP address mismatch, certificate is not valid for '127.0.0.1'.", "IP address mismatch"),
        ("EE certificate key too weak", "EE certificate key too weak"),
    ],
    ids=["word", "initialism", "abbreviation"],
)
def test_a_verify_reason_keeps_its_initialisms(verify_message: str, shown: str) -> None:
    # Lower-casing every first letter gave "iP address mismatch" and "eE certificate key".
    cause = ssl.SSLCertVerificationError()
    cause.verify_message = verify_message
    assert str(_tls_error("a.test", cause)).startswith(
        f"upstream certificate verify failed: {shown}"
    )
