"""Add and remove request headers: mark requests, tag the User-Agent, drop what leaks.

Usage: mitmlite -s scripts/headers.py
"""

from __future__ import annotations

import os
from urllib.parse import urlsplit

from mitmlite.flow import Flow

# Set on every request, replacing a header of the same name the client sent.
ADD = {"X-Mitmlite": "1"}
# Appended to the client's User-Agent, so server logs show which requests came through here.
USER_AGENT_SUFFIX = os.environ.get("MITMLITE_UA_SUFFIX", " via-mitmlite")
# Removed from every request (case does not matter). MITMLITE_REMOVE_HEADERS="A,B" replaces it.
# These reveal the client's address or the proxies on the way.
_REMOVE = os.environ.get("MITMLITE_REMOVE_HEADERS", "X-Forwarded-For,X-Real-IP,Via")
REMOVE = [name.strip() for name in _REMOVE.split(",") if name.strip()]
# Drop the Referer when it names another site, so third parties do not learn where you were.
STRIP_CROSS_SITE_REFERER = True


def requestheaders(flow: Flow) -> None:
    # requestheaders, not request: only the head changes, so the body need not be buffered.
    headers = flow.request.headers
    for name in REMOVE:
        headers.pop(name, None)  # removes every field of that name, duplicates included
    for name, value in ADD.items():
        headers[name] = value
    agent = headers.get("User-Agent")
    if agent is not None and USER_AGENT_SUFFIX and not agent.endswith(USER_AGENT_SUFFIX):
        headers["User-Agent"] = agent + USER_AGENT_SUFFIX
    referer = headers.get("Referer")
    if STRIP_CROSS_SITE_REFERER and referer and not _same_site(referer, flow.request.host):
        del headers["Referer"]


def _site(host: str) -> str:
    # The last two labels stand in for the registrable domain: right for example.com and
    # site.localhost, too coarse for co.uk (the Public Suffix List would be exact).
    return ".".join(host.lower().rstrip(".").split(".")[-2:])


def _same_site(referer: str, host: str) -> bool:
    try:
        referer_host = urlsplit(referer).hostname
    except ValueError:  # a malformed URL (bad [IPv6] brackets): dropped as well
        return False
    return referer_host is not None and _site(referer_host) == _site(host)
