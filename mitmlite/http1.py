"""HTTP/1 rules a forward proxy applies on top of h11.

Owns: classifying the first request on a client connection (a CONNECT target or an absolute-form
``http://`` URL, anything else refused with a one-line reason), the hop-by-hop header rules for
forwarding a message to the next leg, and the bytes of the error responses the proxy itself writes.

Must stay pure: bytes and values in, values or a ``ClientError`` out; no trio, no sockets, no I/O.
h11 parses and frames the messages; this module only decides what they mean to a proxy.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from http import HTTPStatus

from mitmlite.errors import ClientError

__all__ = [
    "HOP_BY_HOP",
    "AbsoluteTarget",
    "ConnectTarget",
    "authority",
    "classify_request",
    "error_response",
    "header_block_size",
    "is_upgrade_request",
    "parse_host_port",
    "protocol_error_text",
    "reason_phrase",
    "strip_hop_by_hop",
]

Headers = Sequence[tuple[bytes, bytes]]

# RFC 9110 §7.6.1 names Connection, Proxy-Connection, Keep-Alive, TE, Transfer-Encoding and
# Upgrade; Proxy-Authenticate and Proxy-Authorization address only the adjacent proxy
# (§11.7.1, §11.7.2); Trailer was hop-by-hop in RFC 2616 §13.5.1 and is only advisory since
# RFC 9110 §6.6.2, and we do not promise to relay trailers, so we do not announce them either.
# TE is dropped even as "TE: trailers": it states what the client's leg accepts (RFC 9110 §10.1.4)
# and a sender of TE must also list it in Connection, which our upstream leg does not do.
HOP_BY_HOP: frozenset[bytes] = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authorization",
        b"proxy-authenticate",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

# Headers h11 reads to frame the body it is given (RFC 9112 §6); the body we forward was framed by
# the same headers on the way in, so they must survive even when a Connection header names them.
_FRAMING = frozenset({b"transfer-encoding", b"content-length"})

_MAX_HOST_LENGTH = 253  # RFC 1035 §2.3.4: 255 octets on the wire, 253 as text without the root dot
_REG_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")
_IPV6_CHARS = frozenset("0123456789abcdef:.")
_DIGITS = frozenset("0123456789")
_OWS = b" \t"  # RFC 9110 §5.6.3
_NON_ASCII = re.compile(rb"[\x80-\xff]")
_QUOTE_LIMIT = 80


@dataclass(frozen=True, slots=True)
class ConnectTarget:
    """The ``host:port`` of a CONNECT request (RFC 9110 §9.3.6)."""

    host: str  # lowercased; an IPv6 literal without brackets
    port: int

    @property
    def authority(self) -> str:
        """``host:port``, with an IPv6 literal in brackets."""
        return authority(self.host, self.port)


@dataclass(frozen=True, slots=True)
class AbsoluteTarget:
    """An absolute-form ``http://`` request target (RFC 9112 §3.2.2), split for the upstream leg."""

    scheme: str  # always "http": https goes through CONNECT
    host: str  # lowercased; an IPv6 literal without brackets
    port: int
    # origin-form for the upstream request line: starts with "/", keeps the query ("*" for an
    # OPTIONS about the whole server)
    path: bytes

    @property
    def authority(self) -> str:
        """``host:port`` (the port always present), with an IPv6 literal in brackets."""
        return authority(self.host, self.port)

    @property
    def host_header(self) -> bytes:
        """The Host value a proxy must send instead of the client's (RFC 9112 §3.2.2)."""
        if self.port == 80:
            return _bracket(self.host).encode("ascii")
        return self.authority.encode("ascii")

    @property
    def url(self) -> str:
        """The target as a URL, the default port left out, for logs and hooks."""
        path = "" if self.path == b"*" else self.path.decode("ascii")
        return f"{self.scheme}://{self.host_header.decode('ascii')}{path}"


def percent_encode_request_line(head: bytes) -> bytes:
    """``head`` with the bytes outside ASCII in its first line percent-encoded (RFC 3986 §2.1).

    curl sends a query as typed (``?q=ü`` as raw UTF-8) and servers take it, but h11 reads only
    visible ASCII in a request target, so such a request got a 400. Percent-encoded it is the
    URI those bytes stand for, as browsers send it. Only the first line changes: header values
    may carry such bytes (obs-text), and h11 takes them there.
    """
    end = head.find(b"\n")
    line, rest = (head, b"") if end < 0 else (head[:end], head[end:])
    if line.isascii():
        return head
    return _NON_ASCII.sub(lambda match: b"%%%02X" % match.group()[0], line) + rest


