"""Between h11 heads and the flow API: building what hooks see, and what goes back on the wire."""

from __future__ import annotations

import h11
import pytest

from mitmlite.flow import Headers, Request, Response
from mitmlite.messages import (
    framed_for_body,
    framed_for_stream,
    has_body_framing,
    http_version,
    is_event_stream,
    request_from_head,
    request_head,
    response_from_head,
    response_has_body,
    response_head,
)


def test_request_from_head_keeps_fields_and_target() -> None:
    fields = [(b"Host", b"a.test"), (b"X-Dup", b"1"), (b"x-dup", b"2")]
    req = request_from_head(b"GET", ("https", "a.test", 8443), b"/p?q=1", fields, b"1.0")
    assert (req.method, req.scheme, req.host, req.port) == ("GET", "https", "a.test", 8443)
    assert req.path == "/p?q=1"
    assert req.http_version == "HTTP/1.0"
    assert req.headers.get_all("x-dup") == ["1", "2"]
    assert req.url == "https://a.test:8443/p?q=1"


def test_response_from_head_uses_the_given_fields() -> None:
    head = h11.Response(status_code=404, reason=b"Nope", headers=[(b"A", b"1")])
    resp = response_from_head(head, [(b"B", b"2")])
    assert (resp.status_code, resp.reason, resp.http_version) == (404, "Nope", "HTTP/1.1")
    assert list(resp.headers.items()) == [("B", "2")]


def test_http_version() -> None:
    assert http_version(b"1.1") == "HTTP/1.1"


@pytest.mark.parametrize(
    ("content_type", "expected"),
    [
        ("text/event-stream", True),
        ("Text/Event-Stream; charset=utf-8", True),
        ("text/html", False),
        ("", False),
    ],
)
def test_is_event_stream(content_type: str, expected: bool) -> None:
    resp = Response(status_code=200, headers=Headers({"content-type": content_type}))
    assert is_event_stream(resp) is expected


@pytest.mark.parametrize(
    ("method", "status", "expected"),
    [("GET", 200, True), ("HEAD", 200, False), ("GET", 204, False), ("GET", 304, False),
     ("get", 404, True), ("head", 500, False), ("GET", 101, False)],
)  # fmt: skip
def test_response_has_body(method: str, status: int, expected: bool) -> None:
    assert response_has_body(method, status) is expected


def test_framed_for_body_replaces_chunked_with_an_exact_length() -> None:
    headers = Headers([("Transfer-Encoding", "chunked"), ("X", "1")])
    assert framed_for_body(headers, b"hello", had_body=True) == [
        (b"X", b"1"),
        (b"Content-Length", b"5"),
    ]


def test_framed_for_body_leaves_a_bodyless_message_alone() -> None:
    # A GET without a body gains no "Content-Length: 0"; the twin above shows it is set otherwise.
    headers = Headers([("Host", "a.test")])
    assert framed_for_body(headers, b"", had_body=False) == [(b"Host", b"a.test")]
    assert framed_for_body(headers, b"", had_body=True)[-1] == (b"Content-Length", b"0")
    assert framed_for_body(headers, b"x", had_body=False)[-1] == (b"Content-Length", b"1")


def test_framed_for_stream_chunked_only_when_transformed() -> None:
    headers = Headers([("Content-Length", "10")])
    assert framed_for_stream(headers, transformed=False) == [(b"Content-Length", b"10")]
    assert framed_for_stream(headers, transformed=True) == [(b"Transfer-Encoding", b"chunked")]


def test_has_body_framing() -> None:
    assert has_body_framing([(b"content-length", b"1")])
    assert has_body_framing([(b"Transfer-Encoding", b"chunked")])
    assert not has_body_framing([(b"Host", b"x")])


def test_request_head_percent_encodes_what_a_script_wrote() -> None:
    req = Request(method="GET", scheme="http", host="a", port=80, path="/a b/ü?q=x y")
    head = request_head(req, [(b"Host", b"a")])
    assert head.target == b"/a%20b/%C3%BC?q=x%20y"
    assert request_head(Request("GET", "http", "a", 80, "no-slash"), [(b"Host", b"a")]).target == (
        b"/no-slash"
    )


def test_request_head_keeps_valid_escapes() -> None:
    req = Request(method="GET", scheme="http", host="a", port=80, path="/x%2Fy?q=%E9&r=a+b")
    assert request_head(req, [(b"Host", b"a")]).target == b"/x%2Fy?q=%E9&r=a+b"


def test_heads_refuse_what_cannot_go_on_the_wire() -> None:
    req = Request(method="GET", scheme="http", host="a", port=80, path="/")
    with pytest.raises(h11.LocalProtocolError):
        request_head(req, [(b"Host", b"a"), (b"X", b"line\r\nInjected: 1")])
    resp = Response(status_code=200, reason="OK")
    assert response_head(resp, []).reason == b"OK"
    with pytest.raises(ValueError, match="control characters"):
        response_head(Response(status_code=200, reason="bad\r\nreason"), [])
    assert response_head(Response(status_code=200, reason="Fine\tby me"), []).reason == (
        b"Fine\tby me"
    )
