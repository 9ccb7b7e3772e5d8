"""Parsing a TLS ClientHello from the bytes a client sent before the proxy answered.

Owns reading the TLS record layer far enough to reassemble the first handshake message (RFC 8446
§5.1), checking that it is a ClientHello (§4.1.2) and decoding the fields the proxy decides on
(SNI, ALPN) or fingerprints by (versions, cipher suites, extension order, groups, signature
algorithms, point formats). It follows the pure parsers' contract: bytes in; a value, "need more
bytes" or a typed error out. Pure: it must not import trio, socket or ssl, and it never answers the
client; it only reads what the TLS stack will read again for real.

SSLv2-compatible ClientHellos (RFC 5246 Appendix E.2) are not TLS records and are refused.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from mitmlite.errors import ClientError

__all__ = [
    "NEED_MORE_DATA",
    "ClientHello",
    "ClientHelloError",
    "NeedMoreData",
    "looks_like_tls",
    "parse_client_hello",
]

# RFC 8446 §5.1 ContentType and §4 HandshakeType.
_HANDSHAKE_RECORD: Final = 22
_CLIENT_HELLO: Final = 1
_RECORD_HEADER: Final = 5
_HANDSHAKE_HEADER: Final = 4
# RFC 8446 §5.1 caps a plaintext record at 2^14 bytes; we accept up to the TLS 1.2 ciphertext bound
# (RFC 5246 §6.2.3) and leave the exact record_overflow alert to the TLS stack. The bound is here so
# that a peer cannot make the proxy buffer without limit.
MAX_RECORD_LENGTH: Final = 2**14 + 2048
# The wire format allows 2^24 - 1 bytes; real hellos, post-quantum key shares included, stay under
# 2 KiB, and 64 KiB also bounds what a caller has to buffer while waiting for the rest.
MAX_HELLO_LENGTH: Final = 64 * 1024

# Extension types (IANA "TLS ExtensionType Values").
_SERVER_NAME: Final = 0  # RFC 6066 §3
_SUPPORTED_GROUPS: Final = 10  # RFC 8446 §4.2.7
_EC_POINT_FORMATS: Final = 11  # RFC 8422 §5.1.2
_SIGNATURE_ALGORITHMS: Final = 13  # RFC 8446 §4.2.3
_ALPN: Final = 16  # RFC 7301 §3.1
_SUPPORTED_VERSIONS: Final = 43  # RFC 8446 §4.2.1
_HOST_NAME: Final = 0  # RFC 6066 §3 NameType


class ClientHelloError(ClientError):
    """The client's first bytes are not a well-formed TLS ClientHello."""


@dataclass(frozen=True, slots=True)
class NeedMoreData:
    """The bytes so far are a valid prefix of a ClientHello; read more and parse again."""


NEED_MORE_DATA: Final = NeedMoreData()


@dataclass(frozen=True, slots=True)
class ClientHello:
    """The fields of a ClientHello the proxy decides on or fingerprints by.

    Tuples keep the client's order and its GREASE values (RFC 8701); fingerprinting filters them.
    """

    sni: str | None
    alpn_protocols: tuple[str, ...]
    versions: tuple[int, ...]
    cipher_suites: tuple[int, ...]
    extensions: tuple[int, ...]
    supported_groups: tuple[int, ...]
    signature_algorithms: tuple[int, ...]
    ec_point_formats: tuple[int, ...]
    legacy_version: int
    raw: bytes


def looks_like_tls(first_bytes: bytes) -> bool:
    """Whether ``first_bytes`` can start a TLS handshake record: type 22, version major 3.

    With fewer than 3 bytes only what is there is checked; no bytes at all is not TLS.
    """
    if not first_bytes or first_bytes[0] != _HANDSHAKE_RECORD:
        return False
    return len(first_bytes) < 2 or first_bytes[1] == 3


def parse_client_hello(data: bytes) -> ClientHello | NeedMoreData:
    """Parse the TLS records in ``data``; raise ClientHelloError if they cannot be a ClientHello.

    Bytes after the records that complete the ClientHello (e.g. 0-RTT data) are ignored.
    """
    message = _reassemble(data)
    if isinstance(message, NeedMoreData):
        return message
    return _parse_message(message)


# --- record layer -----------------------------------------------------------------------------


def _reassemble(data: bytes) -> bytes | NeedMoreData:
    """The first handshake message, joined from its fragments (RFC 8446 §5.1), or need-more."""
    message = bytearray()
    for fragment in _handshake_fragments(data):
        message += fragment
        expected = _check_handshake_header(message)
        if expected is not None and len(message) >= expected:
            return bytes(message[:expected])
    return NEED_MORE_DATA


