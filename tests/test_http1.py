"""Tests for mitmlite.http1: request classification, hop-by-hop rules, error responses."""

from __future__ import annotations

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st

from mitmlite.errors import ClientError
from mitmlite.http1 import (
    HOP_BY_HOP,
    AbsoluteTarget,
    ConnectTarget,
    classify_request,
    error_response,
    header_block_size,
    is_upgrade_request,
    parse_host_port,
    percent_encode_request_line,
    protocol_error_text,
    reason_phrase,
    strip_hop_by_hop,
)

Headers = list[tuple[bytes, bytes]]

# --- CONNECT -------------------------------------------------------------------------------------

CONNECT_GOOD = [
    pytest.param(b"example.org:443", ConnectTarget("example.org", 443), id="name"),
    pytest.param(b"Example.ORG:443", ConnectTarget("example.org", 443), id="name-lowercased"),
    pytest.param(
        b"xn--bcher-kva.example:8443", ConnectTarget("xn--bcher-kva.example", 8443), id="punycode"
    ),
    pytest.param(b"192.0.2.7:443", ConnectTarget("192.0.2.7", 443), id="ipv4"),
    pytest.param(b"[::1]:443", ConnectTarget("::1", 443), id="ipv6"),
    pytest.param(b"[2001:DB8::1]:443", ConnectTarget("2001:db8::1", 443), id="ipv6-lowercased"),
    pytest.param(b"example.org:1", ConnectTarget("example.org", 1), id="port-1"),
    pytest.param(b"example.org:65535", ConnectTarget("example.org", 65535), id="port-65535"),
    pytest.param(b"example.org.:443", ConnectTarget("example.org.", 443), id="trailing-dot-kept"),
]

CONNECT_BAD = [
    pytest.param(b"example.org", "CONNECT target 'example.org' has no port", id="no-port"),
    pytest.param(b"example.org:", "port '' in CONNECT target", id="empty-port"),
    pytest.param(
        b"example.org:0", "port 0 in CONNECT target 'example.org:0' is outside 1-65535", id="port-0"
    ),
    pytest.param(
        b"x:65536", "port 65536 in CONNECT target 'x:65536' is outside 1-65535", id="port-65536"
    ),
    pytest.param(
        b"x:70000", "port 70000 in CONNECT target 'x:70000' is outside 1-65535", id="port-70000"
    ),
    pytest.param(b"x:" + b"9" * 5000, "is outside 1-65535", id="port-huge"),
    pytest.param(b"example.org:https", "port 'https' in CONNECT target", id="port-not-numeric"),
    pytest.param(b"example.org:-1", "is not a number", id="port-negative"),
    pytest.param(b":443", "has an empty host", id="empty-host"),
    pytest.param(b"user:pw@example.org:443", "contains userinfo", id="userinfo"),
    pytest.param(b"[::1:443", "unbalanced '['", id="ipv6-unbalanced"),
    pytest.param(b"[::1]443", "text after ']'", id="ipv6-junk-after-bracket"),
    pytest.param(b"[]:443", "invalid IPv6 address", id="ipv6-empty"),
    pytest.param(b"[::g]:443", "invalid IPv6 address", id="ipv6-bad-hex"),
    pytest.param(b"[1::2::3]:443", "invalid IPv6 address", id="ipv6-two-double-colons"),
    pytest.param(b"[fe80::1%25eth0]:443", "invalid IPv6 address", id="ipv6-zone-id"),
    pytest.param(b"::1:443", "IPv6 address must be in brackets", id="ipv6-unbracketed"),
    pytest.param(b"example.org:443/path", "is not host:port", id="path-after-port"),
    pytest.param(b"http://example.org:443", "is not host:port", id="absolute-form"),
    pytest.param(b"example .org:443", "not visible ASCII", id="space"),
    pytest.param(b"ex\xc3\xa4mple.org:443", "not visible ASCII", id="non-ascii"),
    pytest.param(b"ex%41mple.org:443", "character not allowed", id="percent-encoded"),
    pytest.param(b"a" * 254 + b":443", "254 characters, over 253", id="host-too-long"),
    pytest.param(b"", "request target is empty", id="empty"),
]


@pytest.mark.parametrize(("target", "expected"), CONNECT_GOOD)
def test_connect_target_is_parsed(target: bytes, expected: ConnectTarget) -> None:
    assert classify_request(b"CONNECT", target) == expected


