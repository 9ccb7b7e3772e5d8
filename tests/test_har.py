"""HAR 1.2 export: entries built from hand-made FlowRecords, and the sink's atomic file writes.

Bodies are encoded with the codec libraries directly (gzip, not mitmlite.encoding), and written
archives are read back with haralyzer, a HAR parser we did not write, so the exporter and the
checks cannot agree on a mistake.
"""

from __future__ import annotations

import base64
import gzip
import json
import os
import stat
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from haralyzer import HarParser  # type: ignore[import-untyped]  # no type stubs

import mitmlite
from mitmlite import har
from mitmlite.flow import Capture, FlowRecord, FlowTimings, RawFields
from mitmlite.har import HarSink, har_document, har_entry
from tests.test_architecture import IO_MODULES, violations_of

WALL = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z
HTML = "<p>caf\u00e9 \u2603</p>" * 50


def record(**changes: Any) -> FlowRecord:
    """A complete HTTPS GET on a new upstream connection; ``changes`` override any field."""
    rec = FlowRecord(
        client="127.0.0.1:50000",
        method="GET",
        url="https://a.test/path",
        started=100.0,
        status=200,
        duration=0.5,
        wall_started=WALL,
        reason="OK",
        request_headers=[(b"Host", b"a.test"), (b"User-Agent", b"curl/8")],
        response_headers=[(b"Content-Type", b"text/plain")],
        server_address="93.184.216.34:443",
        client_tls=("TLSv1.3", "TLS_AES_128_GCM_SHA256"),
        server_tls=("TLSv1.2", "ECDHE-RSA-AES128-GCM-SHA256"),
        sni="a.test",
        timings=FlowTimings(
            connect_start=100.010,
            tcp_end=100.050,
            request_sent=100.060,
            response_start=100.300,
            response_end=100.500,
        ),
    )
    for name, value in changes.items():
        setattr(rec, name, value)
    return rec


def with_response_body(
    body: bytes, fields: RawFields, *, complete: bool = True, wire: int | None = None
) -> FlowRecord:
    return record(
        response_headers=fields,
        response_body=body,
        response_body_complete=complete,
        response_bytes=len(body) if wire is None else wire,
    )


def with_request_body(body: bytes, content_type: bytes, *, complete: bool = True) -> FlowRecord:
    return record(
        method="POST",
        request_headers=[(b"Host", b"a.test"), (b"Content-Type", content_type)],
        request_body=body,
        request_body_complete=complete,
        request_bytes=len(body) if complete else len(body) * 10,
    )


def named(items: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(item["name"], item["value"]) for item in items]


# --- the document and the entry's frame -----------------------------------------------------------


def test_document_is_har_1_2_by_mitmlite() -> None:
    doc = har_document([{"x": 1}], "9.8.7")
    assert doc["log"]["version"] == "1.2"
    assert doc["log"]["creator"] == {"name": "mitmlite", "version": "9.8.7"}
    assert doc["log"]["pages"] == []
    assert doc["log"]["entries"] == [{"x": 1}]


def test_started_date_time_is_iso_8601_utc_with_milliseconds() -> None:
    started = har_entry(record())["startedDateTime"]
    assert started == "2023-11-14T22:13:20.250Z"
    parsed = datetime.fromisoformat(started)
    assert parsed.tzinfo is not None
    assert parsed.timestamp() == pytest.approx(WALL, abs=0.001)


def test_started_date_time_without_capture_is_recent_not_1970() -> None:
    # Twin: a record the relay filled no detail into still gets a plausible start.
    started = datetime.fromisoformat(har_entry(record(wall_started=0.0))["startedDateTime"])
    assert started.year >= 2024
    assert started.tzinfo is not None


