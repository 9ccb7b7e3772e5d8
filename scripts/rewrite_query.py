"""Rewrite a word in search queries: ?q=cybersecurity goes upstream as ?q=SEED+Labs.

Usage: mitmlite -s scripts/rewrite_query.py
"""

from __future__ import annotations

import os
import re

from mitmlite.flow import Flow

# What to look for and what to put instead; set the variables to change them without an edit.
FIND = os.environ.get("MITMLITE_QUERY_FIND", "cybersecurity")
REPLACE = os.environ.get("MITMLITE_QUERY_REPLACE", "SEED Labs")
# The parameters search forms use. Others (page=, session ids, signatures) are never touched.
PARAMS = ("q", "query", "search")
# Hosts to rewrite on; empty means every host.
HOSTS: frozenset[str] = frozenset()

# Whole words only, any case: "Cybersecurity news" is rewritten, "cybersecurityx" is not.
_WORD = re.compile(rf"\b{re.escape(FIND)}\b", re.IGNORECASE)


def requestheaders(flow: Flow) -> None:
    # requestheaders, not request: the query is in the head, so the body (an upload) need not be
    # held in memory for this hook.
    request = flow.request
    if HOSTS and request.host.lower() not in HOSTS:
        return
    query = request.query
    for name in PARAMS:
        values = query.get_all(name)
        # A lambda, so a backslash or "\1" in REPLACE is inserted literally, not as a group.
        new = [_WORD.sub(lambda _: REPLACE, value) for value in values]
        # Assign only on a change: setting the query re-encodes it, and an untouched URL should
        # reach the origin byte for byte as the client sent it.
        if new != values:
            query.set_all(name, new)
