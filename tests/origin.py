"""A test origin server: trio + h11 (+ wsproto), speaking over any trio stream.

Routes (all deterministic, so tests can assert on exact bytes):
  /bytes/N           N bytes of a repeating pattern, Content-Length, sent in 64 KiB chunks
  /chunked/N         N bytes as chunked transfer coding, in several chunks
  /trailers          "hello", chunked, with an ``X-Checksum: abc`` trailer field
  /close/N           N bytes delimited by closing the connection (no length, no chunking)
  /then-close        a normal keep-alive response, after which the server closes silently
  /then-drop         a normal keep-alive response; the next request on that connection is read
                     and the connection closed without an answer (a server's idle-close race)
  /drop              read the request, close without an answer
  /reject-upload     413 "upload refused" from the request head alone, then close, body unread
  /cut-upload        close after the request head, body unread, no answer
  /cl-te             "hello" framed by both Content-Length: 3 and chunked; then silence
  /half-close/N      N bytes delimited by close, no Connection: close, as over TLS: the server's
                     side ends (as with close_notify) while it still reads what is sent after
  /status/N          an empty response with status N (204, 304, 404, ...)
  /echo              JSON of method, target, headers (in order, raw case) and body sha256/length
  /cookies           two Set-Cookie headers
  /gzip              a gzip-encoded text body (Content-Encoding: gzip)
  /html              an HTML page in UTF-8, not compressed
  /html-br           the same page, brotli-compressed (Content-Encoding: br)
  /redirect?to=URL   302 to URL
  /sse               Server-Sent Events: one event now, the next only after ``release`` is set
  /slow              waits on ``release`` before answering (for timeout tests)
  /early-hints       103 Early Hints, then 200
  /ws                WebSocket echo (RFC 6455 via wsproto)
  anything else      200 with "origin <path>"
"""

from __future__ import annotations

import gzip
import hashlib
import json
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import parse_qs, urlsplit

import brotli  # type: ignore[import-untyped]  # no type stubs
import h11
import trio
import wsproto
import wsproto.events

CHUNK = 64 * 1024
PATTERN = bytes(range(256)) * 256  # 64 KiB


def pattern_bytes(size: int) -> bytes:
    """The first ``size`` bytes of the repeating pattern /bytes/N serves."""
    reps = size // len(PATTERN) + 1
    return (PATTERN * reps)[:size]


def pattern_sha256(size: int) -> str:
    digest = hashlib.sha256()
    remaining = size
    while remaining:
        piece = PATTERN[: min(remaining, len(PATTERN))]
        digest.update(piece)
        remaining -= len(piece)
    return digest.hexdigest()


@dataclass
class OriginState:
    """What tests can observe and control: requests seen, and an event gating slow routes."""

    release: trio.Event = field(default_factory=trio.Event)
    requests: list[str] = field(default_factory=list)
    connections: int = 0


