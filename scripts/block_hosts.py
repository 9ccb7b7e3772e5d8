"""Block hosts with a 403 page made by the proxy: the request never reaches the blocked host.

Usage: mitmlite -s scripts/block_hosts.py
"""

from __future__ import annotations

import html
import os
import re

from mitmlite.flow import Flow, Response


def _split(spec: str) -> list[str]:
    return [item.strip().lower() for item in spec.split(",") if item.strip()]


# Blocked with every subdomain: "doubleclick.net" blocks ad.doubleclick.net, not notdoubleclick.net.
# MITMLITE_BLOCK_HOSTS="a.com,b.org" replaces the list.
DOMAINS = _split(os.environ.get("MITMLITE_BLOCK_HOSTS", "")) or [
    "doubleclick.net",
    "googlesyndication.com",
]
# Regular expressions searched in the host name (one per ";" in MITMLITE_BLOCK_REGEX).
PATTERNS = [
    re.compile(p.strip(), re.IGNORECASE)
    for p in os.environ.get("MITMLITE_BLOCK_REGEX", r"^ads?\d*\.").split(";")
    if p.strip()
]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>Blocked</title></head>
<body><h1>Blocked</h1><p>mitmlite blocked this request to <b>{host}</b>.</p></body></html>
"""


def blocked(host: str) -> bool:
    host = host.lower().rstrip(".")  # "example.com." is the same host as "example.com"
    if any(host == domain or host.endswith("." + domain) for domain in DOMAINS):
        return True
    return any(pattern.search(host) for pattern in PATTERNS)


def requestheaders(flow: Flow) -> None:
    # requestheaders, the earliest hook: the request is answered here and never sent on, and
    # no script's `request` hook runs for it.
    if blocked(flow.request.host):
        flow.response = Response.make(
            403,
            PAGE.format(host=html.escape(flow.request.host)),
            # no-store: unblocking must take effect at once, not when a cached 403 expires.
            {"Content-Type": "text/html; charset=utf-8", "Cache-Control": "no-store"},
        )
