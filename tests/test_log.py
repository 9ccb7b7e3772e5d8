"""The flow log: sizes, one line per flow or event, quiet mode keeps what matters."""

from __future__ import annotations

import gzip
import io
import json
import re

import pytest

from mitmlite.flow import Capture, FlowRecord
from mitmlite.log import Fanout, LineLog, body_preview, flow_line, human_size, merged_capture

STAMP = re.compile(r"^\[\d{2}:\d{2}:\d{2}\] ")


def record(**changes: object) -> FlowRecord:
    rec = FlowRecord(
        client="127.0.0.1:50000",
        method="GET",
        url="https://a.test/path",
        started=0.0,
        status=200,
        response_bytes=1536,
        duration=0.0123,
    )
    for name, value in changes.items():
        setattr(rec, name, value)
    return rec


@pytest.mark.parametrize(
    ("count", "text"),
    [
        (0, "0b"),
        (1, "1b"),
        (1023, "1023b"),
        (1024, "1.0k"),
        (1536, "1.5k"),
        (10 * 1024, "10.0k"),
        (1024 * 1024, "1.0m"),
        (3 * 1024 * 1024 + 200 * 1024, "3.2m"),
    ],
)
def test_human_size(count: int, text: str) -> None:
    assert human_size(count) == text


def test_human_size_units_switch_exactly_at_1024() -> None:
    assert human_size(1023).endswith("b")
    assert not human_size(1024).endswith("b")
    assert human_size(1024 * 1024).endswith("m")


def test_flow_line_success() -> None:
    assert flow_line(record()) == "127.0.0.1:50000 GET https://a.test/path -> 200 1.5k 12ms"


def test_flow_line_error_with_status() -> None:
    line = flow_line(record(status=502, error="cannot connect to a.test:443: Connection refused"))
    assert line == (
        "127.0.0.1:50000 GET https://a.test/path"
        " -> 502 error: cannot connect to a.test:443: Connection refused 12ms"
    )


def test_flow_line_error_without_status() -> None:
    line = flow_line(record(status=None, error="client closed the connection"))
    assert (
        line
        == "127.0.0.1:50000 GET https://a.test/path -> error: client closed the connection 12ms"
    )


def test_flow_line_unverified_is_marked() -> None:
    line = flow_line(record(unverified=True))
    assert line == (
        "127.0.0.1:50000 GET https://a.test/path [UNVERIFIED upstream: --insecure] -> 200 1.5k 12ms"
    )


def test_flow_line_verified_is_not_marked() -> None:
    assert "UNVERIFIED" not in flow_line(record(unverified=False))
    assert "error" not in flow_line(record())


def lines_of(out: io.StringIO) -> list[str]:
    text = out.getvalue()
    assert text == "" or text.endswith("\n")
    return text.splitlines()


def test_line_log_writes_one_stamped_line_per_call() -> None:
    out = io.StringIO()
    sink = LineLog(out)
    sink.flow(record())
    sink.flow(record(status=None, error="boom"))
    sink.event("127.0.0.1:50000", "TLS handshake failed: no shared cipher")
    lines = lines_of(out)
    assert len(lines) == 3
    for line in lines:
        assert STAMP.match(line), line
    assert lines[0].endswith("-> 200 1.5k 12ms")
    assert lines[1].endswith("-> error: boom 12ms")
    assert lines[2].endswith("] 127.0.0.1:50000 TLS handshake failed: no shared cipher")


def test_line_log_exact_line_with_a_fixed_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("mitmlite.log.time.strftime", lambda fmt: "12:34:56")
    out = io.StringIO()
    LineLog(out).flow(record())
    assert out.getvalue() == "[12:34:56] 127.0.0.1:50000 GET https://a.test/path -> 200 1.5k 12ms\n"


def test_line_log_quiet_hides_successful_flows() -> None:
    out = io.StringIO()
    LineLog(out, quiet=True).flow(record())
    assert out.getvalue() == ""


def test_line_log_not_quiet_shows_successful_flows() -> None:
    out = io.StringIO()
    LineLog(out, quiet=False).flow(record())
    assert len(lines_of(out)) == 1


def test_line_log_quiet_keeps_errors_unverified_flows_and_events() -> None:
    out = io.StringIO()
    sink = LineLog(out, quiet=True)
    sink.flow(
        record(status=502, error="upstream certificate verify failed: certificate has expired")
    )
    sink.flow(record(unverified=True))
    sink.event("127.0.0.1:50000", "client sent an invalid request")
    lines = lines_of(out)
    assert len(lines) == 3
    assert "-> 502 error: upstream certificate verify failed" in lines[0]
    assert "[UNVERIFIED upstream: --insecure]" in lines[1]
    assert lines[2].endswith("client sent an invalid request")


class CountingIO(io.StringIO):
    def __init__(self) -> None:
        super().__init__()
        self.flushes = 0

    def flush(self) -> None:
        self.flushes += 1
        super().flush()


def test_line_log_flushes_each_line() -> None:
    # Lines must appear as flows finish, even when stdout is a pipe.
    out = CountingIO()
    sink = LineLog(out)
    sink.flow(record())
    assert out.flushes == 1
    sink.event("c", "m")
    assert out.flushes == 2


def test_line_log_quiet_success_does_not_flush() -> None:
    out = CountingIO()
    LineLog(out, quiet=True).flow(record())
    assert out.flushes == 0


# --- colour, verbosity, JSON ------------------------------------------------------------------