def classify_request(method: bytes, target: bytes) -> ConnectTarget | AbsoluteTarget:
    """Return what the first request on a proxy connection asks for, or raise ``ClientError``.

    Methods are case-sensitive (RFC 9110 §9.1), so only ``CONNECT`` opens a tunnel; every other
    method must carry an absolute-form target, the only form a forward proxy can route.
    """
    text = _ascii_target(target)
    if method == b"CONNECT":
        return _classify_connect(text)
    return _classify_absolute(method, text)


def parse_host_port(
    authority: str, default_port: int | None, *, what: str = "authority"
) -> tuple[str, int]:
    """Split ``host[:port]`` into a lowercased host and a port, or raise ``ClientError``.

    ``default_port=None`` makes the port mandatory; ``what`` names the authority in messages.
    Userinfo is refused: CONNECT's authority-form has none (RFC 9112 §3.2.3) and http URIs must
    not carry it (RFC 9110 §4.2.4).
    """
    if not authority:
        raise ClientError(f"{what} is empty: no host")
    if "@" in authority:
        raise ClientError(
            f"{what} {_quote(authority)} contains userinfo ('@'), which is not allowed"
        )
    host, port_text = _split_authority(authority, what)
    host = _validate_host(host, authority, what)
    if port_text is None:
        if default_port is None:
            raise ClientError(f"{what} {_quote(authority)} has no port")
        return host, default_port
    return host, _parse_port(port_text, authority, what)


def strip_hop_by_hop(
    headers: Headers, *, keep_upgrade: bool = False, keep_framing: bool = True
) -> list[tuple[bytes, bytes]]:
    """Return the headers to forward to the next leg; order, name case and duplicates are kept.

    Drops ``HOP_BY_HOP`` and every field a Connection header names (RFC 9110 §7.6.1), including
    ``Connection: close``: each leg manages its own persistence and h11 writes what its leg needs.
    ``keep_framing`` keeps Transfer-Encoding and Content-Length even if a Connection header names
    them, since h11 frames the forwarded body from them; ``keep_framing=False`` drops both, for a
    caller that re-frames a rewritten body. ``keep_upgrade`` forwards an Upgrade handshake
    (RFC 9110 §7.8): ``Upgrade`` and one ``Connection: upgrade`` survive, other options do not.
    """
    options = _connection_options(headers)
    upgrading = keep_upgrade and b"upgrade" in options
    drop = (HOP_BY_HOP | options) - {b"connection"}
    if keep_framing:
        drop -= _FRAMING
    else:
        drop |= _FRAMING
    if upgrading:
        drop -= {b"upgrade"}
    return _filter_headers(headers, drop, upgrading)


def is_upgrade_request(headers: Headers) -> bool:
    """True when a message asks to switch protocols: an ``upgrade`` option and an Upgrade field.

    RFC 9110 §7.8: a sender of Upgrade must also send the ``upgrade`` connection option, and one
    without the other is not an upgrade.
    """
    has_upgrade = any(name.lower() == b"upgrade" and value.strip(_OWS) for name, value in headers)
    return has_upgrade and b"upgrade" in _connection_options(headers)


def header_block_size(headers: Headers) -> int:
    """Bytes the fields take on the wire: ``name: value`` plus CRLF for each (RFC 9112 §5)."""
    return sum(len(name) + len(value) + 4 for name, value in headers)


def reason_phrase(status: int) -> bytes:
    """The standard reason phrase for ``status`` (RFC 9110 §15), or ``b""`` when there is none."""
    try:
        return HTTPStatus(status).phrase.encode("ascii")
    except ValueError:
        return b""


_BYTES_REPR = re.compile(r"bytearray\((b'(?:[^'\\]|\\.)*'|b\"(?:[^\"\\]|\\.)*\")\)")


