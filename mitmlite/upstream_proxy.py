"""Chaining: every upstream connection goes through another proxy (``--upstream-proxy``).

Owns reaching an origin through an HTTP or HTTPS proxy: TCP to the proxy (TLS to it when its URL
is ``https://``, verified like any upstream), then ``CONNECT host:port`` for TLS origins and raw
tunnels (the origin's TLS then runs inside the proxy's, TLS over TLS), or, for plain-HTTP
origins, an ``Upstream`` marked so the relay sends absolute-form requests with the proxy's
credentials. A proxy that refuses becomes a 502 naming the proxy and its answer.
"""

from __future__ import annotations

import ssl
import time
from dataclasses import dataclass, field
from typing import cast

import h11
import trio

from mitmlite.config import UpstreamProxy
from mitmlite.errors import UpstreamError, UpstreamTimeoutError
from mitmlite.streams import PrefixedStream
from mitmlite.upstream import (
    Destination,
    SessionCache,
    Upstream,
    client_conn,
    open_tcp,
    start_tls,
)

_REPLY_LIMIT = 64 * 1024  # a CONNECT answer's head and body, read only to explain a refusal


@dataclass(frozen=True, slots=True)
class ProxiedConnector:
    """A ``Connector`` whose connections all go through ``proxy``."""

    proxy: UpstreamProxy
    tls_context: ssl.SSLContext
    connect_timeout: float
    handshake_timeout: float
    sessions: SessionCache = field(default_factory=SessionCache, compare=False)

    async def __call__(self, dest: Destination) -> Upstream:
        proxy = self.proxy
        started = time.monotonic()
        tcp = await _open(proxy, self.connect_timeout)
        try:
            stream: trio.abc.Stream = tcp
            if proxy.tls:
                stream = await start_tls(tcp, proxy.host, self.tls_context, self.handshake_timeout)
            if not dest.tls and not dest.tunnel:
                # Plain HTTP is forwarded in absolute form, as a browser talks to a proxy.
                conn = client_conn()
                return Upstream(dest.host, dest.port, stream, conn, tcp, absolute_form=True,
                                proxy_authorization=proxy.authorization)  # fmt: skip
            leftover = await _connect_through(stream, dest, proxy, self.handshake_timeout)
            if leftover:  # a server-speaks-first banner that came with the proxy's 200
                stream = PrefixedStream(stream, leftover)
            tunnelled = time.monotonic()
            verified = True
            if dest.tls:
                server_name = dest.server_name or dest.host
                key = (dest.host, dest.port, server_name)
                session = self.sessions.get(key)
                tls = await start_tls(stream, server_name, self.tls_context,
                                      self.handshake_timeout, session=session)  # fmt: skip
                self.sessions.put(key, tls, session)
                stream = tls
                verified = self.tls_context.verify_mode != ssl.CERT_NONE
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        upstream = Upstream(dest.host, dest.port, stream, client_conn(), tcp,
                            verified=verified)  # fmt: skip
        # Reaching the origin through the proxy counts as TCP; its TLS as TLS.
        upstream.opened = (started, tunnelled, time.monotonic() if dest.tls else None)
        return upstream


async def _open(proxy: UpstreamProxy, limit: float) -> trio.SocketStream:
    try:
        return await open_tcp(proxy.host, proxy.port, limit)
    except UpstreamTimeoutError as exc:
        raise UpstreamTimeoutError(f"upstream proxy: {exc}") from exc
    except UpstreamError as exc:
        raise UpstreamError(f"upstream proxy: {exc}") from exc


async def _connect_through(
    stream: trio.abc.Stream, dest: Destination, proxy: UpstreamProxy, limit: float
) -> bytes:
    """Ask the proxy for a tunnel to ``dest``; once it answered 2xx, the bytes read past it."""
    host = f"[{dest.host}]" if ":" in dest.host else dest.host
    authority = f"{host}:{dest.port}".encode("ascii")
    headers = [(b"Host", authority)]
    if proxy.authorization is not None:
        headers.append((b"Proxy-Authorization", proxy.authorization))
    conn = h11.Connection(h11.CLIENT)
    request = h11.Request(method=b"CONNECT", target=authority, headers=headers)
    where = f"upstream proxy {proxy.address}"
    try:
        with trio.fail_after(limit):
            await stream.send_all(conn.send(request) or b"")
            reply = await _reply(stream, conn)
    except trio.TooSlowError as exc:
        raise UpstreamTimeoutError(f"{where} did not answer CONNECT within {limit:g} s") from exc
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise UpstreamError(f"{where} closed the connection during CONNECT") from exc
    except h11.RemoteProtocolError as exc:
        raise UpstreamError(f"{where} sent a malformed answer to CONNECT: {exc}") from exc
    if 200 <= reply.status_code < 300:
        return conn.trailing_data[0]
    reason = reply.reason.decode("latin-1", "replace")
    hint = "; put credentials in the --upstream-proxy URL" if reply.status_code == 407 else ""
    raise UpstreamError(
        f"{where} refused CONNECT {dest.host}:{dest.port}: {reply.status_code} {reason}{hint}"
    )


async def _reply(stream: trio.abc.Stream, conn: h11.Connection) -> h11.Response:
    received = 0
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA:
            data = await stream.receive_some(_REPLY_LIMIT)
            received += len(data)
            if not data or received > _REPLY_LIMIT:
                raise trio.BrokenResourceError
            conn.receive_data(cast(bytes, data))
            continue
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise trio.BrokenResourceError
        # 1xx before the answer: keep reading
