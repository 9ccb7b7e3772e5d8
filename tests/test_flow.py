"""Tests for mitmlite.flow: the hook-script API (Headers, Query, Request, Response, Flow).

Behaviour follows what a mitmproxy user expects from ``flow.request.headers``, ``.content``,
``.text``, ``.query``, ``.url`` and ``Response.make``. Encoded bodies are built and checked with
the codec libraries directly, not with mitmlite.encoding, so the two cannot agree on a mistake.
"""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable

import brotli  # type: ignore[import-untyped]  # no type stubs
import pytest
import zstandard

from mitmlite.encoding import EncodingError
from mitmlite.errors import MitmliteError
from mitmlite.flow import (
    ClientInfo,
    Flow,
    FlowRecord,
    Headers,
    Request,
    Response,
    ServerInfo,
    Timestamps,
)

BODY = b"<p>SEED Labs: " + "caf\u00e9 \u2603 ".encode() * 200 + b"</p>"


def request(
    url_path: str = "/",
    *,
    scheme: str = "http",
    host: str = "example.org",
    port: int = 80,
    headers: Headers | None = None,
) -> Request:
    return Request(
        method="GET",
        scheme=scheme,
        host=host,
        port=port,
        path=url_path,
        headers=headers if headers is not None else Headers([("Host", host)]),
    )


def response(raw: bytes | None, **fields: str) -> Response:
    headers = Headers([(name.replace("_", "-"), value) for name, value in fields.items()])
    return Response(status_code=200, headers=headers, raw_content=raw)


# Independent encoders and decoders for each coding, stacked in the order they are applied.
Codec = tuple[Callable[[bytes], bytes], Callable[[bytes], bytes]]
CODECS: dict[str, Codec] = {
    "gzip": (gzip.compress, gzip.decompress),
    "x-gzip": (gzip.compress, gzip.decompress),
    "deflate": (zlib.compress, zlib.decompress),
    "br": (brotli.compress, brotli.decompress),
    "zstd": (
        zstandard.ZstdCompressor().compress,
        lambda data: zstandard.ZstdDecompressor().decompressobj().decompress(data),
    ),
}


def oracle_encode(data: bytes, codings: str) -> bytes:
    for coding in (c.strip() for c in codings.split(",")):
        if coding != "identity":
            data = CODECS[coding][0](data)
    return data


def oracle_decode(data: bytes, codings: str) -> bytes:
    for coding in reversed([c.strip() for c in codings.split(",")]):
        if coding != "identity":
            data = CODECS[coding][1](data)
    return data


# --- Headers ---------------------------------------------------------------------------------


def test_headers_lookup_ignores_case() -> None:
    headers = Headers([("Content-Type", "text/html")])
    assert headers["content-type"] == "text/html"
    assert headers["CONTENT-TYPE"] == "text/html"
    assert "content-TYPE" in headers
    raw_name: object = b"content-type"  # bytes work too, as on the wire
    assert raw_name in headers


def test_headers_missing_name_raises_key_error() -> None:
    headers = Headers([("Content-Type", "text/html")])
    with pytest.raises(KeyError, match="Content-Length"):
        headers["Content-Length"]
    assert headers.get("content-length") is None
    assert headers.get("content-length", "0") == "0"
    assert "content-length" not in headers
    assert headers.get_all("content-length") == []


def test_headers_containment_of_non_names_is_false() -> None:
    headers = Headers([("X", "1")])
    not_names: list[object] = [1, None, ("X",)]
    assert all(name not in headers for name in not_names)


def test_headers_name_latin1_cannot_encode_is_simply_absent() -> None:
    # Such a name can never be on the wire, so lookups keep the Mapping contract.
    headers = Headers([("X", "1")])
    assert headers.get("X-\u20ac") is None
    assert "X-\u20ac" not in headers
    with pytest.raises(KeyError):
        headers["X-\u20ac"]


def test_headers_value_latin1_cannot_encode_is_refused() -> None:
    headers = Headers()
    with pytest.raises(UnicodeEncodeError):
        headers["X-Price"] = "5 \u20ac"
    assert headers.fields == []


def test_headers_init_from_mapping_list_and_bytes() -> None:
    from_mapping = Headers({"Host": "a.test", "Accept": "*/*"})
    from_list = Headers([("Host", "a.test"), ("Accept", "*/*")])
    from_bytes = Headers([(b"Host", b"a.test"), (b"Accept", b"*/*")])
    expected = [(b"Host", b"a.test"), (b"Accept", b"*/*")]
    assert from_mapping.fields == from_list.fields == from_bytes.fields == expected
    assert Headers().fields == []
    assert len(Headers()) == 0