ANSI = re.compile(r"\x1b\[[0-9;]*m")


class TerminalIO(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(("status", "code"), [(200, "32"), (302, "36"), (404, "33"), (503, "31")])
def test_status_is_coloured_on_a_terminal(status: int, code: str) -> None:
    out = TerminalIO()
    LineLog(out).flow(record(status=status))
    assert f"\x1b[{code}m{status}\x1b[0m" in out.getvalue()


def test_no_colour_when_not_a_terminal_or_in_json() -> None:
    out = io.StringIO()
    LineLog(out).flow(record(status=404))
    assert not ANSI.search(out.getvalue())
    tty = TerminalIO()
    LineLog(tty, json_lines=True).flow(record(status=404))
    assert not ANSI.search(tty.getvalue())


def test_errors_are_coloured_and_still_one_line() -> None:
    out = TerminalIO()
    LineLog(out).flow(record(status=None, error="boom"))
    (line,) = lines_of(out)
    assert ANSI.sub("", line).endswith("-> error: boom 12ms")
    assert ANSI.search(line)


def detailed(**changes: object) -> FlowRecord:
    return record(
        request_headers=[(b"Host", b"a.test"), (b"Accept", b"*/*")],
        response_headers=[(b"Content-Type", b"text/html"), (b"Content-Encoding", b"gzip")],
        reason="OK",
        response_body=gzip.compress(b"<p>hello</p>"),
        response_bytes=len(gzip.compress(b"<p>hello</p>")),
        **changes,
    )


def test_verbose_adds_headers_but_not_bodies() -> None:
    out = io.StringIO()
    LineLog(out, verbosity=1).flow(detailed())
    text = out.getvalue()
    assert "    Accept: */*" in text
    assert "response headers (200 OK):" in text
    assert "    Content-Encoding: gzip" in text
    assert "hello" not in text


def test_not_verbose_is_one_line() -> None:
    out = io.StringIO()
    LineLog(out).flow(detailed())
    assert len(lines_of(out)) == 1


def test_very_verbose_shows_the_decoded_body() -> None:
    out = io.StringIO()
    LineLog(out, verbosity=2).flow(detailed())
    assert "response body:\n    <p>hello</p>" in out.getvalue()


def test_very_verbose_binary_body_is_a_size() -> None:
    png = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
    out = io.StringIO()
    LineLog(out, verbosity=2).flow(
        record(
            response_headers=[(b"Content-Type", b"image/png")],
            response_body=png,
            response_bytes=len(png),
        )
    )
    assert "[binary body, 2.0k, image/png]" in out.getvalue()


def test_body_preview_truncates_long_text_and_says_how_long() -> None:
    body = b"x" * 5000
    preview = body_preview(body, True, [(b"Content-Type", b"text/plain")], 5000, 100)
    assert preview is not None
    assert preview.startswith("x" * 100)
    assert preview.endswith("[... 4.9k in all]")
    assert body_preview(b"", True, None, 0, 100) is None


def test_body_preview_partial_compressed_capture_is_not_decoded() -> None:
    partial = gzip.compress(b"y" * 100_000)[:50]
    fields = [(b"Content-Encoding", b"gzip")]
    preview = body_preview(partial, False, fields, 200_000, 100)
    assert preview == "[gzip body, 195.3k, not decoded: only its start was kept]"


def test_body_preview_corrupt_body_says_so() -> None:
    preview = body_preview(b"not gzip", True, [(b"Content-Encoding", b"gzip")], 8, 100)
    assert preview is not None
    assert preview.startswith("[8b body that cannot be decoded:")


def test_json_lines_one_object_per_flow_and_event() -> None:
    out = io.StringIO()
    sink = LineLog(out, json_lines=True, verbosity=1)
    sink.flow(detailed(wall_started=1_700_000_000.5))
    sink.flow(record(status=None, error="boom"))
    sink.event("1.2.3.4:5", "tunnel closed")
    first, second, third = (json.loads(line) for line in lines_of(out))
    assert first["time"] == 1_700_000_000.5
    assert (first["method"], first["url"], first["status"]) == ("GET", "https://a.test/path", 200)
    assert first["duration_ms"] == 12.3
    assert first["request_headers"] == [["Host", "a.test"], ["Accept", "*/*"]]
    assert "response_body" not in first
    assert second["error"] == "boom"
    assert "error" not in first
    assert third["event"] == "tunnel closed"


def test_json_quiet_still_reports_errors() -> None:
    out = io.StringIO()
    sink = LineLog(out, json_lines=True, quiet=True)
    sink.flow(record())
    sink.flow(record(status=None, error="boom"))
    assert [json.loads(line)["error"] for line in lines_of(out)] == ["boom"]


def test_capture_follows_verbosity() -> None:
    assert not LineLog(io.StringIO()).capture.enabled
    assert LineLog(io.StringIO(), verbosity=1).capture == Capture(headers=True, body_bytes=0)
    assert LineLog(io.StringIO(), verbosity=2).capture.body_bytes > 0


def test_fanout_and_merged_capture() -> None:
    first, second = io.StringIO(), io.StringIO()
    fan = Fanout([LineLog(first), LineLog(second)])
    fan.flow(record())
    fan.event("c", "m")
    assert len(lines_of(first)) == len(lines_of(second)) == 2
    merged = merged_capture(Capture(headers=True), Capture(body_bytes=10), Capture(body_bytes=5))
    assert merged == Capture(headers=True, body_bytes=10)
    assert merged_capture() == Capture()
