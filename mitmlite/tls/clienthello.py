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

import struct
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
    "needs_rsa_leaf",
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


# TLS 1.2 cipher suites whose certificate is ECDSA (IANA TLS Cipher Suites registry): ECDHE_ECDSA
# and ECDH_ECDSA with RC4, 3DES, AES-CBC, AES-GCM, AES-CCM, Camellia, ARIA and ChaCha20.
_ECDSA_SUITES: Final = frozenset(
    {*range(0xC001, 0xC00B), 0xC023, 0xC024, 0xC025, 0xC026, 0xC02B, 0xC02C, 0xC02D, 0xC02E,
     0xC048, 0xC049, 0xC04A, 0xC04B, 0xC05C, 0xC05D, 0xC05E, 0xC05F, 0xC072, 0xC073, 0xC074,
     0xC075, 0xC086, 0xC087, 0xC088, 0xC089, *range(0xC0AC, 0xC0B0), 0xCCA9}
)  # fmt: skip
_TLS13: Final = 0x0304
# SignatureScheme values an ECDSA leaf can sign the handshake with (RFC 8446 §4.2.3): ecdsa with
# SHA-256/384/512 and the legacy ecdsa_sha1 (TLS 1.2, RFC 5246 §7.4.1.4.1 pairs).
_ECDSA_SIGNATURES: Final = frozenset({0x0403, 0x0503, 0x0603, 0x0203})


def needs_rsa_leaf(hello: ClientHello) -> bool:
    """True for a client that could not use our usual ECDSA leaf; mitmproxy answers them with RSA.

    That is a client whose signature_algorithms list no ECDSA scheme (a TLS 1.3 stack configured
    for RSA only), or one with neither TLS 1.3 (where ECDSA is mandatory to implement, RFC 8446
    §9.1) nor a TLS 1.2 cipher suite for an ECDSA certificate: older Java, Android and embedded
    stacks.
    """
    offered = hello.signature_algorithms
    if offered and not any(scheme in _ECDSA_SIGNATURES for scheme in offered):
        return True
    if _TLS13 in hello.versions:
        return False
    return not any(suite in _ECDSA_SUITES for suite in hello.cipher_suites)


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
    # Fast path: the whole ClientHello in the first record, as nearly every client sends it. It
    # returns only when every check below would pass; anything else takes the general path,
    # which also words the errors.
    if (
        len(data) >= _RECORD_HEADER + _HANDSHAKE_HEADER
        and data[0] == _HANDSHAKE_RECORD
        and data[1] == 3
        and data[5] == _CLIENT_HELLO
    ):
        record_length = data[3] << 8 | data[4]
        expected = _HANDSHAKE_HEADER + (data[6] << 16 | data[7] << 8 | data[8])
        if (
            0 < record_length <= MAX_RECORD_LENGTH
            and expected <= _HANDSHAKE_HEADER + MAX_HELLO_LENGTH
            and expected <= record_length
            and _RECORD_HEADER + expected <= len(data)
        ):
            return bytes(data[_RECORD_HEADER : _RECORD_HEADER + expected])
    message = bytearray()
    for fragment in _handshake_fragments(data):
        message += fragment
        expected_length = _check_handshake_header(message)
        if expected_length is not None and len(message) >= expected_length:
            return bytes(message[:expected_length])
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
#
# Offsets into the one message instead of a reader object per vector: every read is still
# bounds-checked, and an error's message (which names the vector and field it was reading) is
# only built when there is an error to report.


_SNI_LIST: Final = "ClientHello server_name server_name_list"
_ALPN_LIST: Final = "ClientHello ALPN protocol_name_list"


def _short(what: str, field: str, count: int, left: int) -> ClientHelloError:
    return ClientHelloError(f"{what}: {field} needs {count} bytes but only {left} are left")


def _trailing(what: str, count: int) -> ClientHelloError:
    return ClientHelloError(f"{what}: {count} unexpected trailing bytes")


def _vector(
    data: bytes, pos: int, end: int, length_size: int, what: str, field: str, minimum: int = 0
) -> tuple[int, int]:
    """Start and end of a vector at ``pos`` with a ``length_size``-byte length (RFC 8446 §3.4)."""
    if end - pos < length_size:
        raise _short(what, f"{field} length", length_size, end - pos)
    length = data[pos] if length_size == 1 else data[pos] << 8 | data[pos + 1]
    pos += length_size
    if length < minimum:
        raise ClientHelloError(f"{what}: {field} is {length} bytes, minimum {minimum}")
    if length > end - pos:
        raise _short(what, field, length, end - pos)
    return pos, pos + length


def _uints(
    data: bytes, start: int, end: int, size: int, what: str, suffix: str = ""
) -> tuple[int, ...]:
    """``data[start:end]`` as big-endian ``size``-byte integers (size 1 or 2)."""
    length = end - start
    if length % size:
        raise ClientHelloError(f"{what}{suffix}: {length} bytes is not a multiple of {size}")
    if size == 1:
        return tuple(data[start:end])
    return struct.unpack_from(f">{length >> 1}H", data, start)


