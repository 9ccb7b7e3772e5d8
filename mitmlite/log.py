"""The flow log: one line per finished exchange and one per error, written as they happen.

Implements ``FlowSink`` over a text stream; nothing is kept in memory after a line is written.
"""

from __future__ import annotations

import time
from typing import TextIO

from mitmlite.flow import FlowRecord


def human_size(count: int) -> str:
    """Bytes as ``512b``, ``1.5k``, ``3.2m``, the way mitmdump shows them."""
    if count < 1024:
        return f"{count}b"
    if count < 1024 * 1024:
        return f"{count / 1024:.1f}k"
    return f"{count / (1024 * 1024):.1f}m"


def flow_line(record: FlowRecord) -> str:
    """``client METHOD url -> status size duration`` or ``... -> error: reason``."""
    head = f"{record.client} {record.method} {record.url}"
    if record.unverified:
        head += " [UNVERIFIED upstream: --insecure]"
    ms = f"{record.duration * 1000:.0f}ms"
    if record.error is not None:
        status = f"{record.status} " if record.status is not None else ""
        return f"{head} -> {status}error: {record.error} {ms}"
    return f"{head} -> {record.status} {human_size(record.response_bytes)} {ms}"


class LineLog:
    """A FlowSink writing one line per flow (unless quiet) and per event to ``out``."""

    def __init__(self, out: TextIO, *, quiet: bool = False) -> None:
        self.out = out
        self.quiet = quiet

    def flow(self, record: FlowRecord) -> None:
        if record.error is not None or record.unverified or not self.quiet:
            self._write(flow_line(record))

    def event(self, client: str, message: str) -> None:
        self._write(f"{client} {message}")

    def _write(self, line: str) -> None:
        stamp = time.strftime("%H:%M:%S")
        self.out.write(f"[{stamp}] {line}\n")
        self.out.flush()
