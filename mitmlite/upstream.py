"""Connections to origin servers: TCP and TLS under deadlines, errors mapped once.

Owns opening a connection to an upstream (``.localhost`` names resolve to loopback, RFC 6761
§6.3, so tests and local development need no /etc/hosts), the verified TLS handshake, and the
mapping of ``OSError``/``ssl`` failures and timeouts to ``UpstreamError`` (502) and
``UpstreamTimeoutError`` (504) with a one-line reason. It never decides what a client sees.
Also TLS session resumption per (host, port, server name), and ``Preconnect``: a connection
opened ahead of the request that will use it.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import os
import select
import socket
import ssl
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import trio
from cryptography import x509

from mitmlite.errors import UpstreamCertificateError, UpstreamError, UpstreamTimeoutError
from mitmlite.http1 import authority
from mitmlite.streams import DeferredSendErrors, deepen_send_queue


@dataclass(frozen=True, slots=True)
class Destination:
    """Where requests go: an origin, reached over TLS (with ``server_name``) or plain TCP."""

    host: str
    port: int
    tls: bool
    server_name: str | None = None
    tunnel: bool = False  # raw bytes, not HTTP: through an upstream proxy it needs a CONNECT

    @property
    def origin(self) -> str:
        """``scheme://host[:port]`` for URLs in logs, the port left out when it is the default."""
        return f"{'https' if self.tls else 'http'}://{self.host_header(self.host)}"

    def host_header(self, host: str) -> str:
        """``host`` with this destination's port, as a Host field has it: [IPv6], default port
        left out."""
        bracketed = f"[{host}]" if ":" in host else host
        default = 443 if self.tls else 80
        return bracketed if self.port == default else f"{bracketed}:{self.port}"


# h11 bounds a head still arriving at 16 KiB unless told otherwise, and a response head is the
# origin's to size: Chromium accepts 256 KiB (ERR_RESPONSE_HEADERS_TOO_BIG beyond), so do we.
MAX_RESPONSE_HEAD = 256 * 1024


def client_conn() -> h11.Connection:
    """The h11 machine for one upstream connection (we are its client)."""
    return h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)


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
    # Plain HTTP through an upstream proxy: requests go in absolute form, with its credentials.
    absolute_form: bool = False
    proxy_authorization: bytes | None = field(default=None, repr=False)
    # Sharing across client connections (pool.py): where it goes, whether it came from the
    # pool (so a stale one may be retried), and whether it may go back (no connection-bound auth).
    dest: Destination | None = None
    recycled: bool = False
    shareable: bool = True
    # False once the server ended a message by closing (a close-delimited body: RFC 9112 §6.3
    # rule 8) or framed one ambiguously (both Content-Length and Transfer-Encoding): h11 may
    # still call both sides DONE, but no further response can come from this connection.
    keep_alive: bool = True
    # Monotonic stamps of opening it, for HAR timings: started, TCP connected, TLS done.
    opened: tuple[float, float, float | None] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return self.host, self.port

    def reusable(self) -> bool:
        """True when the connection is idle and the server has not closed it meanwhile."""
        if not self.keep_alive:
            return False
        if self.conn.our_state is not h11.IDLE or self.conn.their_state is not h11.IDLE:
            return False
        if self.conn.trailing_data[0]:
            return False  # bytes past the last response (a body after HEAD): never a next answer
        return self.tcp is None or not _readable(self.tcp)


Connector = Callable[[Destination], Awaitable[Upstream]]
SessionKey = tuple[str, int, str]


@dataclass(eq=False, slots=True)
class _SessionEntry:
    session: ssl.SSLSession | None = None
    # The latest connection. TLS 1.3 tickets arrive after the handshake, with the first bytes
    # read, so its session can only be taken later; and taking one costs a copy of it (CPython
    # duplicates sessions through DER, peer certificates included), so it is only taken when
    # there is none to offer or the one held is half way to its expiry.
    source: trio.SSLStream[trio.abc.Stream] | None = None


