"""What the relay keeps of each flow for -v, -vv and HAR: headers, body prefixes, timings."""

from __future__ import annotations

import h11
import trio
import trio.testing

from mitmlite.config import Config
from mitmlite.flow import Capture, FlowRecord
from mitmlite.relay import Relay, RelayEnv
from tests.fakes import MemoryConnector, Sink
from tests.origin import OriginState, pattern_bytes
from tests.test_relay import SITE, Client


async def start(nursery: trio.Nursery, capture: Capture) -> tuple[Client, Sink]:
    sink = Sink()
    env = RelayEnv(Config(), MemoryConnector(nursery, OriginState()), sink, capture=capture)
    client_end, proxy_end = trio.testing.memory_stream_pair()

    async def run() -> None:
        try:
            await Relay(env, proxy_end, h11.Connection(h11.SERVER), "test", SITE).run()
        finally:
            await proxy_end.aclose()

    nursery.start_soon(run)
    return Client(client_end), sink


async def flows(sink: Sink) -> list[FlowRecord]:
    await trio.testing.wait_all_tasks_blocked()
    return sink.flows


async def test_headers_bodies_and_timings_are_kept(nursery: trio.Nursery) -> None:
    client, sink = await start(nursery, Capture(headers=True, body_bytes=1000))
    await client.send(
        h11.Request(method="POST", target="/echo", headers=[(b"Host", b"site.test"),
                                                           (b"Content-Length", b"5")]),
        h11.Data(data=b"hello"),
        h11.EndOfMessage(),
    )  # fmt: skip
    _head, body, _ = await client.response()
    client.conn.start_next_cycle()
    await client.get(b"/bytes/5000")
    first, second = await flows(sink)
    assert (b"Content-Length", b"5") in (first.request_headers or [])
    assert first.request_body == b"hello"
    assert first.request_body_complete
    assert first.response_body == body
    assert (b"Content-Type", b"application/json") in (first.response_headers or [])
    assert first.reason == "OK" or first.reason == ""
    assert first.wall_started > 1_600_000_000
    t = first.timings
    assert t.connect_start is not None
    assert t.tcp_end is not None
    assert t.request_sent is not None
    assert t.response_start is not None
    assert t.response_end is not None
    assert t.connect_start <= t.tcp_end <= t.request_sent <= t.response_start <= t.response_end
    # The second flow reused the connection: no set-up time of its own.
    assert second.timings.connect_start is None
    assert second.response_body == pattern_bytes(1000)
    assert not second.response_body_complete
    assert second.response_bytes == 5000


async def test_nothing_is_kept_without_a_capture(nursery: trio.Nursery) -> None:
    client, sink = await start(nursery, Capture())
    await client.get(b"/bytes/5000")
    (flow,) = await flows(sink)
    assert flow.request_headers is None
    assert flow.response_headers is None
    assert flow.response_body == b""
    assert flow.response_bytes == 5000


async def test_headers_only_capture_keeps_no_body(nursery: trio.Nursery) -> None:
    client, sink = await start(nursery, Capture(headers=True))
    await client.get(b"/bytes/5000")
    (flow,) = await flows(sink)
    assert flow.response_headers == [(b"Content-Length", b"5000")]
    assert flow.response_body == b""
    assert not flow.response_body_complete
