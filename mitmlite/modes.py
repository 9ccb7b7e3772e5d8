"""Which code serves an accepted connection: the forward proxy (plain or TLS listener) or reverse.

Owns choosing the per-connection handler from the configuration, once, before serving:
``--listen-tls`` wraps every accepted connection in TLS with the proxy's own certificate before
the forward proxy reads its request (so an ``https://`` proxy URL works, and a CONNECT inside it
is intercepted TLS-in-TLS); ``--mode reverse:URL`` hands connections to ``reverse``. Building the
contexts here means a bad ``--cert`` fails at start, with exit 2, not on the first connection.
"""

from __future__ import annotations

import contextlib
import ssl
from collections.abc import Awaitable, Callable

import h11
import trio

from mitmlite.config import Config
from mitmlite.connection import (
    ConnectionEnv,
    client_tls_layer,
    first_bytes,
    handle_client,
    peer_name,
    server_handshake,
)
from mitmlite.errors import ConfigError
from mitmlite.http1 import error_response, reason_phrase
from mitmlite.reverse import ReverseEnv, handle_reverse_client
from mitmlite.streams import PrefixedStream
from mitmlite.tls.clienthello import looks_like_tls
from mitmlite.tls.contexts import leaf_context

Handler = Callable[[trio.SocketStream], Awaitable[None]]
_CLOSE_NOTIFY_SECONDS = 2.0


def handler_for(config: Config, env: ConnectionEnv) -> Handler:
    """The function that serves each accepted connection under ``config``."""
    own = _own_context(config)
    if config.reverse is not None:
        reverse = ReverseEnv(env.relay, env.leaves, config.reverse, own)

        async def serve_reverse(stream: trio.SocketStream) -> None:
            await handle_reverse_client(reverse, stream, peer_name(stream))

        return serve_reverse
    if config.listen_tls:
        context = own or env.leaves.context_for(config.listen_host)

        async def serve_tls_proxy(stream: trio.SocketStream) -> None:
            await handle_tls_proxy_client(env, context, stream)

        return serve_tls_proxy

    async def serve_proxy(stream: trio.SocketStream) -> None:
        await handle_client(env, stream)

    return serve_proxy


def _own_context(config: Config) -> ssl.SSLContext | None:
    if config.cert is None:
        return None
    chain, key = config.cert
    try:
        return leaf_context(chain, key)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"cannot use --cert {chain} / --key {key}: {exc}") from exc


async def handle_tls_proxy_client(
    env: ConnectionEnv, context: ssl.SSLContext, stream: trio.SocketStream
) -> None:
    """The forward proxy behind a TLS listener: handshake with the proxy certificate first."""
    name = peer_name(stream)
    config = env.relay.config
    first = await first_bytes(stream, config)
    if not first:
        return
    if not looks_like_tls(first):
        # Someone used http:// for a TLS listener: tell them in words they can read.
        reason = "this proxy port speaks TLS: use an https:// proxy URL"
        env.relay.sink.event(name, f"error: plain HTTP sent to the TLS listener ({reason})")
        await _plain_refusal(stream, reason)
        return
    tls = client_tls_layer(PrefixedStream(stream, first), context)
    if (failure := await server_handshake(tls, config.timeouts.handshake)) is not None:
        env.relay.sink.event(name, f"error: TLS handshake with the proxy listener {failure}")
        return
    try:
        await handle_client(env, tls, name)
    finally:
        with trio.move_on_after(_CLOSE_NOTIFY_SECONDS, shield=True):
            await tls.aclose()


async def _plain_refusal(stream: trio.abc.Stream, reason: str) -> None:
    headers, body = error_response(400, reason)
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")  # lets h11 write a response head
    conn.next_event()
    head = h11.Response(status_code=400, headers=headers, reason=reason_phrase(400))
    data = b"".join(
        conn.send(event) or b"" for event in (head, h11.Data(data=body), h11.EndOfMessage())
    )
    with trio.move_on_after(_CLOSE_NOTIFY_SECONDS):
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(data)
