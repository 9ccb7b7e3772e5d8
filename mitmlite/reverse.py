"""Reverse mode: clients talk to mitmlite as if it were the server; all requests go to one origin.

Owns one client connection in ``--mode reverse:URL``: peeking at its first bytes (a ClientHello
is answered with the leaf for the SNI it asks for, or the ``--cert`` given; anything else is
served as plain HTTP), then the relay with the fixed upstream, ``Host`` rewritten to the
upstream's authority, and hooks running as in the forward proxy.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import h11
import trio

from mitmlite.ca.cache import LeafCache
from mitmlite.config import ReverseTarget
from mitmlite.errors import ClientError, MitmliteError
from mitmlite.relay import Relay, RelayEnv
from mitmlite.streams import PrefixedStream
from mitmlite.tls.clienthello import (
    MAX_HELLO_LENGTH,
    ClientHello,
    looks_like_tls,
    parse_client_hello,
)
from mitmlite.upstream import Destination

_CLOSE_NOTIFY_SECONDS = 2.0


@dataclass(frozen=True, slots=True)
class ReverseEnv:
    """What each reverse-mode connection needs, built once."""

    relay: RelayEnv
    leaves: LeafCache
    target: ReverseTarget
    fixed_context: ssl.SSLContext | None = None  # from --cert/--key, else leaves per SNI

    @property
    def destination(self) -> Destination:
        t = self.target
        return Destination(t.host, t.port, tls=t.tls, server_name=t.host if t.tls else None)


async def handle_reverse_client(env: ReverseEnv, stream: trio.abc.Stream, name: str) -> None:
    """Serve one client of the reverse proxy to its end."""
    config = env.relay.config
    first = b""
    with trio.move_on_after(config.timeouts.handshake):
        first = bytes(await stream.receive_some(config.limits.read_size))
    if not first:
        return  # closed or silent: there is no one to answer
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=config.limits.max_header_bytes)
    host = env.target.authority.encode("ascii")
    if not looks_like_tls(first):
        relay = Relay(env.relay, PrefixedStream(stream, first), conn, name, env.destination, host)
        await relay.run()
        return
    try:
        hello, first = await _read_client_hello(env, stream, first)
        context = env.fixed_context or env.leaves.context_for(hello.sni or env.target.host)
    except MitmliteError as exc:
        env.relay.sink.event(name, f"reverse error: {exc}")
        return
    tls = trio.SSLStream(PrefixedStream(stream, first), context, server_side=True)
    try:
        with trio.fail_after(config.timeouts.handshake):
            await tls.do_handshake()
    except (trio.TooSlowError, trio.BrokenResourceError) as exc:
        reason = "timed out" if isinstance(exc, trio.TooSlowError) else "failed"
        env.relay.sink.event(name, f"reverse error: client TLS handshake {reason}")
        return
    try:
        await Relay(env.relay, tls, conn, name, env.destination, host).run()
    finally:
        with trio.move_on_after(_CLOSE_NOTIFY_SECONDS, shield=True):
            await tls.aclose()


async def _read_client_hello(
    env: ReverseEnv, stream: trio.abc.Stream, data: bytes
) -> tuple[ClientHello, bytes]:
    config = env.relay.config
    try:
        with trio.fail_after(config.timeouts.handshake):
            while not isinstance(hello := parse_client_hello(data), ClientHello):
                if len(data) > 2 * MAX_HELLO_LENGTH:
                    raise ClientError("ClientHello is larger than 128 KiB")
                more = await stream.receive_some(config.limits.read_size)
                if not more:
                    raise ClientError("client closed the connection inside its ClientHello")
                data += more
    except trio.TooSlowError as exc:
        raise ClientError("ClientHello not received in time") from exc
    return hello, data