@pytest.mark.parametrize(("target", "message"), CONNECT_BAD)
def test_connect_target_is_refused_with_reason(target: bytes, message: str) -> None:
    with pytest.raises(ClientError) as info:
        classify_request(b"CONNECT", target)
    assert message in str(info.value)
    assert info.value.status == 400
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("target", "authority"),
    [
        pytest.param(ConnectTarget("example.org", 443), "example.org:443", id="name"),
        pytest.param(ConnectTarget("::1", 8443), "[::1]:8443", id="ipv6-bracketed"),
    ],
)
def test_connect_authority(target: ConnectTarget, authority: str) -> None:
    assert target.authority == authority


def test_host_at_length_limit_is_accepted() -> None:
    host = "a" * 253
    assert classify_request(b"CONNECT", f"{host}:443".encode()) == ConnectTarget(host, 443)


def test_connect_method_is_case_sensitive() -> None:
    # RFC 9110 §9.1: "connect" is not CONNECT, so its authority-form target is not absolute-form.
    with pytest.raises(ClientError, match="not absolute-form"):
        classify_request(b"connect", b"example.org:443")


# --- absolute-form -------------------------------------------------------------------------------

ABSOLUTE_GOOD = [
    pytest.param(
        b"http://example.org/index.html",
        AbsoluteTarget("http", "example.org", 80, b"/index.html"),
        id="default-port",
    ),
    pytest.param(
        b"http://example.org:8080/a",
        AbsoluteTarget("http", "example.org", 8080, b"/a"),
        id="explicit-port",
    ),
    pytest.param(
        b"http://example.org/search?q=a%20b&x=%2F",
        AbsoluteTarget("http", "example.org", 80, b"/search?q=a%20b&x=%2F"),
        id="query-kept-verbatim",
    ),
    pytest.param(
        b"http://example.org", AbsoluteTarget("http", "example.org", 80, b"/"), id="empty-path"
    ),
    pytest.param(
        b"http://example.org?a=1",
        AbsoluteTarget("http", "example.org", 80, b"/?a=1"),
        id="query-no-path",
    ),
    pytest.param(
        b"HTTP://EXAMPLE.Org/A", AbsoluteTarget("http", "example.org", 80, b"/A"), id="uppercase"
    ),
    pytest.param(b"http://[::1]:8080/", AbsoluteTarget("http", "::1", 8080, b"/"), id="ipv6"),
    pytest.param(b"http://127.0.0.1/", AbsoluteTarget("http", "127.0.0.1", 80, b"/"), id="ipv4"),
]

ABSOLUTE_BAD = [
    pytest.param(b"https://example.org/", "use CONNECT for https", id="https"),
    pytest.param(b"HTTPS://example.org/", "use CONNECT for https", id="https-uppercase"),
    pytest.param(b"ftp://example.org/", "scheme 'ftp' is not supported", id="ftp"),
    pytest.param(
        b"/",
        "origin-form request 'GET /' sent to a proxy; this is mitmlite, a forward proxy: "
        "send absolute-form (http://host/path) or CONNECT",
        id="origin-form",
    ),
    pytest.param(b"*", "asterisk-form request 'GET *'", id="asterisk"),
    pytest.param(b"example.org:80", "not absolute-form", id="authority-form"),
    pytest.param(b"http:example.org", "not absolute-form", id="no-slashes"),
    pytest.param(b"://example.org/", "not absolute-form", id="no-scheme"),
    pytest.param(b"http:///path", "URL authority is empty: no host", id="no-host"),
    pytest.param(b"http://:8080/", "has an empty host", id="port-no-host"),
    pytest.param(b"http://example.org:0/", "port 0 in URL authority", id="port-0"),
    pytest.param(b"http://example.org:99999/", "outside 1-65535", id="port-too-big"),
    pytest.param(b"http://example.org:/", "is not a number", id="port-empty"),
    pytest.param(b"http://user:pw@example.org/", "contains userinfo", id="userinfo"),
    pytest.param(b"http://exa mple.org/", "not visible ASCII", id="space"),
]


@pytest.mark.parametrize(
    ("target", "path"),
    [(b"http://example.org/a?b#top", b"/a?b"), (b"http://example.org#top", b"/")],
    ids=["path-and-query", "bare"],
)
def test_a_fragment_is_dropped_from_an_absolute_target(target: bytes, path: bytes) -> None:
    # Clients should not send one (RFC 9112 §3.2.2) but do; it is no concern of the server's.
    assert classify_request(b"GET", target) == AbsoluteTarget("http", "example.org", 80, path)


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        pytest.param(
            "GET /search?q=ü HTTP/1.1\r\nHost: a\r\n\r\n".encode(),
            b"GET /search?q=%C3%BC HTTP/1.1\r\nHost: a\r\n\r\n",
            id="query",
        ),
        pytest.param(
            "GET http://a/ü HTTP/1.1\r\nX: é\r\n".encode(),
            "GET http://a/%C3%BC HTTP/1.1\r\nX: é\r\n".encode(),
            id="header-values-kept",
        ),
        pytest.param("GET /ü".encode(), b"GET /%C3%BC", id="line-not-ended-yet"),
        pytest.param(
            b"GET /a HTTP/1.1\r\nX: \xe9\r\n", b"GET /a HTTP/1.1\r\nX: \xe9\r\n", id="ascii-line"
        ),
    ],
)
def test_percent_encode_request_line(head: bytes, expected: bytes) -> None:
    assert percent_encode_request_line(head) == expected