def test_complete_entry_fields() -> None:
    entry = har_entry(record())
    request, response = entry["request"], entry["response"]
    assert (request["method"], request["url"], request["httpVersion"]) == (
        "GET",
        "https://a.test/path",
        "HTTP/1.1",
    )
    assert named(request["headers"]) == [("Host", "a.test"), ("User-Agent", "curl/8")]
    assert request["queryString"] == []
    assert request["cookies"] == []
    assert (request["headersSize"], request["bodySize"]) == (-1, 0)
    assert "postData" not in request
    assert (response["status"], response["statusText"], response["httpVersion"]) == (
        200,
        "OK",
        "HTTP/1.1",
    )
    assert response["redirectURL"] == ""
    assert entry["cache"] == {}
    assert entry["serverIPAddress"] == "93.184.216.34"
    assert entry["connection"] == "50000"
    assert entry["_clientAddress"] == "127.0.0.1:50000"
    assert "_error" not in entry
    assert "_unverifiedUpstream" not in entry
    json.dumps(entry)  # JSON-able as it is


def test_header_names_keep_case_and_duplicates_and_values_are_latin_1() -> None:
    fields = [(b"X-Dup", b"one"), (b"x-dup", b"two"), (b"X-Name", b"caf\xe9")]
    entry = har_entry(record(response_headers=fields))
    assert named(entry["response"]["headers"]) == [
        ("X-Dup", "one"),
        ("x-dup", "two"),
        ("X-Name", "caf\u00e9"),
    ]


def test_redirect_url_from_location() -> None:
    fields = [(b"Location", b"https://b.test/next")]
    entry = har_entry(record(status=302, reason="Found", response_headers=fields))
    assert entry["response"]["redirectURL"] == "https://b.test/next"
    assert har_entry(record())["response"]["redirectURL"] == ""


def test_tls_details_and_unverified_upstream() -> None:
    entry = har_entry(record(unverified=True))
    assert entry["_tls"] == {
        "client": {"version": "TLSv1.3", "cipher": "TLS_AES_128_GCM_SHA256", "sni": "a.test"},
        "server": {"version": "TLSv1.2", "cipher": "ECDHE-RSA-AES128-GCM-SHA256"},
    }
    assert entry["_unverifiedUpstream"] is True


def test_plain_http_has_no_tls_and_verified_has_no_flag() -> None:
    entry = har_entry(record(url="http://a.test/", client_tls=None, server_tls=None, sni=None))
    assert "_tls" not in entry
    assert "_unverifiedUpstream" not in entry


def test_only_the_intercepted_side_of_tls_is_shown() -> None:
    entry = har_entry(record(server_tls=None))
    assert set(entry["_tls"]) == {"client"}


# --- addresses ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("server", "ip"),
    [
        ("93.184.216.34:443", "93.184.216.34"),
        ("[2001:db8::1]:443", "2001:db8::1"),
        ("2001:db8::1:8443", "2001:db8::1"),  # unbracketed: the port is after the last colon
        ("[::1]:80", "::1"),
    ],
)
def test_server_ip_address_has_no_port(server: str, ip: str) -> None:
    assert har_entry(record(server_address=server))["serverIPAddress"] == ip


def test_no_server_address_no_server_ip() -> None:
    assert "serverIPAddress" not in har_entry(record(server_address=None))


def test_ipv6_client_connection_is_its_port() -> None:
    entry = har_entry(record(client="[::1]:41234"))
    assert entry["connection"] == "41234"
    assert entry["_clientAddress"] == "[::1]:41234"


def test_client_without_port_has_no_connection() -> None:
    assert "connection" not in har_entry(record(client="unix-socket"))


# --- bodies ---------------------------------------------------------------------------------------


def test_gzip_text_body_is_decoded_into_content_text() -> None:
    wire = gzip.compress(HTML.encode())
    fields: RawFields = [
        (b"Content-Type", b"text/html; charset=utf-8"),
        (b"Content-Encoding", b"gzip"),
    ]
    response = har_entry(with_response_body(wire, fields))["response"]
    content = response["content"]
    assert content["text"] == HTML
    assert "encoding" not in content
    assert content["size"] == len(HTML.encode())
    assert content["compression"] == len(HTML.encode()) - len(wire)
    assert content["mimeType"] == "text/html; charset=utf-8"
    assert response["bodySize"] == len(wire)


