"""The HTTP/1.1 relay: h11 on both legs, one request/response cycle at a time.

Owns reading requests from the client, choosing and (re)opening the upstream connection, sending
the request on, streaming both bodies chunk by chunk (nothing is buffered), relaying 1xx,
keep-alive on both legs, and handing over to a raw pipe after ``101 Switching Protocols``. Errors
before a response has started become a 4xx/5xx with a one-line reason; after that the only honest
thing left is to close the client connection. An upstream that answers before the request body
has all gone (and stops reading) has that answer relayed, and the client's connection closed
after a short linger. Every finished exchange goes to the ``FlowSink``.

HTTP/1.1 is turn-taking, so this is one loop with one writer per stream, not a task per direction.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, nullcontext, suppress
from dataclasses import dataclass, field
from typing import TypeVar, cast
from urllib.parse import urlsplit

import h11
import trio

from mitmlite import messages
from mitmlite.auth import Credentials, challenge
from mitmlite.ca.authority import RootCA
from mitmlite.config import Config
from mitmlite.errors import (
    ClientError,
    ClientTimeoutError,
    FlowKilledError,
    HeaderTooLargeError,
    HookOutputError,
    MitmliteError,
    TargetTooLongError,
    UpstreamError,
    UpstreamTimeoutError,
)
from mitmlite.flow import (
    Capture,
    ChunkTransform,
    ClientInfo,
    Flow,
    FlowRecord,
    FlowSink,
    Request,
    ServerInfo,
)
from mitmlite.hooks import HookRunner
from mitmlite.http1 import (
    ConnectTarget,
    authority,
    classify_request,
    error_response,
    header_block_size,
    is_upgrade_request,
    percent_encode_request_line,
    protocol_error_text,
    reason_phrase,
    strip_hop_by_hop,
)
from mitmlite.onboarding import is_onboarding_host, onboarding_response
from mitmlite.pool import UpstreamPool
from mitmlite.streams import PrefixedStream, deferred_send_error, pipe, receive_batch
from mitmlite.tls.clienthello import looks_like_tls
from mitmlite.upstream import Connector, Destination, Upstream

Headers = list[tuple[bytes, bytes]]
_E = TypeVar("_E", bound=h11.Event)
# How long the rest of a body we answered early is read and dropped before closing (_linger).
LINGER_SECONDS = 2.0


class IdleClients:
    """Client connections waiting between requests; a graceful stop closes them at once.

    A shutdown lets flows in progress finish, but a keep-alive connection with nothing in
    flight would otherwise hold it for the whole idle timeout.
    """

    def __init__(self) -> None:
        self._waiting: set[trio.CancelScope] = set()
        self.closing = False

    @contextmanager
    def waiting(self, scope: trio.CancelScope) -> Iterator[None]:
        if self.closing:
            scope.cancel()
        self._waiting.add(scope)
        try:
            yield
        finally:
            self._waiting.discard(scope)

    def close_all(self) -> None:
        self.closing = True
        for scope in self._waiting:
            scope.cancel()


@dataclass(frozen=True, slots=True)
class RelayEnv:
    """Per-process things every relay shares: built once by the CLI."""

    config: Config
    connect: Connector
    sink: FlowSink
    hooks: HookRunner | None = None  # None without -s: nothing is ever buffered
    ca: RootCA | None = None  # serves the onboarding site at http://mitmlite.ca/ when set
    capture: Capture = field(default_factory=Capture)  # what sinks keep beyond the summary
    idle: IdleClients = field(default_factory=IdleClients)
    auth: Credentials | None = None  # --proxy-auth: who may use the proxy
    pool: UpstreamPool | None = None  # idle upstreams go back here for other clients


@dataclass(frozen=True, slots=True)
class _Buffered:
    """A request body read completely (possibly empty): it can be resent on a fresh connection."""

    data: bytes


@dataclass(frozen=True, slots=True)
class _Streamed:
    """A request body relayed as it arrives: ``prefix`` was read already, ``first`` is next."""

    first: object
    prefix: tuple[bytes, ...] = ()
    transform: ChunkTransform | None = None


_Body = _Buffered | _Streamed
_RESPONDED = "mitmlite.responded"  # in flow.metadata while the relay runs the flow
_Route = tuple[Destination, bytes, list[tuple[bytes, bytes]]]  # where, origin-form target, fields


class TLSToPlainPortError(MitmliteError):
    """A TLS ClientHello where a proxy request was expected: no answer of ours would be read."""


class _StaleUpstreamError(Exception):
    """A reused upstream connection closed before answering: retry once on a fresh one."""


class _TLSAlertError(UpstreamError):
    """The upstream ended the connection with a TLS alert: its reason is the error's."""


def _tls_alert(upstream: Upstream, exc: BaseException) -> _TLSAlertError | None:
    """The upstream's TLS alert behind a broken stream, as a one-line reason; None if none.

    TLS 1.3 servers check a client certificate after the client's handshake has finished, so
    one that requires it (mTLS) says so only on the first read or write.
    """
    cause = exc.__cause__
    if not isinstance(cause, ssl.SSLError) or isinstance(cause, ssl.SSLEOFError):
        return None
    reason = cause.reason or ""
    alert = reason.removeprefix("TLSV13_").removeprefix("SSLV3_").removeprefix("TLSV1_")
    if not alert.startswith("ALERT_"):
        return None
    name = alert.removeprefix("ALERT_").lower()
    if name == "certificate_required":
        return _TLSAlertError(
            f"{upstream.host} requires a client certificate (TLS alert certificate_required); "
            "mitmlite presents none"
        )
    return _TLSAlertError(f"{upstream.host} ended the connection with TLS alert {name}")


class _UpstreamSendError(UpstreamError):
    """The upstream stopped taking our bytes (it closed or reset the connection)."""


class _ClosedBeforeResponseError(UpstreamError):
    """The upstream closed with no byte of a response (h11 reports it as a protocol error)."""


