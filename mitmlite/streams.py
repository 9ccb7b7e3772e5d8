"""Stream helpers: large transport reads, replaying bytes already read, and a raw two-way pipe.

Owns ``LargeReads`` (what every TLS layer sits on, see ``tls_transport``; upstream ones as
``DeferredSendErrors``), the socket send queue (``deepen_send_queue``), ``PrefixedStream``
(bytes peeked from a client, such as its ClientHello, or left in h11's buffer, are returned
before anything new is read) and ``pipe`` (tunnels and upgraded connections: two tasks, one per
direction, each the only writer of its destination).
"""

from __future__ import annotations

import contextlib
import socket
import ssl

import trio

READ_SIZE = 64 * 1024
# What a TLS layer reads from its transport at once (trio's SocketStream reads 64 KiB when not
# told). Every read is a trip through trio's scheduler and the relay's loop on both legs; at
# 256 KiB a 100 MiB body took a quarter of the trips of 64 KiB (200 -> 300 MiB/s). 512 KiB ran
# a fifth faster again, but each concurrent transfer then left about 3 MiB of heap in use after
# it ended (100 clients x 4 downloads of 5 MB, three rounds: 396 MB in use at idle against 74
# MB at 256 KiB, whatever the malloc settings; the cause is not found yet), so it stays 256 KiB.
# Reads return what the socket holds, so small exchanges are unaffected.
TRANSPORT_READ = 256 * 1024
# trio sets TCP_NOTSENT_LOWAT to 16 KiB on every SocketStream: a send waits once 16 KiB sit
# unsent in the kernel, which suits a program that wants to decide late what to send next. A
# relay has nothing to reorder, and a large write that meets a slow reader was cut into
# pieces, each a wait and a wake-up (strace, 200 MiB through the proxy: 814 sends instead of
# 973; throughput +5 to +10% in interleaved pairs, within this VM's noise). Kernel memory stays
# bounded by the socket's send buffer, as for any program that leaves the option alone.
SEND_QUEUE = 1024 * 1024


async def receive_batch(stream: trio.abc.Stream, max_bytes: int) -> bytes | bytearray:
    """``receive_some``, plus every TLS record already decrypted-ready behind it.

    trio's SSLStream returns one TLS record (at most 16 KiB) per call, and each call costs a
    trip through the scheduler; the transport read that fed it usually brought several records.
    Taking those from the SSL object at once cuts the per-chunk overhead of the body path about
    fourfold. Anything unusual (close_notify, an alert, a KeyUpdate that needs an answer) is
    left for the next ``receive_some``, which handles it as trio always does.
    """
    data = await stream.receive_some(max_bytes)
    ssl_object = (
        getattr(stream, "_ssl_object", None) if isinstance(stream, trio.SSLStream) else None
    )
    if not data or not isinstance(ssl_object, ssl.SSLObject):
        return data
    parts = [data]
    total = len(data)
    while total < max_bytes:
        try:
            more = ssl_object.read(max_bytes - total)
        except ssl.SSLError:
            break
        if not more:
            break
        parts.append(more)
        total += len(more)
    if not ssl_object.server_side:
        _release_write_buffer(ssl_object)
    return data if len(parts) == 1 else b"".join(parts)


def _release_write_buffer(ssl_object: ssl.SSLObject) -> None:
    """Let OpenSSL free the 16 KiB write buffer that reading a TLS 1.3 session ticket allocates.

    OpenSSL frees its record buffers when idle (SSL_MODE_RELEASE_BUFFERS), but the write buffer
    set up while processing a post-handshake message is only freed by the next application
    write. Upstreams send their tickets with the first response, so every idle keep-alive
    upstream connection would hold it (measured: 38 KiB per idle connection instead of 22). An
    empty write frees it and sends nothing; should OpenSSL owe the peer a message (a KeyUpdate
    answer), it waits in the outgoing BIO and trio sends it with the next operation, in order.
    """
    with contextlib.suppress(ssl.SSLError):  # the next real operation reports it
        ssl_object.write(b"")