def test_corrupt_gzip_body_has_no_text_and_says_why() -> None:
    # Twin: bytes that are not gzip are not passed off as the decoded body.
    wire = b"\x1f\x8b not really gzip"
    fields: RawFields = [(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip")]
    content = har_entry(with_response_body(wire, fields))["response"]["content"]
    assert "text" not in content
    assert "gzip" in content["_decodeError"]
    assert content["size"] == len(wire)
    assert "compression" not in content


def test_decoded_body_over_the_limit_has_no_text() -> None:
    wire = gzip.compress(b"a" * 10_000)
    fields: RawFields = [(b"Content-Type", b"text/plain"), (b"Content-Encoding", b"gzip")]
    rec = with_response_body(wire, fields)
    assert "exceeds" in har_entry(rec, decode_limit=1000)["response"]["content"]["_decodeError"]
    assert har_entry(rec, decode_limit=10_000)["response"]["content"]["text"] == "a" * 10_000


def test_identity_body_has_no_compression() -> None:
    content = har_entry(with_response_body(b"plain", [(b"Content-Type", b"text/plain")]))
    assert content["response"]["content"] == {"size": 5, "mimeType": "text/plain", "text": "plain"}


def test_binary_body_is_base64() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256))
    content = har_entry(with_response_body(png, [(b"Content-Type", b"image/png")]))["response"][
        "content"
    ]
    assert content["encoding"] == "base64"
    assert base64.b64decode(content["text"]) == png
    assert content["size"] == len(png)


def test_textual_type_that_is_not_valid_text_is_base64() -> None:
    # Twin: a text/* label does not make invalid UTF-8 text (it would lose bytes).
    body = b"ok \xff\xfe"
    content = har_entry(with_response_body(body, [(b"Content-Type", b"text/plain")]))["response"][
        "content"
    ]
    assert content["encoding"] == "base64"
    assert base64.b64decode(content["text"]) == body


def test_unlabelled_valid_utf8_is_text() -> None:
    content = har_entry(with_response_body("h\u00e9".encode(), []))["response"]["content"]
    assert content == {"size": 3, "mimeType": "x-unknown", "text": "h\u00e9"}


def test_charset_from_content_type_decodes_text() -> None:
    body = "caf\u00e9".encode("latin-1")
    fields: RawFields = [(b"Content-Type", b'text/html; charset="ISO-8859-1"')]
    content = har_entry(with_response_body(body, fields))["response"]["content"]
    assert content["text"] == "caf\u00e9"


def test_empty_body_has_empty_text() -> None:
    content = har_entry(record(status=204, reason="No Content", response_headers=[]))["response"][
        "content"
    ]
    assert content == {"size": 0, "mimeType": "x-unknown", "text": ""}


def test_truncated_capture_has_no_text() -> None:
    prefix = HTML.encode()[:100]
    rec = with_response_body(prefix, [(b"Content-Type", b"text/html")], complete=False, wire=9000)
    response = har_entry(rec)["response"]
    content = response["content"]
    assert content["_truncated"] is True
    assert "text" not in content
    assert "encoding" not in content
    assert content["size"] == 9000
    assert response["bodySize"] == 9000


