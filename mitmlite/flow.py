"""The objects hook scripts read and rewrite: Flow, Request, Response, Headers, Query.

Owns the flow API (mitmproxy's vocabulary: ``flow.request``, ``flow.response``, ``.headers``,
``.content``, ``.text``, ``Response.make``), kept simple and typed; and ``FlowRecord``, the
summary a log line is made of. Bodies are kept as the bytes on the wire (``raw_content``) and
decoded on demand through ``encoding``, so a hook that never looks at a body costs nothing.
Pure: no trio, no sockets.
"""

from __future__ import annotations

import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Any, Protocol
from urllib.parse import parse_qsl, urlencode, urlsplit

from mitmlite import encoding
from mitmlite.errors import MitmliteError

RawFields = list[tuple[bytes, bytes]]
HeadersInit = Mapping[str, str] | Iterable[tuple[str | bytes, str | bytes]]
ChunkTransform = Callable[[bytes], bytes]

_ids = itertools.count(1)


def _b(value: str | bytes) -> bytes:
    # Header bytes are mapped to str with latin-1, which round-trips every byte (RFC 9110 §5.5
    # allows obs-text), so a script can never corrupt a header it did not mean to change.
    return value if isinstance(value, bytes) else value.encode("latin-1")


def _key(name: str | bytes) -> bytes | None:
    # A name that latin-1 cannot encode cannot be on the wire: a lookup finds nothing (so get()
    # and ``in`` keep the Mapping contract) instead of raising UnicodeEncodeError.
    try:
        return _b(name).lower()
    except UnicodeEncodeError:
        return None


class Headers(MutableMapping[str, str]):
    """HTTP fields: ordered, case-insensitive lookup, duplicates and the original name case kept.

    ``headers["Set-Cookie"]`` joins duplicates with ", " (as mitmproxy does); use ``get_all`` to
    see them one by one. Setting a name replaces every field of that name, in place.
    """

    def __init__(self, fields: HeadersInit | None = None, **headers: str) -> None:
        """From fields, a mapping, or keywords as in mitmproxy (``content_type="text/html"``
        is ``Content-Type``: underscores become dashes)."""
        self.fields: RawFields = []
        if isinstance(fields, Headers):
            # Its items() would join duplicates, and Set-Cookie fields must never be joined.
            fields = fields.fields
        elif isinstance(fields, Mapping):
            fields = list(fields.items())
        for name, value in fields or ():
            self.fields.append((_b(name), _b(value)))
        for keyword, value in headers.items():
            self.fields.append((_b(keyword.replace("_", "-")), _b(value)))

    def get_all(self, name: str) -> list[str]:
        key = _key(name)
        return [v.decode("latin-1") for n, v in self.fields if n.lower() == key]

    def set_all(self, name: str, values: Iterable[str]) -> None:
        """Replace every ``name`` field with ``values``, at the position of the first one."""
        key = _b(name).lower()
        index = next((i for i, (n, _) in enumerate(self.fields) if n.lower() == key), None)
        raw_name = self.fields[index][0] if index is not None else _b(name)
        kept = [(n, v) for n, v in self.fields if n.lower() != key]
        new = [(raw_name, _b(v)) for v in values]
        at = len(kept) if index is None else index
        self.fields = kept[:at] + new + kept[at:]

    def add(self, name: str, value: str) -> None:
        """Append a field, keeping any existing ones of that name (for Set-Cookie)."""
        self.fields.append((_b(name), _b(value)))

    def insert(self, index: int, name: str, value: str) -> None:
        """Insert a field at ``index`` among all fields (mitmproxy's ``insert``)."""
        self.fields.insert(index, (_b(name), _b(value)))

    def items(self, multi: bool = False) -> Any:
        """As a mapping's ``items()``; ``multi=True`` lists every field, duplicates apart, with
        their original name case (mitmproxy's ``items(multi=True)``)."""
        if multi:
            return [(n.decode("latin-1"), v.decode("latin-1")) for n, v in self.fields]
        return super().items()

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return ", ".join(values)

    def __setitem__(self, name: str, value: str) -> None:
        self.set_all(name, [value])

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self.set_all(name, [])

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str | bytes):
            return False
        key = _key(name)
        return any(n.lower() == key for n, _ in self.fields)

    def __iter__(self) -> Iterator[str]:
        seen: set[bytes] = set()
        for name, _ in self.fields:
            if name.lower() not in seen:
                seen.add(name.lower())
                yield name.decode("latin-1")

    def __len__(self) -> int:
        return len({n.lower() for n, _ in self.fields})

    def __repr__(self) -> str:
        return f"Headers({[(n.decode('latin-1'), v.decode('latin-1')) for n, v in self.fields]})"


