"""One client connection over memory streams: CONNECT, the peek, interception with our leaf."""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from mitmlite.ca.authority import RootCA, create_root
from mitmlite.ca.cache import LeafCache
from mitmlite.config import Config, Timeouts
from mitmlite.connection import SILENT_CLIENT_GRACE, ConnectionEnv, handle_client
from mitmlite.relay import RelayEnv
from mitmlite.upstream import Destination, Upstream
from tests.fakes import MemoryConnector, Sink
from tests.origin import OriginState

NOW = dt.datetime.now(dt.UTC)


@pytest.fixture(scope="module")
def root() -> RootCA:
    return create_root("mitmlite test CA", NOW)


@pytest.fixture(scope="module")
def root_file(root: RootCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("root") / "rootCA.pem"
    path.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    return path


@dataclass
class Setup:
    client: trio.abc.Stream
    connector: MemoryConnector
    sink: Sink


async def start(
    nursery: trio.Nursery, root: RootCA, tmp_path: Path, config: Config | None = None
) -> Setup:
    connector = MemoryConnector(nursery, OriginState())
    sink = Sink()
    env = ConnectionEnv(RelayEnv(config or Config(), connector, sink), LeafCache(root, tmp_path))
    client, proxy_end = trio.testing.memory_stream_pair()

    async def run() -> None:
        async with proxy_end:
            await handle_client(env, proxy_end)

    nursery.start_soon(run)
    return Setup(client, connector, sink)


async def connect(setup: Setup, target: bytes) -> bytes:
    await setup.client.send_all(
        b"CONNECT " + target + b" HTTP/1.1\r\nHost: " + target + b"\r\n\r\n"
    )
    return bytes(await setup.client.receive_some(65536))


def client_context(cafile: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.verify_flags |= ssl.VERIFY_X509_STRICT
    return ctx


async def get_over(stream: trio.abc.Stream, host: bytes, target: bytes) -> tuple[int, bytes]:
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method="GET", target=target, headers=[(b"Host", host)])
    await stream.send_all((conn.send(request) or b"") + (conn.send(h11.EndOfMessage()) or b""))
    status, body = 0, b""
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            conn.receive_data(bytes(await stream.receive_some(65536)))
        elif isinstance(event, h11.Response):
            status = event.status_code
        elif isinstance(event, h11.Data):
            body += event.data
        elif isinstance(event, h11.EndOfMessage):
            return status, body


async def test_connect_is_intercepted_with_a_leaf_for_the_sni(
    nursery: trio.Nursery, root: RootCA, root_file: Path, tmp_path: Path
) -> None:
    setup = await start(nursery, root, tmp_path)
    assert await connect(setup, b"site.test:8443") == b"HTTP/1.1 200 Connection established\r\n\r\n"
    tls = trio.SSLStream(setup.client, client_context(root_file), server_hostname="site.test")
    await tls.do_handshake()
    assert tls.selected_alpn_protocol() is None or tls.selected_alpn_protocol() == "http/1.1"
    assert await get_over(tls, b"site.test", b"/hi") == (200, b"origin /hi")
    assert setup.connector.dests == [
        Destination("site.test", 8443, tls=True, server_name="site.test")
    ]
    await trio.testing.wait_all_tasks_blocked()
    assert [f.url for f in setup.sink.flows] == ["https://site.test:8443/hi"]


async def test_ip_target_gets_an_ip_san(
    nursery: trio.Nursery, root: RootCA, root_file: Path, tmp_path: Path
) -> None:
    setup = await start(nursery, root, tmp_path)
    await connect(setup, b"127.0.0.1:443")
    tls = trio.SSLStream(setup.client, client_context(root_file), server_hostname="127.0.0.1")
    await tls.do_handshake()
    der = tls.getpeercert(binary_form=True)
    assert der is not None
    san = x509.load_der_x509_certificate(der).extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    )
    assert [str(ip) for ip in san.value.get_values_for_type(x509.IPAddress)] == ["127.0.0.1"]
    assert san.value.get_values_for_type(x509.DNSName) == []


async def test_client_trusting_another_ca_fails_and_is_logged(
    nursery: trio.Nursery, root: RootCA, tmp_path: Path
) -> None:
    other = create_root("someone else", NOW)
    other_file = tmp_path / "other.pem"
    other_file.write_bytes(other.cert.public_bytes(serialization.Encoding.PEM))
    setup = await start(nursery, root, tmp_path / "leaves")
    await connect(setup, b"site.test:443")
    tls = trio.SSLStream(setup.client, client_context(other_file), server_hostname="site.test")
    with pytest.raises(trio.BrokenResourceError):
        await tls.do_handshake()
    # trio does not flush the client's alert over a memory stream; closing stands in for it (the
    # alert itself is checked with curl in tests/e2e).
    await setup.client.aclose()
    await trio.testing.wait_all_tasks_blocked()
    assert setup.sink.events == [
        "site.test error: client closed the connection during the TLS handshake"
    ]
    # The upstream was opened alongside the handshake (tests/test_preconnect.py checks that it
    # is closed again); nothing was ever asked of it.
    assert setup.connector.state.requests == []
    assert setup.sink.flows == []