def test_headers_duplicates_are_kept_in_order() -> None:
    headers = Headers(
        [("Set-Cookie", "a=1; Path=/"), ("Content-Type", "text/plain"), ("set-cookie", "b=2")]
    )
    assert headers.get_all("set-cookie") == ["a=1; Path=/", "b=2"]
    # Joined with ", " for a single-value view, as mitmproxy does; get_all is the way to split.
    assert headers["Set-Cookie"] == "a=1; Path=/, b=2"
    assert len(headers) == 2
    assert list(headers) == ["Set-Cookie", "Content-Type"]
    assert len(headers.fields) == 3


def test_headers_add_appends_a_duplicate() -> None:
    headers = Headers([("Set-Cookie", "a=1"), ("Server", "x")])
    headers.add("Set-Cookie", "b=2")
    assert headers.fields == [(b"Set-Cookie", b"a=1"), (b"Server", b"x"), (b"Set-Cookie", b"b=2")]
    assert headers.get_all("set-cookie") == ["a=1", "b=2"]


def test_headers_add_keeps_the_name_case_given() -> None:
    headers = Headers()
    headers.add("X-Request-ID", "7")
    assert headers.fields == [(b"X-Request-ID", b"7")]


def test_headers_set_all_replaces_every_duplicate_at_the_first_position() -> None:
    headers = Headers(
        [("Date", "d"), ("Set-Cookie", "a=1"), ("Server", "s"), ("Set-Cookie", "b=2"), ("Via", "v")]
    )
    headers.set_all("set-cookie", ["x=1", "y=2"])
    assert headers.fields == [
        (b"Date", b"d"),
        (b"Set-Cookie", b"x=1"),
        (b"Set-Cookie", b"y=2"),
        (b"Server", b"s"),
        (b"Via", b"v"),
    ]


