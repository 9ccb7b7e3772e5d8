"""Edge cases found in review: HEAD errors, trickled heads, scripts changing the method,
the response/error promise, and connections with bytes left over."""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path

import h11
import pytest
import trio
import trio.testing

from mitmlite.config import Config, Timeouts
from mitmlite.errors import UpstreamError
from mitmlite.relay import Relay, RelayEnv, _absolute_form, _tls_alert
from mitmlite.upstream import Destination, Upstream, client_conn, open_tcp
from tests.fakes import Sink
from tests.origin import pattern_bytes
from tests.scripting import isolated_imports  # noqa: F401 - autouse fixture
from tests.test_relay import Client, read_all, start_relay
from tests.test_relay_hooks import start


async def test_a_head_request_that_fails_gets_its_502_head_without_a_body(
    nursery: trio.Nursery,
) -> None:
    relay = await start_relay(nursery, fixed=None)
    relay.connector.fail_with = UpstreamError("cannot connect to gone.test:80: refused")
    await relay.client.send(
        h11.Request(method="HEAD", target="http://gone.test/", headers=[(b"Host", b"gone.test")]),
        h11.EndOfMessage(),
    )
    head, body, _ = await relay.client.response()
    assert (head.status_code, body) == (502, b"")
    # The twin: a GET gets the reason in the body.
    relay2 = await start_relay(nursery, fixed=None)
    relay2.connector.fail_with = UpstreamError("cannot connect to gone.test:80: refused")
    head, body = await relay2.client.get(b"http://gone.test/", [(b"Host", b"gone.test")])
    assert (head.status_code, body) == (502, b"cannot connect to gone.test:80: refused\n")


async def test_a_head_trickled_byte_by_byte_still_times_out(
    nursery: trio.Nursery, autojump_clock: trio.testing.MockClock
) -> None:
    config = Config(timeouts=Timeouts(request_header=3))
    relay = await start_relay(nursery, config=config)
    started = trio.current_time()
    for byte in b"GET / HTTP/1.1\r\nHost: site.test\r\nX-Slow: " + b"a" * 50:
        try:
            await relay.raw.send_all(bytes([byte]))
        except trio.BrokenResourceError:
            break
        await trio.sleep(1)  # each byte well inside the timeout: only a total deadline stops it
    reply = await relay.raw.receive_some(65536)
    assert reply.startswith(b"HTTP/1.1 408 ")
    assert trio.current_time() - started < 10