@dataclass(eq=False, slots=True)
class SessionCache:
    """TLS sessions per (host, port, server name), so reconnecting resumes instead of verifying.

    A resumed handshake skips the certificate exchange and its verification, so a session is only
    ever offered again for the exact server name it was verified for (and with the one context
    that verified it): the key includes the name, never just the address.
    """

    limit: int = 1024
    _entries: OrderedDict[SessionKey, _SessionEntry] = field(default_factory=OrderedDict)

    def get(self, key: SessionKey) -> ssl.SSLSession | None:
        """A resumable session for ``key``, if any."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        source = entry.source
        if source is not None and (entry.session is None or _aging(entry.session)):
            session: ssl.SSLSession | None = source.session
            if session is not None and _resumable(session, source.version()):
                entry.session, entry.source = session, None
        return entry.session

    def put(
        self,
        key: SessionKey,
        stream: trio.SSLStream[trio.abc.Stream],
        offered: ssl.SSLSession | None = None,
    ) -> None:
        """Remember a verified connection, which was offered ``offered`` for resumption."""
        entry = self._entries.setdefault(key, _SessionEntry())
        self._entries.move_to_end(key)
        if offered is not None and offered is entry.session and not stream.session_reused:
            entry.session = None  # declined: expired, used up, or the server's keys changed
        entry.source = stream
        while len(self._entries) > self.limit:
            self._entries.popitem(last=False)


def _resumable(session: ssl.SSLSession, version: str | None) -> bool:
    # TLS 1.3 resumes only with a ticket; a TLS 1.2 server may instead resume by session id.
    return session.has_ticket or (version != "TLSv1.3" and bool(session.id))


def _aging(session: ssl.SSLSession) -> bool:
    return time.time() - session.time > session.timeout / 2


@dataclass(frozen=True, slots=True)
class TCPConnector:
    """Opens real upstream connections: TCP, then verified TLS when the destination needs it."""

    tls_context: ssl.SSLContext
    connect_timeout: float
    handshake_timeout: float
    sessions: SessionCache = field(default_factory=SessionCache, compare=False)

    async def __call__(self, dest: Destination) -> Upstream:
        started = time.monotonic()
        tcp = await open_tcp(dest.host, dest.port, self.connect_timeout)
        connected = time.monotonic()
        stream: trio.abc.Stream = tcp
        if dest.tls:
            server_name = dest.server_name or dest.host
            key = (dest.host, dest.port, server_name)
            session = self.sessions.get(key)
            try:
                tls = await start_tls(
                    tcp, server_name, self.tls_context, self.handshake_timeout, session=session
                )
            except BaseException:
                await trio.aclose_forcefully(tcp)
                raise
            self.sessions.put(key, tls, session)
            stream = tls
        verified = not dest.tls or self.tls_context.verify_mode != ssl.CERT_NONE
        upstream = Upstream(dest.host, dest.port, stream, client_conn(), tcp, verified=verified)
        upstream.opened = (started, connected, time.monotonic() if dest.tls else None)
        return upstream


def resolve_host(host: str) -> str:
    """Names under ``.localhost`` are loopback by definition (RFC 6761 §6.3)."""
    name = host.lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return "127.0.0.1"
    return host


async def open_tcp(host: str, port: int, limit: float) -> trio.SocketStream:
    """Connect to ``host:port`` within ``limit`` seconds or raise an upstream error."""
    where = authority(host, port)
    address = resolve_host(host)
    try:
        with trio.fail_after(limit):
            if _is_ip_address(address):
                stream = await _connect_address(address, port)
            else:
                stream = await trio.open_tcp_stream(address, port)
    except trio.TooSlowError as exc:
        raise UpstreamTimeoutError(f"connecting to {where} timed out after {limit:g} s") from exc
    except OSError as exc:
        raise UpstreamError(f"cannot connect to {where}: {_os_reason(exc)}") from exc
    except (UnicodeError, ValueError, OverflowError) as exc:  # IDNA refusals, a port past 65535
        raise UpstreamError(f"cannot connect to {where}: invalid host name or port") from exc
    deepen_send_queue(stream)
    return stream


def _is_ip_address(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return "%" not in host  # a scoped IPv6 address needs getaddrinfo to find its interface


async def _connect_address(address: str, port: int) -> trio.SocketStream:
    # An address needs no lookup and leaves nothing to race, so trio's happy-eyeballs machinery
    # (getaddrinfo, a nursery, a task per attempt) is skipped: it costs as much CPU as the
    # connection itself (measured 310 vs 170 µs per connect over loopback).
    family = socket.AF_INET6 if ":" in address else socket.AF_INET
    sock = trio.socket.socket(family, socket.SOCK_STREAM)
    try:
        await sock.connect((address, port))
    except BaseException:
        sock.close()
        raise
    return trio.SocketStream(sock)


async def start_tls(
    tcp: trio.abc.Stream,
    server_name: str,
    context: ssl.SSLContext,
    limit: float,
    *,
    session: ssl.SSLSession | None = None,
) -> trio.SSLStream[trio.abc.Stream]:
    """Run the client side of a verified handshake; the certificate must match ``server_name``.

    ``session`` (from an earlier handshake with the same name, see ``SessionCache``) is offered
    for resumption; a server that declines it gets a full, verified handshake.
    """
    stream: trio.SSLStream[trio.abc.Stream] = trio.SSLStream(
        DeferredSendErrors(tcp), context, server_hostname=server_name, https_compatible=True
    )
    if session is not None:
        stream.session = session
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


# OpenSSL's reasons for the usual handshake failures, in words (the code is kept beside them).
_TLS_REASONS = {
    "WRONG_VERSION_NUMBER": "the server does not speak TLS on this port",
    "TLSV1_UNRECOGNIZED_NAME": "the server does not know the name {name}",
    "TLSV1_ALERT_PROTOCOL_VERSION": "the server speaks no TLS version mitmlite offers (1.2, 1.3)",
    "UNSUPPORTED_PROTOCOL": "the server speaks no TLS version mitmlite offers (1.2, 1.3)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "the server accepts none of the cipher suites offered",
}


def _tls_error(server_name: str, cause: BaseException | None) -> UpstreamError:
    if isinstance(cause, ssl.SSLCertVerificationError):
        reason = (cause.verify_message or cause.reason or "unknown reason").rstrip(".")
        if reason[1:2].islower():  # "Hostname mismatch", not "IP address mismatch"
            reason = reason[:1].lower() + reason[1:]
        return UpstreamCertificateError(f"upstream certificate verify failed: {reason}")
    if isinstance(cause, ssl.SSLEOFError):
        return UpstreamError(f"{server_name} closed the connection during the TLS handshake")
    if isinstance(cause, ssl.SSLError):
        detail = cause.reason or str(cause)
        explained = _TLS_REASONS.get(detail)
        if explained is not None:
            detail = f"{explained.format(name=server_name)} ({detail})"
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


class Preconnect:
    """A connection to one destination, opened early and handed to the first caller that asks.

    An intercepted tunnel opens it while the client's TLS handshake runs, so the upstream's TCP
    and TLS round trips overlap the client's instead of following its first request. A failure
    is kept and raised to that first caller, so it reaches the client exactly as a connection
    opened on demand would (a bad certificate is still a 502 with the verifier's reason). Until
    claimed the connection is watched: one the origin closes meanwhile (or that speaks first, as
    no HTTP server should) is dropped, and the caller gets a fresh one instead of a stale one.
    Every other call, and any call after the first, goes to ``connect``.

    ``run`` must run in a nursery that outlives every call; ``aclose`` afterwards closes a
    connection nobody claimed.
    """

    def __init__(self, connect: Connector, dest: Destination, watch_limit: float) -> None:
        self.connect = connect
        self.dest = dest
        self._watch_limit = watch_limit
        self._watch = trio.CancelScope()
        self._settled = trio.Event()  # the attempt ended and nothing watches the connection
        self._attempted = trio.Event()  # the attempt ended, successful or not
        self._upstream: Upstream | None = None
        self._error: Exception | None = None
        self._claimed = False

    async def run(self) -> None:
        """Open the connection, then watch it until it is claimed or ``watch_limit`` runs out."""
        try:
            try:
                self._upstream = await self.connect(self.dest)
            except Exception as exc:  # raised again to whoever claims it; nobody may
                self._error = exc
                return
            finally:
                self._attempted.set()
            with self._watch, trio.move_on_after(self._watch_limit):
                await self._watch_for_close(self._upstream)
        finally:
            self._settled.set()

    async def _watch_for_close(self, upstream: Upstream) -> None:
        # Reading also takes in TLS 1.3 session tickets, which would otherwise leave the socket
        # readable and the connection looking closed to ``Upstream.reusable``.
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await upstream.stream.receive_some(1)
        self._upstream = None
        await trio.aclose_forcefully(upstream.stream)

    async def __call__(self, dest: Destination) -> Upstream:
        if self._claimed or dest != self.dest:
            return await self.connect(dest)
        self._claimed = True
        self._watch.cancel()
        await self._settled.wait()
        if self._error is not None:
            raise self._error
        upstream, self._upstream = self._upstream, None
        if upstream is None:  # the origin closed it before the first request came
            return await self.connect(dest)
        # Opened before the request: should the origin close it once the watch has ended, the
        # relay may retry on a fresh connection, as for a reused one.
        upstream.recycled = True
        return upstream

    async def certificate_names(self) -> list[str]:
        """Wait for the attempt; the DNS and IP names of the certificate the upstream showed.

        Empty when the attempt failed (the failure still reaches the first request) or the
        connection has no TLS.
        """
        await self._attempted.wait()
        upstream = self._upstream
        return certificate_names(upstream) if upstream is not None else []

    async def aclose(self) -> None:
        """Close the connection if nobody claimed it."""
        upstream, self._upstream = self._upstream, None
        if upstream is not None:
            await trio.aclose_forcefully(upstream.stream)


def certificate_names(upstream: Upstream) -> list[str]:
    """The SubjectAltName DNS names and IP addresses of the upstream's certificate."""
    stream = upstream.stream
    if not isinstance(stream, trio.SSLStream):
        return []
    # The binary form: the dict form is empty when verification is off (--insecure).
    der = stream.getpeercert(binary_form=True)
    if not der:
        return []
    try:
        cert = x509.load_der_x509_certificate(der)
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except (ValueError, x509.ExtensionNotFound):
        return []
    names: list[str] = list(sans.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    return names