def test_headers_set_all_of_a_new_name_appends() -> None:
    headers = Headers([("Date", "d")])
    headers.set_all("Set-Cookie", ["a=1", "b=2"])
    assert headers.fields == [(b"Date", b"d"), (b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]


def test_headers_set_all_empty_removes_the_name() -> None:
    headers = Headers([("Set-Cookie", "a=1"), ("Date", "d"), ("Set-Cookie", "b=2")])
    headers.set_all("SET-COOKIE", [])
    assert headers.fields == [(b"Date", b"d")]
    headers.set_all("X-Absent", [])
    assert headers.fields == [(b"Date", b"d")]


def test_headers_set_keeps_the_original_name_case_and_position() -> None:
    headers = Headers([("Host", "a"), ("Content-Type", "text/plain"), ("Accept", "*/*")])
    headers["content-type"] = "application/json"
    assert headers.fields == [
        (b"Host", b"a"),
        (b"Content-Type", b"application/json"),
        (b"Accept", b"*/*"),
    ]


def test_headers_set_of_a_new_name_keeps_its_case_and_appends() -> None:
    headers = Headers([("Host", "a")])
    headers["X-CamelCase-ID"] = "1"
    assert headers.fields == [(b"Host", b"a"), (b"X-CamelCase-ID", b"1")]


def test_headers_set_replaces_duplicates_with_one_field() -> None:
    headers = Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    headers["Set-Cookie"] = "c=3"
    assert headers.fields == [(b"Set-Cookie", b"c=3")]


def test_headers_del_removes_every_duplicate() -> None:
    headers = Headers([("Set-Cookie", "a=1"), ("Date", "d"), ("set-cookie", "b=2")])
    del headers["SET-COOKIE"]
    assert headers.fields == [(b"Date", b"d")]


def test_headers_del_of_a_missing_name_raises_key_error() -> None:
    headers = Headers([("Date", "d")])
    with pytest.raises(KeyError):
        del headers["Set-Cookie"]
    assert headers.fields == [(b"Date", b"d")]


def test_headers_pop_and_setdefault_follow_mapping_rules() -> None:
    headers = Headers([("Date", "d")])
    assert headers.setdefault("date", "other") == "d"
    assert headers.setdefault("Server", "mitmlite") == "mitmlite"
    assert headers.pop("DATE") == "d"
    assert headers.pop("date", None) is None
    assert headers.fields == [(b"Server", b"mitmlite")]


def test_headers_obs_text_bytes_round_trip() -> None:
    # RFC 9110 §5.5: obs-text (0x80-0xFF) is allowed in values; latin-1 maps each byte to a char.
    raw = b"caf\xe9 \xff\x80"
    headers = Headers([(b"X-Name", raw)])
    assert headers["x-name"] == "caf\u00e9 \u00ff\u0080"
    headers["X-Name"] = headers["X-Name"]
    assert headers.fields == [(b"X-Name", raw)]
    headers.add("X-Other", "\u00e9")
    assert headers.fields[-1] == (b"X-Other", b"\xe9")


def test_headers_bytes_values_are_stored_as_given() -> None:
    headers = Headers()
    headers["X-Raw"] = b"\xfe\x01"  # type: ignore[assignment]  # bytes accepted at runtime
    assert headers.fields == [(b"X-Raw", b"\xfe\x01")]
    assert headers["x-raw"] == "\u00fe\u0001"


def test_headers_copy_keeps_duplicates_and_is_independent() -> None:
    original = Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    copy = Headers(original)
    assert copy.fields == original.fields
    copy.add("Set-Cookie", "c=3")
    assert original.get_all("set-cookie") == ["a=1", "b=2"]


def test_headers_repr_shows_every_field() -> None:
    headers = Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    assert repr(headers) == "Headers([('Set-Cookie', 'a=1'), ('Set-Cookie', 'b=2')])"


# --- Query -----------------------------------------------------------------------------------


def test_query_reads_an_ordered_multidict() -> None:
    req = request("/search?q=a+b&tag=x&empty=&tag=y&enc=%2F%26")
    assert req.query.fields == [
        ("q", "a b"),
        ("tag", "x"),
        ("empty", ""),
        ("tag", "y"),
        ("enc", "/&"),
    ]
    assert req.query["tag"] == "x"  # the first value, as mitmproxy's query does
    assert req.query.get_all("tag") == ["x", "y"]
    assert list(req.query) == ["q", "tag", "empty", "enc"]
    assert len(req.query) == 4


def test_query_missing_name_raises_key_error() -> None:
    req = request("/search?q=a")
    with pytest.raises(KeyError):
        req.query["page"]
    assert req.query.get("page") is None
    assert "page" not in req.query
    with pytest.raises(KeyError):
        del req.query["page"]
    assert req.path == "/search?q=a"


def test_query_without_a_query_string_is_empty() -> None:
    req = request("/index.html")
    assert req.query.fields == []
    assert len(req.query) == 0


def test_query_edit_keeps_order_and_reencodes() -> None:
    req = request("/search?q=cybersecurity&page=2&lang=en")
    req.query["q"] = "SEED Labs"
    assert req.path == "/search?q=SEED+Labs&page=2&lang=en"
    assert req.url == "http://example.org/search?q=SEED+Labs&page=2&lang=en"
    assert req.query["q"] == "SEED Labs"


def test_query_values_with_reserved_and_unicode_characters_are_escaped() -> None:
    req = request("/p")
    req.query["k"] = "a&b=c/d?\u00e9"
    assert req.path == "/p?k=a%26b%3Dc%2Fd%3F%C3%A9"
    assert req.query["k"] == "a&b=c/d?\u00e9"


def test_query_add_appends_a_duplicate() -> None:
    req = request("/p?tag=x&q=1")
    req.query.add("tag", "y")
    assert req.path == "/p?tag=x&q=1&tag=y"


def test_query_add_to_a_path_without_a_query() -> None:
    req = request("/p")
    req.query.add("a", "1")
    assert req.path == "/p?a=1"


def test_query_set_all_replaces_at_the_first_position() -> None:
    req = request("/p?a=1&tag=x&b=2&tag=y")
    req.query.set_all("tag", ["m", "n"])
    assert req.path == "/p?a=1&tag=m&tag=n&b=2"


def test_query_set_of_a_new_name_appends() -> None:
    req = request("/p?a=1")
    req.query["b"] = "2"
    assert req.path == "/p?a=1&b=2"


def test_query_del_removes_every_value_and_the_last_drops_the_question_mark() -> None:
    req = request("/p?tag=x&a=1&tag=y")
    del req.query["tag"]
    assert req.path == "/p?a=1"
    del req.query["a"]
    assert req.path == "/p"


def test_query_assignment_from_mapping_and_pairs() -> None:
    req = request("/p?old=1")
    req.query = {"a": "1", "b": "x y"}
    assert req.path == "/p?a=1&b=x+y"
    req.query = [("t", "1"), ("t", "2")]
    assert req.path == "/p?t=1&t=2"
    req.query = []
    assert req.path == "/p"


def test_query_edit_keeps_a_non_utf8_escape_of_another_field() -> None:
    # %E9 is latin-1 é, not UTF-8: editing "a" must not turn it into U+FFFD (%EF%BF%BD).
    req = request("/p?q=%E9t%E9&a=1")
    req.query["a"] = "2"
    assert req.path == "/p?q=%E9t%E9&a=2"


def test_query_view_is_live() -> None:
    req = request("/p?a=1")
    query = req.query
    req.path = "/other?b=2"
    assert query.fields == [("b", "2")]


# --- Request: url, authority ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scheme", "host", "port", "authority"),
    [
        ("http", "example.org", 80, "example.org"),
        ("https", "example.org", 443, "example.org"),
        ("http", "example.org", 443, "example.org:443"),
        ("https", "example.org", 80, "example.org:80"),
        ("https", "example.org", 8443, "example.org:8443"),
        ("https", "::1", 443, "[::1]"),
        ("http", "2001:db8::1", 8080, "[2001:db8::1]:8080"),
        ("http", "127.0.0.1", 8080, "127.0.0.1:8080"),
    ],
)
def test_authority_omits_default_ports_and_brackets_ipv6(
    scheme: str, host: str, port: int, authority: str
) -> None:
    req = request("/x?y=1", scheme=scheme, host=host, port=port)
    assert req.authority == authority
    assert req.url == f"{scheme}://{authority}/x?y=1"
    assert req.pretty_url == req.url