class _Conn:
    def __init__(self, stream: trio.abc.Stream, state: OriginState) -> None:
        self.stream = stream
        self.state = state
        self.conn = h11.Connection(h11.SERVER)

    async def next_event(self) -> h11.Event | type[h11.PAUSED]:
        while True:
            event = self.conn.next_event()
            if event is h11.NEED_DATA:
                try:
                    data = await self.stream.receive_some(CHUNK)
                except (trio.BrokenResourceError, trio.ClosedResourceError):
                    data = b""
                self.conn.receive_data(cast(bytes, data))
                continue
            return cast(h11.Event | type[h11.PAUSED], event)

    async def send(self, *events: h11.Event) -> None:
        await self.stream.send_all(b"".join(self.conn.send(e) or b"" for e in events))

    async def respond(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        headers = [*headers, (b"Content-Length", str(len(body)).encode())]
        await self.send(h11.Response(status_code=status, headers=headers))
        for start in range(0, len(body), CHUNK):
            await self.send(h11.Data(data=body[start : start + CHUNK]))
        await self.send(h11.EndOfMessage())


Handler = Callable[[_Conn, h11.Request, bytes], Awaitable[None]]


async def serve_origin(stream: trio.abc.Stream, state: OriginState) -> None:
    """Serve HTTP/1.1 on ``stream`` until the peer closes; never raises on a peer's misbehaviour."""
    state.connections += 1
    conn = _Conn(stream, state)
    try:
        await _serve(conn)
    except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
        pass
    finally:
        await trio.aclose_forcefully(stream)


async def _serve(conn: _Conn) -> None:
    while True:
        event = await conn.next_event()
        if not isinstance(event, h11.Request):
            return
        early = urlsplit(event.target.decode()).path
        if early in ("/reject-upload", "/cut-upload"):
            # Decided from the head alone, the body left unread; closing then resets the
            # connection, as servers that refuse an upload outright do.
            conn.state.requests.append(event.target.decode())
            if early == "/reject-upload":
                refusal = (b"Content-Type", b"text/plain"), (b"Connection", b"close")
                await conn.respond(413, list(refusal), b"upload refused\n")
            return
        body = b""
        while not isinstance(ev := await conn.next_event(), h11.EndOfMessage):
            if isinstance(ev, h11.Data):
                body += ev.data
            else:
                return
        conn.state.requests.append(event.target.decode())
        path = urlsplit(event.target.decode()).path
        if path == "/ws":
            await _websocket(conn, event)
            return
        if path.startswith("/close/"):
            await _close_delimited(conn, int(path.rsplit("/", 1)[1]))
            return
        if path == "/then-close":  # a keep-alive response, then the server drops the connection
            await conn.respond(200, [], b"bye")
            return
        if path.startswith("/half-close/"):
            # No "Connection: close" either: nothing but the close ends this body.
            await conn.stream.send_all(b"HTTP/1.1 200 OK\r\n\r\n")
            await conn.stream.send_all(pattern_bytes(int(path.rsplit("/", 1)[1])))
            if isinstance(conn.stream, trio.abc.HalfCloseableStream):  # memory pairs, TCP
                await conn.stream.send_eof()
                while await conn.stream.receive_some(CHUNK):
                    pass  # whatever comes now is read and never answered
            return
        if path == "/drop":
            return
        if path == "/cl-te":  # h11 will not write this: it is what a smuggling attempt looks like
            await conn.stream.send_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n0\r\n\r\n"
            )
            while await conn.stream.receive_some(CHUNK):
                pass  # a request sent on after this is never answered
            return
        if path == "/then-drop":
            await conn.respond(200, [], b"bye")
            conn.conn.start_next_cycle()
            await conn.next_event()  # the next request's head: read, then the close
            return
        await _route(conn, event, body, path)
        if conn.conn.our_state is h11.MUST_CLOSE or conn.conn.their_state is not h11.DONE:
            return
        conn.conn.start_next_cycle()


async def _route(conn: _Conn, req: h11.Request, body: bytes, path: str) -> None:
    if path.startswith("/bytes/"):
        await _sized(conn, int(path.rsplit("/", 1)[1]), chunked=False)
    elif path.startswith("/chunked/"):
        await _sized(conn, int(path.rsplit("/", 1)[1]), chunked=True)
    elif path.startswith("/status/"):
        await conn.send(h11.Response(status_code=int(path.rsplit("/", 1)[1]), headers=[]))
        await conn.send(h11.EndOfMessage())
    else:
        handler = _ROUTES.get(path, _default)
        await handler(conn, req, body)


