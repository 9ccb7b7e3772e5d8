"""HAR 1.2 export: one entry per finished exchange, and the sink that keeps them in a file.

Owns the mapping from ``FlowRecord`` to an HTTP Archive entry (http://www.softwareishard.com/blog/
har-12-spec/), shaped the way Chrome DevTools writes it where the spec leaves room (status 0 and
``_error`` for a failed request, ``x-unknown`` for a missing MIME type, custom fields with ``_``),
and ``HarSink``, which holds the entries and rewrites the file atomically on demand.

Building entries is pure (a record in, a JSON-able dict out); only ``HarSink.write`` touches the
file system. No trio, no sockets: the periodic flush may run in a worker thread.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import tempfile
import threading
import time
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mitmlite import __version__, encoding
from mitmlite.flow import Capture, FlowRecord, RawFields

__all__ = ["DECODE_LIMIT", "HarSink", "har_document", "har_entry"]

# A captured body of N wire bytes may inflate far beyond N (a decompression bomb, or just a very
# compressible page); past this the text is left out rather than held in memory for the whole run.
DECODE_LIMIT = 16 * 1024 * 1024
_TEXTUAL = ("text/", "json", "xml", "javascript", "ecmascript", "x-www-form-urlencoded", "graphql")
_FORM = "application/x-www-form-urlencoded"
# Chrome writes this when a response has no Content-Type (and for failed requests).
_UNKNOWN_MIME = "x-unknown"
_EPOCH = "1970-01-01T00:00:00.000Z"
_NETSCAPE_DAY = re.compile(r"\b(\d{1,2})-([A-Za-z]{3})-(\d{2,4})\b")  # 21-Oct-2015 in cookie dates


def har_document(entries: list[dict[str, Any]], version: str) -> dict[str, Any]:
    """The whole archive: ``{"log": {...}}`` around ``entries``, written by mitmlite ``version``."""
    return {
        "log": {
            "version": "1.2",
            "creator": {"name": "mitmlite", "version": version},
            # A proxy sees no page loads; an empty list keeps readers that expect the key happy.
            "pages": [],
            "entries": entries,
        }
    }


def har_entry(record: FlowRecord, *, decode_limit: int = DECODE_LIMIT) -> dict[str, Any]:
    """One exchange as a HAR entry; ``decode_limit`` caps a body's decoded size (else no text)."""
    timings = _timings(record)
    # The spec's time is the sum of the timings that apply; ssl is already inside connect.
    total = sum(v for k, v in timings.items() if k != "ssl" and v > 0)
    entry: dict[str, Any] = {
        "startedDateTime": _iso(_wall_started(record)),
        "time": round(total, 3),
        "request": _request(record, decode_limit),
        "response": _response(record, decode_limit),
        "cache": {},
        "timings": timings,
    }
    if record.server_address:
        entry["serverIPAddress"] = _split_address(record.server_address)[0]
    client_port = _split_address(record.client)[1]
    if client_port:
        # Chrome's connection is the id of the browser's socket (to us, when it uses a proxy);
        # the client's port names that socket, and the spec allows "the client ... port number".
        entry["connection"] = client_port
    entry["_clientAddress"] = record.client
    tls = _tls(record)
    if tls:
        entry["_tls"] = tls
    if record.unverified:
        entry["_unverifiedUpstream"] = True
    if record.error is not None:
        entry["_error"] = record.error
    return entry


# --- request and response -------------------------------------------------------------------------


def _request(record: FlowRecord, decode_limit: int) -> dict[str, Any]:
    fields = record.request_headers or []
    request: dict[str, Any] = {
        "method": record.method,
        "url": record.url,
        "httpVersion": record.http_version,
        "cookies": _request_cookies(fields),
        "headers": _headers(fields),
        "queryString": _pairs(urlsplit(record.url).query),
        # The head as the client sent it is not kept (h11 hands over parsed fields), and a size
        # rebuilt from them would be a guess; the spec says -1 for "not available".
        "headersSize": -1,
        "bodySize": record.request_bytes,
    }
    if record.request_bytes or record.request_body:
        request["postData"] = _post_data(record, fields, decode_limit)
    return request


def _post_data(record: FlowRecord, fields: RawFields, decode_limit: int) -> dict[str, Any]:
    mime = _header(fields, "content-type") or ""
    post: dict[str, Any] = {"mimeType": mime}
    body = _Body(record.request_body, record.request_body_complete, fields, decode_limit)
    post.update(body.fields)
    if body.text is not None and _essence(mime) == _FORM:
        # Chrome and mitmproxy give params beside text for forms, though HAR 1.2 calls the two
        # mutually exclusive: readers that want either find it.
        post["params"] = _pairs(body.text)
    return post