def test_url_setter_http_to_https() -> None:
    req = request("/old", host="example.org")
    req.url = "https://secure.example.org/new/path?a=1"
    assert (req.scheme, req.host, req.port, req.path) == (
        "https",
        "secure.example.org",
        443,
        "/new/path?a=1",
    )
    assert req.headers.fields == [(b"Host", b"secure.example.org")]
    assert req.url == "https://secure.example.org/new/path?a=1"


def test_url_setter_changes_port_and_host_header() -> None:
    req = request("/", host="example.org")
    req.url = "http://example.org:8080/x"
    assert req.port == 8080
    assert req.headers["Host"] == "example.org:8080"
    req.url = "http://example.org/x"
    assert req.port == 80
    assert req.headers["Host"] == "example.org"
    req.url = "https://example.org:80/x"
    assert (req.scheme, req.port) == ("https", 80)
    assert req.headers["Host"] == "example.org:80"


def test_url_setter_ipv6() -> None:
    req = request("/")
    req.url = "https://[2001:db8::1]:8443/p?q=1"
    assert (req.host, req.port, req.path) == ("2001:db8::1", 8443, "/p?q=1")
    assert req.authority == "[2001:db8::1]:8443"
    assert req.headers["host"] == "[2001:db8::1]:8443"
    assert req.url == "https://[2001:db8::1]:8443/p?q=1"


def test_url_setter_keeps_the_host_header_name_case() -> None:
    req = request("/", headers=Headers([("HOST", "a"), ("Accept", "*/*")]))
    req.url = "http://b.test/"
    assert req.headers.fields == [(b"HOST", b"b.test"), (b"Accept", b"*/*")]


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("http://example.com", "/"),
        ("http://example.com?a=1", "/?a=1"),
        ("http://example.com/a#fragment", "/a"),
        ("http://user:secret@example.com/a", "/a"),
    ],
)
def test_url_setter_path_forms(url: str, path: str) -> None:
    req = request("/old")
    req.url = url
    assert req.host == "example.com"
    assert req.path == path
    assert req.headers["host"] == "example.com"


def test_url_setter_lowercases_the_host() -> None:
    req = request("/")
    req.url = "HTTPS://Example.COM/Path"
    assert (req.scheme, req.host, req.path) == ("https", "example.com", "/Path")


@pytest.mark.parametrize(
    "url",
    [
        "",
        "/relative/path",
        "example.org/path",
        "ftp://example.org/file",
        "ws://example.org/",
        "http:///no-host",
        "http://[::1/",  # unclosed IPv6 bracket
        "http://example.org:99999/",
        "http://example.org:http/",
        "http://example.org:0/",
    ],
)
def test_url_setter_refuses_a_bad_url_and_changes_nothing(url: str) -> None:
    req = request("/keep?x=1", scheme="https", host="a.test", port=8443)
    with pytest.raises(MitmliteError, match=r"cannot set request\.url"):
        req.url = url
    assert req.url == "https://a.test:8443/keep?x=1"
    assert req.headers.fields == [(b"Host", b"a.test")]


# --- bodies: content, text, json ----------------------------------------------------------------


def test_identity_content_is_the_raw_body() -> None:
    msg = response(b"hello")
    assert msg.content == b"hello"
    msg.content = b"goodbye!"
    assert msg.raw_content == b"goodbye!"
    assert msg.headers["Content-Length"] == "8"


def test_explicit_identity_coding_passes_through() -> None:
    msg = response(b"hello", Content_Encoding="identity")
    assert msg.content == b"hello"
    msg.content = b"bye"
    assert msg.raw_content == b"bye"
    assert msg.headers["content-encoding"] == "identity"


