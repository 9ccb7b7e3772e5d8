"""Send the requests for one host to another: a staging server, a local mock, a mirror.

Usage: MITMLITE_MAP_REMOTE="api.example.com=http://127.0.0.1:9000" mitmlite -s scripts/map_remote.py
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from mitmlite.flow import Flow

# from host -> where to send it instead. The target may be
#   "http://127.0.0.1:9000"  scheme, host and port (the scheme's default port when none is given)
#   "staging.example.com"    only the host: the request keeps its scheme and port
#   "staging.example.com:8443"  host and port, keeping the scheme
# MITMLITE_MAP_REMOTE="from=to,from2=to2" replaces the table.
MAP = {"api.example.com": "http://127.0.0.1:9000"}

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _parse(spec: str) -> dict[str, str]:
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    return {source.strip().lower(): target.strip() for source, target in pairs}


def _target(spec: str) -> tuple[str | None, str, int | None]:
    """(scheme or None to keep it, host, port or None to keep it)."""
    # urlsplit reads a bare "host:port" as a scheme and a path: "//" marks it as an authority.
    parts = urlsplit(spec if "://" in spec else "//" + spec)
    if parts.hostname is None or parts.scheme not in ("", "http", "https"):
        raise ValueError(f"map_remote: cannot send requests to {spec!r}: need [http(s)://]host")
    scheme = parts.scheme or None
    port = parts.port or (_DEFAULT_PORTS[scheme] if scheme else None)
    return scheme, parts.hostname, port


# Parsed once at load, so a typo stops `mitmlite -s` at start (and a bad edit is reported when
# the script is reloaded) instead of failing request after request.
TARGETS = {
    source: _target(target)
    for source, target in (_parse(os.environ.get("MITMLITE_MAP_REMOTE", "")) or MAP).items()
}


def requestheaders(flow: Flow) -> None:
    # requestheaders, not request: the destination is chosen from the head, and the body
    # (an upload) then streams to the new host without being held in memory.
    request = flow.request
    target = TARGETS.get(request.host.lower().rstrip("."))
    if target is None:
        return
    scheme, host, port = target
    scheme = scheme or request.scheme
    authority = f"[{host}]" if ":" in host else host
    # Setting the URL moves scheme, host, port and the Host header together; origins that
    # serve several sites pick the site by the Host header, so it must name the new host.
    request.url = f"{scheme}://{authority}:{port or request.port}{request.path}"
