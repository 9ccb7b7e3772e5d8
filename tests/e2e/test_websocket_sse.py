"""WebSocket and Server-Sent Events through the intercepted tunnel, driven from trio.

The client is hand-built (CONNECT, trio.SSLStream trusting only the mitmlite CA, then wsproto or
raw HTTP/1.1) so each step can be bounded by a trio timeout: a proxy that buffers a stream or
stops relaying after an upgrade fails the test instead of hanging it.
"""

from __future__ import annotations

import ssl

import pytest
import trio
import wsproto
import wsproto.connection
import wsproto.events
import wsproto.frame_protocol

from tests.e2e.conftest import Origin, Proxy

pytestmark = pytest.mark.e2e

Client = trio.SSLStream[trio.SocketStream]


async def open_tunnel(proxy: Proxy, origin: Origin, host: str = "site.localhost") -> Client:
    """CONNECT through the proxy, then a TLS client that trusts only the mitmlite CA."""
    tcp = await trio.open_tcp_stream("127.0.0.1", proxy.port)
    authority = f"{host}:{origin.port}"
    await tcp.send_all(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        data = await tcp.receive_some(4096)
        assert data, f"proxy closed the connection after {head!r}"
        head += data
    assert head.startswith(b"HTTP/1.1 200 "), head
    assert head.endswith(b"\r\n\r\n")  # the proxy speaks no further before our ClientHello
    ctx = ssl.create_default_context(cafile=str(proxy.ca_path))
    ctx.set_alpn_protocols(["http/1.1"])
    # Not https_compatible: a TCP close without close_notify raises instead of reading as EOF.
    tls = trio.SSLStream(tcp, ctx, server_hostname=host)
    await tls.do_handshake()
    return tls


class WebSocketClient:
    """A wsproto client over a trio stream."""

    def __init__(self, stream: Client) -> None:
        self.stream = stream
        self.ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
        self.pending: list[wsproto.events.Event] = []

    async def send(self, event: wsproto.events.Event) -> None:
        await self.stream.send_all(self.ws.send(event))

    async def next_event(self) -> wsproto.events.Event:
        while not self.pending:
            data = await self.stream.receive_some(65536)
            self.ws.receive_data(bytes(data) if data else None)
            self.pending.extend(self.ws.events())
            assert data or self.pending, "connection closed with no WebSocket event"
        return self.pending.pop(0)

    async def receive_text(self) -> str:
        """One whole text message (wsproto may deliver a large one in several pieces)."""
        text = ""
        while True:
            event = await self.next_event()
            assert isinstance(event, wsproto.events.TextMessage), event
            text += event.data
            if event.message_finished:
                return text


async def test_websocket_echo_through_the_tunnel(proxy: Proxy, origin: Origin) -> None:
    with trio.fail_after(10):
        async with await open_tunnel(proxy, origin) as tls:
            client = WebSocketClient(tls)
            await client.send(wsproto.events.Request(host="site.localhost", target="/ws"))
            accepted = await client.next_event()
            assert isinstance(accepted, wsproto.events.AcceptConnection), accepted
            for text in ["hello", "ünïcödé ✓"]:
                await client.send(wsproto.events.Message(data=text))
                assert await client.receive_text() == "echo " + text
            # The origin echoes each piece its wsproto hands it, one message per piece.
            big = "".join(chr(ord("a") + i % 26) for i in range(300_000))
            await client.send(wsproto.events.Message(data=big))
            echoed = ""
            while len(echoed) < len(big):
                piece = await client.receive_text()
                assert piece.startswith("echo ")
                echoed += piece.removeprefix("echo ")
            assert echoed == big
            await client.send(wsproto.events.CloseConnection(code=1000, reason="done"))
            closed = await client.next_event()
            assert isinstance(closed, wsproto.events.CloseConnection)
            assert closed.code == 1000
            assert client.ws.state is wsproto.connection.ConnectionState.CLOSED
            # After the close handshake the origin hangs up, and the proxy passes that on,
            # ending its TLS with close_notify.
            assert await tls.receive_some(1) == b""
    assert origin.state.requests == ["/ws"]


async def test_websocket_frame_sent_with_the_upgrade_request(proxy: Proxy, origin: Origin) -> None:
    # The first frame rides in the same write as the upgrade request, so the proxy's HTTP parser
    # has it buffered when the 101 arrives: those bytes must still reach the origin.
    early = wsproto.frame_protocol.FrameProtocol(client=True, extensions=[])
    frame = early.send_data("early bird", fin=True)
    with trio.fail_after(10):
        async with await open_tunnel(proxy, origin) as tls:
            client = WebSocketClient(tls)
            upgrade = client.ws.send(wsproto.events.Request(host="site.localhost", target="/ws"))
            await tls.send_all(upgrade + frame)
            accepted = await client.next_event()
            assert isinstance(accepted, wsproto.events.AcceptConnection), accepted
            assert await client.receive_text() == "echo early bird"


async def test_websocket_upgrade_refused_by_the_origin_is_not_faked(
    proxy: Proxy, origin: Origin
) -> None:
    # The twin: on a route that does not speak WebSocket, the origin answers 200, and the client
    # must see that refusal rather than a 101 from the proxy.
    with trio.fail_after(10):
        async with await open_tunnel(proxy, origin) as tls:
            client = WebSocketClient(tls)
            await client.send(wsproto.events.Request(host="site.localhost", target="/not-ws"))
            refused = await client.next_event()
    assert isinstance(refused, wsproto.events.RejectConnection), refused
    assert refused.status_code == 200
    assert origin.state.requests == ["/not-ws"]


class SSEReader:
    """GET /sse on a tunnel, collecting the raw (chunk-framed) bytes as they arrive."""

    def __init__(self, tls: Client) -> None:
        self.tls = tls
        self.received = b""

    async def start(self, origin: Origin) -> None:
        request = f"GET /sse HTTP/1.1\r\nHost: site.localhost:{origin.port}\r\n\r\n"
        await self.tls.send_all(request.encode())

    async def until(self, marker: bytes) -> None:
        while marker not in self.received:
            data = await self.tls.receive_some(65536)
            assert data, f"connection closed before {marker!r}; got {self.received!r}"
            self.received += data


async def test_sse_first_event_arrives_before_the_origin_finishes(
    proxy: Proxy, origin: Origin
) -> None:
    async with await open_tunnel(proxy, origin) as tls:
        sse = SSEReader(tls)
        await sse.start(origin)
        with trio.fail_after(5):  # a proxy that buffers the whole response fails here
            await sse.until(b"data: first\n\n")
        assert not origin.state.release.is_set()  # the origin is still holding the response open
        head = sse.received.partition(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"http/1.1 200")
        assert b"content-type: text/event-stream" in head
        assert b"data: second" not in sse.received
        origin.state.release.set()
        with trio.fail_after(5):
            await sse.until(b"data: second\n\n")
            await sse.until(b"\r\n0\r\n\r\n")  # then the last chunk ends the response
        assert sse.received.endswith(b"\r\n0\r\n\r\n")


async def test_sse_second_event_waits_for_the_origin(proxy: Proxy, origin: Origin) -> None:
    # The twin: until the origin is released, nothing more than the first event arrives, so the
    # streaming test above is really observing the origin's pace.
    async with await open_tunnel(proxy, origin) as tls:
        sse = SSEReader(tls)
        await sse.start(origin)
        with trio.fail_after(5):
            await sse.until(b"data: first\n\n")
        first = sse.received
        with trio.move_on_after(0.5) as waited:
            await sse.until(b"data: second")
        assert waited.cancelled_caught
        assert sse.received == first
        origin.state.release.set()  # let the origin finish so the fixture shuts down cleanly
        with trio.fail_after(5):
            await sse.until(b"data: second\n\n")
