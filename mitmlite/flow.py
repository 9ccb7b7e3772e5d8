"""What the proxy knows about one request/response exchange, for logs and (later) hooks.

Pure data: built by the relay, handed to a ``FlowSink`` when the exchange ends. No trio, no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(eq=False, slots=True)
class FlowRecord:
    """One exchange as the log sees it: who asked what, and how it ended."""

    client: str
    method: str
    url: str
    started: float
    status: int | None = None
    request_bytes: int = 0
    response_bytes: int = 0
    duration: float = 0.0
    error: str | None = None
    unverified: bool = False  # the upstream's certificate was not checked (--insecure)


class FlowSink(Protocol):
    """Where finished flows and connection-level events go (the log, later HAR)."""

    def flow(self, record: FlowRecord) -> None:
        """One finished exchange, successful or not."""

    def event(self, client: str, message: str) -> None:
        """A connection-level event or error that is not tied to one exchange."""
