"""Test doubles shared by the unit tests: a recording FlowSink and an in-memory upstream."""

from __future__ import annotations

from dataclasses import dataclass, field

import trio
import trio.testing

from mitmlite.flow import FlowRecord
from mitmlite.upstream import Destination, Upstream, client_conn
from tests.origin import OriginState, serve_origin


@dataclass
class Sink:
    flows: list[FlowRecord] = field(default_factory=list)
    events: list[str] = field(default_factory=list)

    def flow(self, record: FlowRecord) -> None:
        self.flows.append(record)

    def event(self, client: str, message: str) -> None:
        self.events.append(message)


@dataclass
class MemoryConnector:
    """Each connect() starts a fresh origin on the far end of a memory stream pair."""

    nursery: trio.Nursery
    state: OriginState
    dests: list[Destination] = field(default_factory=list)
    fail_with: Exception | None = None

    async def __call__(self, dest: Destination) -> Upstream:
        await trio.lowlevel.checkpoint()
        if self.fail_with is not None:
            raise self.fail_with
        self.dests.append(dest)
        near, far = trio.testing.memory_stream_pair()
        self.nursery.start_soon(serve_origin, far, self.state)
        return Upstream(dest.host, dest.port, near, client_conn())
