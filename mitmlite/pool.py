"""Idle upstream connections kept for the next client connection to the same destination.

Owns the pool that lets a new tunnel (a browser opens many to one site, a script one per
request) reuse an upstream connection another client connection finished with, instead of a new
TCP and TLS handshake: the pool key is the whole ``Destination`` (host, port, TLS, server name),
so a connection verified for one name is never used for another. Only idle, unclosed
connections come back; one that carried connection-bound authentication (NTLM, Negotiate) never
does, so no client can inherit another's login. Bounded per destination, in total and in age.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import trio

from mitmlite.upstream import Connector, Destination, Upstream

Clock = Callable[[], float]


class UpstreamPool:
    """Idle connections by destination, newest last; the oldest go first when it is full."""

    def __init__(
        self,
        *,
        per_destination: int = 6,
        total: int = 256,
        idle_limit: float = 30.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.per_destination = per_destination
        self.total = total
        self.idle_limit = idle_limit
        self.clock = clock
        self._idle: OrderedDict[Destination, list[tuple[float, Upstream]]] = OrderedDict()
        self._count = 0
        self._doomed: list[Upstream] = []  # taken out of the pool, still to be closed

    def __len__(self) -> int:
        return self._count

    def has(self, dest: Destination) -> bool:
        """Whether an idle connection to ``dest`` is waiting (it may still turn out closed)."""
        return dest in self._idle

    def take(self, dest: Destination) -> Upstream | None:
        """An idle connection to ``dest`` that is still open, or None."""
        entries = self._idle.get(dest)
        now = self.clock()
        while entries:
            since, upstream = entries.pop()
            self._count -= 1
            if now - since <= self.idle_limit and upstream.reusable():
                upstream.recycled = True  # a retry is allowed if it turns out closed after all
                self._forget_if_empty(dest)
                return upstream
            self._doomed.append(upstream)
        self._forget_if_empty(dest)
        return None

    def give(self, upstream: Upstream) -> bool:
        """Keep ``upstream`` for later; False when it cannot be shared (the caller closes it)."""
        dest = upstream.dest
        if dest is None or not upstream.shareable or not upstream.reusable():
            return False
        entries = self._idle.setdefault(dest, [])
        entries.append((self.clock(), upstream))
        self._idle.move_to_end(dest)
        self._count += 1
        if len(entries) > self.per_destination:
            self._doomed.append(entries.pop(0)[1])
            self._count -= 1
        while self._count > self.total:
            oldest = next(iter(self._idle))
            self._doomed.append(self._idle[oldest].pop(0)[1])
            self._count -= 1
            self._forget_if_empty(oldest)
        return True

    async def close_doomed(self) -> None:
        """Close the connections the pool let go of (it never awaits inside take/give)."""
        while self._doomed:
            await trio.aclose_forcefully(self._doomed.pop().stream)

    async def aclose(self) -> None:
        """Close everything (at shutdown)."""
        for entries in self._idle.values():
            self._doomed.extend(upstream for _, upstream in entries)
        self._idle.clear()
        self._count = 0
        await self.close_doomed()

    def _forget_if_empty(self, dest: Destination) -> None:
        if dest in self._idle and not self._idle[dest]:
            del self._idle[dest]


@dataclass(frozen=True, slots=True)
class PooledConnector:
    """A ``Connector`` that takes from the pool first and labels what it opens for the pool."""

    connect: Connector
    pool: UpstreamPool

    async def __call__(self, dest: Destination) -> Upstream:
        upstream = self.pool.take(dest)
        with trio.CancelScope(shield=True):  # a cancel here must not strand what take() handed out
            await self.pool.close_doomed()
        if upstream is not None:
            return upstream
        upstream = await self.connect(dest)
        upstream.dest = dest
        return upstream
