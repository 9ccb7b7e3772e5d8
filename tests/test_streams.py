"""PrefixedStream replays peeked bytes first; pipe copies both ways, half-closes, times out idle."""

from __future__ import annotations

import socket
import ssl
import struct
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing
import trustme

from mitmlite.streams import (
    SEND_QUEUE,
    TRANSPORT_READ,
    DeferredSendErrors,
    LargeReads,
    PrefixedStream,
    deepen_send_queue,
    deferred_send_error,
    pipe,
    receive_batch,
    tls_transport,
)

# --- PrefixedStream -------------------------------------------------------------------------------


class Recorder(trio.abc.HalfCloseableStream):
    """A stream that records what its wrapper delegates to it."""

    def __init__(self, incoming: list[bytes] | None = None) -> None:
        self.calls: list[str] = []
        self.sent = bytearray()
        self.incoming = incoming or []
        self.max_bytes: list[int | None] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append("send_all")
        self.sent += data

    async def wait_send_all_might_not_block(self) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append("wait_send_all_might_not_block")

    async def send_eof(self) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append("send_eof")

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        await trio.lowlevel.checkpoint()
        self.calls.append("receive_some")
        self.max_bytes.append(max_bytes)
        return self.incoming.pop(0) if self.incoming else b""

    async def aclose(self) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append("aclose")


