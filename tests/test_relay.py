"""The relay over memory streams: h11 drives the client end, tests/origin.py the upstream end."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import cast

import h11
import pytest
import trio
import trio.testing
import wsproto
import wsproto.events

from mitmlite.config import Config, Timeouts
from mitmlite.errors import UpstreamError, UpstreamTimeoutError
from mitmlite.flow import FlowRecord
from mitmlite.relay import Relay, RelayEnv
from mitmlite.upstream import Destination
from tests.fakes import MemoryConnector, Sink
from tests.origin import OriginState, pattern_bytes

SITE = Destination("site.test", 443, tls=True, server_name="site.test")
Headers = list[tuple[bytes, bytes]]


class Client:
    """An h11 client on the client end of the relay."""

    def __init__(self, stream: trio.abc.Stream, http_version: bytes = b"1.1") -> None:
        self.stream = stream
        self.conn = h11.Connection(h11.CLIENT)

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(e) or b"" for e in events))

    async def next_event(self) -> h11.Event:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                self.conn.receive_data(cast(bytes, await self.stream.receive_some(65536)))
                continue
            return cast(h11.Event, event)

    async def response(self) -> tuple[h11.Response, bytes, list[int]]:
        informational: list[int] = []
        while not isinstance(head := await self.next_event(), h11.Response):
            assert isinstance(head, h11.InformationalResponse), head
            informational.append(head.status_code)
        body = b""
        while not isinstance(event := await self.next_event(), h11.EndOfMessage):
            assert isinstance(event, h11.Data), event
            body += event.data
        return head, body, informational

    async def get(
        self, target: bytes, headers: Headers | None = None
    ) -> tuple[h11.Response, bytes]:
        hdrs = list(headers or [])
        if not any(name.lower() == b"host" for name, _ in hdrs):
            hdrs.insert(0, (b"Host", b"site.test"))
        await self.send(h11.Request(method="GET", target=target, headers=hdrs), h11.EndOfMessage())
        head, body, _ = await self.response()
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
        return head, body


async def read_all(stream: trio.abc.Stream) -> bytes:
    data = b""
    while chunk := await stream.receive_some(65536):
        data += chunk
    return data


@dataclass
class Harness:
    client: Client
    raw: trio.abc.Stream
    connector: MemoryConnector
    sink: Sink
    origin: OriginState
    result: list[h11.Request | None]

    async def flows(self) -> list[FlowRecord]:
        """The finished flows, once the relay has caught up with what the client saw."""
        await trio.testing.wait_all_tasks_blocked()
        return self.sink.flows


async def start_relay(
    nursery: trio.Nursery, fixed: Destination | None = SITE, config: Config | None = None
) -> Harness:
    origin = OriginState()
    connector = MemoryConnector(nursery, origin)
    sink = Sink()
    env = RelayEnv(config or Config(), connector, sink)
    client_end, proxy_end = trio.testing.memory_stream_pair()
    result: list[h11.Request | None] = []

    async def run() -> None:
        conn = h11.Connection(
            h11.SERVER, max_incomplete_event_size=env.config.limits.max_header_bytes
        )
        try:
            result.append(await Relay(env, proxy_end, conn, "test", fixed).run())
        finally:
            await proxy_end.aclose()

    nursery.start_soon(run)
    return Harness(Client(client_end), client_end, connector, sink, origin, result)


@pytest.fixture
async def relay(nursery: trio.Nursery) -> Harness:
    return await start_relay(nursery)


async def test_keep_alive_reuses_one_upstream_connection(relay: Harness) -> None:
    for path in (b"/a", b"/b", b"/c"):
        head, body = await relay.client.get(path)
        assert (head.status_code, body) == (200, b"origin " + path)
    assert relay.origin.connections == 1
    assert [f.url for f in await relay.flows()] == [f"https://site.test/{p}" for p in "abc"]


async def test_upstream_closing_between_requests_is_reconnected(relay: Harness) -> None:
    head, body = await relay.client.get(b"/close/1000")
    assert (head.status_code, body) == (200, pattern_bytes(1000))
    head, body = await relay.client.get(b"/after")
    assert (head.status_code, body) == (200, b"origin /after")
    assert relay.origin.connections == 2


async def test_keep_alive_connection_closed_by_the_server_is_retried_once(
    relay: Harness,
) -> None:
    head, body = await relay.client.get(b"/then-close")
    assert (head.status_code, body) == (200, b"bye")
    await trio.testing.wait_all_tasks_blocked()  # the origin has closed its end by now
    head, body = await relay.client.get(b"/again")
    assert (head.status_code, body) == (200, b"origin /again")
    assert relay.origin.connections == 2
    assert relay.origin.requests == ["/then-close", "/again"]


async def test_large_download_streams_every_byte(relay: Harness) -> None:
    head, body = await relay.client.get(b"/bytes/3000000")
    assert head.status_code == 200
    assert hashlib.sha256(body).digest() == hashlib.sha256(pattern_bytes(3_000_000)).digest()
    assert (await relay.flows())[0].response_bytes == 3_000_000


async def test_chunked_response_passes_chunked(relay: Harness) -> None:
    head, body = await relay.client.get(b"/chunked/55555")
    assert (b"transfer-encoding", b"chunked") in head.headers
    assert body == pattern_bytes(55555)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_upload_reaches_origin_intact(relay: Harness, chunked: bool) -> None:
    payload = pattern_bytes(200_000)
    framing = (b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", b"200000")
    headers = [(b"Host", b"site.test"), framing]
    await relay.client.send(h11.Request(method="POST", target="/echo", headers=headers))
    for start in range(0, len(payload), 30000):
        await relay.client.send(h11.Data(data=payload[start : start + 30000]))
    await relay.client.send(h11.EndOfMessage())
    _, body, _ = await relay.client.response()
    echo = json.loads(body)
    assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert (await relay.flows())[0].request_bytes == 200_000


async def test_head_204_304_have_no_body(relay: Harness) -> None:
    await relay.client.send(
        h11.Request(method="HEAD", target="/bytes/100", headers=[(b"Host", b"site.test")]),
        h11.EndOfMessage(),
    )
    head, body, _ = await relay.client.response()
    relay.client.conn.start_next_cycle()
    assert (head.status_code, body) == (200, b"")
    assert (b"content-length", b"100") in head.headers
    for status in (204, 304):
        head, body = await relay.client.get(b"/status/%d" % status)
        assert (head.status_code, body) == (status, b"")
    head, body = await relay.client.get(b"/still-alive")
    assert body == b"origin /still-alive"


async def test_duplicate_headers_keep_order_and_hop_by_hop_is_stripped(relay: Harness) -> None:
    head, _ = await relay.client.get(b"/cookies")
    names = [
        (n, v) for n, v in head.headers.raw_items() if n.lower() in (b"set-cookie", b"x-order")
    ]
    assert names == [(b"Set-Cookie", b"a=1; Path=/"), (b"X-Order", b"1"), (b"Set-Cookie", b"b=2")]
    hop = [
        (b"Proxy-Connection", b"keep-alive"),
        (b"Keep-Alive", b"timeout=5"),
        (b"Connection", b"X-Private"),
        (b"X-Private", b"secret"),
        (b"X-Kept", b"yes"),
    ]
    _, body = await relay.client.get(b"/echo", hop)
    raw_names = [name for name, _ in json.loads(body)["headers"]]
    assert "X-Kept" in raw_names  # header case passes unchanged
    sent = [name.lower() for name in raw_names]
    assert not {"proxy-connection", "keep-alive", "connection", "x-private"} & set(sent)


async def test_expect_100_continue_gets_a_100_before_the_body(relay: Harness) -> None:
    headers = [(b"Host", b"site.test"), (b"Content-Length", b"5"), (b"Expect", b"100-continue")]
    await relay.client.send(h11.Request(method="POST", target="/echo", headers=headers))
    first = await relay.client.next_event()
    assert isinstance(first, h11.InformationalResponse)
    assert (first.status_code, first.reason) == (100, b"Continue")
    await relay.client.send(h11.Data(data=b"hello"), h11.EndOfMessage())
    _, body, _ = await relay.client.response()
    assert json.loads(body)["body_length"] == 5


async def test_informational_103_is_relayed(relay: Harness) -> None:
    await relay.client.send(
        h11.Request(method="GET", target="/early-hints", headers=[(b"Host", b"x")]),
        h11.EndOfMessage(),
    )
    _, body, informational = await relay.client.response()
    assert informational == [103]
    assert body == b"after hints"


async def test_pipelined_requests_are_answered_in_order(relay: Harness) -> None:
    raw = b"".join(b"GET /p%d HTTP/1.1\r\nHost: site.test\r\n\r\n" % i for i in range(3))
    leftover = b""
    await relay.raw.send_all(raw)
    bodies = []
    for i in range(3):
        reader = Client(relay.raw)
        reader.conn.send(h11.Request(method="GET", target=f"/p{i}", headers=[(b"Host", b"x")]))
        reader.conn.send(h11.EndOfMessage())
        if leftover:
            reader.conn.receive_data(leftover)
        _, body, _ = await reader.response()
        leftover = reader.conn.trailing_data[0]
        bodies.append(body)
    assert bodies == [b"origin /p0", b"origin /p1", b"origin /p2"]


async def test_connection_close_from_client_ends_the_relay(relay: Harness) -> None:
    head, _ = await relay.client.get(b"/x", [(b"Connection", b"close")])
    assert (b"connection", b"close") in head.headers
    assert await relay.raw.receive_some(10) == b""
    assert relay.result == [None]


async def test_http10_client_gets_a_close_delimited_body(relay: Harness) -> None:
    await relay.raw.send_all(b"GET /chunked/3000 HTTP/1.0\r\nHost: site.test\r\n\r\n")
    data = b""
    while chunk := await relay.raw.receive_some(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"chunked" not in head.lower()
    assert body == pattern_bytes(3000)


async def test_websocket_upgrade_pipes_frames_both_ways(relay: Harness) -> None:
    ws = wsproto.WSConnection(wsproto.ConnectionType.CLIENT)
    await relay.raw.send_all(ws.send(wsproto.events.Request(host="site.test", target="/ws")))
    accepted = False
    while not accepted:
        ws.receive_data(bytes(await relay.raw.receive_some(65536)))
        accepted = any(isinstance(e, wsproto.events.AcceptConnection) for e in ws.events())
    await relay.raw.send_all(ws.send(wsproto.events.TextMessage(data="ping")))
    replies: list[str] = []
    while not replies:
        ws.receive_data(bytes(await relay.raw.receive_some(65536)))
        replies = [e.data for e in ws.events() if isinstance(e, wsproto.events.TextMessage)]
    assert replies == ["echo ping"]
    assert relay.sink.flows == []  # the flow ends when the WebSocket does


async def test_unreachable_upstream_is_a_502_with_the_reason(nursery: trio.Nursery) -> None:
    harness = await start_relay(nursery)
    harness.connector.fail_with = UpstreamError(
        "cannot connect to site.test:443: Connection refused"
    )
    head, body = await harness.client.get(b"/")
    assert head.status_code == 502
    assert body == b"cannot connect to site.test:443: Connection refused\n"
    assert (await harness.flows())[0].error == "cannot connect to site.test:443: Connection refused"


async def test_upstream_connect_timeout_is_a_504(nursery: trio.Nursery) -> None:
    harness = await start_relay(nursery)
    harness.connector.fail_with = UpstreamTimeoutError("connecting to site.test:443 timed out")
    head, body = await harness.client.get(b"/")
    assert head.status_code == 504
    assert b"timed out" in body


async def test_slow_upstream_response_is_a_504(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    config = Config(timeouts=Timeouts(upstream_response=7))
    harness = await start_relay(nursery, config=config)
    head, body = await harness.client.get(b"/slow")
    assert head.status_code == 504
    assert body == b"site.test:443 did not respond within 7 s\n"


async def test_idle_client_is_closed_quietly(
    relay: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    await relay.client.get(b"/one")
    assert await relay.raw.receive_some(10) == b""  # after the idle timeout, EOF
    assert relay.result == [None]
    assert trio.current_time() >= Timeouts().idle


async def test_slowloris_client_gets_a_408(
    relay: Harness, autojump_clock: trio.testing.MockClock
) -> None:
    await relay.raw.send_all(b"GET / HTTP/1.1\r\nHost: a")
    data = await read_all(relay.raw)
    assert data.startswith(b"HTTP/1.1 408 ")
    assert data.endswith(b"request head not received within 30 s\n")


@pytest.mark.parametrize("complete", [False, True], ids=["still-arriving", "arrived-whole"])
async def test_oversized_headers_get_a_431(relay: Harness, complete: bool) -> None:
    end = b"\r\n\r\n" if complete else b""
    await relay.raw.send_all(b"GET / HTTP/1.1\r\nHost: a\r\nX-Big: " + b"a" * 70_000 + end)
    data = await read_all(relay.raw)
    assert data.startswith(b"HTTP/1.1 431 ")
    assert data.endswith(b"request header block exceeds 64 KiB\n")


@pytest.mark.parametrize("complete", [False, True], ids=["still-arriving", "arrived-whole"])
async def test_an_oversized_request_target_gets_a_414(relay: Harness, complete: bool) -> None:
    # The twin of the 431 above: here the request line alone is over the limit.
    end = b" HTTP/1.1\r\nHost: a\r\n\r\n" if complete else b""
    await relay.raw.send_all(b"GET /?q=" + b"a" * 70_000 + end)
    data = await read_all(relay.raw)
    assert data.startswith(b"HTTP/1.1 414 ")
    assert data.endswith(b"request target exceeds 64 KiB\n")


async def test_headers_just_under_the_limit_pass(relay: Harness) -> None:
    head, body = await relay.client.get(b"/big", [(b"X-Big", b"a" * 60_000)])
    assert (head.status_code, body) == (200, b"origin /big")


async def test_malformed_request_gets_a_400(relay: Harness) -> None:
    await relay.raw.send_all(b"\x00\x01garbage\r\n\r\n")
    data = await read_all(relay.raw)
    assert data.startswith(b"HTTP/1.1 400 ")
    assert b"malformed request" in data


async def test_plain_proxy_rewrites_absolute_form_and_host(nursery: trio.Nursery) -> None:
    harness = await start_relay(nursery, fixed=None)
    _, body = await harness.client.get(b"http://api.test:8080/echo?q=1", [(b"Host", b"wrong")])
    echo = json.loads(body)
    assert echo["target"] == "/echo?q=1"
    assert [v for n, v in echo["headers"] if n.lower() == "host"] == ["api.test:8080"]
    assert harness.connector.dests == [Destination("api.test", 8080, tls=False)]


async def test_plain_proxy_refuses_origin_form(nursery: trio.Nursery) -> None:
    harness = await start_relay(nursery, fixed=None)
    head, body = await harness.client.get(b"/not-absolute")
    assert head.status_code == 400
    assert b"origin-form" in body
    assert harness.connector.dests == []


async def test_plain_proxy_hands_connect_back(nursery: trio.Nursery) -> None:
    harness = await start_relay(nursery, fixed=None)
    await harness.client.send(
        h11.Request(
            method="CONNECT", target="site.test:443", headers=[(b"Host", b"site.test:443")]
        ),
        h11.EndOfMessage(),
    )
    await trio.testing.wait_all_tasks_blocked()
    request = harness.result[0]
    assert request is not None
    assert request.target == b"site.test:443"