async def _sized(conn: _Conn, size: int, *, chunked: bool) -> None:
    framing = (b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", b"%d" % size)
    await conn.send(h11.Response(status_code=200, headers=[framing]))
    body = pattern_bytes(size)
    step = CHUNK if not chunked else 10_000
    for start in range(0, size, step):
        await conn.send(h11.Data(data=body[start : start + step]))
    await conn.send(h11.EndOfMessage())


async def _trailers(conn: _Conn, req: h11.Request, body: bytes) -> None:
    await conn.send(h11.Response(status_code=200, headers=[(b"Transfer-Encoding", b"chunked")]))
    await conn.send(h11.Data(data=b"hello"))
    await conn.send(h11.EndOfMessage(headers=[(b"X-Checksum", b"abc")]))


async def _close_delimited(conn: _Conn, size: int) -> None:
    # h11 refuses to write an unframed 1.1 response, so write this one by hand (RFC 9112 §6.3).
    await conn.stream.send_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n")
    await conn.stream.send_all(pattern_bytes(size))


async def _echo(conn: _Conn, req: h11.Request, body: bytes) -> None:
    info = {
        "method": req.method.decode(),
        "target": req.target.decode(),
        "headers": [[n.decode(), v.decode()] for n, v in req.headers.raw_items()],
        "body_length": len(body),
        "body_sha256": hashlib.sha256(body).hexdigest(),
    }
    await conn.respond(200, [(b"Content-Type", b"application/json")], json.dumps(info).encode())


async def _cookies(conn: _Conn, req: h11.Request, body: bytes) -> None:
    headers = [(b"Set-Cookie", b"a=1; Path=/"), (b"X-Order", b"1"), (b"Set-Cookie", b"b=2")]
    await conn.respond(200, headers, b"cookies")


async def _gzip(conn: _Conn, req: h11.Request, body: bytes) -> None:
    text = b"<html><body>" + b"compressed hello " * 100 + b"</body></html>"
    headers = [(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip")]
    await conn.respond(200, headers, gzip.compress(text))


# Non-ASCII on purpose: a rewrite that ignored the charset would corrupt "Grüße".
HTML_PAGE = "<html><body><h1>Grüße</h1>" + "page hello " * 100 + "</body></html>"


async def _html(conn: _Conn, req: h11.Request, body: bytes) -> None:
    headers = [(b"Content-Type", b"text/html; charset=utf-8")]
    await conn.respond(200, headers, HTML_PAGE.encode())


async def _html_br(conn: _Conn, req: h11.Request, body: bytes) -> None:
    headers = [(b"Content-Type", b"text/html; charset=utf-8"), (b"Content-Encoding", b"br")]
    await conn.respond(200, headers, cast(bytes, brotli.compress(HTML_PAGE.encode())))


async def _redirect(conn: _Conn, req: h11.Request, body: bytes) -> None:
    to = parse_qs(urlsplit(req.target.decode()).query)["to"][0]
    await conn.respond(302, [(b"Location", to.encode())], b"")


async def _sse(conn: _Conn, req: h11.Request, body: bytes) -> None:
    headers = [(b"Content-Type", b"text/event-stream"), (b"Transfer-Encoding", b"chunked")]
    await conn.send(h11.Response(status_code=200, headers=headers))
    await conn.send(h11.Data(data=b"data: first\n\n"))
    await conn.state.release.wait()
    await conn.send(h11.Data(data=b"data: second\n\n"), h11.EndOfMessage())


async def _slow(conn: _Conn, req: h11.Request, body: bytes) -> None:
    await conn.state.release.wait()
    await conn.respond(200, [], b"finally")


async def _early_hints(conn: _Conn, req: h11.Request, body: bytes) -> None:
    hint = h11.InformationalResponse(status_code=103, headers=[(b"Link", b"</s.css>; rel=preload")])
    await conn.send(hint)
    await conn.respond(200, [], b"after hints")


async def _default(conn: _Conn, req: h11.Request, body: bytes) -> None:
    await conn.respond(200, [(b"Content-Type", b"text/plain")], b"origin " + req.target)


_ROUTES: dict[str, Handler] = {
    "/echo": _echo,
    "/cookies": _cookies,
    "/gzip": _gzip,
    "/html": _html,
    "/html-br": _html_br,
    "/redirect": _redirect,
    "/sse": _sse,
    "/slow": _slow,
    "/early-hints": _early_hints,
    "/trailers": _trailers,
}


async def _websocket(conn: _Conn, req: h11.Request) -> None:
    ws = wsproto.WSConnection(wsproto.ConnectionType.SERVER)
    ws.initiate_upgrade_connection(list(req.headers.raw_items()), req.target)
    for event in ws.events():
        if isinstance(event, wsproto.events.Request):
            await conn.stream.send_all(ws.send(wsproto.events.AcceptConnection()))
    if early := conn.conn.trailing_data[0]:
        ws.receive_data(early)
    while True:
        for event in ws.events():
            if isinstance(event, wsproto.events.TextMessage):
                await conn.stream.send_all(
                    ws.send(wsproto.events.Message(data="echo " + event.data))
                )
            elif isinstance(event, wsproto.events.CloseConnection):
                await conn.stream.send_all(ws.send(event.response()))
                return
        data = await conn.stream.receive_some(CHUNK)
        if not data:
            return
        ws.receive_data(bytes(data))


async def serve_origin_tcp(
    state: OriginState,
    tls: ssl.SSLContext | None,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Listen on 127.0.0.1 (an ephemeral port, reported through task_status), TLS when given."""
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    port = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        if tls is None:
            await serve_origin(stream, state)
            return
        ssl_stream = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
        try:
            await ssl_stream.do_handshake()
        except trio.BrokenResourceError:
            await trio.aclose_forcefully(stream)
            return
        await serve_origin(ssl_stream, state)

    async with trio.open_nursery() as nursery:
        task_status.started(port)
        await trio.serve_listeners(handler, listeners, handler_nursery=nursery)