class LargeReads(trio.abc.Stream):
    """``inner``, read ``TRANSPORT_READ`` bytes at a time when the reader names no size.

    trio's SSLStream refills its buffer with ``transport.receive_some()``; this is where that
    size is chosen.
    """

    __slots__ = ("inner",)

    def __init__(self, inner: trio.abc.Stream) -> None:
        self.inner = inner

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        return await self.inner.receive_some(max_bytes or TRANSPORT_READ)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.inner, trio.abc.HalfCloseableStream):
            await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


class DeferredSendErrors(LargeReads):
    """The transport under an upstream TLS layer: a failed send is noted in ``send_error``.

    trio's SSLStream treats any failed transport send as fatal for reading as well. But a
    server that answers early (a 413 for an upload it will not take, a 401) and then closes
    leaves that answer readable in our socket after the reset that fails our next send (Linux
    keeps received data readable). The relay checks ``send_error`` after each flush, stops
    sending, and reads the answer, as curl does and mitmproxy did in a side-by-side run. Later
    sends are dropped, so closing the connection (close_notify) stays quiet.
    """

    __slots__ = ("send_error",)

    def __init__(self, inner: trio.abc.Stream) -> None:
        super().__init__(inner)
        self.send_error: trio.BrokenResourceError | None = None

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.send_error is not None:
            await trio.lowlevel.checkpoint()
            return
        try:
            await self.inner.send_all(data)
        except trio.BrokenResourceError as exc:
            self.send_error = exc


def deferred_send_error(stream: trio.abc.Stream) -> trio.BrokenResourceError | None:
    """The send failure a TLS ``stream``'s ``DeferredSendErrors`` transport noted, if any."""
    transport = stream.transport_stream if isinstance(stream, trio.SSLStream) else None
    return transport.send_error if isinstance(transport, DeferredSendErrors) else None


class PrefixedStream(LargeReads):
    """A stream that first yields ``prefix``, then reads from ``inner``."""

    __slots__ = ("_prefix",)

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        super().__init__(inner)
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await super().receive_some(max_bytes)


def deepen_send_queue(stream: trio.SocketStream) -> None:
    """Let the kernel queue ``SEND_QUEUE`` unsent bytes before a send on ``stream`` waits."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)  # Linux and macOS
    if option is not None:
        with contextlib.suppress(OSError):  # a socket already closed by its peer
            stream.setsockopt(socket.IPPROTO_TCP, option, SEND_QUEUE)


def tls_transport(stream: trio.abc.Stream) -> trio.abc.Stream:
    """The stream to put a TLS layer on: ``stream``, read in large pieces."""
    return stream if isinstance(stream, LargeReads) else LargeReads(stream)


async def pipe(a: trio.abc.Stream, b: trio.abc.Stream, idle: float) -> tuple[int, int]:
    """Copy bytes both ways until both directions end; returns (a→b bytes, b→a bytes).

    A direction ends at EOF, where the other side gets a half-close when it supports one (TLS
    does not, so the whole pipe ends then). ``idle`` bounds the wait for any byte in either
    direction, so an abandoned tunnel does not live forever.
    """
    counts = [0, 0]
    deadline = _IdleDeadline(idle)

    async def copy(src: trio.abc.Stream, dst: trio.abc.Stream, index: int) -> None:
        try:
            while data := await src.receive_some(READ_SIZE):
                deadline.touch()
                counts[index] += len(data)
                await dst.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            nursery.cancel_scope.cancel()
            return
        try:
            if await _half_close(dst):
                return
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        deadline.scope = nursery.cancel_scope
        deadline.touch()
        nursery.start_soon(copy, a, b, 0)
        nursery.start_soon(copy, b, a, 1)
    return counts[0], counts[1]


async def _half_close(stream: trio.abc.Stream) -> bool:
    """Send EOF if the stream, under any replayed prefix, can half-close; False if it cannot.

    Tunnels wrap the client in a PrefixedStream (its peeked first bytes), which must not hide
    that a TCP client can still take a FIN while its other direction goes on.
    """
    inner = stream
    while isinstance(inner, LargeReads):
        inner = inner.inner
    if not isinstance(inner, trio.abc.HalfCloseableStream):
        return False
    await inner.send_eof()
    return True


class _IdleDeadline:
    """Pushes a cancel scope's deadline forward each time a byte moves."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.scope: trio.CancelScope | None = None

    def touch(self) -> None:
        if self.scope is not None:
            self.scope.deadline = trio.current_time() + self.idle
