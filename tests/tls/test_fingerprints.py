"""Tests for mitmlite.tls.fingerprints: published JA3/JA4 vectors, real captures, and twins.

Published values and where they come from:

- JA3 README (github.com/salesforce/ja3, README.md "How it works"): two JA3 strings and their MD5.
- JA4 spec (github.com/FoxIO-LLC/ja4, technical_details/JA4.md "Example" and "Raw Output"): the
  cipher, extension and signature-algorithm lists of a Chrome hello, its JA4
  ``t13d1516h2_8daaf6152771_e5627efa2ab1`` and its JA4_r. FoxIO's Rust crate asserts the same
  values in ``rust/ja4/src/tls.rs`` (``test_client_stats_into_out``).
- FoxIO ``python/test/testdata/sigalg-grease.pcapng.json``: a Chrome hello whose JA4_ro gives the
  lists in wire order, with the expected JA4 ``t13d1517h2_8daaf6152771_cb7bf5808d99`` and JA4_r.
  Our own Chromium capture fingerprints to exactly that JA4, which is a second, independent check.

The hellos are built from those lists with the small builder below, parsed with
``parse_client_hello`` and fingerprinted: nothing in the chain is mocked.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

from mitmlite.tls.clienthello import ClientHello, parse_client_hello
from mitmlite.tls.fingerprints import describe, is_grease, ja3, ja3_string, ja4, ja4_r

DATA = Path(__file__).resolve().parent.parent / "data"
CAPTURES = ("curl", "openssl", "python_ssl", "chromium")
ALL_GREASE = tuple(0x0A0A + 0x1010 * i for i in range(16))

SNI, GROUPS, POINT_FORMATS, SIGALGS, ALPN, VERSIONS = 0x0000, 0x000A, 0x000B, 0x000D, 0x0010, 0x002B


# --- a ClientHello builder (RFC 8446 §4.1.2) --------------------------------------------------


def vec(data: bytes, length_size: int) -> bytes:
    return len(data).to_bytes(length_size) + data


def u16s(values: tuple[int, ...] | list[int]) -> bytes:
    return b"".join(value.to_bytes(2) for value in values)


def ext_data(
    kind: int,
    *,
    host: bytes = b"example.test",
    alpn: tuple[bytes, ...] = (b"h2",),
    versions: tuple[int, ...] = (0x0304, 0x0303),
    groups: tuple[int, ...] = (0x001D, 0x0017),
    sigalgs: tuple[int, ...] = (0x0403,),
    point_formats: tuple[int, ...] = (0,),
) -> bytes:
    """Well-formed data for the extensions the parser reads; empty data for all others."""
    if kind == SNI:
        return vec(b"\x00" + vec(host, 2), 2)
    if kind == ALPN:
        return vec(b"".join(vec(name, 1) for name in alpn), 2)
    if kind == VERSIONS:
        return vec(u16s(versions), 1)
    if kind == GROUPS:
        return vec(u16s(groups), 2)
    if kind == SIGALGS:
        return vec(u16s(sigalgs), 2)
    if kind == POINT_FORMATS:
        return vec(bytes(point_formats), 1)
    return b""


def build(
    ciphers: Iterable[int],
    extensions: list[tuple[int, bytes]] | None,
    *,
    legacy_version: int = 0x0303,
) -> ClientHello:
    """Parse a ClientHello built from lists; ``extensions=None`` omits the block altogether."""
    body = legacy_version.to_bytes(2) + bytes(32) + vec(b"", 1) + vec(u16s(tuple(ciphers)), 2)
    body += vec(b"\x00", 1)
    if extensions is not None:
        body += vec(b"".join(kind.to_bytes(2) + vec(data, 2) for kind, data in extensions), 2)
    message = b"\x01" + vec(body, 3)
    result = parse_client_hello(b"\x16\x03\x01" + vec(message, 2))
    assert isinstance(result, ClientHello)
    return result


def exts(kinds: Iterable[int], **data: Any) -> list[tuple[int, bytes]]:
    return [(kind, ext_data(kind, **data)) for kind in kinds]


def capture(name: str) -> bytes:
    return (DATA / f"clienthello_{name}.bin").read_bytes()


def parsed_capture(name: str) -> ClientHello:
    result = parse_client_hello(capture(name))
    assert isinstance(result, ClientHello)
    return result


# --- JA3: published vectors -------------------------------------------------------------------


def test_ja3_readme_vector_with_extensions() -> None:
    # salesforce/ja3 README: "769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0
    # --> ada70206e40642a3e4461f35503241d5".
    ciphers = (47, 53, 5, 10, 49161, 49162, 49171, 49172, 50, 56, 19, 4)
    hello = build(
        ciphers, exts((SNI, GROUPS, POINT_FORMATS), groups=(23, 24, 25)), legacy_version=769
    )
    assert (
        ja3_string(hello) == "769,47-53-5-10-49161-49162-49171-49172-50-56-19-4,0-10-11,23-24-25,0"
    )
    assert ja3(hello) == "ada70206e40642a3e4461f35503241d5"


def test_ja3_readme_vector_without_extensions() -> None:
    # salesforce/ja3 README: "If there are no SSL Extensions in the Client Hello, the fields are
    # left empty": "769,4-5-10-9-100-98-3-6-19-18-99,,, --> de350869b8c85de67a350c8d186f11e6".
    hello = build((4, 5, 10, 9, 100, 98, 3, 6, 19, 18, 99), None, legacy_version=769)
    assert ja3_string(hello) == "769,4-5-10-9-100-98-3-6-19-18-99,,,"
    assert ja3(hello) == "de350869b8c85de67a350c8d186f11e6"


def test_ja3_ignores_grease_everywhere() -> None:
    plain = build((47, 53), exts((SNI, GROUPS, POINT_FORMATS), groups=(23, 24)))
    greased = build(
        (0x2A2A, 47, 53),
        [(0x1A1A, b""), *exts((SNI, GROUPS, POINT_FORMATS), groups=(0xCACA, 23, 24))],
    )
    assert ja3_string(greased) == ja3_string(plain) == "771,47-53,0-10-11,23-24,0"
    assert ja3(greased) == ja3(plain)


def test_ja3_counts_values_next_to_grease() -> None:
    # Failing twin of the GREASE test: 0x0a0b looks like GREASE but is not (RFC 8701 §2).
    plain = build((47, 53), exts((SNI,)))
    near = build((0x0A0B, 47, 53), exts((SNI,)))
    assert ja3_string(near) == "771,2571-47-53,0,,"
    assert ja3(near) != ja3(plain)


def test_ja3_keeps_padding_extension() -> None:
    # salesforce/ja3 python/ja3.py drops only GREASE from the extension list, so padding (21),
    # whose presence depends on the hello's length, stays in.
    hello = build((47,), exts((SNI, 21)))
    assert ja3_string(hello) == "771,47,0-21,,"


def test_ja3_version_is_legacy_version_not_supported_versions() -> None:
    hello = build((0x1301,), exts((VERSIONS,), versions=(0x0304,)))
    assert ja3_string(hello).startswith("771,4865,43,")


def test_ja3_order_matters() -> None:
    forward = build((47, 53), exts((SNI, GROUPS)))
    assert ja3(build((53, 47), exts((SNI, GROUPS)))) != ja3(forward)
    assert ja3(build((47, 53), exts((GROUPS, SNI)))) != ja3(forward)


# --- JA4: published vectors -------------------------------------------------------------------

# JA4.md "Cipher hash" and "Extension hash": the lists in the order the client sent them.
SPEC_CIPHERS = (
    0x1301, 0x1302, 0x1303, 0xC02B, 0xC02F, 0xC02C, 0xC030, 0xCCA9,
    0xCCA8, 0xC013, 0xC014, 0x009C, 0x009D, 0x002F, 0x0035,
)  # fmt: skip
SPEC_EXTENSIONS = (
    0x001B, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002D, 0x000D,
    0x0005, 0x0023, 0x0012, 0x002B, 0xFF01, 0x000B, 0x000A, 0x0015,
)  # fmt: skip
SPEC_SIGALGS = (0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601)


def spec_hello(*, grease: bool = False) -> ClientHello:
    ciphers: tuple[int, ...] = SPEC_CIPHERS
    kinds: tuple[int, ...] = SPEC_EXTENSIONS
    versions: tuple[int, ...] = (0x0304, 0x0303)
    groups: tuple[int, ...] = (0x001D,)
    sigalgs: tuple[int, ...] = SPEC_SIGALGS
    if grease:
        # GREASE in every list where RFC 8701 §3 lets a client send it, at both ends of the
        # extension list as Chrome does.
        ciphers = (0x5A5A, *ciphers)
        kinds = (0x3A3A, *kinds, 0xDADA)
        versions = (0x7A7A, *versions)
        groups = (0x8A8A, *groups)
        sigalgs = (0xBABA, *sigalgs)
    return build(ciphers, exts(kinds, versions=versions, groups=groups, sigalgs=sigalgs))


def test_ja4_spec_example() -> None:
    # JA4.md "Example": "JA4 = t13d1516h2_8daaf6152771_e5627efa2ab1", and "Raw Output".
    hello = spec_hello()
    assert ja4(hello) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert ja4_r(hello) == (
        "t13d1516h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_"
        "0005,000a,000b,000d,0012,0015,0017,001b,0023,002b,002d,0033,4469,ff01_"
        "0403,0804,0401,0503,0805,0501,0806,0601"
    )


def test_ja4_spec_example_with_grease_is_unchanged() -> None:
    # JA4.md "Details": "The program needs to ignore GREASE values anywhere it sees them".
    assert ja4(spec_hello(grease=True)) == "t13d1516h2_8daaf6152771_e5627efa2ab1"
    assert ja4_r(spec_hello(grease=True)) == ja4_r(spec_hello())


# FoxIO python/test/testdata/sigalg-grease.pcapng.json, "JA4_ro.1": wire order, GREASE removed.
SIGALG_GREASE_CIPHERS = SPEC_CIPHERS
SIGALG_GREASE_EXTENSIONS = (
    0xFE0D, 0x0010, 0x0017, 0x0033, 0x44CD, 0xFF01, 0x000A, 0x000D, 0x0023,
    0x002B, 0x000B, 0xCA34, 0x002D, 0x0000, 0x0005, 0x001B, 0x0012,
)  # fmt: skip
SIGALG_GREASE_SIGALGS = (
    0x0904, 0x0905, 0x0906, 0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601,
)  # fmt: skip


def test_ja4_foxio_sigalg_grease_vector() -> None:
    # The capture's name says what it tests: a GREASE value among the signature algorithms, which
    # JA4 must drop like every other GREASE value. We put GREASE back in where Chrome sends it.
    hello = build(
        (0x4A4A, *SIGALG_GREASE_CIPHERS),
        exts(
            (0x9A9A, *SIGALG_GREASE_EXTENSIONS, 0xEAEA),
            sigalgs=(0x1A1A, *SIGALG_GREASE_SIGALGS),
            versions=(0x6A6A, 0x0304, 0x0303),
        ),
    )
    assert ja4(hello) == "t13d1517h2_8daaf6152771_cb7bf5808d99"
    assert ja4_r(hello) == (
        "t13d1517h2_002f,0035,009c,009d,1301,1302,1303,c013,c014,c02b,c02c,c02f,c030,cca8,cca9_"
        "0005,000a,000b,000d,0012,0017,001b,0023,002b,002d,0033,44cd,ca34,fe0d,ff01_"
        "0904,0905,0906,0403,0804,0401,0503,0805,0501,0806,0601"
    )


# --- real captures ------------------------------------------------------------------------------

# JA3 of tests/data captures as computed by salesforce's own python/ja3.py (PyPI "ja3" 1.0, on
# dpkt 1.9.8) over a one-packet pcap wrapping each capture in Ethernet/IPv4/TCP to port 443; the
# independent walker below reproduces the strings from the bytes on a different code path.
CAPTURE_JA3 = {
    "curl": "0149f47eabf9a20d0893e2a44e5a6323",
    "openssl": "5a1edc7f170af1014fc65c994878e63c",
    "python_ssl": "304734bb1c086c3453b387400cf83f11",
    "chromium": "61136ac68388203c08dfae189ce5435d",
}
# JA4 of the captures. Chromium's equals FoxIO's published sigalg-grease vector (Chrome sorts the
# same once its randomised extension order is sorted away). All four agree with the independent
# PyPI "ja4plus" 1.4.0 implementation, run on the same bytes when these were pinned.
CAPTURE_JA4 = {
    "curl": "t13d3112h2_e8f1e7e78f70_b26ce05bbdd6",
    "openssl": "t13d3111h1_e8f1e7e78f70_1f22a2ca17c4",
    "python_ssl": "t13d1812h2_85036bcba153_d41ae481755e",
    "chromium": "t13d1517h2_8daaf6152771_cb7bf5808d99",
}


def walk_ja3(record: bytes) -> str:
    """JA3 straight from one TLS record's bytes, the way salesforce's ja3.py walks them.

    Deliberately shares no code with clienthello/fingerprints: offsets by hand, GREASE by table.
    """
    grease = set(ALL_GREASE)
    assert record[0] == 22, "a handshake record"
    assert record[5] == 1, "holding a ClientHello"
    hello = record[9:]
    version = int.from_bytes(hello[0:2])
    at = 2 + 32
    at += 1 + hello[at]  # session id
    cipher_len = int.from_bytes(hello[at : at + 2])
    cipher_bytes = hello[at + 2 : at + 2 + cipher_len]
    ciphers = [int.from_bytes(cipher_bytes[i : i + 2]) for i in range(0, cipher_len, 2)]
    at += 2 + cipher_len
    at += 1 + hello[at]  # compression methods
    end = at + 2 + int.from_bytes(hello[at : at + 2])
    at += 2
    extensions, curves, formats = [], [], []
    while at < end:
        kind, size = int.from_bytes(hello[at : at + 2]), int.from_bytes(hello[at + 2 : at + 4])
        data = hello[at + 4 : at + 4 + size]
        extensions.append(kind)
        if kind == 10:
            curves = [int.from_bytes(data[i : i + 2]) for i in range(2, len(data), 2)]
        elif kind == 11:
            formats = list(data[1:])
        at += 4 + size

    def field(values: list[int]) -> str:
        return "-".join(str(v) for v in values if v not in grease)

    return ",".join(
        [str(version), field(ciphers), field(extensions), field(curves), field(formats)]
    )


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_ja3_matches_independent_walk(name: str) -> None:
    hello = parsed_capture(name)
    assert ja3_string(hello) == walk_ja3(capture(name))
    expected_md5 = hashlib.md5(walk_ja3(capture(name)).encode(), usedforsecurity=False)
    assert ja3(hello) == expected_md5.hexdigest() == CAPTURE_JA3[name]


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_ja4(name: str) -> None:
    hello = parsed_capture(name)
    assert ja4(hello) == CAPTURE_JA4[name]
    # JA4 is the hash of JA4_r, part by part.
    prefix, ciphers, rest = ja4_r(hello).split("_", 2)
    assert ja4(hello) == "_".join([prefix, sha12(ciphers), sha12(rest)])


def sha12(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def test_capture_curl_details() -> None:
    # curl sends padding (21) and no GREASE; it offers TLS 1.3 down to 1.0, h2 first.
    hello = parsed_capture("curl")
    assert ja3_string(hello).split(",")[2].endswith("-21")
    assert ja4(hello).startswith("t13d3112h2_")


def test_capture_openssl_alpn_http11_is_h1() -> None:
    # JA4.md: "If the first ALPN listed was http/1.1 then ... 'h1'".
    assert ja4(parsed_capture("openssl"))[8:10] == "h1"


# --- JA4: behaviour and failing twins -----------------------------------------------------------

BASE_CIPHERS = (0x1301, 0x1302, 0xC02F)
BASE_KINDS = (SNI, ALPN, VERSIONS, GROUPS, SIGALGS)


def base(
    *, ciphers: Iterable[int] = BASE_CIPHERS, kinds: Iterable[int] = BASE_KINDS, **data: Any
) -> ClientHello:
    return build(ciphers, exts(kinds, **data))


def test_cipher_order_changes_ja3_not_ja4() -> None:
    forward, backward = base(), base(ciphers=BASE_CIPHERS[::-1])
    assert ja4(backward) == ja4(forward)
    assert ja3(backward) != ja3(forward)


def test_different_cipher_changes_ja4() -> None:
    # Failing twin of the order test: a different set, not a different order, changes JA4_b.
    assert ja4(base(ciphers=(0x1301, 0x1302, 0xC030))).split("_")[1] != ja4(base()).split("_")[1]


def test_extension_order_changes_ja3_not_ja4() -> None:
    # Chrome randomises its extension order per connection; JA4 sorts so it keeps one print.
    shuffled = base(kinds=(SIGALGS, GROUPS, SNI, VERSIONS, ALPN))
    assert ja4(shuffled) == ja4(base())
    assert ja3(shuffled) != ja3(base())


def test_signature_algorithm_order_changes_ja4() -> None:
    # JA4.md: signature algorithms are hashed "in the order that they appear (not sorted)".
    one = base(sigalgs=(0x0403, 0x0804))
    assert ja4(base(sigalgs=(0x0804, 0x0403))) != ja4(one)


def test_grease_does_not_change_ja4() -> None:
    greased = build(
        (0x0A0A, *BASE_CIPHERS),
        exts(
            (0xFAFA, *BASE_KINDS, 0x2A2A),
            versions=(0x3A3A, 0x0304, 0x0303),
            groups=(0x4A4A, 0x001D, 0x0017),
            sigalgs=(0x5A5A, 0x0403),
        ),
    )
    assert ja4(greased) == ja4(base())
    assert ja4_r(greased) == ja4_r(base())
    assert ja4(greased).startswith("t13d0305h2_")


def test_non_grease_extension_changes_ja4() -> None:
    # Failing twin: 0x0a0b is one off a GREASE value, and counts like any other extension.
    with_near = base(kinds=(*BASE_KINDS, 0x0A0B))
    assert ja4(with_near).startswith("t13d0306h2_")
    assert ja4(with_near) != ja4(base())


@pytest.mark.parametrize(
    ("kinds", "marker"),
    [
        (BASE_KINDS, "d"),
        ((ALPN, VERSIONS, GROUPS, SIGALGS), "i"),
    ],
)
def test_sni_marker(kinds: tuple[int, ...], marker: str) -> None:
    assert ja4(base(kinds=kinds))[3] == marker


def test_sni_extension_without_host_name_is_still_domain() -> None:
    # JA4.md "SNI": the extension's existence decides. A server_name holding only an unknown
    # name type parses to sni=None, yet the client did send the extension.
    hello = build(BASE_CIPHERS, [(SNI, vec(b"\x07" + vec(b"x", 2), 2))])
    assert hello.sni is None
    assert ja4(hello)[3] == "d"


def test_no_sni_keeps_extension_hash_but_not_count() -> None:
    # JA4.md: SNI is left out of JA4_c so one client keeps its JA4_c whether it dials a name or
    # an IP; it still counts in JA4_a.
    named, addressed = base(), base(kinds=BASE_KINDS[1:])
    assert ja4(addressed).split("_")[2] == ja4(named).split("_")[2]
    assert ja4(addressed)[:10] == "t13i0304h2"


@pytest.mark.parametrize(
    ("alpn", "expected"),
    [
        ((b"h2", b"http/1.1"), "h2"),
        ((b"http/1.1", b"h2"), "h1"),
        ((b"x",), "xx"),  # JA4.md: a single character is both first and last
        # JA4.md "ALPN Extension Value": the five examples of the hex rule, verbatim.
        ((b"\xab",), "ab"),
        ((b"\xab\xcd",), "ad"),
        ((b"\x30\xab",), "3b"),
        ((b"\x30\x31\xab\xcd",), "3d"),
        ((b"\x30\xab\xcd\x31",), "01"),
        ((b"h/",), "6f"),  # '/' is not alphanumeric: hex "682f" -> "6f"
    ],
)
def test_alpn_characters(alpn: tuple[bytes, ...], expected: str) -> None:
    assert ja4(base(alpn=alpn))[8:10] == expected


def test_no_alpn_is_00() -> None:
    without = base(kinds=(SNI, VERSIONS, GROUPS, SIGALGS))
    assert ja4(without)[8:10] == "00"
    # ALPN is left out of JA4_c too, so only JA4_a changes.
    assert ja4(without).split("_")[1:] == ja4(base()).split("_")[1:]


@pytest.mark.parametrize(
    ("legacy_version", "versions", "expected"),
    [
        (0x0303, None, "12"),  # TLS 1.2-only client: no supported_versions
        (0x0301, None, "10"),
        (0x0302, None, "11"),
        (0x0300, None, "s3"),
        (0x0303, (0x0304, 0x0303), "13"),
        (0x0303, (0x0303, 0x0304), "13"),  # highest, not first
        (0x0303, (0x0303,), "12"),
        (0x0303, (0x1A1A, 0x0303), "12"),  # GREASE is not the highest value
        (0x0301, (0xFAFA,), "10"),  # nothing but GREASE: fall back to legacy_version
        (0x0303, (0x0305,), "00"),  # unknown
    ],
)
def test_version(legacy_version: int, versions: tuple[int, ...] | None, expected: str) -> None:
    kinds = [SNI, ALPN] if versions is None else [SNI, ALPN, VERSIONS]
    extensions = exts(kinds, versions=versions or ())
    assert ja4(build(BASE_CIPHERS, extensions, legacy_version=legacy_version))[1:3] == expected


@pytest.mark.parametrize(("transport", "first"), [("t", "t"), ("q", "q"), ("d", "d")])
def test_transport_flag(transport: str, first: str) -> None:
    hello = base()
    assert ja4(hello, transport=transport)[0] == first
    assert ja4_r(hello, transport=transport)[0] == first
    assert ja4(hello, transport=transport)[1:] == ja4(hello)[1:]


def test_default_transport_is_tcp() -> None:
    assert ja4(base())[0] == "t"


@pytest.mark.parametrize("transport", ["", "tcp", "Q", "u"])
def test_unknown_transport_is_refused(transport: str) -> None:
    with pytest.raises(ValueError, match="JA4 transport must be"):
        ja4(base(), transport=transport)


@pytest.mark.parametrize(
    ("count", "shown"), [(1, "01"), (98, "98"), (99, "99"), (100, "99"), (150, "99")]
)
def test_cipher_count_caps_at_99(count: int, shown: str) -> None:
    hello = build(range(1, count + 1), exts((SNI,)))
    assert ja4(hello)[4:6] == shown
    # The hash still covers every cipher, not just the first 99.
    assert ja4_r(hello).split("_")[1].count(",") == count - 1


@pytest.mark.parametrize(("count", "shown"), [(99, "99"), (100, "99"), (120, "99")])
def test_extension_count_caps_at_99(count: int, shown: str) -> None:
    hello = build(BASE_CIPHERS, exts([0x1000 + i for i in range(count)]))
    assert ja4(hello)[6:8] == shown


def test_all_grease_ciphers_hash_to_zeros() -> None:
    # JA4.md: "If there are no ciphers in the sorted cipher list, then the value of JA4_b is set to
    # 000000000000". A parseable hello needs one cipher, so it is GREASE.
    hello = build((0x0A0A,), exts(BASE_KINDS))
    assert ja4(hello).split("_")[1] == "000000000000"
    assert ja4(hello)[4:6] == "00"
    assert ja4_r(hello).split("_")[1] == ""


def test_no_extensions_hash_to_zeros() -> None:
    hello = build(BASE_CIPHERS, None)
    assert ja4(hello) == f"t12i030000_{sha12('1301,1302,c02f')}_000000000000"


def test_only_sni_and_alpn_hash_to_zeros() -> None:
    # Both are removed from JA4_c, which leaves nothing to hash; they still count in JA4_a.
    hello = build(BASE_CIPHERS, exts((SNI, ALPN)))
    assert ja4(hello) == f"t12d0302h2_{sha12('1301,1302,c02f')}_000000000000"


def test_no_signature_algorithms_means_no_trailing_underscore() -> None:
    # JA4.md: "If there are no signature algorithms in the hello packet, then the string ends
    # without an underscore and is hashed."
    hello = base(kinds=(SNI, ALPN, VERSIONS, GROUPS))
    assert ja4_r(hello).endswith("_000a,002b")
    assert ja4(hello).split("_")[2] == sha12("000a,002b")


# --- describe -------------------------------------------------------------------------------------


def test_describe_curl() -> None:
    hello = parsed_capture("curl")
    summary = describe(hello)
    assert summary == {
        "sni": "example.test",
        "alpn": ["h2", "http/1.1"],
        "versions": ["TLS 1.3", "TLS 1.2", "TLS 1.1", "TLS 1.0"],
        "cipher_suites": [f"0x{suite:04x}" for suite in hello.cipher_suites],
        "extensions": [0, 11, 10, 16, 22, 23, 49, 13, 43, 45, 51, 21],
        "supported_groups": list(hello.supported_groups),
        "signature_algorithms": list(hello.signature_algorithms),
        "ja3": CAPTURE_JA3["curl"],
        "ja3_string": ja3_string(hello),
        "ja4": CAPTURE_JA4["curl"],
        "ja4_r": ja4_r(hello),
    }
    assert summary["cipher_suites"][:3] == ["0x1302", "0x1303", "0x1301"]  # type: ignore[index]


@pytest.mark.parametrize("name", CAPTURES)
def test_describe_is_json(name: str) -> None:
    summary = describe(parsed_capture(name))
    assert json.loads(json.dumps(summary)) == summary


def test_describe_names_grease_and_unknown_versions() -> None:
    hello = build(BASE_CIPHERS, exts((VERSIONS,), versions=(0x2A2A, 0x0304, 0x0305)))
    assert describe(hello)["versions"] == ["GREASE 0x2a2a", "TLS 1.3", "0x0305"]


def test_describe_without_sni_or_alpn() -> None:
    summary = describe(build(BASE_CIPHERS, None))
    assert summary["sni"] is None
    assert summary["alpn"] == []
    assert summary["versions"] == ["TLS 1.2"]


# --- GREASE table -------------------------------------------------------------------------------


def test_is_grease_matches_rfc_8701_table() -> None:
    # RFC 8701 §2 lists exactly these sixteen values for every 16-bit registry.
    assert [v for v in range(0x10000) if is_grease(v)] == list(ALL_GREASE)
    assert all(b - a == 0x1010 for a, b in pairwise(ALL_GREASE))