@pytest.mark.parametrize(("target", "expected"), ABSOLUTE_GOOD)
def test_absolute_target_is_parsed(target: bytes, expected: AbsoluteTarget) -> None:
    assert classify_request(b"GET", target) == expected


@pytest.mark.parametrize(("target", "message"), ABSOLUTE_BAD)
def test_absolute_target_is_refused_with_reason(target: bytes, message: str) -> None:
    with pytest.raises(ClientError) as info:
        classify_request(b"GET", target)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("target", "authority", "host_header", "url"),
    [
        pytest.param(
            AbsoluteTarget("http", "example.org", 80, b"/a?b"),
            "example.org:80",
            b"example.org",
            "http://example.org/a?b",
            id="default-port-omitted-in-host",
        ),
        pytest.param(
            AbsoluteTarget("http", "::1", 8080, b"/"),
            "[::1]:8080",
            b"[::1]:8080",
            "http://[::1]:8080/",
            id="ipv6-other-port",
        ),
    ],
)
def test_absolute_target_views(
    target: AbsoluteTarget, authority: str, host_header: bytes, url: str
) -> None:
    assert (target.authority, target.host_header, target.url) == (authority, host_header, url)


@pytest.mark.parametrize(
    ("authority", "default_port", "expected"),
    [
        pytest.param("example.org", 80, ("example.org", 80), id="default"),
        pytest.param("example.org:81", 80, ("example.org", 81), id="explicit"),
        pytest.param("[::1]", 80, ("::1", 80), id="ipv6-default"),
    ],
)
def test_parse_host_port(authority: str, default_port: int, expected: tuple[str, int]) -> None:
    assert parse_host_port(authority, default_port) == expected


def test_parse_host_port_without_default_requires_port() -> None:
    with pytest.raises(ClientError) as info:
        parse_host_port("example.org", None, what="upstream")
    assert str(info.value) == "upstream 'example.org' has no port"


# Arbitrary bytes exercise the byte check; the regex reaches the authority and port parsers.
_FUZZ_TARGETS = st.binary() | st.from_regex(
    rb"\A(?:[hH][tT]{2}[pP][sS]?://)?[\[\]:@/?#%.a-zA-Z0-9-]{0,40}\Z"
)


@given(
    method=st.sampled_from([b"CONNECT", b"GET", b"connect"]) | st.binary(max_size=8),
    target=_FUZZ_TARGETS,
)
def test_classify_request_only_raises_client_error(method: bytes, target: bytes) -> None:
    try:
        result = classify_request(method, target)
    except ClientError as exc:
        message = str(exc)
        result = None
    else:
        message = ""
    assert "\n" not in message
    assert result is None or 1 <= result.port <= 65535


@given(
    host=st.from_regex(r"\A[a-z0-9][a-z0-9.-]{0,30}\Z"),
    port=st.integers(1, 65535),
    path=st.from_regex(r"\A(/[a-zA-Z0-9._~%!$&'()*+,;=:@-]*)*(\?[a-zA-Z0-9/?=&%-]*)?\Z"),
)
def test_absolute_target_round_trips(host: str, port: int, path: str) -> None:
    target = classify_request(b"GET", f"http://{host}:{port}{path}".encode())
    assert isinstance(target, AbsoluteTarget)
    assert (target.host, target.port) == (host, port)
    assert target.path.startswith(b"/")
    assert target.path.lstrip(b"/") == path.encode().lstrip(b"/")


# --- hop-by-hop ----------------------------------------------------------------------------------


def test_hop_by_hop_names_are_lowercase() -> None:
    assert all(name == name.lower() for name in HOP_BY_HOP)
    assert b"transfer-encoding" in HOP_BY_HOP
    assert b"content-length" not in HOP_BY_HOP