class Query(MutableMapping[str, str]):
    """The query string of a request as an ordered multidict; edits rewrite ``request.path``."""

    def __init__(self, request: Request) -> None:
        self._request = request

    @property
    def fields(self) -> list[tuple[str, str]]:
        query = urlsplit(self._request.path).query
        # surrogateescape: a non-UTF-8 escape (%E9) survives an edit of another field unchanged.
        return parse_qsl(query, keep_blank_values=True, errors="surrogateescape")

    @fields.setter
    def fields(self, pairs: Iterable[tuple[str, str]]) -> None:
        path = self._request.path.split("?", 1)[0]
        query = urlencode(list(pairs), errors="surrogateescape")
        self._request.path = f"{path}?{query}" if query else path

    def get_all(self, name: str) -> list[str]:
        return [v for n, v in self.fields if n == name]

    def set_all(self, name: str, values: Iterable[str]) -> None:
        pairs = self.fields
        index = next((i for i, (n, _) in enumerate(pairs) if n == name), len(pairs))
        kept = [(n, v) for n, v in pairs if n != name]
        at = min(index, len(kept))
        self.fields = kept[:at] + [(name, v) for v in values] + kept[at:]

    def add(self, name: str, value: str) -> None:
        self.fields = [*self.fields, (name, value)]

    def __getitem__(self, name: str) -> str:
        values = self.get_all(name)
        if not values:
            raise KeyError(name)
        return values[0]

    def __setitem__(self, name: str, value: str) -> None:
        self.set_all(name, [value])

    def __delitem__(self, name: str) -> None:
        if not self.get_all(name):
            raise KeyError(name)
        self.set_all(name, [])

    def __iter__(self) -> Iterator[str]:
        return iter(dict.fromkeys(n for n, _ in self.fields))

    def __len__(self) -> int:
        return len(dict.fromkeys(n for n, _ in self.fields))


