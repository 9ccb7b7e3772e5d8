"""Reverse mode: clients talk to mitmlite as if it were the server; all requests go to one origin.

Owns one client connection in ``--mode reverse:URL``: peeking at its first bytes (a ClientHello
is answered with the leaf for the SNI it asks for, or the ``--cert`` given; anything else is
served as plain HTTP), then the relay with the fixed upstream, ``Host`` rewritten to the
upstream's authority, and hooks running as in the forward proxy.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass

import trio

from mitmlite.ca.cache import LeafCache
from mitmlite.config import ReverseTarget
from mitmlite.connection import (
    client_tls_layer,
    first_bytes,
    new_server_conn,
    read_client_hello,
    server_handshake,
)
from mitmlite.errors import MitmliteError
from mitmlite.relay import Relay, RelayEnv
from mitmlite.streams import PrefixedStream
from mitmlite.tls.clienthello import looks_like_tls
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
    first = await first_bytes(stream, config)
    if not first:
        return  # closed or silent: there is no one to answer
    conn = new_server_conn(config)
    host = env.target.authority.encode("ascii")
    if not looks_like_tls(first):
        relay = Relay(env.relay, PrefixedStream(stream, first), conn, name, env.destination, host)
        await relay.run()
        return
    try:
        hello, first = await read_client_hello(stream, first, config)
        context = env.fixed_context or env.leaves.context_for(hello.sni or env.target.host)
    except MitmliteError as exc:
        env.relay.sink.event(name, f"reverse error: {exc}")
        return
    tls = client_tls_layer(PrefixedStream(stream, first), context)
    if (failure := await server_handshake(tls, config.timeouts.handshake)) is not None:
        env.relay.sink.event(name, f"reverse error: client TLS handshake {failure}")
        return
    try:
        await Relay(env.relay, tls, conn, name, env.destination, host).run()
    finally:
        with trio.move_on_after(_CLOSE_NOTIFY_SECONDS, shield=True):
            await tls.aclose()