def _response(record: FlowRecord, decode_limit: int) -> dict[str, Any]:
    if record.status is None:
        # No response reached the client: Chrome's shape for a failed request (status 0, sizes
        # -1, the reason in _error), which HAR viewers show as a failure.
        return {
            "status": 0,
            "statusText": "",
            "httpVersion": "",
            "cookies": [],
            "headers": [],
            "content": {"size": 0, "mimeType": _UNKNOWN_MIME},
            "redirectURL": "",
            "headersSize": -1,
            "bodySize": -1,
            "_error": record.error or "no response",
        }
    fields = record.response_headers or []
    return {
        "status": record.status,
        "statusText": record.reason,
        "httpVersion": record.http_version,
        "cookies": [_set_cookie(v, _wall_started(record)) for v in _values(fields, "set-cookie")],
        "headers": _headers(fields),
        "content": _content(record, fields, decode_limit),
        "redirectURL": _header(fields, "location") or "",
        "headersSize": -1,  # as for the request: the raw head is not kept
        "bodySize": record.response_bytes,
    }


def _content(record: FlowRecord, fields: RawFields, decode_limit: int) -> dict[str, Any]:
    content: dict[str, Any] = {
        # Decoded size when known (below); otherwise the wire size is the best figure there is.
        "size": record.response_bytes,
        "mimeType": _header(fields, "content-type") or _UNKNOWN_MIME,
    }
    body = _Body(record.response_body, record.response_body_complete, fields, decode_limit)
    if body.decoded_size is not None:
        content["size"] = body.decoded_size
        if body.coded:
            content["compression"] = body.decoded_size - record.response_bytes
    content.update(body.fields)
    return content


class _Body:
    """A captured body as HAR holds it: decoded text, base64, or a note on why neither."""

    def __init__(self, data: bytes, complete: bool, fields: RawFields, decode_limit: int) -> None:
        coding = _header(fields, "content-encoding")
        self.coded = bool(encoding.parse_codings(coding))
        self.decoded_size: int | None = None
        self.text: str | None = None
        self.fields: dict[str, Any] = {}
        if not complete:
            # Only a prefix was kept: a cut text would read as the whole body in every tool, and a
            # cut coded body cannot be decoded at all; say so instead (the size stays the wire's).
            self.fields["_truncated"] = True
            return
        try:
            decoded = encoding.decode(data, coding, limit=decode_limit)
        except encoding.EncodingError as exc:
            self.fields["_decodeError"] = str(exc)
            return
        self.decoded_size = len(decoded)
        self.text = _as_text(decoded, _header(fields, "content-type") or "")
        if self.text is not None:
            self.fields["text"] = self.text
        else:
            self.fields["text"] = base64.b64encode(decoded).decode("ascii")
            self.fields["encoding"] = "base64"


def _as_text(data: bytes, content_type: str) -> str | None:
    """The body as text when it decodes strictly (so the text holds every byte), else None."""
    essence = _essence(content_type)
    textual = any(marker in essence for marker in _TEXTUAL) or essence.endswith(("+json", "+xml"))
    charset = _charset(content_type) if textual else "utf-8"
    try:
        return data.decode(charset)
    except UnicodeDecodeError:
        return None


def _charset(content_type: str) -> str:
    for part in content_type.split(";")[1:]:
        key, _, value = part.strip().partition("=")
        label = value.strip().strip('"')
        if key.strip().lower() == "charset" and label:
            try:
                "".encode(label)  # LookupError for unknown labels and bytes-to-bytes codecs
            except LookupError:
                break
            return label
    return "utf-8"  # RFC 8259 §8.1 for JSON, and what browsers assume for unlabeled modern text