class _Message:
    """What requests and responses share: headers and a body kept as wire bytes."""

    headers: Headers
    raw_content: bytes | None
    stream: bool | ChunkTransform

    @property
    def content(self) -> bytes | None:
        """The body with its Content-Encoding undone; raises EncodingError if it cannot be."""
        if self.raw_content is None:
            return None
        return encoding.decode(self.raw_content, self.headers.get("content-encoding"))

    @content.setter
    def content(self, value: bytes | None) -> None:
        """Set the body; it is re-encoded with the message's Content-Encoding."""
        if value is None:
            self.raw_content = None
            return
        self.raw_content = encoding.encode(value, self.headers.get("content-encoding"))
        self._fix_length()

    @property
    def text(self) -> str | None:
        """The body decoded by Content-Encoding, then by its charset (see ``charset``).

        Bytes the charset cannot decode become lone surrogates (``surrogateescape``, as in
        mitmproxy), which setting ``.text`` turns back into the same bytes: reading the text and
        writing it back changes nothing a script did not change.
        """
        content = self.content
        if content is None:
            return None
        try:
            return content.decode(self._charset_of(content), "surrogateescape")
        except UnicodeDecodeError:  # codecs whose bad bytes are ASCII (UTF-16, ISO-2022-JP)
            return content.decode("utf-8", "surrogateescape")

    @text.setter
    def text(self, value: str | None) -> None:
        """Set the body from text, in its charset; one that cannot hold the text becomes UTF-8.

        Switching to UTF-8 also rewrites the Content-Type's charset (adding ``text/plain;
        charset=utf-8`` when there is none), as mitmproxy does, so the client decodes it right;
        so does non-ASCII text in a body that declared no charset anywhere. Nothing changes when
        the text cannot be encoded at all (a lone surrogate): UnicodeEncodeError.
        """
        if value is None:
            self.content = None
            return
        declared = self._declared_charset()
        sniffed = (
            None if declared else self._sniffed_charset(value[:_SNIFF].encode("utf-8", "replace"))
        )
        charset = declared or sniffed or "utf-8"
        try:
            encoded = value.encode(charset, "surrogateescape")
            # UTF-8 nobody declared: say so, or a browser reads non-ASCII text as windows-1252.
            declare = charset == "utf-8" and not (declared or sniffed) and not value.isascii()
            declare = declare and "content-type" in self.headers
        except UnicodeEncodeError:
            encoded = value.encode("utf-8", "surrogateescape")  # raises before anything changed
            declare = True
        self.content = encoded
        if declare:
            self._declare_charset("utf-8")

    def get_text(self) -> str | None:
        """``.text``, under mitmproxy's method name."""
        return self.text

    def set_text(self, value: str | None) -> None:
        """Set ``.text``, under mitmproxy's method name."""
        self.text = value

    @property
    def charset(self) -> str:
        """The charset ``.text`` uses: the Content-Type's; else, for HTML, a ``<meta charset>``
        in the body (for CSS an ``@charset``); else UTF-8."""
        try:
            content = self.content or b""
        except encoding.EncodingError:  # a body that cannot be decoded declares nothing
            content = b""
        return self._charset_of(content)

    def _charset_of(self, content: bytes) -> str:
        return self._declared_charset() or self._sniffed_charset(content) or "utf-8"

    def _declared_charset(self) -> str | None:
        for part in self.headers.get("content-type", "").split(";")[1:]:
            key, _, value = part.strip().partition("=")
            if key.lower() == "charset" and value:
                return _codec(value.strip('"'))
        return None

    def _sniffed_charset(self, content: bytes) -> str | None:
        kind = self.headers.get("content-type", "").split(";")[0].strip().lower()
        pattern = _META_CHARSET if "html" in kind else _CSS_CHARSET if kind == "text/css" else None
        if pattern is not None and (found := pattern.search(content[:_SNIFF])):
            return _codec(found.group(1).decode("ascii", "ignore"))
        return None

    def _declare_charset(self, charset: str) -> None:
        content_type = self.headers.get("content-type", "")
        params = [p.strip() for p in content_type.split(";")[1:] if p.strip()]
        params = [p for p in params if p.partition("=")[0].strip().lower() != "charset"]
        media = content_type.split(";")[0].strip() or "text/plain"
        self.headers["content-type"] = "; ".join([media, *params, f"charset={charset}"])

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.content or b"")

    def _fix_length(self) -> None:
        # A buffered body is sent with an exact Content-Length, replacing chunked framing.
        if self.raw_content is not None:
            self.headers.set_all("transfer-encoding", [])
            self.headers["content-length"] = str(len(self.raw_content))


# Where a page may declare its charset in its own bytes (HTML: within the first 1024 bytes, by
# the HTML standard's prescan; a little more is looked at, as mitmproxy does not limit it).
_SNIFF = 4096
_META_CHARSET = re.compile(rb"""<meta[^>]+charset=['"]?([^'">\s/;]+)""", re.IGNORECASE)
_CSS_CHARSET = re.compile(rb"""^@charset "([^"]+)";""")


def _codec(label: str) -> str:
    """A Python codec for a charset label; UTF-8 for one Python cannot decode text with.

    Falling back mirrors browsers, which fall back for labels the WHATWG Encoding Standard does
    not know: reading ``.text`` never raises LookupError. GB2312 and GBK are read as their
    superset GB18030, as browsers and mitmproxy do.
    """
    label = label.strip().lower()
    if label in ("gb2312", "gbk"):
        return "gb18030"
    return label if _is_text_codec(label) else "utf-8"