def test_no_body_is_none_and_setting_none_removes_it() -> None:
    msg = response(None, Content_Encoding="gzip")
    assert msg.content is None
    assert msg.text is None
    for clear in ("content", "text"):
        msg = response(b"x")
        setattr(msg, clear, None)
        assert msg.raw_content is None


@pytest.mark.parametrize("codings", ["gzip", "x-gzip", "deflate", "br", "zstd", "gzip, br"])
def test_encoded_content_round_trip(codings: str) -> None:
    msg = response(oracle_encode(BODY, codings), Content_Encoding=codings)
    assert msg.content == BODY
    new = b"<p>rewritten by a hook</p>" * 50
    msg.content = new
    assert msg.raw_content is not None
    assert msg.raw_content != new
    assert oracle_decode(msg.raw_content, codings) == new
    assert msg.headers["Content-Encoding"] == codings
    assert msg.headers["Content-Length"] == str(len(msg.raw_content))
    assert msg.content == new


def test_coding_names_are_case_insensitive() -> None:
    msg = response(gzip.compress(BODY), Content_Encoding="GZip")
    assert msg.content == BODY


def test_stacked_codings_across_two_header_fields() -> None:
    # RFC 9110 §5.3: two Content-Encoding fields mean the same as one comma-separated field.
    msg = response(brotli.compress(gzip.compress(BODY)))
    msg.headers.add("Content-Encoding", "gzip")
    msg.headers.add("Content-Encoding", "br")
    assert msg.content == BODY


def test_setting_content_fixes_length_and_drops_transfer_encoding() -> None:
    msg = response(b"5\r\nhello\r\n0\r\n\r\n", Transfer_Encoding="chunked", Server="x")
    msg.content = b"hello"
    assert "transfer-encoding" not in msg.headers
    assert msg.headers.fields == [(b"Server", b"x"), (b"content-length", b"5")]


def test_setting_content_replaces_a_wrong_content_length_in_place() -> None:
    msg = response(b"hello", Content_Length="5", Server="x")
    msg.content = b"a longer body"
    assert msg.headers.fields == [(b"Content-Length", b"13"), (b"Server", b"x")]


def test_empty_body_decodes_to_empty_whatever_its_coding() -> None:
    msg = response(b"", Content_Encoding="gzip")
    assert msg.content == b""


def test_corrupt_gzip_raises_and_keeps_raw_content() -> None:
    good = gzip.compress(BODY)
    corrupt = good[:20] + bytes([good[20] ^ 0xFF]) + good[21:]
    msg = response(corrupt, Content_Encoding="gzip")
    with pytest.raises(EncodingError, match="gzip"):
        _ = msg.content
    with pytest.raises(EncodingError):
        _ = msg.text
    assert msg.raw_content == corrupt
    assert msg.headers["content-encoding"] == "gzip"


def test_truncated_gzip_raises() -> None:
    msg = response(gzip.compress(BODY)[:-8], Content_Encoding="gzip")
    with pytest.raises(EncodingError, match="truncated"):
        _ = msg.content


def test_unknown_coding_raises_on_read_and_on_write() -> None:
    msg = response(b"packed", Content_Encoding="compress", Content_Length="6")
    with pytest.raises(EncodingError, match="compress"):
        _ = msg.content
    with pytest.raises(EncodingError, match="compress"):
        msg.content = b"new"
    assert msg.raw_content == b"packed"
    assert msg.headers["Content-Length"] == "6"


def test_text_defaults_to_utf8() -> None:
    msg = response("caf\u00e9 \u2603".encode(), Content_Type="text/plain")
    assert msg.charset == "utf-8"
    assert msg.text == "caf\u00e9 \u2603"


@pytest.mark.parametrize(
    ("content_type", "charset"),
    [
        ("text/html; charset=ISO-8859-1", "iso-8859-1"),
        ('text/html; charset="latin-1"', "latin-1"),
        ("text/html;charset=windows-1252", "windows-1252"),
        ("text/html; foo=bar; Charset=utf-16", "utf-16"),
        ("text/html", "utf-8"),
        ("text/html; charset=", "utf-8"),
        ("", "utf-8"),
    ],
)
def test_charset_from_content_type(content_type: str, charset: str) -> None:
    assert response(b"", Content_Type=content_type).charset == charset


@pytest.mark.parametrize("label", ["no-such-charset", "rot13", "hex", "x-user-defined"])
def test_unknown_charset_falls_back_to_utf8(label: str) -> None:
    msg = response("\u00e9".encode(), Content_Type=f"text/plain; charset={label}")
    assert msg.charset == "utf-8"
    assert msg.text == "\u00e9"


