"""The flow log: sizes, one line per flow or event, quiet mode keeps what matters."""

from __future__ import annotations

import io
import re

import pytest

from mitmlite.flow import FlowRecord
from mitmlite.log import LineLog, flow_line, human_size

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