def _is_text_codec(label: str) -> bool:
    # LookupError both for unknown labels and for bytes-to-bytes codecs such as "rot13" or "hex".
    try:
        "".encode(label)
    except LookupError:
        return False
    return True


@dataclass(eq=False)
class Request(_Message):
    """An HTTP request as a hook sees it; every field may be changed."""

    method: str
    scheme: str
    host: str
    port: int
    path: str
    http_version: str = "HTTP/1.1"
    headers: Headers = field(default_factory=Headers)
    raw_content: bytes | None = None
    stream: bool | ChunkTransform = False

    def __post_init__(self) -> None:
        self._built = True

    def __setattr__(self, name: str, value: Any) -> None:
        super().__setattr__(name, value)
        # As in mitmproxy: a new host or port is also the Host header's, when there is one, so
        # the server picks the virtual host the request now goes to.
        if name in ("host", "port") and getattr(self, "_built", False) and "host" in self.headers:
            self.headers["host"] = self.authority

    @property
    def host_header(self) -> str | None:
        """The Host header, None when there is none; setting None removes it."""
        return self.headers.get("host")

    @host_header.setter
    def host_header(self, value: str | None) -> None:
        if value is None:
            self.headers.pop("host", None)
        else:
            self.headers["host"] = value

    @property
    def pretty_host(self) -> str:
        """The host the client named (the Host header's, without a port), else ``host``."""
        header = self.host_header
        if not header:
            return self.host
        if header.startswith("["):
            return header[1 : header.find("]")] if "]" in header else header
        return header.rpartition(":")[0] if ":" in header else header

    @property
    def query(self) -> Query:
        return Query(self)

    @query.setter
    def query(self, pairs: Mapping[str, str] | Iterable[tuple[str, str]]) -> None:
        Query(self).fields = list(pairs.items()) if isinstance(pairs, Mapping) else list(pairs)

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"

    @property
    def url(self) -> str:
        # "*" (OPTIONS about the whole server) is no path of the URL.
        return f"{self.scheme}://{self.authority}{'' if self.path == '*' else self.path}"

    @url.setter
    def url(self, value: str) -> None:
        """Re-target the request: scheme, host, port, path and the Host header follow the URL."""
        try:
            parts = urlsplit(value)
            port = parts.port  # raises ValueError for a port out of range or not a number
        except ValueError as exc:
            raise MitmliteError(f"cannot set request.url to {value!r}: {exc}") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname or port == 0:
            raise MitmliteError(f"cannot set request.url to {value!r}: need http(s)://host/...")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = port or (443 if parts.scheme == "https" else 80)
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if "host" in self.headers:
            self.headers["host"] = self.authority

    @property
    def pretty_url(self) -> str:
        return self.url


@dataclass(eq=False)
class Response(_Message):
    """An HTTP response as a hook sees it; every field may be changed."""

    status_code: int
    reason: str = ""
    http_version: str = "HTTP/1.1"
    headers: Headers = field(default_factory=Headers)
    raw_content: bytes | None = None
    stream: bool | ChunkTransform = False

    @classmethod
    def make(
        cls,
        status_code: int = 200,
        content: bytes | str | Any = b"",
        headers: HeadersInit | None = None,
    ) -> Response:
        """A complete response built by a script: bytes, text or JSON-able data.

        ``content`` is the decoded body, as ``.content`` is: text is encoded with the charset of
        a given Content-Type (UTF-8 by default) and the body with a given Content-Encoding.
        """
        try:
            reason = HTTPStatus(status_code).phrase
        except ValueError:
            reason = ""
        response = cls(status_code=status_code, reason=reason, headers=Headers(headers))
        if isinstance(content, str):
            response.headers.setdefault("content-type", "text/plain; charset=utf-8")
            response.text = content
        elif isinstance(content, bytes):
            response.content = content
        else:
            response.headers.setdefault("content-type", "application/json")
            response.content = json.dumps(content).encode()
        return response


