"""Stream helpers: replaying bytes already read, and a raw two-way pipe.

Owns ``PrefixedStream`` (bytes peeked from a client, such as its ClientHello, or left in h11's
buffer, are returned before anything new is read) and ``pipe`` (tunnels and upgraded
connections: two tasks, one per direction, each the only writer of its destination).
"""

from __future__ import annotations

import ssl

import trio

READ_SIZE = 64 * 1024


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
    return data if len(parts) == 1 else b"".join(parts)


class PrefixedStream(trio.abc.Stream):
    """A stream that first yields ``prefix``, then reads from ``inner``."""

    def __init__(self, inner: trio.abc.Stream, prefix: bytes) -> None:
        self.inner = inner
        self._prefix = prefix

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        if self._prefix:
            await trio.lowlevel.checkpoint()
            size = len(self._prefix) if max_bytes is None else max_bytes
            data, self._prefix = self._prefix[:size], self._prefix[size:]
            return data
        return await self.inner.receive_some(max_bytes)

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def send_eof(self) -> None:
        if isinstance(self.inner, trio.abc.HalfCloseableStream):
            await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


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
        if isinstance(dst, trio.abc.HalfCloseableStream):
            try:
                await dst.send_eof()
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                nursery.cancel_scope.cancel()
            return
        nursery.cancel_scope.cancel()

    async with trio.open_nursery() as nursery:
        deadline.scope = nursery.cancel_scope
        deadline.touch()
        nursery.start_soon(copy, a, b, 0)
        nursery.start_soon(copy, b, a, 1)
    return counts[0], counts[1]


class _IdleDeadline:
    """Pushes a cancel scope's deadline forward each time a byte moves."""

    def __init__(self, idle: float) -> None:
        self.idle = idle
        self.scope: trio.CancelScope | None = None

    def touch(self) -> None:
        if self.scope is not None:
            self.scope.deadline = trio.current_time() + self.idle
