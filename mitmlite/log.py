"""The flow log: one line per finished exchange and one per error, written as they happen.

Implements ``FlowSink`` over a text stream, in the shape mitmdump users read (client, method,
URL, status, size, duration): plain text, with the status coloured when the stream is a terminal,
or one JSON object per line for machines. ``-v`` adds the headers, ``-vv`` the decoded bodies
(truncated; binary shown as a size). Nothing is kept after a line is written, so a long run does
not grow. Also ``Fanout``, which hands each flow to several sinks (the log and the HAR file).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mitmlite import encoding
from mitmlite.errors import ConfigError
from mitmlite.flow import Capture, FlowRecord, FlowSink

RawFields = list[tuple[bytes, bytes]]

# -vv shows this much of each body; more would bury the flow lines it belongs to.
BODY_PREVIEW_BYTES = 2048
_DECODE_LIMIT = 256 * 1024  # a preview never inflates a small capture into a bomb
_TEXTUAL = ("text/", "json", "xml", "javascript", "x-www-form-urlencoded", "graphql")
_RESET = "\x1b[0m"
_COLOURS = {2: "\x1b[32m", 3: "\x1b[36m", 4: "\x1b[33m", 5: "\x1b[31m"}  # green cyan yellow red
_ERROR_COLOUR = "\x1b[1;31m"


def human_size(count: int) -> str:
    """Bytes as ``512b``, ``1.5k``, ``3.2m``, the way mitmdump shows them."""
    if count < 1024:
        return f"{count}b"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f}k"
    return f"{count / (1024 * 1024):.1f}m"


def _paint(text: str, colour: str | None) -> str:
    return f"{colour}{text}{_RESET}" if colour else text


def flow_line(record: FlowRecord, *, colour: bool = False) -> str:
    """``client METHOD url -> status size duration`` or ``... -> error: reason``."""
    head = f"{record.client} {record.method} {record.url}"
    if record.unverified:
        head += " [UNVERIFIED upstream: --insecure]"
    ms = f"{record.duration * 1000:.0f}ms"
    if record.error is not None:
        status = f"{record.status} " if record.status is not None else ""
        error = _paint(f"{status}error: {record.error}", _ERROR_COLOUR if colour else None)
        return f"{head} -> {error} {ms}"
    status_text = str(record.status)
    if colour and record.status is not None:
        status_text = _paint(status_text, _COLOURS.get(record.status // 100))
    return f"{head} -> {status_text} {human_size(record.response_bytes)} {ms}"


def header_lines(fields: RawFields | None, indent: str = "    ") -> list[str]:
    return [f"{indent}{n.decode('latin-1')}: {v.decode('latin-1')}" for n, v in fields or ()]


def body_preview(
    body: bytes, complete: bool, fields: RawFields | None, size: int, limit: int
) -> str | None:
    """A body as -vv shows it: decoded text cut at ``limit``, or a note saying what it is."""
    if size == 0:
        return None
    values = {n.lower(): v.decode("latin-1") for n, v in fields or ()}
    coding = values.get(b"content-encoding")
    kind = values.get(b"content-type", "")
    if coding is not None and encoding.parse_codings(coding) and not complete:
        return f"[{coding} body, {human_size(size)}, not decoded: only its start was kept]"
    try:
        data = encoding.decode(body, coding, limit=_DECODE_LIMIT) if coding else body
    except encoding.EncodingError as exc:
        return f"[{human_size(size)} body that cannot be decoded: {exc}]"
    textual = any(marker in kind.lower() for marker in _TEXTUAL) or not kind
    try:
        text = data.decode("utf-8") if textual else None
    except UnicodeDecodeError:
        text = None
    if text is None:
        return f"[binary body, {human_size(size)}{', ' + kind if kind else ''}]"
    cut = len(text) > limit or not complete
    return text[:limit] + (f"\n[... {human_size(size)} in all]" if cut else "")


def request_preview(record: FlowRecord) -> str | None:
    r = record
    return body_preview(r.request_body, r.request_body_complete, r.request_headers,
                        r.request_bytes, BODY_PREVIEW_BYTES)  # fmt: skip


def response_preview(record: FlowRecord) -> str | None:
    r = record
    return body_preview(r.response_body, r.response_body_complete, r.response_headers,
                        r.response_bytes, BODY_PREVIEW_BYTES)  # fmt: skip


def record_json(record: FlowRecord, verbosity: int) -> dict[str, Any]:
    """One flow as a JSON-able dict; ``verbosity`` adds headers (1) and body previews (2)."""
    data: dict[str, Any] = {
        "time": round(record.wall_started or time.time(), 3),
        "client": record.client,
        "method": record.method,
        "url": record.url,
        "status": record.status,
        "request_bytes": record.request_bytes,
        "response_bytes": record.response_bytes,
        "duration_ms": round(record.duration * 1000, 1),
    }
    if record.error is not None:
        data["error"] = record.error
    if record.unverified:
        data["unverified_upstream"] = True
    if verbosity >= 1:
        data["request_headers"] = _json_fields(record.request_headers)
        data["response_headers"] = _json_fields(record.response_headers)
    if verbosity >= 2:
        data["request_body"] = request_preview(record)
        data["response_body"] = response_preview(record)
    return data


def _json_fields(fields: RawFields | None) -> list[list[str]] | None:
    if fields is None:
        return None
    return [[n.decode("latin-1"), v.decode("latin-1")] for n, v in fields]


class LineLog:
    """A FlowSink writing one line per flow (unless quiet) and per event to ``out``."""

    def __init__(
        self,
        out: TextIO,
        *,
        quiet: bool = False,
        verbosity: int = 0,
        json_lines: bool = False,
        colour: bool | None = None,
    ) -> None:
        self.out = out
        self.quiet = quiet
        self.verbosity = verbosity
        self.json_lines = json_lines
        self.colour = _is_terminal(out) if colour is None else colour
        if json_lines:
            self.colour = False

    @property
    def capture(self) -> Capture:
        """What the relay must keep of each flow for this log's verbosity."""
        return Capture(
            headers=self.verbosity >= 1,
            body_bytes=BODY_PREVIEW_BYTES * 4 if self.verbosity >= 2 else 0,
        )

    def flow(self, record: FlowRecord) -> None:
        if record.error is None and not record.unverified and self.quiet:
            return
        if self.json_lines:
            self._write_json(record_json(record, self.verbosity))
            return
        lines = [flow_line(record, colour=self.colour)]
        if self.verbosity >= 1:
            lines += self._details(record)
        self._write("\n".join(lines))

    def event(self, client: str, message: str) -> None:
        if self.json_lines:
            self._write_json({"time": round(time.time(), 3), "client": client, "event": message})
            return
        self._write(f"{client} {message}")

    def _details(self, record: FlowRecord) -> list[str]:
        lines = ["  request headers:", *header_lines(record.request_headers)]
        if self.verbosity >= 2:
            preview = request_preview(record)
            if preview is not None:
                lines += ["  request body:", *_indented(preview)]
        if record.response_headers is not None:
            status = f"{record.status} {record.reason}".rstrip()
            lines += [f"  response headers ({status}):", *header_lines(record.response_headers)]
            if self.verbosity >= 2:
                preview = response_preview(record)
                if preview is not None:
                    lines += ["  response body:", *_indented(preview)]
        return lines

    def _write_json(self, data: dict[str, Any]) -> None:
        self.out.write(json.dumps(data, ensure_ascii=False) + "\n")
        self.out.flush()

    def _write(self, text: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.out.write(f"[{stamp}] {text}\n")
        self.out.flush()


def _indented(text: str) -> list[str]:
    return ["    " + line for line in text.splitlines() or [""]]


def _is_terminal(out: TextIO) -> bool:
    try:
        return out.isatty()
    except (AttributeError, ValueError):
        return False


class Fanout:
    """Hands every flow and event to each sink in turn (the log, the HAR file)."""

    def __init__(self, sinks: Sequence[FlowSink]) -> None:
        self.sinks = list(sinks)

    def flow(self, record: FlowRecord) -> None:
        for sink in self.sinks:
            sink.flow(record)

    def event(self, client: str, message: str) -> None:
        for sink in self.sinks:
            sink.event(client, message)


def merged_capture(*captures: Capture) -> Capture:
    """The capture that satisfies every sink: headers if any wants them, the largest body."""
    return Capture(
        headers=any(c.headers for c in captures),
        body_bytes=max((c.body_bytes for c in captures), default=0),
    )


class JsonLinesFile:
    """Appends one JSON object per line to a file (``--clienthello-log``), flushed as it goes."""

    def __init__(self, path: Path) -> None:
        try:
            self._file = path.open("a", encoding="utf-8")
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc

    def write(self, data: dict[str, Any]) -> None:
        line = {"time": round(time.time(), 3), **data}
        self._file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()
