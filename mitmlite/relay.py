"""The HTTP/1.1 relay: h11 on both legs, one request/response cycle at a time.

Owns reading requests from the client, choosing and (re)opening the upstream connection, sending
the request on, streaming both bodies chunk by chunk (nothing is buffered), relaying 1xx,
keep-alive on both legs, and handing over to a raw pipe after ``101 Switching Protocols``. Errors
before a response has started become a 4xx/5xx with a one-line reason; after that the only honest
thing left is to close the client connection. Every finished exchange goes to the ``FlowSink``.

HTTP/1.1 is turn-taking, so this is one loop with one writer per stream, not a task per direction.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import cast
from urllib.parse import urlsplit

import h11
import trio

from mitmlite.config import Config
from mitmlite.errors import (
    ClientError,
    ClientTimeoutError,
    HeaderTooLargeError,
    MitmliteError,
    UpstreamError,
    UpstreamTimeoutError,
)
from mitmlite.flow import FlowRecord, FlowSink
from mitmlite.http1 import (
    ConnectTarget,
    classify_request,
    error_response,
    header_block_size,
    is_upgrade_request,
    reason_phrase,
    strip_hop_by_hop,
)
from mitmlite.streams import PrefixedStream, pipe, receive_batch
from mitmlite.upstream import Connector, Destination, Upstream

Headers = list[tuple[bytes, bytes]]


@dataclass(frozen=True, slots=True)
class RelayEnv:
    """Per-process things every relay shares: built once by the CLI."""

    config: Config
    connect: Connector
    sink: FlowSink


class _StaleUpstreamError(Exception):
    """A reused upstream connection closed before answering: retry once on a fresh one."""


class Relay:
    """Relays requests from one client connection until it closes or asks to CONNECT."""

    def __init__(
        self,
        env: RelayEnv,
        client: trio.abc.Stream,
        conn: h11.Connection,
        client_name: str,
        fixed: Destination | None,
    ) -> None:
        self.env = env
        self.timeouts = env.config.timeouts
        self.read_size = env.config.limits.read_size
        self.client = client
        self.conn = conn
        self.client_name = client_name
        self.fixed = fixed
        self.upstreams: dict[tuple[str, int], Upstream] = {}
        self._client_pending: list[bytes] = []

    async def run(self, first: h11.Request | None = None) -> h11.Request | None:
        """Serve requests; returns a CONNECT request met on a plain proxy connection, else None."""
        try:
            request = first
            while True:
                if request is None:
                    request = await self._receive_request()
                    if request is None:
                        return None
                if self.fixed is None and request.method == b"CONNECT":
                    return request
                if not await self.cycle(request):
                    return None
                request = None
        finally:
            with trio.CancelScope(shield=True):
                for upstream in self.upstreams.values():
                    await upstream.stream.aclose()

    async def _receive_request(self) -> h11.Request | None:
        """The next request, or None after answering a bad or slow one with its 4xx."""
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
        while True:
            event = self._next_client_event()
            if isinstance(event, h11.Request):
                self._check_head_size(event)
                return event
            if event is not h11.NEED_DATA:
                return None  # ConnectionClosed, or PAUSED after a protocol switch
            deadline = self.timeouts.request_header if started else self.timeouts.idle
            with trio.move_on_after(deadline):
                try:
                    data = await receive_batch(self.client, self.read_size)
                except trio.BrokenResourceError:  # TLS EOF without close_notify: a close
                    data = b""
                self.conn.receive_data(cast(bytes, data))
                started = True
                continue
            if started:
                raise ClientTimeoutError(f"request head not received within {deadline:g} s")
            return None

    def _check_head_size(self, request: h11.Request) -> None:
        # h11 bounds only a head still arriving; one that arrives whole in a single read can be
        # any size, so the limit is enforced here too.
        limit = self.env.config.limits.max_header_bytes
        if len(request.target) + header_block_size(request.headers) > limit:
            raise HeaderTooLargeError(f"request header block exceeds {limit // 1024} KiB")

    def _next_client_event(self) -> h11.Event | type[h11.PAUSED] | type[h11.NEED_DATA]:
        try:
            return self.conn.next_event()
        except h11.RemoteProtocolError as exc:
            if exc.error_status_hint == 431:
                limit = self.env.config.limits.max_header_bytes // 1024
                raise HeaderTooLargeError(f"request header block exceeds {limit} KiB") from exc
            raise ClientError(f"malformed request: {exc}") from exc

    async def cycle(self, request: h11.Request) -> bool:
        """One exchange; returns True when the client connection can carry another one."""
        record = FlowRecord(
            client=self.client_name,
            method=request.method.decode("ascii", "replace"),
            url=request.target.decode("ascii", "replace"),
            started=time.monotonic(),
        )
        try:
            await self._exchange(request, record)
        except MitmliteError as exc:
            record.error = str(exc)
            await self._fail(exc, record)
            return False
        finally:
            record.duration = time.monotonic() - record.started
            self.env.sink.flow(record)
        if self.conn.our_state is h11.DONE and self.conn.their_state is h11.DONE:
            self.conn.start_next_cycle()
            return True
        return False

    async def _fail(self, exc: MitmliteError, record: FlowRecord | None) -> None:
        """Answer with the error when no response has started; either way the client is done."""
        if self.conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE) or exc.status is None:
            return
        if record is not None:
            record.status = exc.status
        headers, body = error_response(exc.status, str(exc))
        head = h11.Response(
            status_code=exc.status, headers=headers, reason=reason_phrase(exc.status)
        )
        try:
            with trio.move_on_after(self.timeouts.handshake):
                await self._send_client(head, h11.Data(data=body), h11.EndOfMessage())
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.LocalProtocolError):
            pass

    async def _exchange(self, request: h11.Request, record: FlowRecord) -> None:
        dest, target, headers = self._route(request, record)
        upgrade = is_upgrade_request(request.headers)
        headers = strip_hop_by_hop(headers, keep_upgrade=upgrade)
        if _expects_continue(headers):
            # We answer 100 ourselves, as mitmproxy does: the upstream gets the body without
            # waiting, and clients that wait for a 100 (curl, 1 s) do not stall on the proxy.
            headers = [(n, v) for n, v in headers if n.lower() != b"expect"]
            if self.conn.client_is_waiting_for_100_continue:
                await self._send_client(h11.InformationalResponse(status_code=100, headers=[]))
        outgoing = h11.Request(method=request.method, target=target, headers=headers)
        upstream, head = await self._forward_request(dest, outgoing, record)
        await self._relay_response(upstream, head, record, upgrade)

    async def _forward_request(
        self, dest: Destination, request: h11.Request, record: FlowRecord
    ) -> tuple[Upstream, h11.Response | h11.InformationalResponse]:
        """Send the request and wait for the response head.

        A reused keep-alive connection may turn out to be closed by the server, when the request
        is written or when the answer is an EOF. Then the request is sent once more on a fresh
        connection, as long as none of its body has been consumed (RFC 9110 §9.2.2 allows this
        for requests the server never started on).
        """
        first = self._next_client_event()  # EndOfMessage right away for a request with no body
        head_events: list[h11.Event] = [request]
        if bodyless := isinstance(first, h11.EndOfMessage):
            head_events.append(first)
        for attempt in (1, 2):
            upstream, reused = await self._upstream_for(dest)
            record.unverified = not upstream.verified
            try:
                await self._send_upstream(upstream, *head_events)
                if not bodyless:
                    record.request_bytes = await self._relay_request_body(upstream, first)
                return upstream, await self._response_head(upstream, retry_on_eof=bodyless)
            except _StaleUpstreamError:
                await self._drop(upstream)
                if not reused or attempt == 2:
                    raise UpstreamError(f"{dest.host}:{dest.port} closed the connection") from None
        raise AssertionError("unreachable: the loop returns or raises")

    def _route(
        self, request: h11.Request, record: FlowRecord
    ) -> tuple[Destination, bytes, list[tuple[bytes, bytes]]]:
        headers: Headers = list(request.headers.raw_items())
        if self.fixed is not None:
            path = request.target
            if not path.startswith(b"/") and path != b"*":
                # RFC 9112 §3.2.2: servers accept absolute-form too; the tunnel fixes the origin.
                split = urlsplit(path)
                path = (split.path or b"/") + (b"?" + split.query if split.query else b"")
            record.url = self.fixed.origin + path.decode("ascii", "replace")
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
            if existing.reusable():
                return existing, True
            await self._drop(existing)
        upstream = await self.env.connect(dest)
        self.upstreams[upstream.key] = upstream
        return upstream, False

    async def _drop(self, upstream: Upstream) -> None:
        self.upstreams.pop(upstream.key, None)
        with trio.CancelScope(shield=True):
            await upstream.stream.aclose()

    async def _relay_request_body(self, upstream: Upstream, first: object) -> int:
        """Stream the client's body to the upstream, starting with ``first``; returns its size."""
        sent = 0
        event = first
        while True:
            if event is h11.NEED_DATA:
                await self._flush_upstream(upstream)
                with _deadline(self.timeouts.read, "client", "request body"):
                    try:
                        data = await receive_batch(self.client, self.read_size)
                    except trio.BrokenResourceError as exc:
                        raise ClientError(
                            "client connection broke during the request body"
                        ) from exc
                    self.conn.receive_data(cast(bytes, data))
            elif isinstance(event, h11.Data):
                sent += len(event.data)
                self._queue(upstream.pending, upstream.conn, event)
            elif isinstance(event, h11.EndOfMessage):
                self._queue(upstream.pending, upstream.conn, event)
                await self._flush_upstream(upstream)
                return sent
            else:
                raise ClientError("client closed the connection before the request body ended")
            event = self._next_client_event()

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
            await self._send_client(_informational(head))
            head = await self._response_head(upstream)
        record.status = head.status_code
        headers = strip_hop_by_hop(head.headers.raw_items())
        response = h11.Response(status_code=head.status_code, headers=headers, reason=head.reason)
        # Queued, not sent: the head goes out with the first body bytes in one TLS record.
        self._queue(self._client_pending, self.conn, response)
        record.response_bytes = await self._relay_response_body(upstream)
        await self._finish_upstream(upstream)

    async def _response_head(
        self, upstream: Upstream, *, retry_on_eof: bool = False
    ) -> h11.Response | h11.InformationalResponse:
        where = f"{upstream.host}:{upstream.port}"
        timeout = self.timeouts.upstream_response
        try:
            with trio.fail_after(timeout):
                event = await self._next_upstream_event(upstream)
        except trio.TooSlowError as exc:
            raise UpstreamTimeoutError(f"{where} did not respond within {timeout:g} s") from exc
        if isinstance(event, h11.Response | h11.InformationalResponse):
            return event
        if retry_on_eof and isinstance(event, h11.ConnectionClosed):
            raise _StaleUpstreamError
        raise UpstreamError(f"{where} closed the connection without a response")

    async def _relay_response_body(self, upstream: Upstream) -> int:
        received = 0
        while True:
            with _deadline(self.timeouts.read, "upstream", "response body"):
                event = await self._next_upstream_event(upstream)
            if isinstance(event, h11.Data):
                received += len(event.data)
            elif not isinstance(event, h11.EndOfMessage):
                raise UpstreamError("upstream closed the connection before the response ended")
            self._queue(self._client_pending, self.conn, event)
            if isinstance(event, h11.EndOfMessage):
                await self._flush_client()
                return received

    async def _next_upstream_event(self, upstream: Upstream) -> h11.Event:
        conn = upstream.conn
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise UpstreamError(f"malformed response from upstream: {exc}") from exc
            if event is h11.NEED_DATA:
                await self._flush_client()  # what we hold goes out before we wait for more
                try:
                    data = await receive_batch(upstream.stream, self.read_size)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise UpstreamError("upstream connection broke") from exc
                conn.receive_data(cast(bytes, data))
                continue
            if event is h11.PAUSED:  # h11 pauses only after a switch we did not ask for
                raise UpstreamError("upstream switched protocols without being asked")
            return cast(h11.Event, event)

    async def _finish_upstream(self, upstream: Upstream) -> None:
        conn = upstream.conn
        if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
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
        except UpstreamError as exc:
            raise _StaleUpstreamError from exc

    async def _flush_upstream(self, upstream: Upstream) -> None:
        try:
            await _send_pending(upstream.stream, upstream.pending)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            upstream.conn.send_failed()
            raise UpstreamError(
                "upstream closed the connection while receiving the request"
            ) from exc


async def _send_pending(stream: trio.abc.Stream, pending: list[bytes]) -> None:
    """Send what h11 produced for one leg in a single write, and forget it."""
    if not pending:
        return
    data = b"".join(pending)
    pending.clear()
    await stream.send_all(data)


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
