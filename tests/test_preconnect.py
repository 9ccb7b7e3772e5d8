"""Pre-connecting intercepted tunnels: the upstream opens alongside the client's TLS handshake.

Unit tests drive ``Preconnect`` with an in-memory connector whose far ends the test holds; the
connection tests run ``handle_client`` over a memory stream against real TLS origins on
127.0.0.1 whose certificates come from trustme, verified by the real ``TCPConnector``.
"""

from __future__ import annotations

import datetime as dt
import ssl
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio
import trio.testing
import trustme
from cryptography.hazmat.primitives import serialization

from mitmlite.ca.authority import RootCA, create_root
from mitmlite.ca.cache import LeafCache
from mitmlite.config import Config, Timeouts
from mitmlite.connection import ConnectionEnv, handle_client
from mitmlite.errors import UpstreamCertificateError, UpstreamError
from mitmlite.hooks import HookRunner
from mitmlite.relay import RelayEnv
from mitmlite.scripts import Scripts
from mitmlite.tls.contexts import upstream_context
from mitmlite.upstream import Connector, Destination, Preconnect, TCPConnector, Upstream
from tests.fakes import Sink
from tests.origin import OriginState, serve_origin, serve_origin_tcp
from tests.scripting import isolated_imports, write  # noqa: F401 - autouse fixture
from tests.test_connection import get_over as get

NOW = dt.datetime.now(dt.UTC)
DEST = Destination("site.test", 443, tls=True, server_name="site.test")


# --- an in-memory connector that keeps the origin's ends -----------------------------------------


@dataclass
class Recorder:
    """Each call returns an upstream over a fresh memory stream pair; ``far`` holds the far ends."""

    far: list[trio.abc.Stream] = field(default_factory=list)
    dests: list[Destination] = field(default_factory=list)
    fail_with: Exception | None = None
    gate: trio.Event | None = None  # when set, connecting waits for it
    cancelled: int = 0

    async def __call__(self, dest: Destination) -> Upstream:
        self.dests.append(dest)
        try:
            if self.gate is not None:
                await self.gate.wait()
            else:
                await trio.lowlevel.checkpoint()
        except trio.Cancelled:
            self.cancelled += 1
            raise
        if self.fail_with is not None:
            raise self.fail_with
        near, far = trio.testing.memory_stream_pair()
        self.far.append(far)
        return Upstream(dest.host, dest.port, near, h11.Connection(h11.CLIENT))


async def closed_by_proxy(far: trio.abc.Stream) -> bool:
    """True when the proxy's end of this pair was closed (the far end reads EOF)."""
    with trio.move_on_after(1):
        return await far.receive_some() == b""
    return False


async def start(nursery: trio.Nursery, connect: Connector, limit: float = 60) -> Preconnect:
    early = Preconnect(connect, DEST, limit)
    nursery.start_soon(early.run)
    await trio.testing.wait_all_tasks_blocked()
    return early


# --- Preconnect -----------------------------------------------------------------------------------