class Relay:
    """Relays requests from one client connection until it closes or asks to CONNECT."""

    def __init__(
        self,
        env: RelayEnv,
        client: trio.abc.Stream,
        conn: h11.Connection,
        client_name: str,
        fixed: Destination | None,
        host_header: bytes | None = None,
    ) -> None:
        self.env = env
        self.host_header = host_header  # reverse mode: Host becomes the upstream's authority
        self.offered_alpn: tuple[str, ...] = ()  # from the client's ClientHello, for hooks
        self.timeouts = env.config.timeouts
        self.read_size = env.config.limits.read_size
        self.client = client
        self.conn = conn
        self.client_name = client_name
        self.fixed = fixed
        self.upstreams: dict[tuple[str, int], Upstream] = {}
        self._client_pending: list[bytes] = []
        self._client: ClientInfo | None = None  # what hooks see of the client, built once
        self._servers: dict[Upstream, ServerInfo] = {}
        self._capture = env.capture if env.capture.enabled else None
        self._seen_bytes = False  # a proxy-facing connection's first bytes are checked for TLS
        self._record = FlowRecord("", "", "", 0.0)  # the current exchange's, set by cycle()
        self._request: h11.Request | None = None  # the client's current request, as received

    async def run(self, first: h11.Request | None = None) -> h11.Request | None:
        """Serve requests; returns a CONNECT request met on a plain proxy connection, else None."""
        try:
            request = first
            while True:
                if request is None:
                    request = await self._receive_request()
                    if request is None:
                        return None
                auth = self.env.auth if self.fixed is None else None  # tunnels are authorised
                if auth is not None and not await self._authorized(auth, request):
                    await self._refuse_unauthorized(request)
                    return None
                if self.fixed is None and request.method == b"CONNECT":
                    return request
                if not await self.cycle(request):
                    return None
                request = None
        finally:
            with trio.CancelScope(shield=True):
                pool = self.env.pool
                for upstream in self.upstreams.values():
                    if pool is None or not pool.give(upstream):
                        await trio.aclose_forcefully(upstream.stream)
                if pool is not None:
                    await pool.close_doomed()

    async def _authorized(self, auth: Credentials, request: h11.Request) -> bool:
        header = next((v for n, v in request.headers if n == b"proxy-authorization"), None)
        if header is None:
            return False
        if auth.known(header) or not auth.slow:
            return auth.check(header)
        # bcrypt takes tens of milliseconds by design: off the event loop, once per credential.
        return await trio.to_thread.run_sync(auth.check, header)

    async def _refuse_unauthorized(self, request: h11.Request) -> None:
        """407 with a Basic challenge (RFC 9110 §15.5.8), for CONNECT and plain requests alike."""
        record = self._new_record(request)
        record.status = 407
        given = any(n == b"proxy-authorization" for n, _ in request.headers)
        record.error = "wrong proxy credentials" if given else "proxy authentication required"
        headers, body = error_response(407, record.error)
        head = h11.Response(status_code=407, headers=[*headers, challenge()],
                            reason=reason_phrase(407))  # fmt: skip
        try:
            with trio.move_on_after(self.timeouts.handshake):
                await self._send_client(*_error_events(head, body, request))
        except (ClientError, h11.LocalProtocolError):
            pass
        self.env.sink.flow(record)

    async def _receive_request(self) -> h11.Request | None:
        """The next request, or None after answering a bad or slow one with its 4xx."""
        self._request = None
        try:
            return await self.next_request()
        except MitmliteError as exc:
            self.env.sink.event(self.client_name, f"error: {exc}")
            await self._fail(exc, None)
            return None

    async def next_request(self) -> h11.Request | None:
        """The next request head, or None when the client closes or stays idle too long."""
        if self.conn.our_state is not h11.IDLE:
            return None
        started = bool(self.conn.trailing_data[0])
        # One deadline for the whole head, from its first byte: a client that trickles a byte
        # at a time must not restart the clock with each one (slowloris).
        head_deadline = trio.current_time() + self.timeouts.request_header
        while True:
            event = self._next_client_event()
            if isinstance(event, h11.Request):
                self._check_head_size(event)
                _check_framing(event)
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed, or PAUSED after a protocol switch
            deadline = self.timeouts.request_header if started else self.timeouts.idle
            wait_until = head_deadline if started else trio.current_time() + self.timeouts.idle
            with trio.move_on_at(wait_until) as scope:
                with self.env.idle.waiting(scope) if not started else nullcontext():
                    try:
                        data = await receive_batch(self.client, self.read_size)
                    except trio.BrokenResourceError:  # TLS EOF without close_notify: a close
                        data = b""
                    if self.fixed is None and not self._seen_bytes:
                        self._seen_bytes = True
                        if looks_like_tls(bytes(data[:2])):
                            raise TLSToPlainPortError(
                                "client started TLS on the plain-HTTP proxy port: use an "
                                "http:// proxy URL, or start mitmlite with --listen-tls"
                            )
                    if not started and not data.isascii():
                        data = percent_encode_request_line(bytes(data))
                    self.conn.receive_data(cast(bytes, data))
                    if not started:
                        head_deadline = trio.current_time() + self.timeouts.request_header
                    started = True
                    continue
            if started:
                raise ClientTimeoutError(f"request head not received within {deadline:g} s")
            return None

    def _check_head_size(self, request: h11.Request) -> None:
        # h11 bounds only a head still arriving; one that arrives whole in a single read can be
        # any size, so the limit is enforced here too.
        limit = self.env.config.limits.max_header_bytes
        if len(request.target) > limit:
            raise _head_too_large(limit, target=True)
        if len(request.target) + header_block_size(request.headers) > limit:
            raise _head_too_large(limit, target=False)

    def _next_client_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        try:
            return self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                limit = self.env.config.limits.max_header_bytes
                # No line end yet: the request line (the URI) overran (RFC 9110 §15.5.15).
                target = b"\n" not in self.conn.trailing_data[0]
                raise _head_too_large(limit, target=target) from exc
            raise ClientError(f"malformed request: {protocol_error_text(exc)}") from exc

    def _new_record(self, request: h11.Request) -> FlowRecord:
        """The log's record of the exchange ``request`` starts; the URL is refined by routing."""
        return FlowRecord(
            client=self.client_name,
            method=request.method.decode("ascii", "replace"),
            url=request.target.decode("ascii", "replace"),
            started=time.monotonic(),
        )

    async def cycle(self, request: h11.Request) -> bool:
        """One exchange; returns True when the client connection can carry another one."""
        record = self._new_record(request)
        self._record = record
        self._request = request
        if self._capture is not None:
            self._start_capture(record, request)
        try:
            await self._exchange(request, record)
        except MitmliteError as exc:
            record.error = str(exc)
            await self._fail(exc, record)
            await self._linger()
            return False
        finally:
            record.duration = time.monotonic() - record.started
            self.env.sink.flow(record)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        await self._linger()
        return False

    async def _linger(self) -> None:
        """Read and drop what the client still sends of a body we answered before its end.

        The answer (an upstream's early 413, our 502) says ``Connection: close``; closing at
        once, with its upload unread, would reset the connection and could destroy that answer
        in the client's receive buffer before it is read (curl: "Send failure: Connection reset
        by peer"). Like nginx's lingering close, keep reading until the client stops or
        ``LINGER_SECONDS`` pass.
        """
        answered = self.conn.our_state in (h11.DONE, h11.MUST_CLOSE)
        if not answered or self.conn.their_state is not h11.SEND_BODY:
            return
        with (
            trio.move_on_after(LINGER_SECONDS),
            suppress(trio.BrokenResourceError, trio.ClosedResourceError),
        ):
            while await self.client.receive_some(self.read_size):
                pass

    async def _fail(self, exc: MitmliteError, record: FlowRecord | None) -> None:
        """Answer with the error when no response has started; either way the client is done.

        A response whose head (and perhaps first bytes) waits in our queue when it fails goes
        out as far as it got, so the client sees it cut short, as it would without us, rather
        than an empty reply.
        """
        if self.conn.our_state is h11.SEND_BODY and self._client_pending:
            with trio.move_on_after(self.timeouts.handshake), suppress(ClientError):
                await self._flush_client()
            return
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or exc.status is None:
            return
        if record is not None:
            record.status = exc.status
        headers, body = error_response(exc.status, str(exc))
        head = h11.Response(
            status_code=exc.status, headers=headers, reason=reason_phrase(exc.status)
        )
        # A HEAD answer carries no body (RFC 9110 §9.3.2); h11 would refuse to write it.
        events = _error_events(head, body, self._request)
        try:
            with trio.move_on_after(self.timeouts.handshake):
                await self._send_client(*events)
        except (ClientError, trio.BrokenResourceError, trio.ClosedResourceError,
                h11.LocalProtocolError):  # fmt: skip
            pass

    async def _exchange(self, request: h11.Request, record: FlowRecord) -> None:
        dest, target, headers = self._route(request, record)
        if self.env.ca is not None and is_onboarding_host(dest.host):
            await self._onboarding(self.env.ca, request, target, record)
            return
        hooks = self.env.hooks
        if hooks is not None:
            hooks.before_flow()
            if hooks.wants_flows():
                await self._hooked_exchange(hooks, request, (dest, target, headers), record)
                return
        upgrade = is_upgrade_request(request.headers)
        headers = await self._answer_expect(strip_hop_by_hop(headers, keep_upgrade=upgrade))
        outgoing = h11.Request(method=request.method, target=target, headers=headers)
        first = self._next_client_event()  # EndOfMessage right away for a request with no body
        body: _Body = _Buffered(b"") if isinstance(first, h11.EndOfMessage) else _Streamed(first)
        upstream, head = await self._forward_request(dest, outgoing, record, body)
        await self._relay_response(upstream, head, record, upgrade)

    async def _answer_expect(self, headers: Headers) -> Headers:
        if not _expects_continue(headers):
            return headers
        # We answer 100 ourselves, as mitmproxy does: the upstream gets the body without
        # waiting, and clients that wait for a 100 (curl, 1 s) do not stall on the proxy.
        if self.conn.client_is_waiting_for_100_continue:
            continue_ = h11.InformationalResponse(status_code=100, headers=[], reason=b"Continue")
            await self._send_client(continue_)
        return [(n, v) for n, v in headers if n.lower() != b"expect"]

    async def _forward_request(
        self, dest: Destination, request: h11.Request, record: FlowRecord, body: _Body
    ) -> tuple[Upstream, h11.Response | h11.InformationalResponse]:
        """Send the request and wait for the response head.

        A reused keep-alive connection may turn out to be closed by the server, when the request
        is written or when the answer is an EOF. Then the request is sent once more on a fresh
        connection, as long as none of its body has been consumed; after an unanswered EOF only
        for idempotent methods, since the server may have acted on it (RFC 9110 §9.2.2).
        """
        head_events: list[h11.Event] = [request]
        buffered = isinstance(body, _Buffered)
        if isinstance(body, _Buffered):
            if body.data:
                head_events.append(h11.Data(data=body.data))
            head_events.append(h11.EndOfMessage())
        if self._capture is not None:
            record.request_headers = list(request.headers.raw_items())
            if isinstance(body, _Buffered):
                self._keep_request(body.data)
        for attempt in (1, 2):
            connect_start = time.monotonic()
            upstream, reused = await self._upstream_for(dest)
            record.unverified = not upstream.verified
            if _binds_connection(request.headers.raw_items()):
                upstream.shareable = False
            if upstream.absolute_form:
                head_events[0] = _absolute_form(request, dest, upstream.proxy_authorization)
            if self._capture is not None:
                self._upstream_detail(record, upstream, None if reused else connect_start)
            try:
                refused = await self._send_request(
                    upstream, dest, head_events, body, record, reused
                )
                record.timings.request_sent = time.monotonic()
                try:
                    head = await self._response_head(
                        upstream, retry_on_eof=buffered and _idempotent(request.method)
                    )
                except UpstreamError:
                    if refused is not None:
                        raise refused from None  # no answer: say what failed first
                    raise
                record.timings.response_start = time.monotonic()
                return upstream, head
            except _StaleUpstreamError:
                await self._drop(upstream)
                if not reused or attempt == 2:
                    raise UpstreamError(
                        f"{authority(dest.host, dest.port)} closed the connection"
                    ) from None
        raise AssertionError("unreachable: the loop returns or raises")

    async def _send_request(
        self,
        upstream: Upstream,
        dest: Destination,
        head_events: list[h11.Event],
        body: _Body,
        record: FlowRecord,
        reused: bool,
    ) -> UpstreamError | None:
        """Send a request; None once all of it went out, else why the upstream stopped taking it.

        An upstream may answer before the body ends (a 413 for an upload it refuses) and reset
        the connection, which fails our next write. Its answer is still readable, so a fresh
        connection failing the head, or any failing a streamed body, is reported back: the
        caller reads a response and reports this only when none came. A reused connection that
        fails the head is stale (``_StaleUpstreamError``, raised) and the request is retried.
        """
        try:
            await self._send_upstream(upstream, *head_events)
        except _StaleUpstreamError:
            if reused:
                raise
            return UpstreamError(f"{authority(dest.host, dest.port)} closed the connection")
        if isinstance(body, _Streamed):
            try:
                record.request_bytes = await self._relay_request_body(upstream, body)
            except _UpstreamSendError as exc:
                return exc
        elif body.data:
            record.request_bytes = len(body.data)
        return None

    async def _onboarding(
        self, root: RootCA, request: h11.Request, target: bytes, record: FlowRecord
    ) -> None:
        """The magic host is answered here and never forwarded, whatever a script would do."""
        while isinstance(self._next_client_event(), h11.Data):
            pass  # GET/HEAD carry no body worth reading; others get a 405 and a close
        method = request.method.decode("ascii", "replace")
        response = onboarding_response(method, target.decode("ascii", "replace"), root)
        body = response.raw_content or b""
        head = messages.response_head(response, list(response.headers.fields))
        events: list[h11.Event] = [head]
        if body and method != "HEAD":
            events.append(h11.Data(data=body))
        record.status = response.status_code
        record.response_bytes = len(body) if method != "HEAD" else 0
        if self._capture is not None:
            self._response_detail(record, head, list(head.headers.raw_items()))
            self._keep_response(body if method != "HEAD" else b"")
        await self._send_client(*events, h11.EndOfMessage())
        record.timings.response_end = time.monotonic()

    def _route(self, request: h11.Request, record: FlowRecord) -> _Route:
        headers: Headers = list(request.headers.raw_items())
        if self.fixed is not None:
            path = request.target
            if not path.startswith(b"/") and path != b"*":
                # RFC 9112 §3.2.2: servers accept absolute-form too; the tunnel fixes the origin.
                split = urlsplit(path)
                path = (split.path or b"/") + (b"?" + split.query if split.query else b"")
            record.url = self.fixed.origin + path.decode("ascii", "replace")
            if self.host_header is not None:
                headers = [(n, v) for n, v in headers if n.lower() != b"host"]
                headers.insert(0, (b"Host", self.host_header))
            elif not any(n.lower() == b"host" for n, _ in headers):
                # HTTP/1.0 may leave Host out, but we speak 1.1 upstream, where it is required
                # (RFC 9112 §3.2): the name the client's TLS asked for (a CONNECT to an
                # address often carries the site's name only there), else the tunnel's.
                site = self.fixed.host_header(self.fixed.server_name or self.fixed.host)
                headers.insert(0, (b"Host", site.encode("ascii")))
            return self.fixed, path, headers
        target = classify_request(request.method, request.target)
        if isinstance(target, ConnectTarget):  # run() hands CONNECT back before we get here
            raise ClientError("CONNECT is only accepted as a connection's first request")
        record.url = target.url
        # RFC 9112 §3.2.2: a proxy replaces Host with the authority of the absolute-form target.
        headers = [(n, v) for n, v in headers if n.lower() != b"host"]
        headers.insert(0, (b"Host", target.host_header))
        return Destination(target.host, target.port, tls=False), target.path, headers

    async def _upstream_for(self, dest: Destination) -> tuple[Upstream, bool]:
        existing = self.upstreams.get((dest.host, dest.port))
        if existing is not None:
            if existing.reusable() and existing.dest in (None, dest):
                return existing, True
            await self._drop(existing)
        upstream = await self.env.connect(dest)
        self.upstreams[upstream.key] = upstream
        recycled, upstream.recycled = upstream.recycled, False
        return upstream, recycled

    async def _drop(self, upstream: Upstream) -> None:
        self.upstreams.pop(upstream.key, None)
        self._servers.pop(upstream, None)
        with trio.CancelScope(shield=True):
            await upstream.stream.aclose()

    async def _relay_request_body(self, upstream: Upstream, body: _Streamed) -> int:
        """Stream the client's body to the upstream (through a script's transform, if any)."""
        sent = 0
        transform = body.transform
        keep = self._capture is not None
        for chunk in body.prefix:
            sent += len(chunk)
            if keep:
                self._keep_request(chunk)
            self._queue_data(upstream.pending, upstream.conn, chunk, transform)
        event = body.first
        while True:
            if event is h11.NEED_DATA:
                await self._flush_upstream(upstream)
                await self._receive_client_data("request body")
            elif isinstance(event, h11.Data):
                sent += len(event.data)
                if keep:
                    self._keep_request(event.data)
                if transform is None:
                    self._queue(upstream.pending, upstream.conn, event)
                else:
                    self._queue_data(upstream.pending, upstream.conn, event.data, transform)
            elif isinstance(event, h11.EndOfMessage):
                if transform is not None:
                    self._queue_data(upstream.pending, upstream.conn, b"", transform)
                self._queue(upstream.pending, upstream.conn, event)
                await self._flush_upstream(upstream)
                return sent
            else:
                raise ClientError("client closed the connection before the request body ended")
            event = self._next_client_event()

    async def _receive_client_data(self, what: str) -> None:
        with _deadline(self.timeouts.read, "client", what):
            try:
                data = await receive_batch(self.client, self.read_size)
            except trio.BrokenResourceError as exc:
                raise ClientError(f"client connection broke during the {what}") from exc
            self.conn.receive_data(cast(bytes, data))

    def _queue_data(
        self,
        pending: list[bytes],
        conn: h11.Connection,
        data: bytes,
        transform: ChunkTransform | None,
    ) -> None:
        """Queue one body chunk; a script's transform sees every chunk, then b"" at the end."""
        chunks: Iterable[bytes] = (data,) if transform is None else _transformed(transform, data)
        for chunk in chunks:
            if chunk:
                self._queue(pending, conn, h11.Data(data=chunk))

    async def _relay_response(
        self,
        upstream: Upstream,
        head: h11.Response | h11.InformationalResponse,
        record: FlowRecord,
        upgrade: bool,
    ) -> None:
        """Relay 1xx and the final response from upstream to client, body streamed."""
        while isinstance(head, h11.InformationalResponse):
            if head.status_code == 101 and upgrade:
                record.status = 101
                await self._switch_protocols(upstream, head, record)
                return
            await self._relay_informational(head)
            head = await self._response_head(upstream)
        record.status = head.status_code
        headers = self._closing_early(strip_hop_by_hop(head.headers.raw_items()))
        if self._capture is not None:
            self._response_detail(record, head, headers)
        response = h11.Response(status_code=head.status_code, headers=headers, reason=head.reason)
        # Queued, not sent: the head goes out with the first body bytes in one TLS record.
        self._queue(self._client_pending, self.conn, response)
        record.response_bytes = await self._relay_response_body(upstream, response)
        await self._finish_upstream(upstream)

    async def _response_head(
        self, upstream: Upstream, *, retry_on_eof: bool = False
    ) -> h11.Response | h11.InformationalResponse:
        where = authority(upstream.host, upstream.port)
        if upstream.absolute_form:
            where += " (through the upstream proxy)"  # it may be the one that failed
        timeout = self.timeouts.upstream_response
        try:
            with trio.fail_after(timeout):
                event = await self._next_upstream_event(upstream)
        except trio.TooSlowError as exc:
            raise UpstreamTimeoutError(f"{where} did not respond within {timeout:g} s") from exc
        except _ClosedBeforeResponseError:
            if retry_on_eof:  # a reused connection the server closed as our request went out
                raise _StaleUpstreamError from None
            raise
        if isinstance(event, h11.Response | h11.InformationalResponse):
            if _binds_connection(event.headers.raw_items()):
                upstream.shareable = False
            if isinstance(event, h11.Response) and _framed_both_ways(event):
                upstream.keep_alive = False  # read by Transfer-Encoding; trust nothing after it
            if upstream.absolute_form and event.status_code == 407:
                # The upstream proxy wants credentials the client cannot give: its challenge is
                # hop-by-hop (RFC 9110 §7.6.1) and a client's Proxy-Authorization is ours.
                upstream.keep_alive = False
                raise UpstreamError(
                    "the upstream proxy answered 407 Proxy Authentication Required; "
                    "put credentials in the --upstream-proxy URL"
                )
            return event
        # An EOF before the head is _ClosedBeforeResponseError above; this is anything else.
        raise UpstreamError(f"{where} closed the connection without a response")

    async def _relay_response_body(
        self, upstream: Upstream, sent: h11.Response, transform: ChunkTransform | None = None
    ) -> int:
        """Stream the upstream's body to the client, after the head ``sent`` to it."""
        received = 0
        keep = self._capture is not None
        while True:
            event = self._buffered_upstream_event(upstream)
            if event is None:  # only a wait needs a deadline; a small body is read with its head
                with _deadline(self.timeouts.read, "upstream", "response body"):
                    event = await self._next_upstream_event(upstream)
            if isinstance(event, h11.Data):
                received += len(event.data)
                if keep:
                    self._keep_response(event.data)
                if transform is None:
                    self._queue(self._client_pending, self.conn, event)
                else:
                    self._queue_data(self._client_pending, self.conn, event.data, transform)
                continue
            if not isinstance(event, h11.EndOfMessage):
                raise UpstreamError("upstream closed the connection before the response ended")
            if transform is not None:
                self._queue_data(self._client_pending, self.conn, b"", transform)
            self._queue(self._client_pending, self.conn, self._client_end(event, sent))
            await self._flush_client()
            self._record.timings.response_end = time.monotonic()
            return received

    async def _relay_informational(self, head: h11.InformationalResponse) -> None:
        """Pass a 1xx (103 Early Hints, 102) on, unless the client speaks HTTP/1.0.

        We send every request upstream as HTTP/1.1, so a server may answer a 1.0 client's request
        with a 1xx; RFC 9110 §15.2 forbids sending one to a 1.0 client, which would take it for
        the final response.
        """
        version = self.conn.their_http_version
        if version is not None and version < b"1.1":
            return
        await self._send_client(_informational(head))

    def _closing_early(self, fields: Headers) -> Headers:
        """``fields``, plus ``Connection: close`` when the client is still sending its body.

        An upstream may answer before the request body ends (a 413 for an upload it will not
        take) and stop reading. The rest of the body is never relayed, so this connection
        cannot carry another request: the client is told so, and stops sending.
        """
        if self.conn.their_state is h11.SEND_BODY:
            return [*fields, (b"Connection", b"close")]
        return fields

    def _client_end(self, event: h11.EndOfMessage, sent: h11.Response) -> h11.EndOfMessage:
        """The body's end as the client's framing can carry it.

        Trailer fields ride on chunked framing only. An HTTP/1.0 client reads a close-delimited
        body with no place for them (h11 refuses to write them, and the whole response was lost),
        so for it they are dropped, as RFC 9112 §7.1.2 lets whoever removes the chunking do.
        """
        if not event.headers:
            return event
        chunked = any(
            name == b"transfer-encoding" and b"chunked" in value.lower()
            for name, value in sent.headers
        )
        version = self.conn.their_http_version  # h11 frames a body by it the same way
        if chunked and version is not None and version >= b"1.1":
            return event
        return h11.EndOfMessage()

    async def _next_upstream_event(self, upstream: Upstream) -> h11.Event:
        while (event := self._buffered_upstream_event(upstream)) is None:
            await self._flush_client()  # what we hold goes out before we wait for more
            try:
                data = await receive_batch(upstream.stream, self.read_size)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                alert = _tls_alert(upstream, exc)
                raise alert or UpstreamError("upstream connection broke") from exc
            if not data:
                upstream.keep_alive = False  # whatever h11 makes of the close, nothing follows
                conn = upstream.conn
                if conn.their_state is h11.SEND_RESPONSE and not conn.trailing_data[0]:
                    where = authority(upstream.host, upstream.port)
                    raise _ClosedBeforeResponseError(
                        f"{where} closed the connection without a response"
                    )
            upstream.conn.receive_data(cast(bytes, data))
        return event

    @staticmethod
    def _buffered_upstream_event(upstream: Upstream) -> h11.Event | None:
        """The next event from bytes already received; None when h11 needs more."""
        try:
            event = upstream.conn.next_event()
        except h11.RemoteProtocolError as exc:
            if "without a pending proposal" in str(exc):  # a 101 to a request that did not ask
                raise UpstreamError("upstream switched protocols without being asked") from exc
            reason = protocol_error_text(exc)
            raise UpstreamError(f"malformed response from upstream: {reason}") from exc
        if event is h11.NEED_DATA:
            return None
        if event is h11.PAUSED:  # h11 pauses only after a switch we did not ask for
            raise UpstreamError("upstream switched protocols without being asked")
        return cast(h11.Event, event)

    async def _finish_upstream(self, upstream: Upstream) -> None:
        conn = upstream.conn
        if upstream.keep_alive and conn.our_state is h11.DONE and conn.their_state is h11.DONE:
            conn.start_next_cycle()
        else:
            await self._drop(upstream)

    async def _switch_protocols(
        self, upstream: Upstream, head: h11.InformationalResponse, record: FlowRecord
    ) -> None:
        headers = strip_hop_by_hop(head.headers.raw_items(), keep_upgrade=True)
        await self._send_client(h11.InformationalResponse(status_code=101, headers=headers,
                                                          reason=head.reason))  # fmt: skip
        self.upstreams.pop(upstream.key, None)
        client = PrefixedStream(self.client, self.conn.trailing_data[0])
        server = PrefixedStream(upstream.stream, upstream.conn.trailing_data[0])
        try:
            record.request_bytes, record.response_bytes = await pipe(
                client, server, self.timeouts.idle
            )
        finally:
            with trio.CancelScope(shield=True):
                await upstream.stream.aclose()

    # --- with hook scripts --------------------------------------------------------------------
    # The same exchange, with a Flow the scripts see at four seams. Bodies are buffered only for
    # the `request`/`response` hooks, up to max_body_bytes; anything larger, Server-Sent Events,
    # and bodies a script marked `.stream` go through as they arrive.

    async def _hooked_exchange(
        self, hooks: HookRunner, request: h11.Request, route: _Route, record: FlowRecord
    ) -> None:
        dest, target, fields = route
        upgrade = is_upgrade_request(request.headers)
        fields = await self._answer_expect(strip_hop_by_hop(fields, keep_upgrade=upgrade))
        origin = ("https" if dest.tls else "http", dest.host, dest.port)
        flow = Flow(
            request=messages.request_from_head(
                request.method, origin, target, fields, request.http_version
            ),
            client=dataclasses.replace(self._client_info()),
        )
        flow.timestamps.request_start = record.started
        try:
            try:
                await self._hooked_flow(hooks, flow, dest, upgrade, record)
            except h11.LocalProtocolError as exc:  # framing a script's changes made impossible
                raise HookOutputError(
                    f"a script left a message that cannot be sent: {exc}"
                ) from exc
        except MitmliteError as exc:
            if not flow.metadata.pop(_RESPONDED, False):
                flow.error = str(exc)
                record.error = flow.error
                await hooks.run("error", flow)
            raise
        finally:
            flow.metadata.pop(_RESPONDED, None)
            record.url = flow.request.url

    async def _hooked_flow(
        self, hooks: HookRunner, flow: Flow, dest: Destination, upgrade: bool, record: FlowRecord
    ) -> bool:
        """Run one flow through the hooks; True once its `response` hook has run."""
        req = flow.request
        had_body = messages.has_body_framing(req.headers.fields)
        await self._run_hook(hooks, "requestheaders", flow)
        first = self._next_client_event()
        body: _Body
        if flow.response is not None:
            return await self._answer_locally(hooks, flow, record, first)
        if isinstance(first, h11.EndOfMessage):
            body = _Buffered(b"")
        elif req.stream is False and hooks.wants("request"):
            chunks, rest = await self._buffer_client_body(first)
            if rest is None:
                body = _Buffered(b"".join(chunks))
            else:
                req.stream = True  # too large to buffer: the hook sees it streamed, afterwards
                body = _Streamed(rest, tuple(chunks))
        else:
            body = _Streamed(first, (), req.stream if callable(req.stream) else None)
        if isinstance(body, _Buffered):
            req.raw_content = body.data
            flow.timestamps.request_end = time.monotonic()
            await self._run_hook(hooks, "request", flow)
            if _answered(flow):
                return await self._answer_locally(hooks, flow, record, None)
            body = _Buffered(req.raw_content or b"")
            fields = messages.framed_for_body(req.headers, body.data, had_body=had_body)
        else:
            fields = messages.framed_for_stream(req.headers, transformed=body.transform is not None)
        outgoing = _built(lambda: messages.request_head(req, fields))
        upstream, head = await self._forward_request(
            _destination_for(req, dest), outgoing, record, body
        )
        if isinstance(body, _Streamed):
            flow.timestamps.request_end = time.monotonic()
            await self._run_hook(hooks, "request", flow)  # after the fact: the body has gone
        flow.server = self._server_info(upstream)
        sent = outgoing.method.decode("ascii")  # what the upstream frames its answer by
        return await self._hooked_response(hooks, flow, upstream, head, record, upgrade, sent)

    async def _hooked_response(
        self,
        hooks: HookRunner,
        flow: Flow,
        upstream: Upstream,
        head: h11.Response | h11.InformationalResponse,
        record: FlowRecord,
        upgrade: bool,
        sent_method: str = "GET",
    ) -> bool:
        while isinstance(head, h11.InformationalResponse):
            if head.status_code == 101 and upgrade:
                flow.response = messages.response_from_head(head, _stripped(head, upgrade=True))
                await self._run_hook(hooks, "response", flow)
                record.status = 101
                await self._switch_protocols(upstream, head, record)
                return True
            await self._relay_informational(head)
            head = await self._response_head(upstream)
        flow.timestamps.response_start = time.monotonic()
        resp = flow.response = messages.response_from_head(head, _stripped(head))
        await self._run_hook(hooks, "responseheaders", flow)
        if flow.response is not resp:  # replaced by a script: the origin's body is not wanted
            await self._drop(upstream)
            return await self._send_final(hooks, flow, record)
        if not messages.response_has_body(sent_method, resp.status_code):
            await self._read_bodyless_end(upstream)
            resp.raw_content = b""
            return await self._send_final(hooks, flow, record, finish=upstream)
        if self._client_method() == "HEAD":  # a script turned the client's HEAD into a GET
            await self._drop(upstream)  # its body is not wanted, and cannot be sent to a HEAD
            resp.raw_content = b""
            return await self._send_final(hooks, flow, record)
        if resp.stream is False and hooks.wants("response") and not messages.is_event_stream(resp):
            chunks, complete = await self._buffer_upstream_body(upstream)
            if complete:
                resp.raw_content = b"".join(chunks)
                return await self._send_final(hooks, flow, record, finish=upstream)
            resp.stream = True  # too large to buffer: the hook sees it streamed, afterwards
            prefix = chunks
        else:
            prefix = []
        transform = resp.stream if callable(resp.stream) else None
        fields = messages.framed_for_stream(resp.headers, transformed=transform is not None)
        fields = self._closing_early(fields)
        record.status = resp.status_code
        head_out = _built(lambda: messages.response_head(resp, fields))
        if self._capture is not None:
            self._response_detail(record, head_out, fields)
            for chunk in prefix:
                self._keep_response(chunk)
        self._queue(self._client_pending, self.conn, head_out)
        for chunk in prefix:
            self._queue_data(self._client_pending, self.conn, chunk, transform)
        streamed = await self._relay_response_body(upstream, head_out, transform)
        record.response_bytes = streamed + sum(map(len, prefix))
        await self._finish_upstream(upstream)
        flow.timestamps.response_end = time.monotonic()
        await self._run_hook(hooks, "response", flow)  # after the fact: the body has gone
        return True

    async def _answer_locally(
        self, hooks: HookRunner, flow: Flow, record: FlowRecord, first: object
    ) -> bool:
        """A script set ``flow.response``: the upstream is never contacted."""
        if first is not None and not isinstance(first, h11.EndOfMessage):
            # Read the body the client is sending, so the connection can carry the next request;
            # one too large to bother with is left unread and the connection closes after.
            _, first = await self._buffer_client_body(first)
        return await self._send_final(hooks, flow, record)

    async def _send_final(
        self, hooks: HookRunner, flow: Flow, record: FlowRecord, finish: Upstream | None = None
    ) -> bool:
        """Run the `response` hook on a complete response, then send it whole."""
        flow.timestamps.response_end = time.monotonic()
        await self._run_hook(hooks, "response", flow)
        resp = flow.response
        if resp is None:  # a script removed the response it was given: that cannot be sent
            raise HookOutputError("a script set flow.response to None")
        body = resp.raw_content or b""
        # The client's own method frames what it reads, whatever a script made of the request.
        if messages.response_has_body(self._client_method(), resp.status_code):
            fields = messages.framed_for_body(resp.headers, body, had_body=True)
        else:
            fields, body = list(resp.headers.fields), b""
        fields = self._closing_early(fields)
        head = _built(lambda: messages.response_head(resp, fields))
        events: list[h11.Event] = [head, h11.Data(data=body)] if body else [head]
        record.status = resp.status_code
        record.response_bytes = len(body)
        if self._capture is not None:
            self._response_detail(record, head, fields)
            self._keep_response(body)
        await self._send_client(*events, h11.EndOfMessage())
        record.timings.response_end = time.monotonic()
        if finish is not None:
            await self._finish_upstream(finish)
        return True

    def _client_method(self) -> str:
        return self._request.method.decode("ascii") if self._request is not None else "GET"

    async def _run_hook(self, hooks: HookRunner, name: str, flow: Flow) -> None:
        if name == "response":
            flow.metadata.setdefault(_RESPONDED, True)  # the flow has ended: no error hook now
        await hooks.run(name, flow)
        if flow.killed:
            raise FlowKilledError(f"killed by a script in its {name} hook")

    async def _buffer_client_body(self, first: object) -> tuple[list[bytes], object | None]:
        """Read the request body up to the limit: (chunks, None) when complete, else the
        chunks so far and the next event, for streaming the rest."""
        limit = self.env.config.limits.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        event = first
        while True:
            if event is h11.NEED_DATA:
                if size > limit:
                    return chunks, event
                await self._receive_client_data("request body")
            elif isinstance(event, h11.Data):
                chunks.append(event.data)
                size += len(event.data)
            elif isinstance(event, h11.EndOfMessage):
                return chunks, None
            else:
                raise ClientError("client closed the connection before the request body ended")
            event = self._next_client_event()

    async def _buffer_upstream_body(self, upstream: Upstream) -> tuple[list[bytes], bool]:
        """Read the response body up to the limit: (chunks, complete)."""
        limit = self.env.config.limits.max_body_bytes
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            with _deadline(self.timeouts.read, "upstream", "response body"):
                event = await self._next_upstream_event(upstream)
            if isinstance(event, h11.EndOfMessage):
                return chunks, True
            if not isinstance(event, h11.Data):
                raise UpstreamError("upstream closed the connection before the response ended")
            chunks.append(event.data)
            size += len(event.data)
        return chunks, False

    async def _read_bodyless_end(self, upstream: Upstream) -> None:
        with _deadline(self.timeouts.read, "upstream", "response"):
            event = await self._next_upstream_event(upstream)
        if not isinstance(event, h11.EndOfMessage):
            raise UpstreamError("upstream closed the connection before the response ended")

    def _client_info(self) -> ClientInfo:
        if self._client is None:
            info = ClientInfo(address=self.client_name)
            if isinstance(self.client, trio.SSLStream):
                info.tls_version = self.client.version()
                cipher = self.client.cipher()
                info.cipher = cipher[0] if cipher else None
                info.alpn = self.client.selected_alpn_protocol()
                info.alpn_offered = self.offered_alpn
                info.sni = self.fixed.server_name if self.fixed is not None else None
            self._client = info
        return self._client

    def _server_info(self, upstream: Upstream) -> ServerInfo:
        info = self._servers.get(upstream)
        if info is None:
            info = self._servers[upstream] = server_info(upstream)
        return dataclasses.replace(info)

    # --- capture for -v, -vv and HAR: only when a sink asked (RelayEnv.capture) ----------------

    def _start_capture(self, record: FlowRecord, request: h11.Request) -> None:
        record.wall_started = time.time()
        # Replaced by what is sent once the request goes upstream. Proxy credentials never
        # reach a log or a HAR file, even for a flow that fails before that.
        record.request_headers = [
            (n, v) for n, v in request.headers.raw_items() if n.lower() != b"proxy-authorization"
        ]
        if isinstance(self.client, trio.SSLStream):
            cipher = self.client.cipher()
            record.client_tls = (self.client.version(), cipher[0] if cipher else None)
            record.sni = self.fixed.server_name if self.fixed is not None else None

    def _upstream_detail(
        self, record: FlowRecord, upstream: Upstream, connect_start: float | None
    ) -> None:
        info = self._server_info(upstream)
        record.server_address = info.address
        if info.tls_version is not None:
            record.server_tls = (info.tls_version, info.cipher)
        timings = record.timings
        if upstream.opened is not None:  # the connector's own stamps, for its first flow only
            timings.connect_start, timings.tcp_end, timings.tls_end = upstream.opened
            upstream.opened = None
        elif connect_start is None:  # a reused connection: no set-up time for this flow
            timings.connect_start = timings.tcp_end = timings.tls_end = None
        else:
            # A connector without stamps: the whole set-up counts as connect, and tls_end
            # stays unknown (HAR's ssl -1) rather than made up.
            timings.connect_start = connect_start
            timings.tcp_end = time.monotonic()
            timings.tls_end = None

    def _response_detail(self, record: FlowRecord, head: h11.Response, fields: Headers) -> None:
        record.http_version = messages.http_version(head.http_version)
        record.reason = head.reason.decode("latin-1")
        record.response_headers = fields

    def _keep_request(self, data: bytes) -> None:
        record = self._record
        record.request_body, whole = self._kept(record.request_body, data)
        record.request_body_complete &= whole

    def _keep_response(self, data: bytes) -> None:
        record = self._record
        record.response_body, whole = self._kept(record.response_body, data)
        record.response_body_complete &= whole

    def _kept(self, held: bytes, data: bytes) -> tuple[bytes, bool]:
        """``held`` plus as much of ``data`` as the capture has room for; False when cut."""
        room = self._capture.body_bytes - len(held) if self._capture else 0
        return (held + data[:room] if room > 0 and data else held), len(data) <= room

    @staticmethod
    def _queue(pending: list[bytes], conn: h11.Connection, *events: h11.Event) -> None:
        # h11 returns b"" for events with nothing to write (EndOfMessage of a Content-Length
        # body) and None after a close; neither is worth a send.
        for event in events:
            if data := conn.send(event):
                pending.append(data)

    async def _send_client(self, *events: h11.Event) -> None:
        self._queue(self._client_pending, self.conn, *events)
        await self._flush_client()

    async def _flush_client(self) -> None:
        try:
            await _send_pending(self.client, self._client_pending)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self.conn.send_failed()
            raise ClientError("client closed the connection") from exc

    async def _send_upstream(self, upstream: Upstream, *events: h11.Event) -> None:
        """Send a request head (with its end, when bodyless); a broken send means stale."""
        self._queue(upstream.pending, upstream.conn, *events)
        try:
            await self._flush_upstream(upstream)
        except _TLSAlertError:
            raise
        except UpstreamError as exc:
            raise _StaleUpstreamError from exc

    async def _flush_upstream(self, upstream: Upstream) -> None:
        try:
            await _send_pending(upstream.stream, upstream.pending)
            if failed := deferred_send_error(upstream.stream):
                raise failed  # the TLS layer is still readable: the answer may be waiting
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            upstream.conn.send_failed()
            if alert := _tls_alert(upstream, exc):
                raise alert from exc  # the server said why: not a stale connection to retry
            raise _UpstreamSendError(
                "upstream closed the connection while receiving the request"
            ) from exc