def _parse_message(raw: bytes) -> ClientHello:
    what = "ClientHello"
    end = len(raw)
    pos = _HANDSHAKE_HEADER
    if end - pos < 2:
        raise _short(what, "legacy_version", 2, end - pos)
    legacy_version = raw[pos] << 8 | raw[pos + 1]
    pos += 2
    if end - pos < 32:
        raise _short(what, "random", 32, end - pos)
    pos += 32
    start, pos = _vector(raw, pos, end, 1, what, "legacy_session_id")
    if pos - start > 32:
        raise ClientHelloError("ClientHello: legacy_session_id is longer than 32 bytes")
    start, pos = _vector(raw, pos, end, 2, what, "cipher_suites", 2)
    cipher_suites = _uints(raw, start, pos, 2, what, " cipher_suites")
    _, pos = _vector(raw, pos, end, 1, what, "legacy_compression_methods", 1)
    # Before TLS 1.3 the extensions block may be absent altogether (RFC 5246 §7.4.1.2).
    extensions: dict[int, tuple[int, int]] = {}
    if pos < end:
        start, pos = _vector(raw, pos, end, 2, what, "extensions")
        extensions = _parse_extensions(raw, start, pos)
    if pos < end:
        raise _trailing(what, end - pos)
    return _client_hello(raw, legacy_version, cipher_suites, extensions)


def _parse_extensions(raw: bytes, pos: int, end: int) -> dict[int, tuple[int, int]]:
    """Extension type -> (start, end) of its data, in the client's order (dicts keep it)."""
    what = "ClientHello extensions"
    extensions: dict[int, tuple[int, int]] = {}
    while pos < end:
        if end - pos < 2:
            raise _short(what, "extension type", 2, end - pos)
        kind = raw[pos] << 8 | raw[pos + 1]
        pos += 2
        if end - pos < 2:
            raise _short(what, f"extension {kind} length", 2, end - pos)
        length = raw[pos] << 8 | raw[pos + 1]
        pos += 2
        if length > end - pos:
            raise _short(what, f"extension {kind}", length, end - pos)
        # RFC 8446 §4.2: there MUST NOT be more than one extension of the same type.
        if kind in extensions:
            raise ClientHelloError(f"ClientHello: extension {kind} appears twice")
        extensions[kind] = (pos, pos + length)
        pos += length
    return extensions


def _client_hello(
    raw: bytes,
    legacy_version: int,
    cipher_suites: tuple[int, ...],
    extensions: dict[int, tuple[int, int]],
) -> ClientHello:
    def uints(kind: int, length_size: int, size: int, what: str) -> tuple[int, ...]:
        span = extensions.get(kind)
        if span is None:
            return ()
        start, end = _vector(raw, span[0], span[1], length_size, what, "list", 1)
        items = _uints(raw, start, end, size, what, " list")
        if end < span[1]:
            raise _trailing(what, span[1] - end)
        return items

    # RFC 8446 §4.2.1: when supported_versions is present, legacy_version is frozen at 0x0303 and
    # must be ignored in favour of the list.
    versions = uints(_SUPPORTED_VERSIONS, 1, 2, "ClientHello supported_versions")
    return ClientHello(
        sni=_server_name(raw, extensions.get(_SERVER_NAME)),
        alpn_protocols=_alpn(raw, extensions.get(_ALPN)),
        versions=versions or (legacy_version,),
        cipher_suites=cipher_suites,
        extensions=tuple(extensions),
        supported_groups=uints(_SUPPORTED_GROUPS, 2, 2, "ClientHello supported_groups"),
        signature_algorithms=uints(_SIGNATURE_ALGORITHMS, 2, 2, "ClientHello signature_algorithms"),
        ec_point_formats=uints(_EC_POINT_FORMATS, 1, 1, "ClientHello ec_point_formats"),
        legacy_version=legacy_version,
        raw=raw,
    )


def _server_name(raw: bytes, span: tuple[int, int] | None) -> str | None:
    """The host_name entry of server_name (RFC 6066 §3), ASCII as sent, or None."""
    if span is None:
        return None
    what = "ClientHello server_name"
    pos, end = _vector(raw, span[0], span[1], 2, what, "server_name_list", 1)
    if end < span[1]:
        raise _trailing(what, span[1] - end)
    host: bytes | None = None
    while pos < end:
        name_type = raw[pos]
        start, pos = _vector(raw, pos + 1, end, 2, _SNI_LIST, "host_name", 1)
        # RFC 6066 §3: at most one name of each type. Unknown types are skipped, because their
        # length prefix is the same opaque<1..2^16-1> in every deployed implementation.
        if name_type == _HOST_NAME:
            if host is not None:
                raise ClientHelloError("ClientHello server_name: more than one host_name")
            host = raw[start:pos]
    return None if host is None else _ascii_host(host)


def _ascii_host(name: bytes) -> str:
    # RFC 6066 §3: HostName is the ASCII (A-label) form; IDNs arrive as xn-- labels.
    if not name.isascii():
        raise ClientHelloError(f"ClientHello server_name: host_name {name!r} is not ASCII")
    return name.decode("ascii")


def _alpn(raw: bytes, span: tuple[int, int] | None) -> tuple[str, ...]:
    """ALPN protocol names (RFC 7301 §3.1), in the client's order."""
    if span is None:
        return ()
    what = "ClientHello ALPN"
    pos, end = _vector(raw, span[0], span[1], 2, what, "protocol_name_list", 2)
    if end < span[1]:
        raise _trailing(what, span[1] - end)
    protocols = []
    while pos < end:
        start, pos = _vector(raw, pos, end, 1, _ALPN_LIST, "protocol_name", 1)
        # Protocol names are opaque bytes; latin-1 maps every byte to one character, so a name
        # round-trips exactly with .encode("latin-1"); registered names are ASCII and unchanged.
        protocols.append(raw[start:pos].decode("latin-1"))
    return tuple(protocols)
