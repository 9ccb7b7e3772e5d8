"""The upstream pool: idle connections shared across client connections, safely."""

from __future__ import annotations

import h11
import trio
import trio.testing

from mitmlite.config import Config
from mitmlite.pool import PooledConnector, UpstreamPool
from mitmlite.relay import Relay, RelayEnv
from mitmlite.upstream import Destination, Upstream
from tests.fakes import MemoryConnector, Sink
from tests.origin import OriginState
from tests.test_relay import SITE, Client

OTHER_NAME = Destination("site.test", 443, tls=True, server_name="other.test")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def idle(dest: Destination = SITE) -> Upstream:
    near, _far = trio.testing.memory_stream_pair()
    upstream = Upstream(dest.host, dest.port, near, h11.Connection(h11.CLIENT))
    upstream.dest = dest
    return upstream


async def test_take_returns_what_was_given_for_the_same_destination_only() -> None:
    pool = UpstreamPool()
    upstream = idle()
    assert pool.give(upstream)
    assert pool.take(OTHER_NAME) is None  # same host and port, another verified name
    taken = pool.take(SITE)
    assert taken is upstream
    assert taken.recycled
    assert pool.take(SITE) is None
    assert len(pool) == 0


async def test_unshareable_busy_or_unlabelled_connections_are_refused() -> None:
    pool = UpstreamPool()
    tainted = idle()
    tainted.shareable = False
    assert not pool.give(tainted)
    unlabelled = idle()
    unlabelled.dest = None
    assert not pool.give(unlabelled)
    busy = idle()
    busy.conn.send(h11.Request(method="GET", target="/", headers=[(b"Host", b"x")]))
    assert not pool.give(busy)
    assert len(pool) == 0


async def test_old_connections_are_not_handed_out() -> None:
    clock = Clock()
    pool = UpstreamPool(idle_limit=30, clock=clock)
    pool.give(idle())
    clock.now = 31
    assert pool.take(SITE) is None
    await pool.close_doomed()


async def test_limits_per_destination_and_in_total_evict_the_oldest() -> None:
    pool = UpstreamPool(per_destination=2, total=3)
    first, second, third = idle(), idle(), idle()
    for upstream in (first, second, third):
        pool.give(upstream)
    assert len(pool) == 2
    other = [idle(Destination(f"h{i}.test", 443, tls=True)) for i in range(3)]
    for upstream in other:
        pool.give(upstream)
    assert len(pool) == 3
    assert pool.take(SITE) is None  # the oldest destination went first
    await pool.close_doomed()
    await pool.aclose()
    assert len(pool) == 0


# --- through the relay: two client connections, one upstream connection -----------------------


async def run_client(env: RelayEnv, nursery: trio.Nursery, target: bytes,
                     headers: list[tuple[bytes, bytes]] | None = None) -> bytes:  # fmt: skip
    client_end, proxy_end = trio.testing.memory_stream_pair()
    done = trio.Event()

    async def relay() -> None:
        try:
            await Relay(env, proxy_end, h11.Connection(h11.SERVER), "test", SITE).run()
        finally:
            await proxy_end.aclose()
            done.set()

    nursery.start_soon(relay)
    client = Client(client_end)
    _, body = await client.get(target, headers)
    await client_end.aclose()
    await done.wait()
    return body


async def test_a_second_client_reuses_the_first_clients_upstream(nursery: trio.Nursery) -> None:
    origin = OriginState()
    pool = UpstreamPool()
    env = RelayEnv(Config(), PooledConnector(MemoryConnector(nursery, origin), pool), Sink(),
                   pool=pool)  # fmt: skip
    assert await run_client(env, nursery, b"/one") == b"origin /one"
    assert len(pool) == 1
    assert await run_client(env, nursery, b"/two") == b"origin /two"
    assert origin.connections == 1
    await pool.aclose()


async def test_connection_bound_auth_is_never_shared(nursery: trio.Nursery) -> None:
    origin = OriginState()
    pool = UpstreamPool()
    env = RelayEnv(Config(), PooledConnector(MemoryConnector(nursery, origin), pool), Sink(),
                   pool=pool)  # fmt: skip
    auth = [(b"Host", b"site.test"), (b"Authorization", b"NTLM TlRMTVNTUAABAAAA")]
    assert await run_client(env, nursery, b"/login", auth) == b"origin /login"
    assert len(pool) == 0
    assert await run_client(env, nursery, b"/next") == b"origin /next"
    assert origin.connections == 2
    await pool.aclose()


async def test_a_pooled_connection_the_server_closed_is_retried(nursery: trio.Nursery) -> None:
    origin = OriginState()
    pool = UpstreamPool()
    env = RelayEnv(Config(), PooledConnector(MemoryConnector(nursery, origin), pool), Sink(),
                   pool=pool)  # fmt: skip
    assert await run_client(env, nursery, b"/then-close") == b"bye"
    # The origin closed it after answering; memory streams do not look readable, so the pool
    # hands it out, the request fails on it, and the relay retries on a fresh connection.
    assert await run_client(env, nursery, b"/again") == b"origin /again"
    assert origin.connections == 2
    await pool.aclose()