async def test_a_script_turning_head_into_get_sends_no_body_to_the_head_client(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(nursery, tmp_path, "def request(flow):\n    flow.request.method = 'GET'\n")
    await relay.client.send(
        h11.Request(method="HEAD", target="/bytes/100", headers=[(b"Host", b"site.test")]),
        h11.EndOfMessage(),
    )
    head, body, _ = await relay.client.response()
    assert (head.status_code, body) == (200, b"")
    relay.client.conn.start_next_cycle()
    head, body = await relay.client.get(b"/after")  # the connection survived
    assert body == b"origin /after"


async def test_a_script_turning_get_into_head_still_frames_the_get(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def request(flow):
            if flow.request.path == "/bytes/100":
                flow.request.method = "HEAD"
        """,
    )
    head, body = await relay.client.get(b"/bytes/100")
    assert (head.status_code, body) == (200, b"")
    assert [v for n, v in head.headers.raw_items() if n.lower() == b"content-length"] == [b"0"]
    head, body = await relay.client.get(b"/after")
    assert body == b"origin /after"


async def test_a_flow_whose_response_hook_ran_gets_no_error_hook(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        calls = []
        def response(flow):
            calls.append("response")
            flow.response.headers["X-Bad"] = "a\\r\\nb: c"
        def error(flow):
            calls.append("error")
        """,
    )
    head, _ = await relay.client.get(b"/x")
    assert head.status_code == 500
    assert relay.module("calls") == ["response"]


async def test_an_upstream_with_bytes_past_its_response_is_not_reused() -> None:
    near, _far = trio.testing.memory_stream_pair()
    upstream = Upstream("site.test", 443, near, h11.Connection(h11.CLIENT))
    conn = upstream.conn
    conn.send(h11.Request(method="HEAD", target="/", headers=[(b"Host", b"site.test")]))
    conn.send(h11.EndOfMessage())
    conn.receive_data(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
    assert isinstance(conn.next_event(), h11.Response)
    assert isinstance(conn.next_event(), h11.EndOfMessage)
    conn.start_next_cycle()
    assert not upstream.reusable()
    clean = Upstream("site.test", 443, near, h11.Connection(h11.CLIENT))
    assert clean.reusable()  # the twin: nothing left over


async def test_an_invalid_host_is_an_upstream_error_not_a_crash() -> None:
    for host in ("a..b.test", "x" * 64 + ".test"):
        with pytest.raises(UpstreamError, match="cannot connect to"):
            await open_tcp(host, 80, 1)


async def test_trailers_reach_an_http11_client(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    await relay.client.send(
        h11.Request(method="GET", target="/trailers", headers=[(b"Host", b"site.test")]),
        h11.EndOfMessage(),
    )
    with trio.fail_after(5):
        head = await relay.client.next_event()
        body = b""
        while isinstance(event := await relay.client.next_event(), h11.Data):
            body += event.data
    assert isinstance(head, h11.Response)
    assert (head.status_code, body) == (200, b"hello")
    assert isinstance(event, h11.EndOfMessage)
    assert list(event.headers) == [(b"x-checksum", b"abc")]


async def test_trailers_are_dropped_for_an_http10_client_which_still_gets_the_body(
    nursery: trio.Nursery,
) -> None:
    # The twin: a close-delimited body has no place for trailers; h11 refused to write them and
    # the client got an empty reply.
    relay = await start_relay(nursery)
    await relay.raw.send_all(b"GET /trailers HTTP/1.0\r\nHost: site.test\r\n\r\n")
    with trio.fail_after(5):
        data = await read_all(relay.raw)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert body == b"hello"
    assert b"abc" not in data


# --- found by a side-by-side run against mitmdump -------------------------------------------------


async def test_a_request_framed_by_both_length_and_chunking_is_refused(
    nursery: trio.Nursery,
) -> None:
    relay = await start_relay(nursery)
    smuggled = b"0\r\n\r\nPOST /smuggled HTTP/1.1\r\nHost: site.test\r\nContent-Length: 60\r\n\r\n"
    await relay.raw.send_all(
        b"POST /a HTTP/1.1\r\nHost: site.test\r\nContent-Length: 4\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + smuggled
    )
    with trio.fail_after(5):
        reply = await read_all(relay.raw)
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert reply.endswith(b"request has both Content-Length and Transfer-Encoding\n")
    assert relay.origin.requests == []  # nothing reached the upstream
    assert relay.connector.dests == []


async def test_a_chunked_request_alone_is_relayed(nursery: trio.Nursery) -> None:
    # The twin: one framing, no refusal.
    relay = await start_relay(nursery)
    await relay.raw.send_all(
        b"POST /echo HTTP/1.1\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nbody\r\n0\r\n\r\n"
    )
    head, body, _ = await relay.client.response()
    assert head.status_code == 200
    assert b'"body_length": 4' in body


async def test_an_upstream_that_ended_a_body_by_closing_is_not_reused(
    nursery: trio.Nursery,
) -> None:
    # Over TLS the server's close_notify ends the body while its TCP side still takes bytes:
    # a request sent there was accepted and never answered (a 502 for the next client).
    relay = await start_relay(nursery)
    head, body = await relay.client.get(b"/half-close/1000")
    assert (head.status_code, body) == (200, pattern_bytes(1000))
    head, body = await relay.client.get(b"/after")
    assert (head.status_code, body) == (200, b"origin /after")
    assert relay.origin.connections == 2
    assert relay.origin.requests == ["/half-close/1000", "/after"]


async def test_a_framed_body_keeps_the_upstream_connection(nursery: trio.Nursery) -> None:
    # The twin: Content-Length and chunked bodies end without a close; one connection serves.
    relay = await start_relay(nursery)
    for path in (b"/bytes/1000", b"/chunked/1000", b"/after"):
        head, _ = await relay.client.get(path)
        assert head.status_code == 200
    assert relay.origin.connections == 1


async def test_a_reused_upstream_that_closes_without_answering_is_retried_once(
    nursery: trio.Nursery,
) -> None:
    relay = await start_relay(nursery)
    head, body = await relay.client.get(b"/then-drop")
    assert (head.status_code, body) == (200, b"bye")
    head, body = await relay.client.get(b"/after")
    assert (head.status_code, body) == (200, b"origin /after")
    assert relay.origin.connections == 2


async def test_a_fresh_upstream_that_closes_without_answering_is_a_502(
    nursery: trio.Nursery,
) -> None:
    # The twin: nothing to retry on a connection opened for this very request.
    relay = await start_relay(nursery)
    head, body = await relay.client.get(b"/drop")
    assert (head.status_code, body) == (502, b"site.test:443 closed the connection\n")
    assert relay.origin.connections == 1


async def test_an_http10_request_without_host_in_a_tunnel_gets_the_tunnel_host(
    nursery: trio.Nursery,
) -> None:
    relay = await start_relay(nursery)
    await relay.raw.send_all(b"GET /echo HTTP/1.0\r\n\r\n")
    with trio.fail_after(5):
        reply = await read_all(relay.raw)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert ["Host", "site.test"] in json.loads(body)["headers"]


async def test_an_http10_request_with_its_own_host_keeps_it(nursery: trio.Nursery) -> None:
    relay = await start_relay(nursery)
    await relay.raw.send_all(b"GET /echo HTTP/1.0\r\nHost: other.test\r\n\r\n")
    with trio.fail_after(5):
        reply = await read_all(relay.raw)
    body = reply.partition(b"\r\n\r\n")[2]
    assert ["Host", "other.test"] in json.loads(body)["headers"]


async def test_a_response_framed_both_ways_is_read_by_chunking_and_its_connection_dropped(
    nursery: trio.Nursery,
) -> None:
    relay = await start_relay(nursery)
    with trio.fail_after(5):
        head, body = await relay.client.get(b"/cl-te")
        assert (head.status_code, body) == (200, b"hello")
        assert b"content-length" not in dict(head.headers)  # RFC 9112 §6.3: TE wins
        head, body = await relay.client.get(b"/after")
    assert (head.status_code, body) == (200, b"origin /after")
    assert relay.origin.connections == 2


def _broken_by(reason: str | None, kind: type[ssl.SSLError] = ssl.SSLError) -> Exception:
    cause = kind(1, f"[SSL: {reason}] test")
    cause.reason = reason  # type: ignore[assignment]  # OpenSSL sets it (None when unknown)
    broken = trio.BrokenResourceError()
    broken.__cause__ = cause
    return broken


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        (
            "TLSV13_ALERT_CERTIFICATE_REQUIRED",
            "site.test requires a client certificate (TLS alert certificate_required); "
            "mitmlite presents none",
        ),
        ("SSLV3_ALERT_HANDSHAKE_FAILURE", "site.test ended the connection with TLS alert "
         "handshake_failure"),
        ("TLSV1_ALERT_INTERNAL_ERROR", "site.test ended the connection with TLS alert "
         "internal_error"),
    ],
)  # fmt: skip
def test_a_tls_alert_from_the_upstream_is_named(reason: str, message: str) -> None:
    upstream = Upstream("site.test", 443, trio.testing.memory_stream_pair()[0], client_conn())
    alert = _tls_alert(upstream, _broken_by(reason))
    assert alert is not None
    assert str(alert) == message


@pytest.mark.parametrize("reason", ["DECRYPTION_FAILED_OR_BAD_RECORD_MAC", None])
def test_other_tls_failures_and_eofs_are_not_alerts(reason: str | None) -> None:
    upstream = Upstream("site.test", 443, trio.testing.memory_stream_pair()[0], client_conn())
    assert _tls_alert(upstream, _broken_by(reason)) is None
    assert _tls_alert(upstream, _broken_by("UNEXPECTED_EOF", ssl.SSLEOFError)) is None
    assert _tls_alert(upstream, trio.BrokenResourceError()) is None


async def test_a_post_whose_reused_connection_closes_unanswered_is_not_sent_again(
    nursery: trio.Nursery,
) -> None:
    # The twin of the GET retry above: the server may have acted on it (RFC 9110 §9.2.2).
    relay = await start_relay(nursery)
    head, _ = await relay.client.get(b"/then-drop")
    assert head.status_code == 200
    await relay.client.send(
        h11.Request(method="POST", target="/after", headers=[(b"Host", b"site.test"),
                    (b"Content-Length", b"0")]),
        h11.EndOfMessage(),
    )  # fmt: skip
    head, body, _ = await relay.client.response()
    assert head.status_code == 502
    assert body == b"site.test:443 closed the connection without a response\n"
    assert relay.origin.connections == 1


async def test_an_http10_request_without_host_gets_the_tls_server_name(
    nursery: trio.Nursery,
) -> None:
    # A CONNECT to an address carries the site's name only in the client's SNI.
    fixed = Destination("10.0.0.1", 443, tls=True, server_name="named.test")
    relay = await start_relay(nursery, fixed=fixed)
    await relay.raw.send_all(b"GET /echo HTTP/1.0\r\n\r\n")
    with trio.fail_after(5):
        reply = await read_all(relay.raw)
    assert ["Host", "named.test"] in json.loads(reply.partition(b"\r\n\r\n")[2])["headers"]


def test_options_asterisk_through_an_upstream_proxy_is_absolute_form() -> None:
    # Only the last proxy sends "*" (RFC 9112 §3.2.4); the next proxy must learn the origin.
    request = h11.Request(method="OPTIONS", target="*", headers=[(b"Host", b"site.test:8080")])
    sent = _absolute_form(request, Destination("site.test", 8080, tls=False), None)
    assert sent.target == b"http://site.test:8080"
    request = h11.Request(method="GET", target="/a", headers=[(b"Host", b"site.test:8080")])
    assert _absolute_form(request, Destination("site.test", 8080, tls=False), None).target == (
        b"http://site.test:8080/a"
    )


@dataclass
class ProxyThatAnswers:
    """An upstream proxy (absolute-form requests) that answers the first request with ``reply``.

    With ``absolute_form=False`` it is an origin answering so, then closing.
    """

    nursery: trio.Nursery
    reply: bytes
    absolute_form: bool = True

    async def __call__(self, dest: Destination) -> Upstream:
        await trio.lowlevel.checkpoint()
        near, far = trio.testing.memory_stream_pair()

        async def answer() -> None:
            async with far:
                await far.receive_some(65536)
                await far.send_all(self.reply)

        self.nursery.start_soon(answer)
        return Upstream(dest.host, dest.port, near, client_conn(), absolute_form=self.absolute_form)


async def through_proxy(nursery: trio.Nursery, reply: bytes) -> tuple[h11.Response, bytes]:
    env = RelayEnv(Config(), ProxyThatAnswers(nursery, reply), Sink())
    client_end, proxy_end = trio.testing.memory_stream_pair()
    conn = h11.Connection(h11.SERVER)
    nursery.start_soon(Relay(env, proxy_end, conn, "test", None).run)
    client = Client(client_end)
    with trio.fail_after(5):
        return await client.get(b"http://site.test/", [(b"Host", b"site.test")])


async def test_an_upstream_proxys_407_is_a_502_saying_where_credentials_go(
    nursery: trio.Nursery,
) -> None:
    # Passed on, it lost its hop-by-hop challenge and the client could not answer it anyway.
    head, body = await through_proxy(
        nursery,
        b"HTTP/1.1 407 Proxy Authentication Required\r\n"
        b'Proxy-Authenticate: Basic realm="up"\r\nContent-Length: 0\r\n\r\n',
    )
    assert head.status_code == 502
    assert body == (
        b"the upstream proxy answered 407 Proxy Authentication Required; "
        b"put credentials in the --upstream-proxy URL\n"
    )


async def test_an_upstream_proxys_403_is_passed_on(nursery: trio.Nursery) -> None:
    # The twin: any other answer is the origin's or the proxy's to give the client.
    head, body = await through_proxy(
        nursery, b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\nno way"
    )
    assert (head.status_code, body) == (403, b"no way")


# --- found by a second side-by-side run against mitmdump ------------------------------------------


async def raw_exchange(nursery: trio.Nursery, request: bytes, reply: bytes) -> bytes:
    """Everything a raw client gets for ``request`` through a tunnel to an origin's ``reply``."""
    env = RelayEnv(Config(), ProxyThatAnswers(nursery, reply, absolute_form=False), Sink())
    client_end, proxy_end = trio.testing.memory_stream_pair()
    dest = Destination("site.test", 443, tls=True)

    async def serve() -> None:
        async with proxy_end:  # as the connection's owner does once the relay returns
            await Relay(env, proxy_end, h11.Connection(h11.SERVER), "test", dest).run()

    nursery.start_soon(serve)
    await client_end.send_all(request)
    await client_end.send_eof()  # no next request: the relay closes after this one
    with trio.fail_after(5):
        return await read_all(client_end)


EARLY_HINTS = (
    b"HTTP/1.1 103 Early Hints\r\nLink: </a.css>; rel=preload\r\n\r\n"
    b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok"
)


async def test_a_1xx_is_not_sent_to_an_http10_client(nursery: trio.Nursery) -> None:
    # We ask upstream in HTTP/1.1, so it may send a 103; a 1.0 client takes the first status
    # line for the answer (RFC 9110 §15.2 forbids sending it one).
    reply = await raw_exchange(nursery, b"GET / HTTP/1.0\r\nHost: site.test\r\n\r\n", EARLY_HINTS)
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert b"103" not in reply
    assert reply.endswith(b"\r\n\r\nok")


async def test_a_1xx_reaches_an_http11_client(nursery: trio.Nursery) -> None:
    reply = await raw_exchange(nursery, b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n", EARLY_HINTS)
    assert reply.startswith(b"HTTP/1.1 103 Early Hints\r\n")
    assert b"HTTP/1.1 200 OK\r\n" in reply
    assert reply.endswith(b"\r\n\r\nok")


async def test_an_http10_request_with_transfer_encoding_is_refused(nursery: trio.Nursery) -> None:
    # RFC 9112 §6.1: HTTP/1.0 has no Transfer-Encoding; a server behind us may frame it otherwise.
    reply = await raw_exchange(
        nursery,
        b"POST / HTTP/1.0\r\nHost: site.test\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4\r\nbody\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert reply.endswith(b"HTTP/1.0 request with Transfer-Encoding\n")


async def test_an_http10_request_with_content_length_is_relayed(nursery: trio.Nursery) -> None:
    reply = await raw_exchange(
        nursery,
        b"POST / HTTP/1.0\r\nHost: site.test\r\nContent-Length: 4\r\n\r\nbody",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    )
    assert reply.startswith(b"HTTP/1.1 200 ")
    assert reply.endswith(b"\r\n\r\nok")


async def test_a_body_that_breaks_after_its_head_reaches_the_client_as_far_as_it_got(
    nursery: trio.Nursery,
) -> None:
    # Head, one good chunk and a bad chunk size in one read: the head was still queued when the
    # body failed, and the client got nothing at all ("Empty reply from server").
    reply = await raw_exchange(
        nursery,
        b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 200 OK\r\n")
    assert reply.endswith(b"\r\n\r\n5\r\nhello\r\n")  # cut short: no last chunk


async def test_a_head_that_is_malformed_is_a_502_with_the_reason(nursery: trio.Nursery) -> None:
    # The twin: nothing was queued, so the client gets our 502.
    reply = await raw_exchange(
        nursery,
        b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nBad Header\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 502 ")
    assert b"malformed response from upstream" in reply


async def test_an_unasked_101_is_a_502_in_words(nursery: trio.Nursery) -> None:
    reply = await raw_exchange(
        nursery,
        b"GET / HTTP/1.1\r\nHost: site.test\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    )
    assert reply.startswith(b"HTTP/1.1 502 ")
    assert reply.endswith(b"upstream switched protocols without being asked\n")