def _handshake_fragments(data: bytes) -> Iterator[bytes]:
    """The fragments of the leading handshake records; the last one may be cut short.

    A generator, so records after the ClientHello's last one are never looked at: they may be
    ChangeCipherSpec or 0-RTT records (RFC 8446 §D.4, §4.2.10).
    """
    offset = 0
    while offset < len(data):
        length = _check_record_header(data[offset : offset + _RECORD_HEADER], offset)
        if length is None:
            return
        start = offset + _RECORD_HEADER
        yield data[start : start + length]
        offset = start + length


def _check_record_header(header: bytes, offset: int) -> int | None:
    """The record's fragment length, or None if the header is a valid but incomplete prefix."""
    # RFC 8446 §5.1: handshake messages MUST NOT be interleaved with other record types, so every
    # record before the ClientHello is complete must be a handshake record.
    if header[0] != _HANDSHAKE_RECORD:
        raise ClientHelloError(
            f"TLS record at byte {offset} has content type {header[0]}, not handshake (22)"
        )
    if len(header) >= 2 and header[1] != 3:
        version = header[1:3].hex()
        raise ClientHelloError(f"TLS record at byte {offset} has version 0x{version}, not 0x03xx")
    if len(header) < _RECORD_HEADER:
        return None
    length = int.from_bytes(header[3:5])
    # RFC 8446 §5.1: zero-length handshake fragments MUST NOT be sent.
    if length == 0:
        raise ClientHelloError(f"TLS record at byte {offset} is an empty handshake record")
    if length > MAX_RECORD_LENGTH:
        raise ClientHelloError(
            f"TLS record at byte {offset} is {length} bytes, over the limit {MAX_RECORD_LENGTH}"
        )
    return length


def _check_handshake_header(message: bytes | bytearray) -> int | None:
    """The whole message's length (header included), or None while the header is incomplete."""
    if message and message[0] != _CLIENT_HELLO:
        raise ClientHelloError(f"handshake message type {message[0]} is not ClientHello (1)")
    if len(message) < _HANDSHAKE_HEADER:
        return None
    length = int.from_bytes(message[1:4])
    if length > MAX_HELLO_LENGTH:
        raise ClientHelloError(
            f"ClientHello length {length} exceeds {MAX_HELLO_LENGTH // 1024} KiB"
        )
    return _HANDSHAKE_HEADER + length


# --- ClientHello body (RFC 8446 §4.1.2) ----------------------------------------------------------


class _Reader:
    """A cursor over one vector; every read is bounds-checked and names what it was reading."""

    __slots__ = ("_data", "_offset", "_what")

    def __init__(self, data: bytes, what: str) -> None:
        self._data = data
        self._offset = 0
        self._what = what

    @property
    def remaining(self) -> int:
        return len(self._data) - self._offset

    def read(self, count: int, field: str) -> bytes:
        if count > self.remaining:
            raise ClientHelloError(
                f"{self._what}: {field} needs {count} bytes but only {self.remaining} are left"
            )
        self._offset += count
        return self._data[self._offset - count : self._offset]

    def uint(self, size: int, field: str) -> int:
        return int.from_bytes(self.read(size, field))

    def vector(self, length_size: int, field: str, minimum: int = 0) -> _Reader:
        """A reader over a vector with a ``length_size``-byte length prefix (RFC 8446 §3.4)."""
        length = self.uint(length_size, f"{field} length")
        if length < minimum:
            raise ClientHelloError(f"{self._what}: {field} is {length} bytes, minimum {minimum}")
        return _Reader(self.read(length, field), f"{self._what} {field}")

    def uints(self, size: int) -> tuple[int, ...]:
        """The rest of this vector as big-endian ``size``-byte integers."""
        if self.remaining % size:
            raise ClientHelloError(
                f"{self._what}: {self.remaining} bytes is not a multiple of {size}"
            )
        rest = self.read(self.remaining, "items")
        return tuple(int.from_bytes(rest[i : i + size]) for i in range(0, len(rest), size))

    def expect_end(self) -> None:
        if self.remaining:
            raise ClientHelloError(f"{self._what}: {self.remaining} unexpected trailing bytes")