def _essence(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


# --- headers, cookies, query ----------------------------------------------------------------------


def _headers(fields: RawFields) -> list[dict[str, str]]:
    # latin-1 maps every byte to one code point, so obs-text values survive (RFC 9110 §5.5).
    return [{"name": n.decode("latin-1"), "value": v.decode("latin-1")} for n, v in fields]


def _values(fields: RawFields, name: str) -> list[str]:
    key = name.encode("ascii")
    return [v.decode("latin-1") for n, v in fields if n.lower() == key]


def _header(fields: RawFields, name: str) -> str | None:
    values = _values(fields, name)
    return ", ".join(values) if values else None


def _pairs(query: str) -> list[dict[str, str]]:
    # Decoded, as mitmproxy and Firefox write them; "replace" so odd escapes cannot break JSON.
    pairs = parse_qsl(query, keep_blank_values=True, errors="replace")
    return [{"name": name, "value": value} for name, value in pairs]


def _request_cookies(fields: RawFields) -> list[dict[str, str]]:
    cookies = []
    for value in _values(fields, "cookie"):  # HTTP/2 clients may split Cookie (RFC 9113 §8.2.3)
        for pair in value.split(";"):
            pair = pair.strip()
            if pair:
                cookies.append(_cookie_pair(pair))
    return cookies


def _cookie_pair(pair: str) -> dict[str, str]:
    # RFC 6265bis §5.6 step 3 / browsers: a pair without "=" is a cookie with an empty name.
    name, eq, value = pair.partition("=")
    if not eq:
        return {"name": "", "value": name.strip()}
    return {"name": name.strip(), "value": value.strip()}


def _set_cookie(header: str, now: float) -> dict[str, Any]:
    """One Set-Cookie field as a HAR cookie (RFC 6265 §5.2), each field its own cookie."""
    first, *attributes = header.split(";")
    seen: dict[str, str] = {}
    for attribute in attributes:
        key, _, value = attribute.strip().partition("=")
        seen[key.strip().lower()] = value.strip()  # §5.3: the last of a repeated attribute wins
    cookie: dict[str, Any] = dict(_cookie_pair(first.strip()))
    for key in ("path", "domain"):
        if seen.get(key):
            cookie[key] = seen[key]
    expires = _cookie_date(seen["expires"]) if "expires" in seen else None
    max_age = seen.get("max-age", "")
    if re.fullmatch(r"-?[0-9]+", max_age):
        # RFC 6265 §5.3 step 3: Max-Age wins over Expires; it counts from when the cookie came.
        seconds = int(max_age)
        expires = _try_iso(now + seconds) if seconds > 0 else _EPOCH
    if expires is not None:
        cookie["expires"] = expires
    cookie["httpOnly"] = "httponly" in seen
    cookie["secure"] = "secure" in seen
    if seen.get("samesite"):
        cookie["sameSite"] = seen["samesite"]
    return cookie


def _cookie_date(value: str) -> str | None:
    # Servers send RFC 1123 dates and the old Netscape "Wed, 21-Oct-2015 07:28:00 GMT"; a date
    # neither form matches is dropped (mitmproxy drops expires altogether) rather than guessed.
    try:
        parsed = parsedate_to_datetime(_NETSCAPE_DAY.sub(r"\1 \2 \3", value))
    except (TypeError, ValueError, IndexError):
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return _try_iso(parsed.timestamp())


# --- time, addresses, TLS -------------------------------------------------------------------------


def _wall_started(record: FlowRecord) -> float:
    # 0.0 means the relay filled no detail: the sink gets a record when it ends, so its start is
    # about now minus its duration, which beats a 1970 timestamp.
    return record.wall_started or time.time() - record.duration


def _iso(timestamp: float) -> str:
    """ISO 8601 with milliseconds and a zone, as the spec's example and Chrome write it."""
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _try_iso(timestamp: float) -> str | None:
    # A server's Max-Age or Expires may lie past year 9999, which datetime cannot hold.
    try:
        return _iso(timestamp)
    except (OverflowError, OSError, ValueError):
        return None


def _timings(record: FlowRecord) -> dict[str, float]:
    """HAR timings in ms from the record's monotonic stamps; -1 for phases that did not happen.

    The stamps split [started, end] into consecutive phases. A missing stamp takes the next one
    present (or the flow's end): a flow that failed while connecting spends its remaining time
    in connect, and a response made without an upstream spends it in send, so the phases always
    add up to the flow's duration.
    """
    t = record.timings
    phases: list[tuple[str, float | None]] = []
    if t.connect_start is not None:  # a new upstream connection was opened for this flow
        phases += [("blocked", t.connect_start), ("tcp", t.tcp_end)]
        if t.tls_end is not None:
            phases.append(("ssl", t.tls_end))
    phases += [("send", t.request_sent), ("wait", t.response_start), ("receive", t.response_end)]
    stamps: list[float] = []
    following = record.started + record.duration
    for _, stamp in reversed(phases):
        following = stamp if stamp is not None else following
        stamps.append(following)
    stamps.reverse()
    spent: dict[str, float] = {}
    previous = record.started
    for (name, _), stamp in zip(phases, stamps, strict=True):
        spent[name] = round(max(0.0, stamp - previous) * 1000, 3)
        previous = max(previous, stamp)
    connect = -1.0
    if "tcp" in spent:
        connect = round(spent["tcp"] + spent.get("ssl", 0.0), 3)  # HAR 1.2: ssl is in connect
    return {
        "blocked": spent.get("blocked", -1.0),
        # trio resolves inside its connect call, so DNS time is part of connect, not apart.
        "dns": -1.0,
        "connect": connect,
        "ssl": spent.get("ssl", -1.0),
        "send": spent["send"],
        "wait": spent["wait"],
        "receive": spent["receive"],
    }


def _split_address(address: str) -> tuple[str, str]:
    """``ip:port`` (IPv4), ``[v6]:port`` or bare ``v6:port`` as (ip, port); port "" if none."""
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        return host, rest[1:] if rest.startswith(":") and rest[1:].isdigit() else ""
    host, colon, port = address.rpartition(":")
    if not colon or not port.isdigit() or not host:
        return address, ""
    return host, port


def _tls(record: FlowRecord) -> dict[str, Any]:
    tls: dict[str, Any] = {}
    if record.client_tls is not None:
        version, cipher = record.client_tls
        tls["client"] = {"version": version, "cipher": cipher, "sni": record.sni}
    if record.server_tls is not None:
        version, cipher = record.server_tls
        tls["server"] = {"version": version, "cipher": cipher}
    return tls


# --- the sink -------------------------------------------------------------------------------------


class HarSink:
    """A FlowSink that keeps every flow as a HAR entry and writes the archive to ``path``.

    Entries are kept serialized (compact JSON, one string each): a fraction of the memory of
    nested dicts, and a flush joins strings instead of re-encoding every entry each time.
    """

    def __init__(
        self, path: str | os.PathLike[str], body_bytes: int, *, version: str = __version__
    ) -> None:
        self.path = os.fspath(path)
        self.body_bytes = body_bytes
        self.version = version
        self._entries: list[str] = []
        self._written = 0  # how many entries the last write held: dirty while more exist
        # The periodic flush may run in a worker thread while the shutdown flush runs in another;
        # one write at a time keeps an older snapshot from replacing a newer file.
        self._lock = threading.Lock()

    @property
    def capture(self) -> Capture:
        """What the relay must keep of each flow: all headers and up to ``body_bytes`` of bodies."""
        return Capture(headers=True, body_bytes=self.body_bytes)

    @property
    def entries(self) -> list[dict[str, Any]]:
        """The entries so far, as dicts (parsed back from their stored form)."""
        return [json.loads(entry) for entry in self._entries]

    @property
    def dirty(self) -> bool:
        """Whether entries arrived since the last write."""
        return len(self._entries) > self._written

    def __len__(self) -> int:
        return len(self._entries)

    def flow(self, record: FlowRecord) -> None:
        entry = har_entry(record)
        # list.append is atomic under the GIL, so a flush in a worker thread may run meanwhile.
        self._entries.append(json.dumps(entry, ensure_ascii=False, separators=(",", ":")))

    def event(self, client: str, message: str) -> None:
        """Connection-level events have no place in HAR, which records exchanges only."""

    def write(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write the whole archive to ``path`` (default: the sink's), atomically and as 0600."""
        with self._lock:
            count = len(self._entries)
            data = self._document(self._entries[:count])
            _atomic_write(self.path if path is None else os.fspath(path), data)
            self._written = count

    def flush_if_dirty(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write only when entries arrived since the last write (for a periodic flush)."""
        if self.dirty:
            self.write(path)

    def _document(self, entries: list[str]) -> bytes:
        # The stored entries are spliced into the empty document's "entries": [], its last key and
        # so its last "[]", one line each so a large archive stays greppable and diffable.
        empty = json.dumps(har_document([], self.version), ensure_ascii=False)
        head, tail = empty.rsplit("[]", 1)
        text = head + "[\n" + ",\n".join(entries) + "\n]" + tail + "\n"
        # A lone surrogate (a URL smuggled in with surrogateescape) cannot be UTF-8; as "\udcxx"
        # it is still a valid JSON escape, so the file always parses.
        return text.encode("utf-8", "backslashreplace")


def _atomic_write(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` so readers see the old file or the new one, never half.

    HAR files hold cookies and Authorization headers, so the file is private to the user:
    mkstemp creates it as 0600 (whatever the umask), and os.replace carries that mode over any
    older, more open file at ``path``.
    """
    directory = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())  # the data is on disk before the name points at it
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    # The rename itself is durable only once the directory is synced (POSIX); Windows cannot open
    # a directory this way, and there the replace is as durable as it gets.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