STRIP_CASES = [
    pytest.param(
        [
            (b"Host", b"example.org"),
            (b"Set-Cookie", b"a=1"),
            (b"X-Trace", b"1"),
            (b"Set-Cookie", b"b=2"),
            (b"content-TYPE", b"text/html"),
        ],
        [
            (b"Host", b"example.org"),
            (b"Set-Cookie", b"a=1"),
            (b"X-Trace", b"1"),
            (b"Set-Cookie", b"b=2"),
            (b"content-TYPE", b"text/html"),
        ],
        id="end-to-end-kept-in-order-case-duplicates",
    ),
    pytest.param(
        [
            (b"Host", b"h"),
            (b"Connection", b"keep-alive"),
            (b"Keep-Alive", b"timeout=5"),
            (b"Proxy-Connection", b"keep-alive"),
            (b"Proxy-Authorization", b"Basic eDp5"),
            (b"Proxy-Authenticate", b"Basic"),
            (b"TE", b"trailers"),
            (b"Trailer", b"X-Checksum"),
            (b"Upgrade", b"websocket"),
            (b"Accept", b"*/*"),
        ],
        [(b"Host", b"h"), (b"Accept", b"*/*")],
        id="fixed-hop-by-hop-dropped",
    ),
    pytest.param(
        [(b"Connection", b"close"), (b"Host", b"h")],
        [(b"Host", b"h")],
        id="connection-close-dropped",
    ),
    pytest.param(
        [
            (b"X-Secret", b"1"),
            (b"connection", b"X-SECRET,  x-other ,,\tX-Third"),
            (b"X-Other", b"2"),
            (b"Connection", b"x-fourth"),
            (b"x-third", b"3"),
            (b"X-Fourth", b"4"),
            (b"X-Kept", b"5"),
        ],
        [(b"X-Kept", b"5")],
        id="named-in-connection-case-whitespace-several-headers",
    ),
    pytest.param(
        [
            (b"Connection", b"content-length, transfer-encoding"),
            (b"Transfer-Encoding", b"chunked"),
            (b"Content-Length", b"3"),
        ],
        [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")],
        id="framing-survives-connection-option",
    ),
]


@pytest.mark.parametrize(("headers", "expected"), STRIP_CASES)
def test_strip_hop_by_hop(headers: Headers, expected: Headers) -> None:
    assert strip_hop_by_hop(headers) == expected


@pytest.mark.parametrize(
    ("keep_framing", "expected"),
    [
        pytest.param(
            True, [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")], id="kept"
        ),
        pytest.param(False, [], id="dropped-for-reframing"),
    ],
)
def test_strip_hop_by_hop_framing(keep_framing: bool, expected: Headers) -> None:
    headers = [(b"Transfer-Encoding", b"chunked"), (b"Content-Length", b"3")]
    assert strip_hop_by_hop(headers, keep_framing=keep_framing) == expected


UPGRADE_HEADERS = [
    (b"Host", b"h"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"Keep-Alive", b"timeout=5"),
    (b"Upgrade", b"websocket"),
    (b"Connection", b"upgrade"),
    (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
]


@pytest.mark.parametrize(
    ("headers", "keep_upgrade", "expected"),
    [
        pytest.param(
            UPGRADE_HEADERS,
            True,
            [
                (b"Host", b"h"),
                (b"connection", b"upgrade"),
                (b"Upgrade", b"websocket"),
                (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            ],
            id="kept-once-with-original-case",
        ),
        pytest.param(
            UPGRADE_HEADERS,
            False,
            [(b"Host", b"h"), (b"Sec-WebSocket-Key", b"dGhlIHNhbXBsZSBub25jZQ==")],
            id="dropped-without-keep-upgrade",
        ),
        pytest.param(
            [(b"Upgrade", b"websocket"), (b"Connection", b"close")],
            True,
            [],
            id="upgrade-without-connection-option-dropped",
        ),
    ],
)
def test_strip_hop_by_hop_upgrade(headers: Headers, keep_upgrade: bool, expected: Headers) -> None:
    assert strip_hop_by_hop(headers, keep_upgrade=keep_upgrade) == expected


def test_strip_hop_by_hop_accepts_h11_headers() -> None:
    request = h11.Request(
        method="GET",
        target="/",
        headers=[("Host", "h"), ("Connection", "X-A"), ("X-A", "1"), ("X-B", "2")],
    )
    assert strip_hop_by_hop(request.headers) == [(b"host", b"h"), (b"x-b", b"2")]


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        pytest.param([(b"Connection", b"Upgrade"), (b"Upgrade", b"websocket")], True, id="upgrade"),
        pytest.param(
            [(b"Connection", b"keep-alive,upgrade"), (b"upgrade", b"h2c")], True, id="list"
        ),
        pytest.param([(b"Upgrade", b"websocket")], False, id="no-connection-option"),
        pytest.param([(b"Connection", b"upgrade")], False, id="no-upgrade-header"),
        pytest.param([(b"Connection", b"upgrade"), (b"Upgrade", b" ")], False, id="empty-upgrade"),
        pytest.param(
            [(b"Connection", b"upgraded"), (b"Upgrade", b"x")], False, id="token-not-substring"
        ),
    ],
)
def test_is_upgrade_request(headers: Headers, expected: bool) -> None:
    assert is_upgrade_request(headers) is expected


# --- error responses -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "body"),
    [
        pytest.param(
            "CONNECT target 'x' has no port", b"CONNECT target 'x' has no port\n", id="plain"
        ),
        pytest.param("caf\u00e9 unreachable", "caf\u00e9 unreachable\n".encode(), id="utf-8"),
        pytest.param(
            "bad\r\nSet-Cookie: pwned=1\r\n\r\n<script>",
            b"bad  Set-Cookie: pwned=1    <script>\n",
            id="crlf-injection-flattened",
        ),
        pytest.param("a\x00b\x85c\u2028d", b"a b c d\n", id="other-line-breaks"),
    ],
)
def test_error_response_body_is_one_line(reason: str, body: bytes) -> None:
    headers, actual = error_response(502, reason)
    assert actual == body
    assert actual.count(b"\n") == 1
    assert dict(headers)[b"Content-Length"] == str(len(body)).encode()


def test_error_response_headers() -> None:
    headers, _ = error_response(400, "x")
    assert headers == [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", b"2"),
        (b"Connection", b"close"),
    ]


def test_error_response_is_sendable_with_h11() -> None:
    headers, body = error_response(431, "request header block exceeds 64 KiB")
    server = h11.Connection(h11.SERVER)
    server.receive_data(b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n")
    assert isinstance(server.next_event(), h11.Request)
    data = server.send(h11.Response(status_code=431, headers=headers, reason=reason_phrase(431)))
    assert data is not None
    assert data.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert server.send(h11.Data(data=body)) == body


@pytest.mark.parametrize(
    ("status", "phrase"),
    [
        pytest.param(502, b"Bad Gateway", id="known"),
        pytest.param(431, b"Request Header Fields Too Large", id="431"),
        pytest.param(599, b"", id="unknown"),
    ],
)
def test_reason_phrase(status: int, phrase: bytes) -> None:
    assert reason_phrase(status) == phrase


@pytest.mark.parametrize(
    ("headers", "size"),
    [
        pytest.param([], 0, id="empty"),
        pytest.param([(b"Host", b"example.org")], len(b"Host: example.org\r\n"), id="one"),
        pytest.param([(b"A", b"1"), (b"B", b"")], len(b"A: 1\r\nB: \r\n"), id="two"),
    ],
)
def test_header_block_size(headers: Headers, size: int) -> None:
    assert header_block_size(headers) == size


@pytest.mark.parametrize(
    ("method", "target", "path"),
    [
        (b"OPTIONS", b"http://example.org", b"*"),  # RFC 9112 §3.2.4: about the server itself
        (b"OPTIONS", b"http://example.org:8080", b"*"),
        (b"OPTIONS", b"http://example.org/", b"/"),  # the twins: a path or query is a resource
        (b"OPTIONS", b"http://example.org?a=1", b"/?a=1"),
        (b"GET", b"http://example.org", b"/"),
    ],
)
def test_options_without_a_path_is_sent_in_asterisk_form(
    method: bytes, target: bytes, path: bytes
) -> None:
    classified = classify_request(method, target)
    assert isinstance(classified, AbsoluteTarget)
    assert classified.path == path
    assert classified.url.startswith("http://example.org")
    assert "*" not in classified.url


@pytest.mark.parametrize(
    ("head", "expected"),
    [
        (b"GET / HTTP/1.1\r\nX-Bad : v\r\n\r\n", "illegal header line: 'X-Bad : v'"),
        (b"\x00\x01garbage\r\n\r\n", "illegal request line: '\\x00\\x01garbage'"),
    ],
)
def test_protocol_error_text_shows_the_bytes_not_a_python_repr(head: bytes, expected: str) -> None:
    conn = h11.Connection(h11.SERVER)
    conn.receive_data(head)
    with pytest.raises(h11.RemoteProtocolError) as info:
        conn.next_event()
    assert "bytearray" in str(info.value)  # what h11 says, for contrast
    assert protocol_error_text(info.value) == expected


def test_protocol_error_text_leaves_other_messages_alone() -> None:
    assert protocol_error_text(ValueError("Receive buffer too long")) == "Receive buffer too long"