def _parse_message(raw: bytes) -> ClientHello:
    body = _Reader(raw[_HANDSHAKE_HEADER:], "ClientHello")
    legacy_version = body.uint(2, "legacy_version")
    body.read(32, "random")
    if body.vector(1, "legacy_session_id").remaining > 32:
        raise ClientHelloError("ClientHello: legacy_session_id is longer than 32 bytes")
    cipher_suites = body.vector(2, "cipher_suites", minimum=2).uints(2)
    body.vector(1, "legacy_compression_methods", minimum=1)
    # Before TLS 1.3 the extensions block may be absent altogether (RFC 5246 §7.4.1.2).
    extensions = _parse_extensions(body.vector(2, "extensions")) if body.remaining else {}
    body.expect_end()
    return _client_hello(raw, legacy_version, cipher_suites, extensions)


def _parse_extensions(block: _Reader) -> dict[int, bytes]:
    """Extension type -> data, in the client's order (dicts keep insertion order)."""
    extensions: dict[int, bytes] = {}
    while block.remaining:
        kind = block.uint(2, "extension type")
        data = block.vector(2, f"extension {kind}")
        # RFC 8446 §4.2: there MUST NOT be more than one extension of the same type.
        if kind in extensions:
            raise ClientHelloError(f"ClientHello: extension {kind} appears twice")
        extensions[kind] = data.read(data.remaining, "data")
    return extensions


def _client_hello(
    raw: bytes, legacy_version: int, cipher_suites: tuple[int, ...], extensions: dict[int, bytes]
) -> ClientHello:
    def uints(kind: int, length_size: int, size: int, name: str) -> tuple[int, ...]:
        if kind not in extensions:
            return ()
        reader = _Reader(extensions[kind], f"ClientHello {name}")
        items = reader.vector(length_size, "list", minimum=1).uints(size)
        reader.expect_end()
        return items

    # RFC 8446 §4.2.1: when supported_versions is present, legacy_version is frozen at 0x0303 and
    # must be ignored in favour of the list.
    versions = uints(_SUPPORTED_VERSIONS, 1, 2, "supported_versions") or (legacy_version,)
    return ClientHello(
        sni=_server_name(extensions.get(_SERVER_NAME)),
        alpn_protocols=_alpn(extensions.get(_ALPN)),
        versions=versions,
        cipher_suites=cipher_suites,
        extensions=tuple(extensions),
        supported_groups=uints(_SUPPORTED_GROUPS, 2, 2, "supported_groups"),
        signature_algorithms=uints(_SIGNATURE_ALGORITHMS, 2, 2, "signature_algorithms"),
        ec_point_formats=uints(_EC_POINT_FORMATS, 1, 1, "ec_point_formats"),
        legacy_version=legacy_version,
        raw=raw,
    )


def _server_name(data: bytes | None) -> str | None:
    """The host_name entry of server_name (RFC 6066 §3), ASCII as sent, or None."""
    if data is None:
        return None
    reader = _Reader(data, "ClientHello server_name")
    names = reader.vector(2, "server_name_list", minimum=1)
    reader.expect_end()
    host: bytes | None = None
    while names.remaining:
        name_type = names.uint(1, "name_type")
        entry = names.vector(2, "host_name", minimum=1)
        name = entry.read(entry.remaining, "name")
        # RFC 6066 §3: at most one name of each type. Unknown types are skipped, because their
        # length prefix is the same opaque<1..2^16-1> in every deployed implementation.
        if name_type == _HOST_NAME:
            if host is not None:
                raise ClientHelloError("ClientHello server_name: more than one host_name")
            host = name
    return None if host is None else _ascii_host(host)


def _ascii_host(name: bytes) -> str:
    # RFC 6066 §3: HostName is the ASCII (A-label) form; IDNs arrive as xn-- labels.
    if not name.isascii():
        raise ClientHelloError(f"ClientHello server_name: host_name {name!r} is not ASCII")
    return name.decode("ascii")


def _alpn(data: bytes | None) -> tuple[str, ...]:
    """ALPN protocol names (RFC 7301 §3.1), in the client's order."""
    if data is None:
        return ()
    reader = _Reader(data, "ClientHello ALPN")
    names = reader.vector(2, "protocol_name_list", minimum=2)
    reader.expect_end()
    protocols = []
    while names.remaining:
        name = names.vector(1, "protocol_name", minimum=1)
        # Protocol names are opaque bytes; latin-1 maps every byte to one character, so a name
        # round-trips exactly with .encode("latin-1"); registered names are ASCII and unchanged.
        protocols.append(name.read(name.remaining, "name").decode("latin-1"))
    return tuple(protocols)