@dataclass
class ClientInfo:
    """The client side of a flow: its address and, when intercepted, its TLS parameters."""

    address: str
    sni: str | None = None
    alpn: str | None = None  # the protocol agreed with the client (always http/1.1 today)
    alpn_offered: tuple[str, ...] = ()
    tls_version: str | None = None
    cipher: str | None = None


@dataclass
class ServerInfo:
    """The upstream side of a flow, once connected."""

    address: str | None = None
    tls_version: str | None = None
    cipher: str | None = None
    certificate_subject: str | None = None


@dataclass
class Timestamps:
    """Monotonic-clock seconds of each phase; None until it happened."""

    request_start: float | None = None
    request_end: float | None = None
    response_start: float | None = None
    response_end: float | None = None


@dataclass(eq=False)
class Flow:
    """One request/response exchange. Exactly one of ``response`` or ``error`` ends it."""

    request: Request
    client: ClientInfo
    server: ServerInfo = field(default_factory=ServerInfo)
    response: Response | None = None
    error: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    timestamps: Timestamps = field(default_factory=Timestamps)
    id: int = field(default_factory=lambda: next(_ids))
    killed: bool = False
    started: float = field(default_factory=time.monotonic)

    def kill(self) -> None:
        """Close the client connection instead of answering."""
        self.killed = True


@dataclass(eq=False)
class ClientHelloData:
    """A tunnel's ClientHello, as the ``tls_clienthello(data)`` hook sees it, before any answer.

    Setting ``ignore_connection = True`` relays the tunnel byte for byte: mitmlite never answers
    its handshake (mitmproxy's ``tls_clienthello`` contract).
    """

    client: str  # the client's address
    host: str  # the CONNECT target
    port: int
    sni: str | None
    alpn_protocols: tuple[str, ...]
    ja3: str
    ja4: str
    details: dict[str, Any]  # versions, cipher suites, extensions, groups, signature algorithms
    ignore_connection: bool = False


@dataclass(frozen=True, slots=True)
class Capture:
    """How much of each flow the sinks want kept beyond the summary line.

    ``headers`` for ``-v`` and HAR; ``body_bytes`` > 0 keeps that many leading bytes of each body
    as it streams past (``-vv``, HAR), so a capture never buffers a body the relay streams.
    """

    headers: bool = False
    body_bytes: int = 0

    @property
    def enabled(self) -> bool:
        return self.headers or self.body_bytes > 0


@dataclass(eq=False, slots=True)
class FlowTimings:
    """Monotonic stamps of one exchange's phases (None when a phase did not happen)."""

    connect_start: float | None = None  # a new upstream connection was opened for this flow
    tcp_end: float | None = None
    tls_end: float | None = None
    request_sent: float | None = None  # the last request byte went to the upstream
    response_start: float | None = None  # the response head arrived
    response_end: float | None = None


@dataclass(eq=False, slots=True)
class FlowRecord:
    """One exchange as the log and HAR see it: who asked what, and how it ended.

    The summary fields are always filled. Headers, body previews, TLS details and timings are
    filled only when a sink asked for them through ``Capture``.
    """

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
    # Detail, filled under Capture:
    wall_started: float = 0.0  # time.time() at the start, for HAR's startedDateTime
    http_version: str = "HTTP/1.1"
    reason: str = ""
    request_headers: RawFields | None = None
    response_headers: RawFields | None = None
    request_body: bytes = b""  # the leading Capture.body_bytes of the body, as on the wire
    response_body: bytes = b""
    request_body_complete: bool = True  # False when the capture kept only a prefix
    response_body_complete: bool = True
    server_address: str | None = None
    client_tls: tuple[str | None, str | None] | None = None  # (version, cipher)
    server_tls: tuple[str | None, str | None] | None = None
    sni: str | None = None
    timings: FlowTimings = field(default_factory=FlowTimings)


class FlowSink(Protocol):
    """Where finished flows and connection-level events go (the log, later HAR)."""

    def flow(self, record: FlowRecord) -> None:
        """One finished exchange, successful or not."""

    def event(self, client: str, message: str) -> None:
        """A connection-level event or error that is not tied to one exchange."""