async def test_first_call_gets_the_connection_opened_early(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    early = await start(nursery, recorder)
    assert recorder.dests == [DEST]  # opened before anyone asked
    upstream = await early(DEST)
    assert recorder.dests == [DEST]  # and not opened again
    await upstream.stream.send_all(b"GET")
    assert await recorder.far[0].receive_some() == b"GET"


async def test_later_calls_and_other_destinations_connect_anew(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    early = await start(nursery, recorder)
    other = Destination("other.test", 443, tls=True, server_name="other.test")
    await early(other)
    await early(DEST)
    await early(DEST)
    assert recorder.dests == [DEST, other, DEST]
    assert len(recorder.far) == 3


async def test_a_call_while_connecting_gets_that_connection(nursery: trio.Nursery) -> None:
    gate = trio.Event()
    recorder = Recorder(gate=gate)
    early = await start(nursery, recorder)
    got: list[Upstream] = []

    async def claim() -> None:
        got.append(await early(DEST))

    nursery.start_soon(claim)
    await trio.testing.wait_all_tasks_blocked()
    assert got == []  # still connecting
    gate.set()
    await trio.testing.wait_all_tasks_blocked()
    assert len(got) == 1
    assert recorder.dests == [DEST]


async def test_the_first_caller_gets_the_failure(nursery: trio.Nursery) -> None:
    failure = UpstreamCertificateError(
        "upstream certificate verify failed: certificate has expired"
    )
    recorder = Recorder(fail_with=failure)
    early = await start(nursery, recorder)
    with pytest.raises(UpstreamCertificateError) as info:
        await early(DEST)
    assert info.value is failure
    recorder.fail_with = None
    await early(DEST)  # the next call tries again
    assert recorder.dests == [DEST, DEST]


async def test_an_unclaimed_connection_is_closed(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    early = await start(nursery, recorder)
    await early.aclose()
    assert await closed_by_proxy(recorder.far[0])


async def test_a_claimed_connection_is_not_closed_by_aclose(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    early = await start(nursery, recorder)
    upstream = await early(DEST)
    await early.aclose()
    await upstream.stream.send_all(b"still open")
    assert await recorder.far[0].receive_some() == b"still open"


async def test_cancelled_while_connecting_leaves_nothing_open() -> None:
    recorder = Recorder(gate=trio.Event())
    early = Preconnect(recorder, DEST, 60)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(early.run)
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    await early.aclose()
    assert recorder.cancelled == 1
    assert recorder.far == []


async def test_origin_closing_before_the_claim_gets_a_fresh_connection(
    nursery: trio.Nursery,
) -> None:
    recorder = Recorder()
    early = await start(nursery, recorder)
    await recorder.far[0].aclose()  # an origin's keep-alive timeout, say
    await trio.testing.wait_all_tasks_blocked()
    upstream = await early(DEST)
    assert recorder.dests == [DEST, DEST]
    await upstream.stream.send_all(b"GET")
    assert await recorder.far[1].receive_some() == b"GET"


async def test_origin_speaking_first_is_dropped(nursery: trio.Nursery) -> None:
    recorder = Recorder()
    early = await start(nursery, recorder)
    await recorder.far[0].send_all(b"HTTP/1.1 408 Request Timeout\r\n\r\n")
    await trio.testing.wait_all_tasks_blocked()
    assert await closed_by_proxy(recorder.far[0])
    await early(DEST)
    assert recorder.dests == [DEST, DEST]


async def test_after_the_watch_limit_the_connection_is_still_handed_over(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    early = await start(nursery, recorder, limit=5)
    await trio.sleep(10)
    upstream = await early(DEST)
    assert recorder.dests == [DEST]
    await upstream.stream.send_all(b"GET")
    assert await recorder.far[0].receive_some() == b"GET"


# --- through handle_client, against real TLS origins ---------------------------------------------


@pytest.fixture(scope="module")
def root() -> RootCA:
    return create_root("mitmlite preconnect test CA", NOW)


@pytest.fixture(scope="module")
def root_file(root: RootCA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("root") / "rootCA.pem"
    path.write_bytes(root.cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture(scope="module")
def origin_ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def origin_ca_file(origin_ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("origin-ca") / "ca.pem"
    origin_ca.cert_pem.write_to_path(str(path))
    return path


def origin_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(ctx)
    return ctx


@dataclass
class Proxy:
    client: trio.abc.Stream
    sink: Sink
    done: trio.Event


async def start_proxy(
    nursery: trio.Nursery,
    root: RootCA,
    tmp_path: Path,
    connect: Connector,
    config: Config,
    *,
    hooks: HookRunner | None = None,
    ca: RootCA | None = None,
) -> Proxy:
    sink = Sink()
    relay = RelayEnv(config, connect, sink, hooks=hooks, ca=ca)
    env = ConnectionEnv(relay, LeafCache(root, tmp_path))
    client, proxy_end = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def run() -> None:
        async with proxy_end:
            await handle_client(env, proxy_end)
        done.set()

    nursery.start_soon(run)
    return Proxy(client, sink, done)


async def open_tunnel(
    proxy: Proxy, authority: bytes, cafile: Path, name: str
) -> trio.SSLStream[trio.abc.Stream]:
    await proxy.client.send_all(b"CONNECT %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (authority, authority))
    reply = await proxy.client.receive_some(65536)
    assert reply == b"HTTP/1.1 200 Connection established\r\n\r\n"
    ctx = ssl.create_default_context(cafile=str(cafile))
    tls = trio.SSLStream(proxy.client, ctx, server_hostname=name)
    await tls.do_handshake()
    return tls


@dataclass
class Counting:
    """A real connector that counts the connections it opened."""

    inner: Connector
    opened: list[Upstream] = field(default_factory=list)
    first_opened: trio.Event = field(default_factory=trio.Event)

    async def __call__(self, dest: Destination) -> Upstream:
        upstream = await self.inner(dest)
        self.opened.append(upstream)
        self.first_opened.set()
        return upstream


async def real_origin(
    nursery: trio.Nursery, ctx: ssl.SSLContext, ca_file: Path
) -> tuple[int, OriginState, Counting]:
    state = OriginState()
    port: int = await nursery.start(serve_origin_tcp, state, ctx)
    connector = Counting(TCPConnector(upstream_context([ca_file]), 5, 5))
    return port, state, connector


async def test_intercepted_request_uses_the_preconnected_upstream(
    nursery: trio.Nursery,
    root: RootCA,
    root_file: Path,
    origin_ca: trustme.CA,
    origin_ca_file: Path,
    tmp_path: Path,
) -> None:
    ctx = origin_context(origin_ca, "site.localhost")
    port, state, connector = await real_origin(nursery, ctx, origin_ca_file)
    proxy = await start_proxy(nursery, root, tmp_path, connector, Config())
    authority = b"site.localhost:%d" % port
    with trio.fail_after(10):
        tls = await open_tunnel(proxy, authority, root_file, "site.localhost")
        assert await get(tls, authority, b"/a") == (200, b"origin /a")
        assert await get(tls, authority, b"/b") == (200, b"origin /b")
    assert state.connections == 1
    assert len(connector.opened) == 1
    assert state.requests == ["/a", "/b"]


async def test_preconnected_upstream_with_a_bad_certificate_is_a_502_with_the_reason(
    nursery: trio.Nursery,
    root: RootCA,
    root_file: Path,
    origin_ca: trustme.CA,
    origin_ca_file: Path,
    tmp_path: Path,
) -> None:
    ctx = origin_context(origin_ca, "other.localhost")
    port, state, connector = await real_origin(nursery, ctx, origin_ca_file)
    proxy = await start_proxy(nursery, root, tmp_path, connector, Config())
    authority = b"site.localhost:%d" % port
    with trio.fail_after(10):
        tls = await open_tunnel(proxy, authority, root_file, "site.localhost")
        status, body = await get(tls, authority, b"/secret")
    assert status == 502
    reason = (
        "upstream certificate verify failed: hostname mismatch, certificate is not valid for "
        "'site.localhost'"
    )
    assert reason in body.decode()
    assert state.requests == []  # no byte went to (or came from) that upstream
    await proxy.done.wait()
    assert [flow.error for flow in proxy.sink.flows] == [reason]


async def test_client_failing_its_handshake_leaves_no_upstream_open(
    nursery: trio.Nursery, root: RootCA, tmp_path: Path
) -> None:
    other = create_root("someone else", NOW)
    other_file = tmp_path / "other.pem"
    other_file.write_bytes(other.cert.public_bytes(serialization.Encoding.PEM))
    recorder = Recorder()
    proxy = await start_proxy(nursery, root, tmp_path / "leaves", recorder, Config())
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await open_tunnel(proxy, b"site.test:443", other_file, "site.test")
    await proxy.client.aclose()  # stands in for the alert trio does not flush over memory
    with trio.fail_after(10):
        await proxy.done.wait()
    assert recorder.dests == [DEST]
    assert await closed_by_proxy(recorder.far[0])


async def test_client_failing_while_the_upstream_still_connects_cancels_it(
    nursery: trio.Nursery, root: RootCA, tmp_path: Path
) -> None:
    recorder = Recorder(gate=trio.Event())  # the upstream never finishes connecting
    proxy = await start_proxy(nursery, root, tmp_path, recorder, Config())
    await proxy.client.send_all(b"CONNECT site.test:443 HTTP/1.1\r\nHost: site.test\r\n\r\n")
    await proxy.client.receive_some(65536)
    # A client that does not trust the proxy's CA: its handshake fails while the upstream is
    # still connecting.
    hello = trio.SSLStream(proxy.client, ssl.create_default_context(), server_hostname="site.test")
    with trio.fail_after(10), pytest.raises(trio.BrokenResourceError):
        await hello.do_handshake()
    await proxy.client.aclose()
    with trio.fail_after(10):
        await proxy.done.wait()
    assert recorder.dests == [DEST]
    assert recorder.cancelled == 1
    assert recorder.far == []


async def test_client_sending_no_request_closes_the_preconnected_upstream(
    nursery: trio.Nursery, root: RootCA, root_file: Path, tmp_path: Path
) -> None:
    recorder = Recorder()
    proxy = await start_proxy(nursery, root, tmp_path, recorder, Config())
    with trio.fail_after(10):
        tls = await open_tunnel(proxy, b"site.test:443", root_file, "site.test")
        await tls.aclose()
        await proxy.done.wait()
    assert proxy.sink.flows == []
    assert await closed_by_proxy(recorder.far[0])


async def test_idle_client_times_out_and_the_preconnected_upstream_is_closed(
    nursery: trio.Nursery,
    root: RootCA,
    root_file: Path,
    tmp_path: Path,
    autojump_clock: trio.testing.MockClock,
) -> None:
    recorder = Recorder()
    config = Config(timeouts=Timeouts(idle=30))
    proxy = await start_proxy(nursery, root, tmp_path, recorder, config)
    await open_tunnel(proxy, b"site.test:443", root_file, "site.test")
    await trio.sleep(29)
    assert not proxy.done.is_set()
    await trio.sleep(2)
    assert proxy.done.is_set()
    assert proxy.sink.flows == []
    assert await closed_by_proxy(recorder.far[0])


async def closing_first_origin(
    ctx: ssl.SSLContext, state: OriginState, *, task_status: trio.TaskStatus[int]
) -> None:
    """An origin that drops its first connection right after the handshake, as an origin's
    keep-alive timeout would; later connections are served normally."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    seen = 0

    async def handler(stream: trio.SocketStream) -> None:
        nonlocal seen
        seen += 1
        tls = trio.SSLStream(stream, ctx, server_side=True, https_compatible=True)
        try:
            await tls.do_handshake()
        except trio.BrokenResourceError:
            await trio.aclose_forcefully(stream)
            return
        if seen == 1:
            await tls.aclose()
            return
        await serve_origin(tls, state)

    task_status.started(listeners[0].socket.getsockname()[1])
    await trio.serve_listeners(handler, listeners)


async def test_origin_closing_before_the_first_request_is_not_a_502(
    nursery: trio.Nursery,
    root: RootCA,
    root_file: Path,
    origin_ca: trustme.CA,
    origin_ca_file: Path,
    tmp_path: Path,
) -> None:
    state = OriginState()
    ctx = origin_context(origin_ca, "site.localhost")
    port: int = await nursery.start(closing_first_origin, ctx, state)
    connector = Counting(TCPConnector(upstream_context([origin_ca_file]), 5, 5))
    proxy = await start_proxy(nursery, root, tmp_path, connector, Config())
    authority = b"site.localhost:%d" % port
    with trio.fail_after(10):
        tls = await open_tunnel(proxy, authority, root_file, "site.localhost")
        await connector.first_opened.wait()
        await trio.sleep(0.2)  # the origin's close arrives before the client asks anything
        assert await get(tls, authority, b"/late") == (200, b"origin /late")
    assert len(connector.opened) == 2
    assert state.requests == ["/late"]


async def test_unreachable_upstream_is_a_502_only_when_asked(
    nursery: trio.Nursery, root: RootCA, root_file: Path, tmp_path: Path
) -> None:
    recorder = Recorder(fail_with=UpstreamError("cannot connect to site.test:443: refused"))
    proxy = await start_proxy(nursery, root, tmp_path, recorder, Config())
    with trio.fail_after(10):
        tls = await open_tunnel(proxy, b"site.test:443", root_file, "site.test")
        status, body = await get(tls, b"site.test", b"/")
    assert status == 502
    assert b"cannot connect to site.test:443: refused" in body


# --- when the upstream must not be contacted early ------------------------------------------------


async def test_with_scripts_the_upstream_is_only_contacted_for_a_request(
    nursery: trio.Nursery, root: RootCA, root_file: Path, tmp_path: Path
) -> None:
    # A script may block the host or answer the request itself: then the origin must never see
    # a connection, so nothing is opened before the request has passed the hooks.
    source = """
    from mitmlite import Response

    def request(flow):
        if flow.request.path == "/blocked":
            flow.response = Response.make(403, b"blocked")
    """
    scripts = Scripts([write(tmp_path / "hooks.py", source)], print)
    scripts.load()
    recorder = Recorder()
    proxy = await start_proxy(
        nursery, root, tmp_path / "leaves", recorder, Config(), hooks=HookRunner(scripts, print)
    )
    with trio.fail_after(10):
        tls = await open_tunnel(proxy, b"site.test:443", root_file, "site.test")
        await trio.testing.wait_all_tasks_blocked()
        assert recorder.dests == []
        assert await get(tls, b"site.test", b"/blocked") == (403, b"blocked")
    assert recorder.dests == []


async def test_the_onboarding_host_is_never_contacted(
    nursery: trio.Nursery, root: RootCA, root_file: Path, tmp_path: Path
) -> None:
    recorder = Recorder()
    proxy = await start_proxy(nursery, root, tmp_path, recorder, Config(), ca=root)
    with trio.fail_after(10):
        tls = await open_tunnel(proxy, b"mitmlite.ca:443", root_file, "mitmlite.ca")
        await trio.testing.wait_all_tasks_blocked()
        status, _ = await get(tls, b"mitmlite.ca", b"/")
    assert status == 200
    assert recorder.dests == []


async def test_other_hosts_are_preconnected_when_the_onboarding_site_is_on(
    nursery: trio.Nursery, root: RootCA, root_file: Path, tmp_path: Path
) -> None:
    # Twin of the above: serving the onboarding site changes nothing for other hosts.
    recorder = Recorder()
    proxy = await start_proxy(nursery, root, tmp_path, recorder, Config(), ca=root)
    with trio.fail_after(10):
        await open_tunnel(proxy, b"site.test:443", root_file, "site.test")
        await trio.testing.wait_all_tasks_blocked()
    assert recorder.dests == [DEST]


# --- a silent client after CONNECT (server-speaks-first detection) --------------------------------


async def test_with_scripts_a_silent_client_does_not_open_the_upstream_early(
    nursery: trio.Nursery, root: RootCA, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    scripts = Scripts([write(tmp_path / "hooks.py", "def request(flow):\n    pass\n")], print)
    scripts.load()
    recorder = Recorder()
    config = Config(timeouts=Timeouts(handshake=3))
    proxy = await start_proxy(
        nursery, root, tmp_path / "leaves", recorder, config, hooks=HookRunner(scripts, print)
    )
    await proxy.client.send_all(b"CONNECT smtp.test:25 HTTP/1.1\r\nHost: smtp.test\r\n\r\n")
    await proxy.client.receive_some(65536)
    await trio.sleep(2.9)
    assert recorder.dests == []  # only once the handshake time is up, as a raw tunnel
    await trio.sleep(0.2)
    assert recorder.dests == [Destination("smtp.test", 25, tls=False, tunnel=True)]


async def test_a_slow_tls_client_after_an_unreachable_raw_open_still_gets_its_502(
    nursery: trio.Nursery, root: RootCA, root_file: Path, tmp_path: Path
) -> None:
    recorder = Recorder(fail_with=UpstreamError("cannot connect to site.test:443: refused"))
    proxy = await start_proxy(nursery, root, tmp_path, recorder, Config())
    await proxy.client.send_all(b"CONNECT site.test:443 HTTP/1.1\r\nHost: site.test\r\n\r\n")
    await proxy.client.receive_some(65536)
    await trio.sleep(0.7)  # past the grace: the raw open is tried, and fails
    ctx = ssl.create_default_context(cafile=str(root_file))
    tls = trio.SSLStream(proxy.client, ctx, server_hostname="site.test")
    with trio.fail_after(10):
        await tls.do_handshake()
        assert await get(tls, b"site.test", b"/") == (
            502,
            b"cannot connect to site.test:443: refused\n",
        )


async def test_a_connection_cancelled_while_both_sides_are_silent_closes_the_raw_upstream(
    root: RootCA, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    recorder = Recorder()
    env = ConnectionEnv(RelayEnv(Config(), recorder, Sink()), LeafCache(root, tmp_path))
    client, proxy_end = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as connection:
        connection.start_soon(handle_client, env, proxy_end)
        await client.send_all(b"CONNECT smtp.test:25 HTTP/1.1\r\nHost: smtp.test\r\n\r\n")
        await client.receive_some(65536)
        await trio.sleep(1)
        assert recorder.dests == [Destination("smtp.test", 25, tls=False, tunnel=True)]
        connection.cancel_scope.cancel()  # as a shutdown's deadline does
    assert await closed_by_proxy(recorder.far[0])
