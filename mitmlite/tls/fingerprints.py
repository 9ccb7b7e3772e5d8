"""JA3 and JA4 TLS client fingerprints of a parsed ClientHello, and a JSON-able summary of it.

Owns turning a ``ClientHello`` into the two fingerprints that other tools log and share:

- JA3 (salesforce/ja3, ``python/ja3.py``): the MD5 of
  ``SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats`` in decimal, in the
  client's order, GREASE removed.
- JA4 (FoxIO-LLC/ja4, ``technical_details/JA4.md``): ``a_b_c`` where ``a`` is a readable prefix,
  ``b`` hashes the sorted cipher suites and ``c`` the sorted extensions plus the signature
  algorithms; ``ja4_r`` is the same before hashing.

and ``describe``, the one dict that ``--clienthello-log`` lines and ``-v`` output are made from.
Pure: values in, strings out; it must not import trio, socket or ssl, and never reads the wire
itself (``clienthello`` does that).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from typing import Final

from mitmlite.tls.clienthello import ClientHello

__all__ = ["describe", "is_grease", "ja3", "ja3_string", "ja4", "ja4_r"]

# Extension types (IANA "TLS ExtensionType Values") that JA4 treats specially.
_SERVER_NAME: Final = 0x0000  # RFC 6066 §3
_ALPN: Final = 0x0010  # RFC 7301 §3.1
_SUPPORTED_VERSIONS: Final = 0x002B  # RFC 8446 §4.2.1

# JA4.md "TLS and DTLS Version". DTLS values are listed for completeness; our parser only ever
# sees TLS records, so they cannot come up in practice.
_JA4_VERSIONS: Final = {
    0x0304: "13",
    0x0303: "12",
    0x0302: "11",
    0x0301: "10",
    0x0300: "s3",
    0x0002: "s2",
    0xFEFF: "d1",
    0xFEFD: "d2",
    0xFEFC: "d3",
}
_JA4_TRANSPORTS: Final = frozenset({"t", "q", "d"})
# JA4.md: an empty list is shown as twelve zeros rather than the hash of "", so that "nothing
# there" is obvious to a reader.
_JA4_EMPTY_HASH: Final = "0" * 12
_JA4_MAX_COUNT: Final = 99

_VERSION_NAMES: Final = {
    0x0304: "TLS 1.3",
    0x0303: "TLS 1.2",
    0x0302: "TLS 1.1",
    0x0301: "TLS 1.0",
    0x0300: "SSL 3.0",
    0x0002: "SSL 2.0",
}


def is_grease(value: int) -> bool:
    """Whether ``value`` is a GREASE code point (RFC 8701 §2: 0x0A0A, 0x1A1A, ..., 0xFAFA).

    The same sixteen values are reserved in every registry JA3/JA4 read (cipher suites,
    extensions, groups, versions, signature algorithms), and both fingerprints drop them, so that
    a client that picks fresh GREASE values per connection keeps one fingerprint.
    """
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


def _without_grease(values: Iterable[int]) -> list[int]:
    return [value for value in values if not is_grease(value)]


# --- JA3 ------------------------------------------------------------------------------------------


def ja3_string(hello: ClientHello) -> str:
    """The JA3 text: ``SSLVersion,Ciphers,Extensions,EllipticCurves,EllipticCurvePointFormats``.

    Follows salesforce/ja3 ``python/ja3.py``: the version is the ClientHello's legacy_version
    (771 for every TLS 1.3 client, which freezes it at 0x0303); every other non-GREASE value is
    kept in the client's order, the padding extension (21) included; absent lists are empty
    fields, so a hello without extensions ends in ``,,,``.
    """
    fields = (
        [hello.legacy_version],
        _without_grease(hello.cipher_suites),
        _without_grease(hello.extensions),
        _without_grease(hello.supported_groups),
        # Point formats are single bytes and can never be GREASE; the reference runs them through
        # the same filter, which is why this is not special-cased.
        list(hello.ec_point_formats),
    )
    return ",".join("-".join(str(value) for value in field) for field in fields)


def ja3(hello: ClientHello) -> str:
    """The JA3 fingerprint: the lowercase MD5 hex digest of ``ja3_string(hello)``."""
    # MD5 is what JA3 is defined as; it names a client, it protects nothing.
    digest = hashlib.md5(ja3_string(hello).encode("ascii"), usedforsecurity=False)
    return digest.hexdigest()


# --- JA4 ------------------------------------------------------------------------------------------


def ja4(hello: ClientHello, *, transport: str = "t") -> str:
    """The JA4 fingerprint, e.g. ``t13d1516h2_8daaf6152771_e5627efa2ab1``.

    ``transport`` is ``"t"`` (TLS over TCP, what this proxy sees), ``"q"`` (QUIC) or ``"d"``
    (DTLS): the ClientHello alone cannot tell them apart reliably, so the caller says.
    """
    prefix, ciphers, extensions = _ja4_parts(hello, transport)
    return f"{prefix}_{_ja4_hash(ciphers)}_{_ja4_hash(extensions)}"


def ja4_r(hello: ClientHello, *, transport: str = "t") -> str:
    """JA4 before hashing (FoxIO's ``ja4_r``): the sorted lists themselves, for debugging."""
    return "_".join(_ja4_parts(hello, transport))


def _ja4_parts(hello: ClientHello, transport: str) -> tuple[str, str, str]:
    """JA4_a, then the texts that JA4_b and JA4_c hash (JA4.md "JA4 Algorithm")."""
    if transport not in _JA4_TRANSPORTS:
        raise ValueError(f"JA4 transport must be 't', 'q' or 'd', not {transport!r}")
    ciphers = _without_grease(hello.cipher_suites)
    extensions = _without_grease(hello.extensions)
    prefix = "".join(
        (
            transport,
            _ja4_version(hello),
            # JA4.md "SNI": the extension's presence decides, not whether a host name parsed.
            "d" if _SERVER_NAME in extensions else "i",
            f"{min(len(ciphers), _JA4_MAX_COUNT):02d}",
            # JA4.md "Number of Extensions": SNI and ALPN are counted here, unlike in JA4_c.
            f"{min(len(extensions), _JA4_MAX_COUNT):02d}",
            _ja4_alpn(hello.alpn_protocols),
        )
    )
    cipher_list = _hex_list(sorted(ciphers))
    # JA4.md "Extension hash": SNI and ALPN are already in JA4_a; leaving them out keeps JA4_c
    # the same for one application whether it dials a name or an IP, with or without ALPN.
    extension_list = _hex_list(sorted(e for e in extensions if e not in (_SERVER_NAME, _ALPN)))
    algorithms = _hex_list(_without_grease(hello.signature_algorithms))  # client order, unsorted
    # "If there are no signature algorithms ..., then the string ends without an underscore."
    extension_text = f"{extension_list}_{algorithms}" if algorithms else extension_list
    return prefix, cipher_list, extension_text


def _ja4_version(hello: ClientHello) -> str:
    # JA4.md: the highest non-GREASE supported_versions value, else the ClientHello's version
    # (never the record layer's). ``hello.versions`` already holds exactly that choice, with
    # legacy_version standing in when the extension is absent; a supported_versions list of
    # nothing but GREASE falls back the same way rather than failing.
    versions = _without_grease(hello.versions)
    version = max(versions) if versions else hello.legacy_version
    return _JA4_VERSIONS.get(version, "00")


def _ja4_alpn(protocols: tuple[str, ...]) -> str:
    """First and last character of the first ALPN value (JA4.md "ALPN Extension Value")."""
    if not protocols or not protocols[0]:
        return "00"
    # clienthello decodes protocol names as latin-1 so that they round-trip to the wire bytes.
    name = protocols[0].encode("latin-1")
    first, last = name[:1], name[-1:]  # a one-byte value is both first and last
    if first.isalnum() and last.isalnum():  # bytes.isalnum is ASCII-only: 0-9, A-Z, a-z
        return (first + last).decode("ascii")
    # Otherwise the first and last characters of the value's hex form: 0x30 0xAB -> "3b".
    hex_form = name.hex()
    return hex_form[0] + hex_form[-1]


def _hex_list(values: Iterable[int]) -> str:
    # JA4.md: 4-character lowercase hex, comma-delimited. Fixed width makes the text sort the
    # same way as the numbers.
    return ",".join(f"{value:04x}" for value in values)


def _ja4_hash(text: str) -> str:
    if not text:
        return _JA4_EMPTY_HASH
    return hashlib.sha256(text.encode("ascii")).hexdigest()[:12]


# --- summary ------------------------------------------------------------------------------------


def describe(hello: ClientHello) -> dict[str, object]:
    """A JSON-able summary of ``hello`` for ``--clienthello-log`` lines and ``-v`` output.

    Lists are what the client sent, in its order and with its GREASE values: the fingerprints
    are the stable, GREASE-free view, so the lists can stay faithful to the wire.
    """
    return {
        "sni": hello.sni,
        "alpn": list(hello.alpn_protocols),
        "versions": [_version_name(version) for version in hello.versions],
        "cipher_suites": [f"0x{suite:04x}" for suite in hello.cipher_suites],
        "extensions": list(hello.extensions),
        "supported_groups": list(hello.supported_groups),
        "signature_algorithms": list(hello.signature_algorithms),
        "ja3": ja3(hello),
        "ja3_string": ja3_string(hello),
        "ja4": ja4(hello),
        "ja4_r": ja4_r(hello),
    }


def _version_name(version: int) -> str:
    if is_grease(version):
        return f"GREASE 0x{version:04x}"
    return _VERSION_NAMES.get(version, f"0x{version:04x}")