async def test_plain_http_inside_connect_is_relayed_as_http(
    nursery: trio.Nursery, root: RootCA, tmp_path: Path
) -> None:
    setup = await start(nursery, root, tmp_path)
    await connect(setup, b"plain.test:80")
    assert await get_over(setup.client, b"plain.test", b"/p") == (200, b"origin /p")
    assert setup.connector.dests == [Destination("plain.test", 80, tls=False)]


async def test_bad_connect_target_is_a_400(
    nursery: trio.Nursery, root: RootCA, tmp_path: Path
) -> None:
    setup = await start(nursery, root, tmp_path)
    reply = await connect(setup, b"no-port.test")
    assert reply.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert reply.endswith(b"CONNECT target 'no-port.test' has no port\n")


async def test_silent_client_after_connect_gets_a_raw_tunnel(
    nursery: trio.Nursery, root: RootCA, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    config = Config(timeouts=Timeouts(handshake=3))
    setup = await start(nursery, root, tmp_path, config)
    await connect(setup, b"smtp.test:25")
    # Nothing from the client for a moment: the server may speak first (SMTP, IMAP), so the
    # origin is opened raw then, and stays a raw pipe when neither side speaks in time.
    await trio.sleep(SILENT_CLIENT_GRACE - 0.1)
    assert setup.connector.dests == []
    await trio.sleep(0.2)
    assert setup.connector.dests == [Destination("smtp.test", 25, tls=False, tunnel=True)]
    await trio.sleep(3)
    assert setup.connector.dests == [Destination("smtp.test", 25, tls=False, tunnel=True)]


@dataclass
class GreetingConnector:
    """Origins that greet first, as SMTP does, then echo each line back."""

    nursery: trio.Nursery
    dests: list[Destination]

    async def __call__(self, dest: Destination) -> Upstream:
        await trio.lowlevel.checkpoint()
        self.dests.append(dest)
        near, far = trio.testing.memory_stream_pair()

        async def serve() -> None:
            async with far:
                await far.send_all(b"220 smtp.test ESMTP ready\r\n")
                while data := await far.receive_some(65536):
                    await far.send_all(b"250 " + bytes(data))

        self.nursery.start_soon(serve)
        return Upstream(dest.host, dest.port, near, h11.Connection(h11.CLIENT))


async def test_a_server_that_speaks_first_is_heard_at_once(
    nursery: trio.Nursery, root: RootCA, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    connector = GreetingConnector(nursery, [])
    config = Config(timeouts=Timeouts(handshake=10))
    env = ConnectionEnv(RelayEnv(config, connector, Sink()), LeafCache(root, tmp_path))
    client, proxy_end = trio.testing.memory_stream_pair()

    async def run() -> None:
        async with proxy_end:
            await handle_client(env, proxy_end)

    nursery.start_soon(run)
    await client.send_all(b"CONNECT smtp.test:25 HTTP/1.1\r\nHost: smtp.test:25\r\n\r\n")
    assert await client.receive_some(65536) == b"HTTP/1.1 200 Connection established\r\n\r\n"
    started = trio.current_time()
    assert await client.receive_some(65536) == b"220 smtp.test ESMTP ready\r\n"
    # After the grace, not after the 10 s handshake timeout (mitmproxy: at once).
    assert trio.current_time() - started < SILENT_CLIENT_GRACE + 0.1
    await client.send_all(b"EHLO me\r\n")
    assert await client.receive_some(65536) == b"250 EHLO me\r\n"
    assert connector.dests == [Destination("smtp.test", 25, tls=False, tunnel=True)]


async def test_a_tls_client_slower_than_the_grace_is_still_intercepted(
    nursery: trio.Nursery, root: RootCA, root_file: Path, tmp_path: Path
) -> None:
    # The twin: the raw upstream opened while the client was silent is closed again, and the
    # client's TLS is intercepted as usual.
    setup = await start(nursery, root, tmp_path)
    await connect(setup, b"site.test:8443")
    await trio.sleep(SILENT_CLIENT_GRACE + 0.2)
    tls = trio.SSLStream(setup.client, client_context(root_file), server_hostname="site.test")
    await tls.do_handshake()
    assert await get_over(tls, b"site.test", b"/hi") == (200, b"origin /hi")
    assert setup.connector.dests == [
        Destination("site.test", 8443, tls=False, tunnel=True),
        Destination("site.test", 8443, tls=True, server_name="site.test"),
    ]
    assert setup.connector.state.requests == ["/hi"]
