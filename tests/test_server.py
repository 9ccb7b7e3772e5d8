"""The listener: readiness through task_status, isolation of failing connections, the banner."""

from __future__ import annotations

import datetime as dt
import functools
import socket
from pathlib import Path

import trio

from mitmlite.ca.cache import LeafCache
from mitmlite.ca.files import init_ca
from mitmlite.config import Config, Limits
from mitmlite.connection import ConnectionEnv, handle_client
from mitmlite.server import banner, build_env, serve
from mitmlite.streams import SEND_QUEUE
from tests.fakes import Sink
from tests.origin import OriginState, serve_origin_tcp


def make_env(tmp_path: Path, sink: Sink, config: Config) -> ConnectionEnv:
    loaded = init_ca(tmp_path / "ca", dt.datetime.now(dt.UTC))
    return build_env(config, LeafCache(loaded.root, tmp_path / "leaves"), sink)


async def proxy_get(port: int, url: bytes) -> bytes:
    stream = await trio.open_tcp_stream("127.0.0.1", port)
    async with stream:
        await stream.send_all(b"GET " + url + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        with trio.fail_after(10):
            while chunk := await stream.receive_some(65536):
                data += chunk
    return data


async def test_serves_after_reporting_its_address(nursery: trio.Nursery, tmp_path: Path) -> None:
    origin_port = await nursery.start(serve_origin_tcp, OriginState(), None)
    config = Config(listen_port=0)
    addresses = await nursery.start(serve, config, make_env(tmp_path, Sink(), config))
    assert [host for host, _ in addresses] == ["127.0.0.1"]
    reply = await proxy_get(addresses[0][1], b"http://127.0.0.1:%d/x" % origin_port)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"origin /x")


async def test_a_crashing_connection_is_logged_and_others_continue(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    origin_port = await nursery.start(serve_origin_tcp, OriginState(), None)
    sink = Sink()
    config = Config(listen_port=0)
    env = make_env(tmp_path, sink, config)
    calls = 0

    async def crash_first(stream: trio.SocketStream) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("boom in one connection")
        await handle_client(env, stream)

    addresses = await nursery.start(functools.partial(serve, handler=crash_first), config, env)
    port = addresses[0][1]
    assert await proxy_get(port, b"http://127.0.0.1:%d/a" % origin_port) == b""
    assert (await proxy_get(port, b"http://127.0.0.1:%d/b" % origin_port)).endswith(b"origin /b")
    assert any("connection error: RuntimeError: boom in one connection" in e for e in sink.events)


async def test_accepted_connections_get_the_relay_send_queue(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = Config(listen_port=0)
    env = make_env(tmp_path, Sink(), config)
    seen: list[int] = []

    async def record(stream: trio.SocketStream) -> None:
        seen.append(stream.getsockopt(socket.IPPROTO_TCP, socket.TCP_NOTSENT_LOWAT))

    addresses = await nursery.start(functools.partial(serve, handler=record), config, env)
    client = await trio.open_tcp_stream("127.0.0.1", addresses[0][1])
    async with client:
        with trio.fail_after(5):
            assert await client.receive_some(10) == b""  # served and closed
    assert seen == [SEND_QUEUE]


async def test_connection_cap_holds_extra_clients_in_the_backlog(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    origin_port = await nursery.start(serve_origin_tcp, OriginState(), None)
    config = Config(listen_port=0, limits=Limits(max_connections=1))
    sink = Sink()
    addresses = await nursery.start(serve, config, make_env(tmp_path, sink, config))
    port = addresses[0][1]
    assert not any("connection limit" in line for line in sink.events)
    holder = await trio.open_tcp_stream("127.0.0.1", port)
    with trio.move_on_after(0.5) as waited:
        await proxy_get(port, b"http://127.0.0.1:%d/q" % origin_port)
    assert waited.cancelled_caught
    limit_lines = [line for line in sink.events if "connection limit reached" in line]
    assert limit_lines == [
        "connection limit reached (--max-connections 1): new clients wait until a connection closes"
    ]
    await holder.aclose()
    assert (await proxy_get(port, b"http://127.0.0.1:%d/q" % origin_port)).endswith(b"origin /q")


def test_banner_names_the_address_ca_and_an_example(tmp_path: Path) -> None:
    loaded = init_ca(tmp_path, dt.datetime.now(dt.UTC))
    text = banner(Config(), loaded, [("127.0.0.1", 8080)])
    assert text.startswith("mitmlite listening on 127.0.0.1:8080\n")
    assert f"https_proxy=http://127.0.0.1:8080 curl --cacert {loaded.cert_path}" in text
    assert "WARNING" not in text
    insecure = banner(Config(insecure=True), loaded, [("127.0.0.1", 8080)])
    assert insecure.startswith("WARNING: --insecure")