def protocol_error_text(exc: Exception) -> str:
    """h11's reason for ``exc`` as people read it: ``bytearray(b'X : v')`` becomes ``'X : v'``."""
    return _BYTES_REPR.sub(lambda match: match.group(1)[1:], str(exc))


def error_response(status: int, reason_line: str) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Headers and body for an error the proxy itself answers with ``status``.

    The body is ``reason_line`` as one line of UTF-8 text. Control characters become spaces so the
    line stays one line. ``Connection: close`` because after an error the proxy does not trust the
    framing of what the client sends next (RFC 9112 §9.6). ``status`` does not change the
    headers; it is taken so the call site reads as the response it builds.
    """
    line = "".join(" " if _is_control(char) else char for char in reason_line).strip()
    body = (line + "\n").encode("utf-8")
    headers = [
        (b"Content-Type", b"text/plain; charset=utf-8"),
        (b"Content-Length", str(len(body)).encode("ascii")),
        (b"Connection", b"close"),
    ]
    return headers, body


def _ascii_target(target: bytes) -> str:
    # RFC 9112 §3.2: a request-target is visible ASCII; h11 already enforces this, but callers
    # (and the fuzz test) may hand us anything.
    if not target:
        raise ClientError("request target is empty")
    if any(byte < 0x21 or byte > 0x7E for byte in target):
        shown = target[:_QUOTE_LIMIT]
        raise ClientError(f"request target {shown!r} has a byte that is not visible ASCII")
    return target.decode("ascii")


def _classify_connect(text: str) -> ConnectTarget:
    what = f"CONNECT target {_quote(text)}"
    if "/" in text or "?" in text or "#" in text:
        # RFC 9112 §3.2.3: authority-form is host:port and nothing else.
        raise ClientError(f"{what} is not host:port (has a path, query or fragment)")
    host, port = parse_host_port(text, None, what="CONNECT target")
    return ConnectTarget(host, port)


def _classify_absolute(method: bytes, text: str) -> AbsoluteTarget:
    request = f"{method.decode('ascii', 'replace')} {_quote(text, plain=True)}"
    if text.startswith("/"):
        raise ClientError(
            f"origin-form request '{request}' sent to a proxy; this is mitmlite, a forward proxy: "
            "send absolute-form (http://host/path) or CONNECT"
        )
    if text == "*":
        raise ClientError(f"asterisk-form request '{request}' is for an origin server, not a proxy")
    scheme, sep, rest = text.partition("://")
    if not sep or not scheme:
        raise ClientError(f"request target {_quote(text)} is not absolute-form (http://host/path)")
    return _absolute_http(scheme.lower(), rest, text, asterisk=method == b"OPTIONS")


def _absolute_http(scheme: str, rest: str, text: str, *, asterisk: bool = False) -> AbsoluteTarget:
    if scheme == "https":
        raise ClientError(f"absolute-form https target {_quote(text)}: use CONNECT for https")
    if scheme != "http":
        raise ClientError(f"scheme {_quote(scheme)} is not supported: only http:// and CONNECT")
    # absolute-form is an absolute-URI, which has no fragment (RFC 9112 §3.2.2), but clients
    # have sent one; it never concerns the server, so it is dropped (mitmproxy passes it on).
    rest = rest.partition("#")[0]
    end = min((i for i in (rest.find("/"), rest.find("?")) if i >= 0), default=len(rest))
    netloc, path = rest[:end], rest[end:]
    host, port = parse_host_port(netloc, 80, what="URL authority")
    # RFC 9112 §3.2.1: an empty path is sent as "/"; but OPTIONS with neither path nor query
    # asks about the server itself, which the last proxy sends as "*" (§3.2.4).
    if asterisk and not path:
        return AbsoluteTarget("http", host, port, b"*")
    origin_form = path if path.startswith("/") else "/" + path
    return AbsoluteTarget("http", host, port, origin_form.encode("ascii"))


def _split_authority(authority: str, what: str) -> tuple[str, str | None]:
    """Split off the port text (None when there is no ':'); a bracketed IPv6 keeps its brackets."""
    if authority.startswith("["):
        close = authority.find("]")
        if close < 0:
            raise ClientError(f"{what} {_quote(authority)} has an unbalanced '['")
        host, rest = authority[: close + 1], authority[close + 1 :]
        if rest and not rest.startswith(":"):
            raise ClientError(f"{what} {_quote(authority)} has text after ']' that is not a port")
        return host, (rest[1:] if rest else None)
    if authority.count(":") > 1:
        raise ClientError(f"{what} {_quote(authority)}: an IPv6 address must be in brackets")
    host, sep, port_text = authority.partition(":")
    return host, (port_text if sep else None)


def _validate_host(host: str, authority: str, what: str) -> str:
    """Lowercase and check a host loosely (RFC 3986 §3.2.2); the resolver has the final word.

    A trailing dot is kept: it names the same host to DNS, but a different one to SNI and to a
    certificate, so dropping it here would hide the difference from the layers that care.
    """
    host = host.lower()
    if host.startswith("["):
        return _validate_ipv6(host[1:-1], authority, what)
    if not host:
        raise ClientError(f"{what} {_quote(authority)} has an empty host")
    if len(host) > _MAX_HOST_LENGTH:
        raise ClientError(f"host in {what} is {len(host)} characters, over {_MAX_HOST_LENGTH}")
    if not set(host) <= _REG_NAME_CHARS:
        # Only letters, digits, '-', '.', '_' : IDNs arrive as punycode, so anything else
        # (percent-encoding, sub-delims) is a client bug or a smuggling attempt.
        raise ClientError(f"host {_quote(host)} in {what} has a character not allowed in a host")
    return host


def _validate_ipv6(literal: str, authority: str, what: str) -> str:
    # Zone ids ('%') are refused with everything else outside hex, ':' and '.': a link-local scope
    # of the client's machine means nothing to the proxy (RFC 9110 §4.2.3 has no zone ids).
    if not literal or not set(literal) <= _IPV6_CHARS:
        raise ClientError(f"{what} {_quote(authority)} has an invalid IPv6 address")
    try:
        ipaddress.IPv6Address(literal)
    except ValueError as exc:
        raise ClientError(f"{what} {_quote(authority)} has an invalid IPv6 address") from exc
    return literal


def _parse_port(port_text: str, authority: str, what: str) -> int:
    if not port_text or not set(port_text) <= _DIGITS:
        raise ClientError(f"port {_quote(port_text)} in {what} {_quote(authority)} is not a number")
    # The length check keeps int() away from huge digit strings (and its 4300-digit limit).
    port = int(port_text) if len(port_text) <= 5 else 0
    if not 1 <= port <= 65535:
        raise ClientError(f"port {port_text} in {what} {_quote(authority)} is outside 1-65535")
    return port


def _connection_options(headers: Headers) -> frozenset[bytes]:
    """The lowercased options of every Connection header (RFC 9110 §7.6.1, a #token list)."""
    return frozenset(
        token
        for name, value in headers
        if name.lower() == b"connection"
        for token in _comma_tokens(value)
    )


def _comma_tokens(value: bytes) -> Iterable[bytes]:
    # RFC 9110 §5.6.1: empty list elements and OWS around commas are allowed and ignored.
    return (item.strip(_OWS).lower() for item in value.split(b",") if item.strip(_OWS))


def _filter_headers(
    headers: Headers, drop: frozenset[bytes], upgrading: bool
) -> list[tuple[bytes, bytes]]:
    kept: list[tuple[bytes, bytes]] = []
    need_connection = upgrading
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"connection":
            if need_connection and b"upgrade" in _comma_tokens(value):
                # Only the upgrade option survives; others named alongside it were hop-by-hop.
                kept.append((name, b"upgrade"))
                need_connection = False
        elif lowered not in drop:
            kept.append((name, value))
    return kept


def authority(host: str, port: int) -> str:
    """``host:port`` for messages and targets, an IPv6 address in brackets (RFC 3986 §3.2.2)."""
    return f"{_bracket(host)}:{port}"


def _bracket(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _is_control(char: str) -> bool:
    return char < " " or char == "\x7f" or "\x80" <= char <= "\x9f" or char in "\u2028\u2029"


def _quote(text: str, *, plain: bool = False) -> str:
    """``text`` for a one-line message, cut at a fixed length; quoted with repr unless ``plain``."""
    cut = text if len(text) <= _QUOTE_LIMIT else text[:_QUOTE_LIMIT] + "..."
    return cut if plain else repr(cut)