def test_truncated_gzip_capture_is_not_decoded() -> None:
    wire = gzip.compress(HTML.encode())
    fields: RawFields = [(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip")]
    rec = with_response_body(wire[:20], fields, complete=False, wire=len(wire))
    content = har_entry(rec)["response"]["content"]
    assert content["_truncated"] is True
    assert "text" not in content
    assert "_decodeError" not in content
    assert content["size"] == len(wire)


def test_complete_capture_is_not_marked_truncated() -> None:
    # Twin of the two above.
    content = har_entry(with_response_body(b"all", [(b"Content-Type", b"text/plain")]))
    assert "_truncated" not in content["response"]["content"]


# --- request bodies -------------------------------------------------------------------------------


def test_post_form_body_has_text_and_params() -> None:
    body = b"name=caf%C3%A9&tag=a+b&tag=c&empty="
    post = har_entry(with_request_body(body, b"application/x-www-form-urlencoded"))["request"]
    assert post["bodySize"] == len(body)
    data = post["postData"]
    assert data["mimeType"] == "application/x-www-form-urlencoded"
    assert data["text"] == body.decode()
    assert named(data["params"]) == [
        ("name", "caf\u00e9"),
        ("tag", "a b"),
        ("tag", "c"),
        ("empty", ""),
    ]


def test_post_json_body_has_text_and_no_params() -> None:
    body = json.dumps({"a": [1, 2], "b": "\u2603"}).encode()
    data = har_entry(with_request_body(body, b"application/json"))["request"]["postData"]
    assert data == {"mimeType": "application/json", "text": body.decode()}
    assert json.loads(data["text"]) == {"a": [1, 2], "b": "\u2603"}


def test_post_binary_body_is_base64() -> None:
    body = bytes(range(200, 256))
    data = har_entry(with_request_body(body, b"application/octet-stream"))["request"]["postData"]
    assert data["encoding"] == "base64"
    assert base64.b64decode(data["text"]) == body


def test_truncated_request_body_has_no_text_or_params() -> None:
    rec = with_request_body(b"a=1&b=", b"application/x-www-form-urlencoded", complete=False)
    data = har_entry(rec)["request"]["postData"]
    assert data["_truncated"] is True
    assert "text" not in data
    assert "params" not in data
    assert har_entry(rec)["request"]["bodySize"] == 60


def test_request_without_body_has_no_post_data() -> None:
    # Twin: only a request that carried a body gets postData.
    assert "postData" not in har_entry(record(method="POST"))["request"]


# --- cookies and query ----------------------------------------------------------------------------


def test_request_cookies_from_every_cookie_field() -> None:
    fields = [(b"Cookie", b"a=1; b=x=y"), (b"cookie", b" c = 3 ;lonely")]
    cookies = har_entry(record(request_headers=fields))["request"]["cookies"]
    assert named(cookies) == [("a", "1"), ("b", "x=y"), ("c", "3"), ("", "lonely")]


def test_duplicate_set_cookie_gives_one_cookie_each() -> None:
    fields = [
        (b"Set-Cookie", b"sid=abc; Path=/; Domain=a.test; Secure; HttpOnly; SameSite=Lax"),
        (b"Set-Cookie", b"theme=dark; Expires=Wed, 21 Oct 2037 07:28:00 GMT"),
        (b"set-cookie", b"old=1; expires=Wed, 21-Oct-2015 07:28:00 GMT"),
    ]
    cookies = har_entry(record(response_headers=fields))["response"]["cookies"]
    assert cookies == [
        {
            "name": "sid",
            "value": "abc",
            "path": "/",
            "domain": "a.test",
            "httpOnly": True,
            "secure": True,
            "sameSite": "Lax",
        },
        {
            "name": "theme",
            "value": "dark",
            "expires": "2037-10-21T07:28:00.000Z",
            "httpOnly": False,
            "secure": False,
        },
        {
            "name": "old",
            "value": "1",
            "expires": "2015-10-21T07:28:00.000Z",
            "httpOnly": False,
            "secure": False,
        },
    ]


def test_max_age_wins_over_expires_and_counts_from_the_start() -> None:
    fields = [(b"Set-Cookie", b"a=1; Max-Age=60; Expires=Wed, 21 Oct 2037 07:28:00 GMT")]
    cookie = har_entry(record(response_headers=fields))["response"]["cookies"][0]
    assert cookie["expires"] == "2023-11-14T22:14:20.250Z"


@pytest.mark.parametrize(
    ("attributes", "expires"),
    [
        (b"Max-Age=0", "1970-01-01T00:00:00.000Z"),  # RFC 6265 §5.2.2: delete now
        (b"Max-Age=-5", "1970-01-01T00:00:00.000Z"),
        (b"Max-Age=soon", None),  # not a number: ignored
        (b"Expires=someday", None),  # not a date: dropped, not guessed
        (b"Max-Age=99999999999999", None),  # past year 9999
    ],
)
def test_odd_cookie_lifetimes(attributes: bytes, expires: str | None) -> None:
    fields = [(b"Set-Cookie", b"a=1; " + attributes)]
    cookie = har_entry(record(response_headers=fields))["response"]["cookies"][0]
    assert cookie.get("expires") == expires


def test_query_string_is_parsed_and_decoded() -> None:
    url = "https://a.test/s?q=caf%C3%A9+au+lait&tag=1&tag=2&flag&empty="
    query = har_entry(record(url=url))["request"]["queryString"]
    assert named(query) == [
        ("q", "caf\u00e9 au lait"),
        ("tag", "1"),
        ("tag", "2"),
        ("flag", ""),
        ("empty", ""),
    ]


def test_url_without_query_has_empty_query_string() -> None:
    assert har_entry(record(url="https://a.test/s?"))["request"]["queryString"] == []
    assert har_entry(record(url="https://a.test/s#q=1"))["request"]["queryString"] == []


# --- timings --------------------------------------------------------------------------------------


def test_new_connection_timings() -> None:
    entry = har_entry(record())
    assert entry["timings"] == {
        "blocked": 10.0,
        "dns": -1,
        "connect": 40.0,
        "ssl": -1,  # the connector does TCP and TLS in one call: no separate stamp
        "send": 10.0,
        "wait": 240.0,
        "receive": 200.0,
    }
    assert entry["time"] == 500.0


def test_ssl_is_part_of_connect_and_counted_once() -> None:
    timings = FlowTimings(
        connect_start=100.010,
        tcp_end=100.030,
        tls_end=100.050,
        request_sent=100.060,
        response_start=100.300,
        response_end=100.500,
    )
    entry = har_entry(record(timings=timings))
    assert entry["timings"]["ssl"] == 20.0
    assert entry["timings"]["connect"] == 40.0
    assert entry["time"] == 500.0


def test_reused_connection_timings_are_minus_one() -> None:
    timings = FlowTimings(request_sent=100.010, response_start=100.300, response_end=100.500)
    entry = har_entry(record(timings=timings))
    t = entry["timings"]
    assert (t["blocked"], t["dns"], t["connect"], t["ssl"]) == (-1, -1, -1, -1)
    assert (t["send"], t["wait"], t["receive"]) == (10.0, 290.0, 200.0)
    assert entry["time"] == 500.0


def test_timings_never_negative_except_minus_one() -> None:
    # Out-of-order stamps (an early response before the request body was sent) clamp to 0.
    timings = FlowTimings(request_sent=100.400, response_start=100.300, response_end=100.500)
    t = har_entry(record(timings=timings))["timings"]
    assert t["wait"] == 0.0
    assert all(value >= 0 or value == -1 for value in t.values())


# --- failures -------------------------------------------------------------------------------------


def test_failed_flow_without_response() -> None:
    rec = record(
        status=None,
        reason="",
        response_headers=None,
        error="cannot connect to a.test:443: connection refused",
        duration=0.25,
        server_tls=None,
        timings=FlowTimings(connect_start=100.010),
    )
    entry = har_entry(rec)
    response = entry["response"]
    assert response["status"] == 0
    assert response["_error"] == "cannot connect to a.test:443: connection refused"
    assert entry["_error"] == response["_error"]
    assert (response["headersSize"], response["bodySize"]) == (-1, -1)
    assert response["headers"] == []
    assert response["cookies"] == []
    assert response["content"] == {"size": 0, "mimeType": "x-unknown"}
    # The time until the failure is spent connecting, and the phases still add up.
    t = entry["timings"]
    assert t["connect"] == 240.0
    assert (t["send"], t["wait"], t["receive"]) == (0.0, 0.0, 0.0)
    assert entry["time"] == 250.0


def test_error_with_a_status_keeps_what_the_client_saw() -> None:
    # Twin: mitmlite answered the client itself (a 502 with the reason), so that is the response.
    rec = record(status=502, reason="Bad Gateway", error="upstream certificate verify failed")
    entry = har_entry(rec)
    assert entry["response"]["status"] == 502
    assert "_error" not in entry["response"]
    assert entry["_error"] == "upstream certificate verify failed"


def test_read_timeout_spends_the_rest_in_wait() -> None:
    timings = FlowTimings(request_sent=100.010)
    rec = record(status=504, error="read timeout", duration=30.0, timings=timings)
    t = har_entry(rec)["timings"]
    assert (t["send"], t["wait"], t["receive"]) == (10.0, 29990.0, 0.0)


# --- the sink -------------------------------------------------------------------------------------


def test_sink_capture_asks_for_headers_and_the_body_limit() -> None:
    assert HarSink("x.har", 4096, version="1").capture == Capture(headers=True, body_bytes=4096)


def test_sink_writes_a_har_that_haralyzer_reads(tmp_path: Path) -> None:
    path = tmp_path / "flows.har"
    sink = HarSink(path, 1 << 20, version="0.1.0")
    wire = gzip.compress(HTML.encode())
    sink.flow(
        with_response_body(wire, [(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip")])
    )
    sink.flow(with_request_body(b"a=1", b"application/x-www-form-urlencoded"))
    sink.flow(record(status=None, error="refused", url="https://c.test/?x=1"))
    sink.write()

    parser = HarParser(json.loads(path.read_text(encoding="utf-8")))
    assert parser.version == "1.2"
    assert parser.creator == {"name": "mitmlite", "version": "0.1.0"}
    (page,) = parser.pages
    assert page.page_id == "unknown"  # entries belong to no page: a proxy sees no page loads
    entries = page.entries
    assert [e.request.method for e in entries] == ["GET", "POST", "GET"]
    assert [e.url for e in entries] == ["https://a.test/path"] * 2 + ["https://c.test/?x=1"]
    assert [e.status for e in entries] == [200, 200, 0]
    assert entries[0].response.text == HTML
    assert entries[0].response.mimeType == "text/html"
    assert entries[0].response.contentSize == len(HTML.encode())
    assert entries[0].response.bodySize == len(wire)
    assert entries[0].startTime == datetime.fromtimestamp(WALL, UTC).replace(microsecond=250_000)
    assert entries[0].timings["wait"] == 240.0
    assert entries[0].time == 500.0
    assert entries[0].serverAddress == "93.184.216.34"
    assert entries[0].port == 50000  # haralyzer reads connection as a number
    assert entries[1].request.text == "a=1"
    assert entries[1].request.mimeType == "application/x-www-form-urlencoded"
    assert entries[0].request.userAgent == "curl/8"
    assert entries[2].request.queryString == [{"name": "x", "value": "1"}]
    assert HarParser.match_headers(entries[0], "request", "Host", "a.test")


def test_written_file_is_the_document_of_the_entries(tmp_path: Path) -> None:
    sink = HarSink(tmp_path / "a.har", 100, version="2")
    for n in range(3):
        sink.flow(record(url=f"https://a.test/{n}"))
    sink.write()
    written = json.loads((tmp_path / "a.har").read_text(encoding="utf-8"))
    assert written == har_document(sink.entries, "2")
    assert sink.entries == [json.loads(json.dumps(har_entry(record(url=f"https://a.test/{n}"))))
                            for n in range(3)]  # fmt: skip
    assert len(sink) == 3


def test_empty_sink_writes_a_valid_empty_archive(tmp_path: Path) -> None:
    sink = HarSink(tmp_path / "e.har", 100, version="2")
    sink.write()
    written = json.loads((tmp_path / "e.har").read_text(encoding="utf-8"))
    assert written == har_document([], "2")
    assert HarParser(written).pages == []


def test_non_ascii_and_lone_surrogates_still_parse(tmp_path: Path) -> None:
    sink = HarSink(tmp_path / "u.har", 100, version="2")
    sink.flow(record(url="https://a.test/caf\u00e9/\udce9"))
    sink.write()
    written = json.loads((tmp_path / "u.har").read_bytes().decode("utf-8"))
    assert written["log"]["entries"][0]["request"]["url"] == "https://a.test/caf\u00e9/\udce9"


def test_write_replaces_the_file_atomically_as_0600(tmp_path: Path) -> None:
    path = tmp_path / "flows.har"
    path.write_text("old, world-readable", encoding="utf-8")
    path.chmod(0o644)
    before = path.stat().st_ino
    sink = HarSink(path, 100, version="2")
    sink.flow(record())
    sink.write()
    after = path.stat()
    assert after.st_ino != before  # a new file took the name: readers never saw it half written
    assert stat.S_IMODE(after.st_mode) == 0o600
    assert os.listdir(tmp_path) == ["flows.har"]  # no temp file left behind
    assert len(json.loads(path.read_text(encoding="utf-8"))["log"]["entries"]) == 1


def test_failed_write_keeps_the_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Twin: when the replace fails, the previous archive is intact and the temp file is gone.
    path = tmp_path / "flows.har"
    sink = HarSink(path, 100, version="2")
    sink.flow(record())
    sink.write()
    good = path.read_bytes()

    def broken_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    sink.flow(record())
    with pytest.raises(OSError, match="disk full"):
        sink.write()
    assert path.read_bytes() == good
    assert os.listdir(tmp_path) == ["flows.har"]
    assert sink.dirty  # the failed write did not count


def test_write_to_a_missing_directory_raises() -> None:
    sink = HarSink("/nonexistent-dir-for-mitmlite/x.har", 100, version="2")
    with pytest.raises(FileNotFoundError):
        sink.write()


def test_flush_if_dirty_writes_only_when_new_entries_arrived(tmp_path: Path) -> None:
    path = tmp_path / "flows.har"
    sink = HarSink(path, 100, version="2")
    states = [sink.dirty]
    sink.flush_if_dirty()
    assert not path.exists()  # nothing arrived yet: no file

    sink.flow(record())
    states.append(sink.dirty)
    sink.flush_if_dirty()
    assert path.exists()
    states.append(sink.dirty)
    assert states == [False, True, False]


def test_flush_if_dirty_skips_when_nothing_new(tmp_path: Path) -> None:
    # Twin: once written, a flush with no new entry leaves the file alone (here: not recreated).
    path = tmp_path / "flows.har"
    sink = HarSink(path, 100, version="2")
    sink.flow(record())
    sink.write()
    path.unlink()
    sink.flush_if_dirty()
    assert not path.exists()

    sink.event("127.0.0.1:1", "connection reset")  # events are not entries
    sink.flush_if_dirty()
    assert not path.exists()

    sink.flow(record(url="https://a.test/2"))
    sink.flush_if_dirty()
    entries = json.loads(path.read_text(encoding="utf-8"))["log"]["entries"]
    assert [e["request"]["url"] for e in entries] == ["https://a.test/path", "https://a.test/2"]


def test_flush_if_dirty_to_another_path(tmp_path: Path) -> None:
    sink = HarSink(tmp_path / "default.har", 100, version="2")
    sink.flow(record())
    sink.flush_if_dirty(tmp_path / "other.har")
    assert os.listdir(tmp_path) == ["other.har"]


def test_default_creator_version_is_mitmlite_s(tmp_path: Path) -> None:
    sink = HarSink(tmp_path / "v.har", 100)
    sink.write()
    creator = json.loads((tmp_path / "v.har").read_text(encoding="utf-8"))["log"]["creator"]
    assert creator == {"name": "mitmlite", "version": mitmlite.__version__}


# --- the module's own rules -----------------------------------------------------------------------


def test_har_module_imports_no_io_framework() -> None:
    # DESIGN.md §2: building entries is pure; the sink writes files but never needs trio.
    path = Path(har.__file__)
    assert violations_of(path, IO_MODULES) == []
    assert violations_of(path, ["mitmlite.relay", "mitmlite.server", "mitmlite.cli"]) == []
