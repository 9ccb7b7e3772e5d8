"""Between the wire and the flow API: h11 heads to ``Request``/``Response`` objects and back.

Owns the translation the relay needs when hooks run: building the objects a script sees from
what h11 parsed, building the heads to send from what the script left, where a re-targeted
request must now go, and how a body the proxy rewrote or buffered is framed. Pure: no trio, no
sockets; the relay does the sending.
"""

from __future__ import annotations

from urllib.parse import quote

import h11

from mitmlite.flow import Headers, Request, Response

RawFields = list[tuple[bytes, bytes]]

# Responses that never carry a body, whatever their headers say (RFC 9110 §6.4.1).
_BODYLESS_STATUS = frozenset({204, 304})
_FRAMING = (b"content-length", b"transfer-encoding")


def http_version(raw: bytes) -> str:
    return f"HTTP/{raw.decode('ascii', 'replace')}"


def request_from_head(
    method: bytes, origin: tuple[str, str, int], target: bytes, fields: RawFields, version: bytes
) -> Request:
    """The ``Request`` a hook sees; ``origin`` is (scheme, host, port), ``target`` origin-form."""
    scheme, host, port = origin
    return Request(
        method=method.decode("ascii", "replace"),
        scheme=scheme,
        host=host,
        port=port,
        path=target.decode("ascii", "replace"),
        http_version=http_version(version),
        headers=Headers(fields),
    )


def response_from_head(
    head: h11.Response | h11.InformationalResponse, fields: RawFields
) -> Response:
    return Response(
        status_code=head.status_code,
        reason=head.reason.decode("latin-1"),
        http_version=http_version(head.http_version),
        headers=Headers(fields),
    )


def is_event_stream(response: Response) -> bool:
    """Server-Sent Events never end; buffering them would stall the client forever."""
    content_type = response.headers.get("content-type", "")
    return content_type.split(";", 1)[0].strip().lower() == "text/event-stream"


def response_has_body(method: str, status_code: int) -> bool:
    return method.upper() != "HEAD" and status_code not in _BODYLESS_STATUS and status_code >= 200


def framed_for_body(headers: Headers, body: bytes, *, had_body: bool) -> RawFields:
    """Fields for a complete body: an exact Content-Length replaces chunked framing.

    A message that had no body and still has none keeps its fields as they are: a GET gains no
    ``Content-Length: 0``, and a HEAD response keeps the length of the body it describes.
    """
    if not body and not had_body:
        return list(headers.fields)
    fields = _without_framing(headers)
    fields.append((b"Content-Length", str(len(body)).encode()))
    return fields


def framed_for_stream(headers: Headers, *, transformed: bool) -> RawFields:
    """Fields for a streamed body; a transform changes sizes, so it is sent chunked."""
    if not transformed:
        return list(headers.fields)
    fields = _without_framing(headers)
    fields.append((b"Transfer-Encoding", b"chunked"))
    return fields


def _without_framing(headers: Headers) -> RawFields:
    return [(n, v) for n, v in headers.fields if n.lower() not in _FRAMING]


def has_body_framing(fields: RawFields) -> bool:
    return any(n.lower() in _FRAMING for n, _ in fields)


def request_head(request: Request, fields: RawFields) -> h11.Request:
    """The head sent upstream: origin-form target, HTTP/1.1 (h11 speaks nothing else)."""
    return h11.Request(method=request.method.encode("ascii"), target=_target(request.path),
                       headers=fields)  # fmt: skip


def response_head(response: Response, fields: RawFields) -> h11.Response:
    # h11 checks header fields but writes the reason phrase as given: a CR or LF from a script
    # would split the response (RFC 9112 §4: reason-phrase is HTAB, SP, VCHAR, obs-text only).
    if any((c < " " and c != "\t") or c == "\x7f" for c in response.reason):
        raise ValueError(f"reason phrase {response.reason!r} has control characters")
    return h11.Response(status_code=response.status_code, headers=fields,
                        reason=response.reason.encode("latin-1", "replace"))  # fmt: skip


def _target(path: str) -> bytes:
    # A script may write any text into path; a request target is ASCII without spaces
    # (RFC 9112 §3.2), so anything else is percent-encoded rather than sent broken.
    if not path.startswith("/") and path != "*":
        path = "/" + path
    return quote(path, safe="/?#[]@!$&'()*+,;=:%~-._").encode("ascii")