class WholeStream(trio.abc.Stream):
    """A stream that cannot half-close (as TLS): wraps another stream without ``send_eof``."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_prefix_comes_first_then_the_inner_stream() -> None:
    inner = Recorder([b"world"])
    stream = PrefixedStream(inner, b"hello ")
    assert await stream.receive_some() == b"hello "
    assert inner.calls == []
    assert await stream.receive_some() == b"world"
    assert await stream.receive_some() == b""


async def test_prefix_respects_max_bytes_and_never_mixes_with_inner() -> None:
    inner = Recorder([b"world"])
    stream = PrefixedStream(inner, b"hello")
    assert await stream.receive_some(2) == b"he"
    assert await stream.receive_some(2) == b"ll"
    assert await stream.receive_some(10) == b"o"  # the rest of the prefix, nothing from inner
    assert inner.calls == []
    assert await stream.receive_some(10) == b"world"
    assert inner.max_bytes == [10]


async def test_empty_prefix_reads_inner_directly() -> None:
    inner = Recorder([b"direct"])
    stream = PrefixedStream(inner, b"")
    assert await stream.receive_some(3) == b"direct"
    assert inner.calls == ["receive_some"]
    assert inner.max_bytes == [3]


async def test_prefix_over_memory_stream() -> None:
    near, far = trio.testing.memory_stream_pair()
    stream = PrefixedStream(near, b"\x16\x03\x01")
    await far.send_all(b"rest")
    assert await stream.receive_some() == b"\x16\x03\x01"
    assert await stream.receive_some() == b"rest"
    await far.send_eof()
    assert await stream.receive_some() == b""


async def test_prefix_receive_is_a_checkpoint() -> None:
    stream = PrefixedStream(Recorder(), b"x")
    with trio.CancelScope() as scope:
        scope.cancel()
        await stream.receive_some()
    assert scope.cancelled_caught


async def test_send_all_wait_and_aclose_delegate() -> None:
    inner = Recorder()
    stream = PrefixedStream(inner, b"unread prefix")
    await stream.send_all(b"abc")
    await stream.wait_send_all_might_not_block()
    await stream.aclose()
    assert inner.calls == ["send_all", "wait_send_all_might_not_block", "aclose"]
    assert inner.sent == b"abc"


async def test_send_eof_delegates_to_a_half_closeable_inner() -> None:
    inner = Recorder()
    await PrefixedStream(inner, b"").send_eof()
    assert inner.calls == ["send_eof"]


async def test_send_eof_is_a_no_op_on_an_inner_that_cannot_half_close() -> None:
    near, far = trio.testing.memory_stream_pair()
    stream = PrefixedStream(WholeStream(near), b"")
    await stream.send_eof()
    await stream.send_all(b"still open")
    assert await far.receive_some() == b"still open"


async def test_send_and_close_over_memory_streams() -> None:
    near, far = trio.testing.memory_stream_pair()
    stream = PrefixedStream(near, b"p")
    await stream.send_all(b"to far")
    assert await far.receive_some() == b"to far"
    await stream.send_eof()
    assert await far.receive_some() == b""
    await stream.aclose()
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"after close")


# --- pipe -----------------------------------------------------------------------------------------


@dataclass
class PipeRun:
    """A pipe running in a background task, with its result and when it ended."""

    result: tuple[int, int] | None = None
    ended_at: float | None = None
    done: trio.Event = field(default_factory=trio.Event)

    async def run(self, a: trio.abc.Stream, b: trio.abc.Stream, idle: float) -> None:
        self.result = await pipe(a, b, idle)
        self.ended_at = trio.current_time()
        self.done.set()


def start_pipe(
    nursery: trio.Nursery, a: trio.abc.Stream, b: trio.abc.Stream, idle: float = 60.0
) -> PipeRun:
    run = PipeRun()
    nursery.start_soon(run.run, a, b, idle)
    return run


async def receive_exactly(stream: trio.abc.Stream, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = await stream.receive_some(size - len(data))
        assert chunk, f"EOF after {len(data)} of {size} bytes"
        data += chunk
    return bytes(data)


async def test_pipe_copies_both_ways_and_counts(nursery: trio.Nursery) -> None:
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    run = start_pipe(nursery, client_near, upstream_near)
    await client.send_all(b"hello")
    assert await receive_exactly(upstream, 5) == b"hello"
    await upstream.send_all(b"world!!")
    assert await receive_exactly(client, 7) == b"world!!"
    await client.send_eof()
    await upstream.send_eof()
    with trio.fail_after(5):
        await run.done.wait()
    assert run.result == (5, 7)


async def test_pipe_with_both_sides_open_keeps_running(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Twin: traffic but no close, so the pipe is still there well before its idle limit.
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    run = start_pipe(nursery, client_near, upstream_near, idle=60)
    await client.send_all(b"hello")
    assert await receive_exactly(upstream, 5) == b"hello"
    await trio.sleep(30)
    assert not run.done.is_set()


async def test_pipe_over_lockstep_streams_moves_large_payloads(nursery: trio.Nursery) -> None:
    # Lockstep streams block each send until the peer reads: shakes out ordering bugs.
    client, client_near = trio.testing.lockstep_stream_pair()
    upstream_near, upstream = trio.testing.lockstep_stream_pair()
    run = start_pipe(nursery, client_near, upstream_near)
    up = bytes(range(256)) * 800  # 200 KiB, more than one 64 KiB read
    down = b"d" * 100_000
    received: dict[str, bytes] = {}

    async def client_side() -> None:
        await client.send_all(up)
        received["client"] = await receive_exactly(client, len(down))
        await client.send_eof()
        assert await client.receive_some() == b""

    async def upstream_side() -> None:
        received["upstream"] = await receive_exactly(upstream, len(up))
        await upstream.send_all(down)
        assert await upstream.receive_some() == b""
        await upstream.send_eof()

    with trio.fail_after(10):
        async with trio.open_nursery() as inner:
            inner.start_soon(client_side)
            inner.start_soon(upstream_side)
        await run.done.wait()
    assert received == {"client": down, "upstream": up}
    assert run.result == (len(up), len(down))


async def test_pipe_ends_when_a_side_that_cannot_half_close_closes(nursery: trio.Nursery) -> None:
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    run = start_pipe(nursery, WholeStream(client_near), WholeStream(upstream_near))
    await client.send_all(b"bye")
    await client.aclose()
    with trio.fail_after(5):
        await run.done.wait()  # without the upstream doing anything
    assert run.result == (3, 0)
    assert await receive_exactly(upstream, 3) == b"bye"


async def test_pipe_ends_when_both_sides_close(nursery: trio.Nursery) -> None:
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    run = start_pipe(nursery, client_near, upstream_near)
    await client.aclose()
    assert await upstream.receive_some() == b""  # the close arrived as a half-close
    assert not run.done.is_set()
    await upstream.aclose()
    with trio.fail_after(5):
        await run.done.wait()
    assert run.result == (0, 0)


async def test_pipe_ends_when_the_closed_side_cannot_take_more(nursery: trio.Nursery) -> None:
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    run = start_pipe(nursery, client_near, upstream_near)
    await client.aclose()
    assert await upstream.receive_some() == b""
    await upstream.send_all(b"late")  # nobody can read this any more
    with trio.fail_after(5):
        await run.done.wait()
    assert run.result is not None
    assert run.result[0] == 0


async def test_pipe_propagates_half_close_over_memory_streams(nursery: trio.Nursery) -> None:
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    run = start_pipe(nursery, client_near, upstream_near)
    await client.send_all(b"request")
    await client.send_eof()
    assert await receive_exactly(upstream, 7) == b"request"
    assert await upstream.receive_some() == b""
    # The other direction is still open after the half-close.
    await upstream.send_all(b"late reply")
    assert await receive_exactly(client, 10) == b"late reply"
    assert not run.done.is_set()
    await upstream.send_eof()
    assert await client.receive_some() == b""
    with trio.fail_after(5):
        await run.done.wait()
    assert run.result == (7, 10)


async def test_pipe_without_half_close_drops_the_other_direction(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # Twin: when the destination cannot half-close, an EOF ends the whole pipe.
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    run = start_pipe(nursery, client_near, WholeStream(upstream_near))
    await client.send_all(b"request")
    await client.send_eof()
    with trio.fail_after(5):
        await run.done.wait()
    assert run.result == (7, 0)
    assert await receive_exactly(upstream, 7) == b"request"
    await upstream.send_all(b"late reply")
    with trio.move_on_after(30):  # nothing is piped any more (virtual seconds)
        data = await client.receive_some()
        pytest.fail(f"pipe kept copying after it ended: {data!r}")


async def test_pipe_propagates_half_close_through_prefixed_stream(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    # What connection.py's raw tunnel does: pipe(PrefixedStream(client, hello), upstream).
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    run = start_pipe(nursery, PrefixedStream(client_near, b""), upstream_near)
    with trio.fail_after(5):
        await upstream.send_all(b"bye")
        await upstream.send_eof()
        assert await receive_exactly(client, 3) == b"bye"
        assert await client.receive_some() == b""  # observed: never arrives, the pipe ended
        await trio.testing.wait_all_tasks_blocked()
        assert not run.done.is_set(), "the client->upstream direction should still be open"
        await client.send_all(b"more")
        assert await receive_exactly(upstream, 4) == b"more"


async def test_pipe_propagates_half_close_over_real_sockets(nursery: trio.Nursery) -> None:
    a1, a2 = trio.socket.socketpair()
    b1, b2 = trio.socket.socketpair()
    client, client_near = trio.SocketStream(a1), trio.SocketStream(a2)
    upstream_near, upstream = trio.SocketStream(b1), trio.SocketStream(b2)
    try:
        run = start_pipe(nursery, client_near, upstream_near)
        await client.send_all(b"GET / HTTP/1.0\r\n\r\n")
        await client.send_eof()
        with trio.fail_after(5):
            assert await receive_exactly(upstream, 18) == b"GET / HTTP/1.0\r\n\r\n"
            assert await upstream.receive_some() == b""  # FIN went through
            await upstream.send_all(b"HTTP/1.0 200 OK\r\n\r\nbody")
            assert await receive_exactly(client, 23) == b"HTTP/1.0 200 OK\r\n\r\nbody"
            await upstream.send_eof()
            assert await client.receive_some() == b""
            await run.done.wait()
        assert run.result == (18, 23)
    finally:
        for stream in (client, client_near, upstream_near, upstream):
            await stream.aclose()


async def test_pipe_ends_after_idle_seconds_without_traffic(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    _client, client_near = trio.testing.memory_stream_pair()
    upstream_near, _upstream = trio.testing.memory_stream_pair()
    start = trio.current_time()
    run = start_pipe(nursery, client_near, upstream_near, idle=10)
    await run.done.wait()
    assert run.ended_at is not None
    assert run.ended_at - start == pytest.approx(10)
    assert run.result == (0, 0)


async def test_traffic_pushes_the_idle_deadline(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    idle = 10.0
    start = trio.current_time()
    run = start_pipe(nursery, client_near, upstream_near, idle=idle)
    for i in range(8):  # a byte every idle/2 seconds, alternating directions, up to t=40
        await trio.sleep(idle / 2)
        assert not run.done.is_set(), f"pipe ended at t={trio.current_time() - start}"
        sender, receiver = (client, upstream) if i % 2 == 0 else (upstream, client)
        await sender.send_all(b"x")
        assert await receiver.receive_some() == b"x"
    assert trio.current_time() - start == pytest.approx(idle * 4)
    await run.done.wait()
    assert run.ended_at is not None
    assert run.ended_at - start == pytest.approx(idle * 5)  # idle seconds after the last byte
    assert run.result == (4, 4)


async def test_pipe_through_prefixed_stream_over_tls_like_stream_ends_at_eof(
    nursery: trio.Nursery,
) -> None:
    # Twin: under the prefix sits a stream that cannot half-close (TLS), so an EOF from the
    # upstream ends the whole pipe, as it does without the prefix.
    client, client_near = trio.testing.memory_stream_pair()
    upstream_near, upstream = trio.testing.memory_stream_pair()
    run = start_pipe(nursery, PrefixedStream(WholeStream(client_near), b""), upstream_near)
    await upstream.send_all(b"bye")
    await upstream.send_eof()
    with trio.fail_after(5):
        await run.done.wait()
        assert await receive_exactly(client, 3) == b"bye"
    assert run.result == (0, 3)


# --- LargeReads: what TLS layers read from --------------------------------------------------------


async def test_large_reads_fills_an_unsized_read_with_transport_read() -> None:
    inner = Recorder([b"data"])
    assert await LargeReads(inner).receive_some() == b"data"
    assert inner.max_bytes == [TRANSPORT_READ]
    assert TRANSPORT_READ > 64 * 1024  # more than trio's SocketStream reads by itself


async def test_large_reads_keeps_a_size_the_reader_names() -> None:
    inner = Recorder([b"data"])
    assert await LargeReads(inner).receive_some(3) == b"data"
    assert inner.max_bytes == [3]


async def test_large_reads_delegates_sending_half_close_and_close() -> None:
    inner = Recorder()
    stream = LargeReads(inner)
    await stream.send_all(b"x")
    await stream.wait_send_all_might_not_block()
    await stream.send_eof()
    await stream.aclose()
    assert inner.calls == ["send_all", "wait_send_all_might_not_block", "send_eof", "aclose"]
    assert inner.sent == b"x"


async def test_prefixed_stream_reads_large_once_the_prefix_is_spent() -> None:
    inner = Recorder([b"rest"])
    stream = PrefixedStream(inner, b"hello")
    assert await stream.receive_some() == b"hello"
    assert await stream.receive_some() == b"rest"
    assert inner.max_bytes == [TRANSPORT_READ]


def test_tls_transport_wraps_a_stream_once() -> None:
    inner = Recorder()
    wrapped = tls_transport(inner)
    assert isinstance(wrapped, LargeReads)
    assert wrapped.inner is inner
    assert tls_transport(wrapped) is wrapped
    prefixed = PrefixedStream(inner, b"hello")
    assert tls_transport(prefixed) is prefixed


def send_queue_limit(stream: trio.SocketStream) -> int:
    return stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT)


async def test_deepen_send_queue_lets_a_relay_write_go_out_without_waiting() -> None:
    left, right = await connected_sockets()
    async with left, right:
        assert send_queue_limit(left) == 16 * 1024  # trio's setting, for contrast
        deepen_send_queue(left)
        assert send_queue_limit(left) == SEND_QUEUE
        # A whole relay step fits while the one before it is still unsent.
        assert SEND_QUEUE >= 2 * TRANSPORT_READ
        assert send_queue_limit(right) == 16 * 1024  # only the stream it was given


async def test_deepen_send_queue_on_a_closed_socket_is_harmless() -> None:
    left, right = await connected_sockets()
    await right.aclose()
    await left.aclose()
    deepen_send_queue(left)  # no OSError escapes


async def connected_sockets() -> tuple[trio.SocketStream, trio.SocketStream]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    async with listeners[0]:
        port = listeners[0].socket.getsockname()[1]
        left = await trio.open_tcp_stream("127.0.0.1", port)
        right = await listeners[0].accept()
    return left, right


class RecordingTransport(trio.abc.Stream):
    """Passes everything to ``inner``, noting the sizes a TLS layer asks to read."""

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner
        self.max_bytes: list[int | None] = []

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        self.max_bytes.append(max_bytes)
        return await self.inner.receive_some(max_bytes)

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.mark.parametrize("large", [True, False])
async def test_a_tls_layer_on_tls_transport_refills_in_large_reads(
    tls_ca: trustme.CA, large: bool
) -> None:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls_ca.issue_cert("origin.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    tls_ca.configure_trust(client_ctx)
    client_raw, server_raw = trio.testing.memory_stream_pair()
    recording = RecordingTransport(client_raw)
    transport = tls_transport(recording) if large else recording
    client = trio.SSLStream(transport, client_ctx, server_hostname="origin.test")
    server = trio.SSLStream(server_raw, server_ctx, server_side=True)
    with trio.fail_after(5):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(client.do_handshake)
            nursery.start_soon(server.do_handshake)
        await server.send_all(b"body")
        assert await receive_batch(client, 1 << 20) == b"body"
    # trio's SSLStream names no size; without the wrapper the socket decides (64 KiB).
    expected = {TRANSPORT_READ} if large else {None}
    assert set(recording.max_bytes) == expected


# --- receive_batch --------------------------------------------------------------------------------


@dataclass
class TLSPair:
    client: trio.SSLStream[trio.abc.Stream]
    server: trio.SSLStream[trio.abc.Stream]
    server_wire: trio.abc.Stream  # what the client's SSLStream writes arrives here, raw


@pytest.fixture(scope="module")
def tls_ca() -> trustme.CA:
    return trustme.CA()


async def tls_pair(ca: trustme.CA) -> TLSPair:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("origin.test").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    client_raw, server_raw = trio.testing.memory_stream_pair()
    client: trio.SSLStream[trio.abc.Stream]
    server: trio.SSLStream[trio.abc.Stream]
    client = trio.SSLStream(client_raw, client_ctx, server_hostname="origin.test")
    server = trio.SSLStream(server_raw, server_ctx, server_side=True)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(client.do_handshake)
        nursery.start_soon(server.do_handshake)
    return TLSPair(client, server, server_raw)


async def test_receive_batch_takes_every_record_already_received(tls_ca: trustme.CA) -> None:
    pair = await tls_pair(tls_ca)
    for part in (b"a" * 20_000, b"b" * 20_000):  # two sends, two or more 16 KiB records
        await pair.server.send_all(part)
    with trio.fail_after(5):
        data = await receive_batch(pair.client, 1 << 20)
        while len(data) < 40_000:
            data += await receive_batch(pair.client, 1 << 20)
    assert data == b"a" * 20_000 + b"b" * 20_000


async def test_receive_batch_upstream_side_lets_openssl_free_its_write_buffer(
    tls_ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    pair = await tls_pair(tls_ca)
    writes: list[tuple[bool, bytes]] = []
    real_write = ssl.SSLObject.write

    def recording_write(self: ssl.SSLObject, data: bytes) -> int:
        writes.append((self.server_side, bytes(data)))
        return real_write(self, data)

    monkeypatch.setattr(ssl.SSLObject, "write", recording_write)
    await pair.server.send_all(b"response")  # goes out after the server's session tickets
    with trio.fail_after(5):
        assert await receive_batch(pair.client, 65536) == b"response"
    assert (False, b"") in writes  # the empty write that frees the buffer
    with trio.move_on_after(0.2):  # it put nothing on the wire
        data = await pair.server_wire.receive_some()
        pytest.fail(f"the empty write sent {data!r}")
    # And the connection goes on both ways.
    await pair.client.send_all(b"next request")
    with trio.fail_after(5):
        assert await receive_batch(pair.server, 65536) == b"next request"
        await pair.server.send_all(b"next response")
        assert await receive_batch(pair.client, 65536) == b"next response"


async def test_receive_batch_client_facing_side_does_not_write(
    tls_ca: trustme.CA, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Twin: a server-side stream writes its response next anyway, which frees the buffer.
    pair = await tls_pair(tls_ca)
    writes: list[bytes] = []
    real_write = ssl.SSLObject.write

    def recording_write(self: ssl.SSLObject, data: bytes) -> int:
        writes.append(bytes(data))
        return real_write(self, data)

    monkeypatch.setattr(ssl.SSLObject, "write", recording_write)
    await pair.client.send_all(b"request")
    writes.clear()
    with trio.fail_after(5):
        assert await receive_batch(pair.server, 65536) == b"request"
    assert writes == []


# --- DeferredSendErrors ---------------------------------------------------------------------------

RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() resets instead of FIN


async def test_deferred_send_errors_keeps_a_reset_connections_answer_readable() -> None:
    left, right = await connected_sockets()
    transport = DeferredSendErrors(left)
    await right.send_all(b"413 answer")
    right.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    await right.aclose()  # SO_LINGER 0: a reset, as a server closing with our bytes unread
    with trio.fail_after(5):
        while transport.send_error is None:
            await transport.send_all(b"x" * 65536)
        await transport.send_all(b"dropped quietly")  # later sends do not raise either
        assert await transport.receive_some() == b"413 answer"
    await left.aclose()


async def test_plain_large_reads_raises_the_send_failure_itself() -> None:
    left, right = await connected_sockets()
    right.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, RESET)
    await right.aclose()
    with trio.fail_after(5), pytest.raises(trio.BrokenResourceError):
        await send_until_it_fails(LargeReads(left))
    await left.aclose()


async def send_until_it_fails(stream: trio.abc.Stream) -> None:
    while True:
        await stream.send_all(b"x" * 65536)


async def test_deferred_send_error_is_read_through_a_tls_layer() -> None:
    transport = DeferredSendErrors(Recorder())
    context = ssl.create_default_context()
    tls = trio.SSLStream(transport, context, server_hostname="site.localhost")
    assert deferred_send_error(tls) is None
    transport.send_error = trio.BrokenResourceError("reset")
    assert deferred_send_error(tls) is transport.send_error
    assert deferred_send_error(trio.SSLStream(Recorder(), context, server_hostname="x")) is None
    assert deferred_send_error(Recorder()) is None