def test_text_uses_the_charset_both_ways() -> None:
    msg = response(b"caf\xe9", Content_Type="text/plain; charset=iso-8859-1")
    assert msg.text == "caf\u00e9"
    msg.text = "na\u00efve"
    assert msg.raw_content == b"na\xefve"
    assert msg.headers["content-length"] == "5"


def test_text_through_a_coding_and_a_charset() -> None:
    raw = gzip.compress("\u00e9t\u00e9".encode("latin-1"))
    msg = response(raw, Content_Type="text/plain; charset=latin-1", Content_Encoding="gzip")
    assert msg.text == "\u00e9t\u00e9"
    msg.text = "hiver \u00e0 Z\u00fcrich"
    assert msg.raw_content is not None
    assert gzip.decompress(msg.raw_content) == "hiver \u00e0 Z\u00fcrich".encode("latin-1")


def test_undecodable_bytes_survive_a_text_round_trip() -> None:
    msg = response(b"ok \xff\xfe", Content_Type="text/plain; charset=utf-8")
    assert msg.text == "ok \udcff\udcfe"  # surrogateescape, as mitmproxy: no exception either
    msg.text = msg.text.replace("ok", "OK")
    assert msg.raw_content == b"OK \xff\xfe"  # was b"OK \xef\xbf\xbd..." with "replace"


def test_text_the_charset_cannot_hold_switches_the_body_to_utf8() -> None:
    msg = response(b"", Content_Type="text/html; charset=latin-1")
    msg.text = "5 \u20ac \u65e5\u672c"
    assert msg.raw_content == "5 \u20ac \u65e5\u672c".encode()
    assert msg.headers["content-type"] == "text/html; charset=utf-8"
    assert msg.text == "5 \u20ac \u65e5\u672c"


def test_text_the_charset_can_hold_keeps_the_charset() -> None:
    # The twin: nothing to switch.
    msg = response(b"", Content_Type="text/html; charset=latin-1")
    msg.text = "caf\u00e9"
    assert msg.raw_content == b"caf\xe9"
    assert msg.headers["content-type"] == "text/html; charset=latin-1"


def test_text_without_a_content_type_is_utf8_and_adds_no_header() -> None:
    msg = response(b"")
    msg.text = "\u20ac"
    assert msg.raw_content == "\u20ac".encode()
    assert "content-type" not in msg.headers


def test_html_without_a_declared_charset_is_read_by_its_meta_charset() -> None:
    page = '<html><head><meta charset="iso-8859-1"></head><body>caf\u00e9 \u00fc'
    msg = response(page.encode("latin-1"), Content_Type="text/html")
    assert msg.charset == "iso-8859-1"
    assert msg.text == page
    msg.text = msg.text.replace("body", "BODY")
    assert msg.raw_content == page.replace("body", "BODY").encode("latin-1")


def test_meta_charset_is_not_looked_for_outside_html() -> None:
    body = b'<meta charset="iso-8859-1"> caf\xc3\xa9'
    assert response(body, Content_Type="text/plain").text == '<meta charset="iso-8859-1"> caf\u00e9'


def test_css_charset_rule_and_gbk_read_as_gb18030() -> None:
    css = '@charset "gbk"; a::after { content: "\u4e2d" }'
    msg = response(css.encode("gb18030"), Content_Type="text/css")
    assert msg.charset == "gb18030"
    assert msg.text == css


def test_json_parses_the_decoded_body() -> None:
    data = {"user": "seed", "tags": ["a", "b"], "n": 1}
    msg = response(gzip.compress(json.dumps(data).encode()), Content_Encoding="gzip")
    assert msg.json() == data


@pytest.mark.parametrize("raw", [b"{not json", b"", None])
def test_json_of_a_non_json_body_raises(raw: bytes | None) -> None:
    with pytest.raises(json.JSONDecodeError):
        response(raw).json()


# --- Response.make ---------------------------------------------------------------------------


def test_make_defaults() -> None:
    made = Response.make()
    assert made.status_code == 200
    assert made.raw_content == b""
    assert made.headers.fields == [(b"content-length", b"0")]
    assert made.stream is False


def test_make_with_bytes_adds_no_content_type() -> None:
    made = Response.make(404, b"\x00\x01nope")
    assert made.status_code == 404
    assert made.raw_content == b"\x00\x01nope"
    assert made.headers["content-length"] == "6"
    assert "content-type" not in made.headers


def test_make_with_text_is_utf8_plain_text() -> None:
    made = Response.make(200, "caf\u00e9")
    assert made.raw_content == b"caf\xc3\xa9"
    assert made.headers["Content-Type"] == "text/plain; charset=utf-8"
    assert made.headers["Content-Length"] == "5"
    assert made.text == "caf\u00e9"


