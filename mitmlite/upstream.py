"""Connections to origin servers: TCP and TLS under deadlines, errors mapped once.

Owns opening a connection to an upstream (``.localhost`` names resolve to loopback, RFC 6761
§6.3, so tests and local development need no /etc/hosts), the verified TLS handshake, and the
mapping of ``OSError``/``ssl`` failures and timeouts to ``UpstreamError`` (502) and
``UpstreamTimeoutError`` (504) with a one-line reason. It never decides what a client sees.
"""

from __future__ import annotations

import errno
import os
import select
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio

from mitmlite.errors import UpstreamCertificateError, UpstreamError, UpstreamTimeoutError


@dataclass(frozen=True, slots=True)
class Destination:
    """Where requests go: an origin, reached over TLS (with ``server_name``) or plain TCP."""

    host: str
    port: int
    tls: bool
    server_name: str | None = None

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` for URLs in logs, the port left out when it is the default."""
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return f"{scheme}://{host}" if self.port == default else f"{scheme}://{host}:{self.port}"


@dataclass(eq=False, slots=True)
class Upstream:
    """One open connection to an origin with its own h11 state machine (client role)."""

    host: str
    port: int
    stream: trio.abc.Stream
    conn: h11.Connection
    tcp: trio.SocketStream | None = None
    verified: bool = True  # False only for TLS under --insecure: every flow says so
    pending: list[bytes] = field(default_factory=list)  # bytes h11 produced, not yet sent

    @property
    def key(self) -> tuple[str, int]:
        return self.host, self.port

    def reusable(self) -> bool:
        """True when the connection is idle and the server has not closed it meanwhile."""
        if self.conn.our_state is not h11.IDLE or self.conn.their_state is not h11.IDLE:
            return False
        return self.tcp is None or not _readable(self.tcp)


Connector = Callable[[Destination], Awaitable[Upstream]]


@dataclass(frozen=True, slots=True)
class TCPConnector:
    """Opens real upstream connections: TCP, then verified TLS when the destination needs it."""

    tls_context: ssl.SSLContext
    connect_timeout: float
    handshake_timeout: float

    async def __call__(self, dest: Destination) -> Upstream:
        tcp = await open_tcp(dest.host, dest.port, self.connect_timeout)
        stream: trio.abc.Stream = tcp
        if dest.tls:
            server_name = dest.server_name or dest.host
            try:
                stream = await start_tls(tcp, server_name, self.tls_context, self.handshake_timeout)
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
        verified = not dest.tls or self.tls_context.verify_mode != ssl.CERT_NONE
        conn = h11.Connection(h11.CLIENT)
        return Upstream(dest.host, dest.port, stream, conn, tcp, verified=verified)


def resolve_host(host: str) -> str:
    """Names under ``.localhost`` are loopback by definition (RFC 6761 §6.3)."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "127.0.0.1"
    return host


async def open_tcp(host: str, port: int, limit: float) -> trio.SocketStream:
    """Connect to ``host:port`` within ``limit`` seconds or raise an upstream error."""
    where = f"{host}:{port}"
    try:
        with trio.fail_after(limit):
            return await trio.open_tcp_stream(resolve_host(host), port)
    except trio.TooSlowError as exc:
        raise UpstreamTimeoutError(f"connecting to {where} timed out after {limit:g} s") from exc
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {where}: {_os_reason(exc)}") from exc


async def start_tls(
    tcp: trio.abc.Stream, server_name: str, context: ssl.SSLContext, limit: float
) -> trio.SSLStream[trio.abc.Stream]:
    """Run the client side of a verified handshake; the certificate must match ``server_name``."""
    stream = trio.SSLStream(tcp, context, server_hostname=server_name, https_compatible=True)
    try:
        with trio.fail_after(limit):
            await stream.do_handshake()
    except trio.TooSlowError as exc:
        raise UpstreamTimeoutError(
            f"TLS handshake with {server_name} timed out after {limit:g} s"
        ) from exc
    except trio.BrokenResourceError as exc:
        raise _tls_error(server_name, exc.__cause__) from exc
    return stream


def _tls_error(server_name: str, cause: BaseException | None) -> UpstreamError:
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = (cause.verify_message or cause.reason or "unknown reason").rstrip(".")
        reason = reason[:1].lower() + reason[1:]
        return UpstreamCertificateError(f"upstream certificate verify failed: {reason}")
    if isinstance(cause, ssl.SSLEOFError):
        return UpstreamError(f"{server_name} closed the connection during the TLS handshake")
    if isinstance(cause, ssl.SSLError):
        detail = cause.reason or str(cause)
        return UpstreamError(f"TLS handshake with {server_name} failed: {detail}")
    if isinstance(cause, OSError):
        return UpstreamError(f"TLS handshake with {server_name} failed: {_os_reason(cause)}")
    return UpstreamError(f"{server_name} closed the connection during the TLS handshake")


def _os_reason(exc: BaseException) -> str:
    # trio raises one OSError for all the addresses it tried, caused by a group of the real ones.
    cause = exc.__cause__
    if isinstance(cause, BaseExceptionGroup) and cause.exceptions:
        return _os_reason(cause.exceptions[0])
    if not isinstance(exc, OSError):
        return str(exc) or type(exc).__name__
    if exc.errno is not None and exc.errno in errno.errorcode:
        return os.strerror(exc.errno)
    return exc.strerror or str(exc) or type(exc).__name__


def _readable(tcp: trio.SocketStream) -> bool:
    # An idle keep-alive connection has nothing to read; if it is readable the server closed it
    # (or broke protocol), so it must not be reused. httpcore makes the same check.
    try:
        poller = select.poll()
        poller.register(tcp.socket.fileno(), select.POLLIN)
        return bool(poller.poll(0))
    except (OSError, ValueError):
        return True
