"""A JSON API mock: the proxy answers /api/users for one host from memory, never sending it on.

Usage: MITMLITE_MOCK_HOST=api.example.com mitmlite -s scripts/json_mock.py

    GET  /api/users        the list                 POST /api/users  {"name": ...} creates one (201)
    GET  /api/users/<id>   one user, or 404         anything else on the host: 404 or 405, as JSON
"""

from __future__ import annotations

import os
from typing import Any

from mitmlite.flow import Flow, Response

# The host whose API is mocked; requests to every other host go through untouched.
HOST = os.environ.get("MITMLITE_MOCK_HOST", "api.example.com").lower()
PREFIX = "/api/users"
# The data, kept in memory: it starts over when mitmlite restarts or this file is edited.
USERS: dict[int, dict[str, Any]] = {
    1: {"id": 1, "name": "Ada Lovelace"},
    2: {"id": 2, "name": "Alan Turing"},
}

Answer = tuple[int, Any, dict[str, str]]


def request(flow: Flow) -> None:
    # request, not requestheaders: a POST's JSON body is only readable once it is buffered.
    if flow.request.host.lower() != HOST or flow.response is not None:
        return
    status, body, headers = route(flow)
    # Response.make serialises the data and sets Content-Type: application/json.
    flow.response = Response.make(status, body, {"Cache-Control": "no-store", **headers})


def route(flow: Flow) -> Answer:
    method = flow.request.method
    path = flow.request.path.split("?", 1)[0].rstrip("/")
    if path == PREFIX:
        if method == "GET":
            return 200, list(USERS.values()), {}
        if method == "POST":
            return create(flow)
        return _not_allowed("GET, POST")
    if path.startswith(PREFIX + "/") and "/" not in path[len(PREFIX) + 1 :]:
        if method != "GET":
            return _not_allowed("GET")
        user_id = path[len(PREFIX) + 1 :]
        user = USERS.get(int(user_id)) if user_id.isdigit() else None
        if user is None:
            return 404, {"error": f"no user {user_id}"}, {}
        return 200, user, {}
    return 404, {"error": f"no route {path or '/'}"}, {}


def create(flow: Flow) -> Answer:
    try:
        data = flow.request.json()
    except ValueError:  # json.JSONDecodeError, and UnicodeDecodeError for a non-UTF-8 body
        return 400, {"error": "the body is not JSON"}, {}
    if not isinstance(data, dict) or not isinstance(data.get("name"), str):
        return 400, {"error": 'expected {"name": "..."}'}, {}
    user_id = max(USERS, default=0) + 1
    USERS[user_id] = {"id": user_id, "name": data["name"]}
    return 201, USERS[user_id], {"Location": f"{PREFIX}/{user_id}"}


def _not_allowed(allow: str) -> Answer:
    # RFC 9110 §15.5.6: a 405 must say which methods the resource supports.
    return 405, {"error": "method not allowed"}, {"Allow": allow}