def test_make_with_text_honours_a_given_charset() -> None:
    made = Response.make(200, "caf\u00e9", {"Content-Type": "text/html; charset=iso-8859-1"})
    assert made.raw_content == b"caf\xe9"
    assert made.headers.get_all("content-type") == ["text/html; charset=iso-8859-1"]
    assert made.text == "caf\u00e9"


@pytest.mark.parametrize("data", [{"ok": True, "items": [1, 2]}, [1, "two"], 3, None])
def test_make_with_json_able_data(data: object) -> None:
    made = Response.make(201, data)
    assert made.status_code == 201
    assert made.headers["content-type"] == "application/json"
    assert made.json() == data
    assert made.headers["content-length"] == str(len(made.raw_content or b""))


def test_make_keeps_a_given_content_type_for_json() -> None:
    made = Response.make(200, {"a": 1}, [("Content-Type", "application/problem+json")])
    assert made.headers.get_all("content-type") == ["application/problem+json"]


def test_make_with_data_json_cannot_hold_raises_type_error() -> None:
    with pytest.raises(TypeError):
        Response.make(200, {"when": object()})


def test_make_headers_from_a_list_keep_duplicates_and_case() -> None:
    made = Response.make(
        302, b"", [("Location", "/"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")]
    )
    assert made.headers.fields[:3] == [
        (b"Location", b"/"),
        (b"Set-Cookie", b"a=1"),
        (b"Set-Cookie", b"b=2"),
    ]


def test_make_headers_from_a_headers_object_keep_duplicates() -> None:
    headers = Headers([("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
    made = Response.make(200, b"", headers)
    assert made.headers.get_all("set-cookie") == ["a=1", "b=2"]


def test_make_corrects_a_wrong_content_length() -> None:
    made = Response.make(200, b"four", {"Content-Length": "100", "Transfer-Encoding": "chunked"})
    assert made.headers.fields == [(b"Content-Length", b"4")]


def test_make_encodes_the_body_with_a_given_content_encoding() -> None:
    made = Response.make(200, BODY, {"Content-Encoding": "gzip"})
    assert made.raw_content is not None
    assert gzip.decompress(made.raw_content) == BODY
    assert made.headers["content-length"] == str(len(made.raw_content))
    assert made.content == BODY


def test_make_with_an_unknown_content_encoding_raises() -> None:
    with pytest.raises(EncodingError, match="compress"):
        Response.make(200, b"x", {"Content-Encoding": "compress"})


# --- Flow and the small records ----------------------------------------------------------------


def make_flow() -> Flow:
    return Flow(request=request("/"), client=ClientInfo(address="127.0.0.1:5000"))


def test_flow_ids_are_unique_and_increasing() -> None:
    ids = [make_flow().id for _ in range(100)]
    assert len(set(ids)) == 100
    assert ids == sorted(ids)


def test_flow_defaults() -> None:
    flow = make_flow()
    assert flow.response is None
    assert flow.error is None
    assert flow.killed is False
    assert flow.metadata == {}
    assert flow.server == ServerInfo()
    assert flow.timestamps == Timestamps()
    assert flow.client.sni is None
    assert flow.client.alpn_offered == ()


def test_flow_kill_marks_the_flow() -> None:
    flow, other = make_flow(), make_flow()
    flow.kill()
    assert flow.killed is True
    assert other.killed is False


def test_flow_metadata_and_nested_objects_are_per_flow() -> None:
    first, second = make_flow(), make_flow()
    first.metadata["seen"] = True
    first.server.address = "93.184.215.14:443"
    first.timestamps.request_start = 1.0
    assert second.metadata == {}
    assert second.server.address is None
    assert second.timestamps.request_start is None


def test_flows_and_messages_compare_by_identity() -> None:
    # Hooks hold on to flows in sets and dicts; two flows with equal fields are still two flows.
    assert make_flow() != make_flow()
    assert request("/") != request("/")
    first = Response.make(200, b"x")
    assert first != Response.make(200, b"x")
    assert first == first
    assert len({make_flow(), make_flow()}) == 2


def test_messages_get_their_own_default_headers() -> None:
    a = Request(method="GET", scheme="http", host="a", port=80, path="/")
    b = Request(method="GET", scheme="http", host="a", port=80, path="/")
    a.headers["X"] = "1"
    assert "x" not in b.headers
    assert Response(status_code=204).headers.fields == []


def test_flow_record_defaults() -> None:
    record = FlowRecord(client="127.0.0.1:1", method="GET", url="http://a/", started=0.0)
    assert (record.status, record.error, record.unverified) == (None, None, False)
    assert (record.request_bytes, record.response_bytes, record.duration) == (0, 0, 0.0)
    with pytest.raises(AttributeError):
        record.extra = 1  # type: ignore[attr-defined]  # slotted: typos fail loudly


# --- host and port setters, Host header helpers (mitmproxy's semantics) ---------------------------


def test_setting_host_or_port_updates_a_host_header() -> None:
    req = Request("GET", "https", "site.test", 443, "/", headers=Headers({"Host": "site.test"}))
    req.host = "other.test"
    assert req.headers["host"] == "other.test"
    req.port = 8443
    assert req.headers["host"] == "other.test:8443"
    req.host = "::1"
    assert req.headers["host"] == "[::1]:8443"
    assert req.url == "https://[::1]:8443/"


def test_setting_host_adds_no_host_header_where_there_was_none() -> None:
    # The twin: "if present", as mitmproxy documents.
    req = Request("GET", "https", "site.test", 443, "/")
    req.host = "other.test"
    assert "host" not in req.headers


def test_host_header_and_pretty_host() -> None:
    req = Request("GET", "http", "10.0.0.1", 80, "/", headers=Headers({"Host": "site.test:8080"}))
    assert req.host_header == "site.test:8080"
    assert req.pretty_host == "site.test"
    req.host_header = "[::1]:80"
    assert req.pretty_host == "::1"
    req.host_header = None
    assert "host" not in req.headers
    assert req.pretty_host == "10.0.0.1"


def test_get_text_and_set_text_are_text() -> None:
    msg = response(b"abc", Content_Type="text/plain")
    assert msg.get_text() == "abc"
    msg.set_text("xyz")
    assert msg.raw_content == b"xyz"


@pytest.mark.parametrize(("status", "reason"), [(403, "Forbidden"), (200, "OK"), (599, "")])
def test_make_sets_the_standard_reason_phrase(status: int, reason: str) -> None:
    assert Response.make(status, "blocked").reason == reason


# --- .text edge cases found in review -------------------------------------------------------------


@pytest.mark.parametrize(("raw", "charset"), [(b"abc", "utf-16"), (b"\x1b$B!", "iso-2022-jp")])
def test_text_of_bytes_the_charset_rejects_falls_back_to_utf8(raw: bytes, charset: str) -> None:
    msg = response(raw, Content_Type=f"text/plain; charset={charset}")
    assert msg.text == raw.decode("utf-8", "surrogateescape")  # no UnicodeDecodeError


def test_text_set_back_unchanged_keeps_a_utf8_page_utf8() -> None:
    # A <meta> beyond the sniffed bytes is ignored both ways, so the round trip is exact.
    page = "<html>" + "\u00e9" * 3000 + '<meta charset="windows-1252">'
    msg = response(page.encode(), Content_Type="text/html")
    msg.text = msg.text
    assert msg.raw_content == page.encode()


def test_non_ascii_text_in_undeclared_html_declares_utf8() -> None:
    msg = response(b"<p>plain</p>", Content_Type="text/html")
    msg.text = "<p>caf\u00e9</p>"
    assert msg.raw_content == "<p>caf\u00e9</p>".encode()
    assert msg.headers["content-type"] == "text/html; charset=utf-8"


def test_ascii_text_in_undeclared_html_changes_no_header() -> None:
    msg = response(b"<p>plain</p>", Content_Type="text/html")
    msg.text = "<p>cafe</p>"
    assert msg.headers["content-type"] == "text/html"


def test_text_that_cannot_be_encoded_at_all_changes_nothing() -> None:
    msg = response(b"ok", Content_Type="text/plain; charset=latin-1")
    with pytest.raises(UnicodeEncodeError):
        msg.text = "\ud800"  # a lone surrogate outside surrogateescape's range
    assert msg.headers["content-type"] == "text/plain; charset=latin-1"
    assert msg.raw_content == b"ok"


def test_the_url_of_an_options_asterisk_request_has_no_path() -> None:
    req = Request("OPTIONS", "http", "site.test", 80, "*")
    assert req.url == "http://site.test"


def test_headers_mitmproxy_conveniences() -> None:
    headers = Headers(content_type="text/html", x_a="1")
    assert headers.fields == [(b"content-type", b"text/html"), (b"x-a", b"1")]
    headers.add("Set-Cookie", "a=1")
    headers.add("Set-Cookie", "b=2")
    headers.insert(0, "Host", "site.test")
    assert headers.items(multi=True) == [
        ("Host", "site.test"),
        ("content-type", "text/html"),
        ("x-a", "1"),
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
    ]
    assert dict(headers.items())["Set-Cookie"] == "a=1, b=2"  # the mapping view joins them