async def _send_pending(stream: trio.abc.Stream, pending: list[bytes]) -> None:
    """Send what h11 produced for one leg in a single write, and forget it."""
    if not pending:
        return
    data = b"".join(pending)
    pending.clear()
    await stream.send_all(data)


def _head_too_large(limit: int, *, target: bool) -> HeaderTooLargeError:
    """414 when the request target alone is over ``limit`` bytes, else 431."""
    if target:
        return TargetTooLongError(f"request target exceeds {limit // 1024} KiB")
    return HeaderTooLargeError(f"request header block exceeds {limit // 1024} KiB")


def _idempotent(method: bytes) -> bool:
    """RFC 9110 §9.2.2: only these may be sent again after a connection closed unanswered.

    The server may have received and acted on the first copy; a POST must not run twice.
    """
    return method in (b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE")


def _check_framing(request: h11.Request) -> None:
    """Refuse a request framed both by Content-Length and by Transfer-Encoding, or HTTP/1.0 chunked.

    h11 reads such a body by Transfer-Encoding; a server behind us that read it by length would
    take the rest as another request, one the next client's request could be appended to
    (request smuggling). RFC 9112 §6.1 lets a server reject it, and it must close after.
    """
    if _framed_both_ways(request):
        raise ClientError("request has both Content-Length and Transfer-Encoding")
    if request.http_version == b"1.0" and any(
        n == b"transfer-encoding" for n, _ in request.headers
    ):
        # HTTP/1.0 has no Transfer-Encoding: a server behind us may read this body by another
        # rule, so RFC 9112 §6.1 says to treat the framing as faulty.
        raise ClientError("HTTP/1.0 request with Transfer-Encoding")


def _framed_both_ways(message: h11.Request | h11.Response) -> bool:
    """Content-Length and Transfer-Encoding both present (h11 reads by the latter)."""
    names = {name for name, _ in message.headers}
    return b"content-length" in names and b"transfer-encoding" in names


@contextmanager
def _deadline(seconds: float, peer: str, what: str) -> Iterator[None]:
    """``fail_after`` that raises the timeout error of the peer that went quiet."""
    try:
        with trio.fail_after(seconds):
            yield
    except trio.TooSlowError as exc:
        message = f"{peer} sent no {what} bytes for {seconds:g} s"
        if peer == "client":
            raise ClientTimeoutError(message) from exc
        raise UpstreamTimeoutError(message) from exc


def _expects_continue(headers: Headers) -> bool:
    return any(n.lower() == b"expect" and v.lower() == b"100-continue" for n, v in headers)


def _informational(head: h11.InformationalResponse) -> h11.InformationalResponse:
    headers = strip_hop_by_hop(head.headers.raw_items())
    return h11.InformationalResponse(status_code=head.status_code, headers=headers,
                                     reason=head.reason)  # fmt: skip


def _transformed(transform: ChunkTransform, data: bytes) -> Iterable[bytes]:
    # mitmproxy's contract, which scripts port with: bytes or an iterable of bytes per chunk.
    result: object = transform(data)
    if isinstance(result, bytes | bytearray | memoryview):
        return (bytes(result),)
    if isinstance(result, Iterable):
        return (bytes(chunk) for chunk in result)
    raise HookOutputError(f"a stream transform returned {type(result).__name__}, not bytes")


def _answered(flow: Flow) -> bool:
    # A function, not an inline test: a hook may have set flow.response since the last look,
    # which a type checker narrowing the attribute cannot know.
    return flow.response is not None


def _stripped(head: h11.Response | h11.InformationalResponse, *, upgrade: bool = False) -> Headers:
    return strip_hop_by_hop(head.headers.raw_items(), keep_upgrade=upgrade)


def _built(factory: Callable[[], _E]) -> _E:
    """Build an h11 event from what a script left; h11 refuses what cannot go on the wire."""
    try:
        return factory()
    except (h11.LocalProtocolError, UnicodeError, ValueError) as exc:
        raise HookOutputError(f"a script left a message that cannot be sent: {exc}") from exc


def _destination_for(request: Request, original: Destination) -> Destination:
    """Where the request goes after hooks: the original destination unless its URL changed.

    A new host is verified under its own name; the same host keeps the name the client asked
    for, as its SNI may differ from the CONNECT target.
    """
    tls = request.scheme == "https"
    host = request.host.lower()
    if (host, request.port, tls) == (original.host.lower(), original.port, original.tls):
        return original
    same_host = host == original.host.lower()
    server_name = original.server_name if same_host and tls else None
    return Destination(request.host, request.port, tls=tls, server_name=server_name)


def server_info(upstream: Upstream) -> ServerInfo:
    """What a hook sees of the upstream: its address and, over TLS, what was negotiated."""
    info = ServerInfo()
    if upstream.tcp is not None:
        try:
            host, port, *_ = upstream.tcp.socket.getpeername()
            info.address = f"[{host}]:{port}" if ":" in str(host) else f"{host}:{port}"
        except OSError:
            pass
    stream = upstream.stream
    if isinstance(stream, trio.SSLStream):
        info.tls_version = stream.version()
        cipher = stream.cipher()
        info.cipher = cipher[0] if cipher else None
        cert = stream.getpeercert()
        if cert:
            subject = cast(tuple[tuple[tuple[str, str], ...], ...], cert.get("subject", ()))
            info.certificate_subject = ", ".join(f"{k}={v}" for rdn in subject for k, v in rdn)
    return info


def _absolute_form(
    request: h11.Request, dest: Destination, authorization: bytes | None
) -> h11.Request:
    """The request as a proxy expects it (RFC 9112 §3.2.2), with the proxy's credentials."""
    target = request.target
    if target.startswith(b"/"):
        target = dest.origin.encode("ascii") + target
    elif target == b"*":  # only the last proxy sends "*" (RFC 9112 §3.2.4): this one is not
        target = dest.origin.encode("ascii")
    headers = list(request.headers.raw_items())
    if authorization is not None:
        headers.append((b"Proxy-Authorization", authorization))
    return h11.Request(method=request.method, target=target, headers=headers)


_CONNECTION_AUTH = (b"ntlm", b"negotiate", b"kerberos")
_AUTH_FIELDS = (b"authorization", b"www-authenticate", b"proxy-authorization",
                b"proxy-authenticate")  # fmt: skip


def _binds_connection(fields: Iterable[tuple[bytes, bytes]]) -> bool:
    """NTLM and Negotiate authenticate the connection, not the request: never share it."""
    for name, value in fields:
        if name.lower() not in _AUTH_FIELDS:
            continue
        # Challenges may share one field ("Basic realm=x, NTLM"): look at every scheme token.
        tokens = value.replace(b",", b" ").lower().split()
        if any(token in _CONNECTION_AUTH for token in tokens):
            return True
    return False


def _error_events(head: h11.Response, body: bytes, request: h11.Request | None) -> list[h11.Event]:
    """An error answer as h11 events: the body left out for a HEAD request."""
    if request is not None and request.method == b"HEAD":
        return [head, h11.EndOfMessage()]
    return [head, h11.Data(data=body), h11.EndOfMessage()]
