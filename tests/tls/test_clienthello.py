"""Tests for mitmlite.tls.clienthello: real captured hellos, built hellos, and malformed bytes."""

from __future__ import annotations

import re
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mitmlite.errors import ClientError
from mitmlite.tls.clienthello import (
    NEED_MORE_DATA,
    ClientHello,
    ClientHelloError,
    NeedMoreData,
    looks_like_tls,
    needs_rsa_leaf,
    parse_client_hello,
)

DATA = Path(__file__).resolve().parent.parent / "data"
CAPTURES = ("curl", "openssl", "python_ssl", "chromium")
TLS13 = 0x0304
X25519MLKEM768 = 0x11EC


def capture(name: str) -> bytes:
    return (DATA / f"clienthello_{name}.bin").read_bytes()


def parsed(data: bytes) -> ClientHello:
    result = parse_client_hello(data)
    assert isinstance(result, ClientHello)
    return result


def is_grease(value: int) -> bool:
    # RFC 8701 §2: 0x0A0A, 0x1A1A, ..., 0xFAFA.
    return value & 0x0F0F == 0x0A0A and value >> 8 == value & 0xFF


# --- a small ClientHello builder (RFC 8446 §4.1.2) --------------------------------------------


def vec(data: bytes, length_size: int) -> bytes:
    return len(data).to_bytes(length_size) + data


def u16s(*values: int) -> bytes:
    return b"".join(value.to_bytes(2) for value in values)


def ext(kind: int, data: bytes) -> bytes:
    return kind.to_bytes(2) + vec(data, 2)


def sni_ext(*hosts: bytes, name_type: int = 0) -> bytes:
    return ext(0, vec(b"".join(bytes([name_type]) + vec(host, 2) for host in hosts), 2))


def alpn_ext(*names: bytes) -> bytes:
    return ext(16, vec(b"".join(vec(name, 1) for name in names), 2))


def versions_ext(*versions: int) -> bytes:
    return ext(43, vec(u16s(*versions), 1))


def body(extensions: bytes | None, suites: bytes = u16s(0x1301, 0x1302)) -> bytes:
    fixed = u16s(0x0303) + bytes(32) + vec(bytes(32), 1) + vec(suites, 2) + vec(b"\x00", 1)
    return fixed if extensions is None else fixed + vec(extensions, 2)


def message(hello_body: bytes, msg_type: int = 1) -> bytes:
    return bytes([msg_type]) + vec(hello_body, 3)


def hello(*extensions: bytes) -> bytes:
    return message(body(b"".join(extensions)))


def records(data: bytes, *cuts: int, content_type: int = 22) -> bytes:
    """``data`` as TLS records, cut at the given offsets."""
    bounds = [0, *cuts, len(data)]
    return b"".join(
        bytes([content_type]) + b"\x03\x01" + vec(data[start:end], 2)
        for start, end in pairwise(bounds)
    )


TYPICAL = hello(sni_ext(b"example.test"), alpn_ext(b"h2", b"http/1.1"), versions_ext(TLS13, 0x0303))


# --- real clients ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_parses(name: str) -> None:
    hello_ = parsed(capture(name))
    assert hello_.sni == "example.test"
    assert TLS13 in hello_.versions
    assert hello_.cipher_suites
    assert hello_.supported_groups
    assert hello_.signature_algorithms
    assert {0, 16, 43} <= set(hello_.extensions)
    assert capture(name)[5:].startswith(hello_.raw)


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_with_overrunning_cipher_suites_fails(name: str) -> None:
    data = bytearray(capture(name))
    # Past the record header (5), handshake header (4), legacy_version (2), random (32) and the
    # legacy_session_id vector sits the cipher_suites length.
    at = 5 + 4 + 2 + 32 + 1 + data[43]
    data[at : at + 2] = b"\xff\xfe"
    with pytest.raises(ClientHelloError, match="cipher_suites needs 65534 bytes"):
        parse_client_hello(bytes(data))


@pytest.mark.parametrize(
    ("name", "alpn"),
    [
        ("curl", ("h2", "http/1.1")),
        ("openssl", ("http/1.1",)),
        ("python_ssl", ("h2", "http/1.1")),
        ("chromium", ("h2", "http/1.1")),
    ],
)
def test_capture_alpn(name: str, alpn: tuple[str, ...]) -> None:
    assert parsed(capture(name)).alpn_protocols == alpn


def test_chromium_keeps_grease_and_post_quantum_group() -> None:
    hello_ = parsed(capture("chromium"))
    assert is_grease(hello_.versions[0])
    assert is_grease(hello_.cipher_suites[0])
    assert any(is_grease(kind) for kind in hello_.extensions)
    assert X25519MLKEM768 in hello_.supported_groups
    assert len(hello_.raw) > 1500


def test_curl_sends_no_grease() -> None:
    hello_ = parsed(capture("curl"))
    values = hello_.cipher_suites + hello_.extensions + hello_.supported_groups
    assert not any(is_grease(value) for value in values)


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_every_prefix_needs_more(name: str) -> None:
    data = capture(name)
    for end in range(len(data)):
        assert parse_client_hello(data[:end]) is NEED_MORE_DATA


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_resplit_into_two_records_parses_the_same(name: str) -> None:
    expected = parsed(capture(name))
    for cut in (1, 4, 5, 43, len(expected.raw) // 2, len(expected.raw) - 1):
        assert parsed(records(expected.raw, cut)) == expected


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_split_by_an_alert_record_fails(name: str) -> None:
    raw = parsed(capture(name)).raw
    cut = len(raw) // 2
    data = records(raw[:cut]) + records(b"\x02\x28", content_type=21) + records(raw[cut:])
    with pytest.raises(ClientHelloError, match="content type 21, not handshake"):
        parse_client_hello(data)


# --- records and reassembly ---------------------------------------------------------------------


def test_split_at_every_offset_matches_one_record() -> None:
    expected = parsed(records(TYPICAL))
    for cut in range(1, len(TYPICAL)):
        assert parsed(records(TYPICAL, cut)) == expected


def test_many_one_byte_records_match_one_record() -> None:
    data = records(TYPICAL, *range(1, len(TYPICAL)))
    assert parsed(data) == parsed(records(TYPICAL))


def test_every_prefix_of_a_split_hello_needs_more() -> None:
    data = records(TYPICAL, 3, 40)
    for end in range(len(data)):
        assert parse_client_hello(data[:end]) is NEED_MORE_DATA
    assert isinstance(parse_client_hello(data), ClientHello)


def test_records_after_the_hello_are_ignored() -> None:
    # A client sending 0-RTT follows its ClientHello with ChangeCipherSpec (RFC 8446 §D.4) and
    # application data records; only the hello's own records are read.
    trailer = records(b"\x01", content_type=20) + records(b"early", content_type=23)
    assert parsed(records(TYPICAL) + trailer) == parsed(records(TYPICAL))


def test_non_handshake_record_before_the_hello_completes_fails() -> None:
    data = records(TYPICAL[:10]) + records(b"\x01", content_type=20) + records(TYPICAL[10:])
    with pytest.raises(ClientHelloError, match="record at byte 15 has content type 20"):
        parse_client_hello(data)


def test_hello_with_a_second_message_in_the_same_record() -> None:
    assert parsed(records(TYPICAL + b"\x02\x00\x00\x00")).raw == TYPICAL


def test_need_more_data_is_a_value() -> None:
    assert NeedMoreData() == NEED_MORE_DATA
    assert parse_client_hello(b"") is NEED_MORE_DATA


def test_error_is_a_client_error() -> None:
    with pytest.raises(ClientError) as info:
        parse_client_hello(b"GET / HTTP/1.1\r\n")
    assert info.value.status == 400


# --- built hellos -------------------------------------------------------------------------------


def test_typical_built_hello() -> None:
    hello_ = parsed(records(TYPICAL))
    assert hello_ == ClientHello(
        sni="example.test",
        alpn_protocols=("h2", "http/1.1"),
        versions=(TLS13, 0x0303),
        cipher_suites=(0x1301, 0x1302),
        extensions=(0, 16, 43),
        supported_groups=(),
        signature_algorithms=(),
        ec_point_formats=(),
        legacy_version=0x0303,
        raw=TYPICAL,
    )


def test_no_sni() -> None:
    assert parsed(records(hello(alpn_ext(b"h2")))).sni is None


def test_sni_with_overrunning_host_name_fails() -> None:
    bad = ext(0, vec(b"\x00" + b"\x00\x20" + b"short", 2))
    with pytest.raises(ClientHelloError, match="host_name needs 32 bytes but only 5"):
        parse_client_hello(records(hello(bad)))


def test_idn_sni_is_kept_as_its_a_label() -> None:
    sni = parsed(records(hello(sni_ext(b"xn--bcher-kva.example")))).sni
    assert sni == "xn--bcher-kva.example"


def test_sni_is_kept_as_sent() -> None:
    assert parsed(records(hello(sni_ext(b"Example.TEST")))).sni == "Example.TEST"


def test_utf8_sni_fails() -> None:
    with pytest.raises(ClientHelloError, match="host_name b'b\\\\xc3\\\\xbccher' is not ASCII"):
        parse_client_hello(records(hello(sni_ext("bücher".encode()))))


def test_unknown_server_name_type_is_skipped() -> None:
    assert parsed(records(hello(sni_ext(b"opaque", name_type=7)))).sni is None


def test_two_host_names_fail() -> None:
    with pytest.raises(ClientHelloError, match="more than one host_name"):
        parse_client_hello(records(hello(sni_ext(b"a.test", b"b.test"))))


def test_no_alpn() -> None:
    assert parsed(records(hello(sni_ext(b"example.test")))).alpn_protocols == ()


def test_empty_alpn_list_fails() -> None:
    with pytest.raises(ClientHelloError, match="protocol_name_list is 0 bytes, minimum 2"):
        parse_client_hello(records(hello(ext(16, vec(b"", 2)))))


def test_alpn_opaque_bytes_round_trip() -> None:
    (name,) = parsed(records(hello(alpn_ext(b"\xff\x00x")))).alpn_protocols
    assert name.encode("latin-1") == b"\xff\x00x"


def test_empty_alpn_name_fails() -> None:
    with pytest.raises(ClientHelloError, match="protocol_name is 0 bytes, minimum 1"):
        parse_client_hello(records(hello(alpn_ext(b"h2", b""))))


def test_no_extensions_block_is_tls12() -> None:
    hello_ = parsed(records(message(body(None))))
    assert (hello_.versions, hello_.extensions, hello_.sni) == ((0x0303,), (), None)


def test_stray_byte_where_extensions_belong_fails() -> None:
    with pytest.raises(ClientHelloError, match="extensions length needs 2 bytes but only 1"):
        parse_client_hello(records(message(body(None) + b"\x00")))


def test_lists_keep_order_and_grease() -> None:
    hello_ = parsed(
        records(
            hello(
                ext(0x0A0A, b""),
                ext(10, vec(u16s(0x1A1A, 29, 23), 2)),
                ext(11, vec(b"\x00\x01", 1)),
                ext(13, vec(u16s(0x0403, 0x0804), 2)),
                versions_ext(0x2A2A, TLS13),
            )
        )
    )
    assert hello_.extensions == (0x0A0A, 10, 11, 13, 43)
    assert hello_.supported_groups == (0x1A1A, 29, 23)
    assert hello_.ec_point_formats == (0, 1)
    assert hello_.signature_algorithms == (0x0403, 0x0804)
    assert hello_.versions == (0x2A2A, TLS13)


def test_list_extension_with_trailing_byte_fails() -> None:
    bad = ext(10, vec(u16s(29, 23), 2) + b"\x00")
    with pytest.raises(ClientHelloError, match="supported_groups: 1 unexpected trailing bytes"):
        parse_client_hello(records(hello(bad)))


# --- malformed input ----------------------------------------------------------------------------

MALFORMED = [
    pytest.param(b"\x17\x03\x03\x00\x05hello", "content type 23, not handshake", id="app-data"),
    pytest.param(b"GET / HTTP/1.1\r\n", "content type 71, not handshake", id="http"),
    pytest.param(b"\x16\x02\x00", "version 0x0200, not 0x03xx", id="record-version"),
    pytest.param(b"\x16\x03\x01\x00\x00", "empty handshake record", id="zero-length-record"),
    pytest.param(b"\x16\x03\x01\x48\x01", "18433 bytes, over the limit 18432", id="huge-record"),
    pytest.param(records(b"\x01\x01\x00\x01"), "length 65537 exceeds 64 KiB", id="huge-hello"),
    pytest.param(records(message(b"", msg_type=2)), "type 2 is not ClientHello", id="serverhello"),
    pytest.param(records(message(b"\x03")), "legacy_version needs 2 bytes", id="short-body"),
    pytest.param(
        records(message(u16s(0x0303) + bytes(32) + vec(bytes(33), 1))),
        "legacy_session_id is longer than 32 bytes",
        id="long-session-id",
    ),
    pytest.param(
        records(message(u16s(0x0303) + bytes(32) + b"\x00" + b"\x01\x00" + b"\x13\x01")),
        "cipher_suites needs 256 bytes but only 2",
        id="vector-overrun",
    ),
    pytest.param(
        records(message(body(b"", suites=b"\x13\x01\x13"))),
        "cipher_suites: 3 bytes is not a multiple of 2",
        id="odd-cipher-suites",
    ),
    pytest.param(
        records(message(body(b"", suites=b""))),
        "cipher_suites is 0 bytes, minimum 2",
        id="no-cipher-suites",
    ),
    pytest.param(
        records(message(u16s(0x0303) + bytes(33) + vec(u16s(0x1301), 2) + b"\x00")),
        "legacy_compression_methods is 0 bytes, minimum 1",
        id="no-compression",
    ),
    pytest.param(
        records(message(body(b"") + b"\x00")), "1 unexpected trailing bytes", id="trailing-bytes"
    ),
    pytest.param(
        records(message(body(b"\x00\x0a\x00\x08\x00\x02"))),
        "extension 10 needs 8 bytes but only 2",
        id="extension-overrun",
    ),
    pytest.param(
        records(hello(alpn_ext(b"h2"), alpn_ext(b"h2"))),
        "extension 16 appears twice",
        id="duplicate-extension",
    ),
    pytest.param(
        records(hello(ext(0, vec(b"", 2)))),
        "server_name_list is 0 bytes, minimum 1",
        id="empty-sni-list",
    ),
    pytest.param(
        records(hello(ext(43, b"\x03\x03\x04\x03"))),
        "supported_versions list: 3 bytes is not a multiple of 2",
        id="odd-versions",
    ),
    pytest.param(
        records(hello(ext(11, b""))),
        "ec_point_formats: list length needs 1 bytes but only 0",
        id="empty-extension-data",
    ),
]


@pytest.mark.parametrize(("data", "message_"), MALFORMED)
def test_malformed_fails_with_a_clear_message(data: bytes, message_: str) -> None:
    with pytest.raises(ClientHelloError, match=re.escape(message_)) as info:
        parse_client_hello(data)
    assert "\n" not in str(info.value)


def test_record_at_the_length_limit_is_accepted_while_incomplete() -> None:
    assert parse_client_hello(b"\x16\x03\x01\x48\x00\x01") is NEED_MORE_DATA


def test_hello_at_the_length_limit_is_accepted_while_incomplete() -> None:
    assert parse_client_hello(records(b"\x01\x01\x00\x00")) is NEED_MORE_DATA


NESTED_MALFORMED = [
    pytest.param(
        message(body(b"\x00")), "extensions: extension type needs 2 bytes but only 1", id="ext-type"
    ),
    pytest.param(
        message(body(b"\x00\x0a\x00")),
        "extensions: extension 10 length needs 2 bytes but only 1",
        id="ext-length",
    ),
    pytest.param(
        hello(ext(16, vec(vec(b"h2", 1), 2) + b"\x00")),
        "ClientHello ALPN: 1 unexpected trailing bytes",
        id="alpn-trailing",
    ),
    pytest.param(
        hello(ext(16, vec(b"\x05h2", 2))),
        "ALPN protocol_name_list: protocol_name needs 5 bytes but only 2",
        id="alpn-name-overrun",
    ),
    pytest.param(
        hello(ext(0, vec(b"\x00" + vec(b"a.test", 2), 2) + b"\x00")),
        "ClientHello server_name: 1 unexpected trailing bytes",
        id="sni-trailing",
    ),
    pytest.param(
        hello(ext(0, vec(b"\x00\x00", 2))),
        "server_name_list: host_name length needs 2 bytes but only 1",
        id="sni-name-length",
    ),
    pytest.param(
        hello(ext(13, vec(b"\x04\x03\x08", 2))),
        "ClientHello signature_algorithms list: 3 bytes is not a multiple of 2",
        id="odd-signature-algorithms",
    ),
    pytest.param(
        hello(ext(11, vec(b"", 1))),
        "ClientHello ec_point_formats: list is 0 bytes, minimum 1",
        id="empty-point-formats",
    ),
    pytest.param(
        hello(ext(43, vec(u16s(TLS13), 1)), ext(10, vec(u16s(29), 2) + b"\x00")),
        "supported_groups: 1 unexpected trailing bytes",
        id="groups-after-good-versions",
    ),
]


@pytest.mark.parametrize(("hello_message", "message_"), NESTED_MALFORMED)
def test_nested_malformed_fails_with_a_clear_message(hello_message: bytes, message_: str) -> None:
    with pytest.raises(ClientHelloError, match=re.escape(message_)):
        parse_client_hello(records(hello_message))


def test_hello_filling_its_record_exactly() -> None:
    data = records(TYPICAL)
    assert parsed(data).raw == TYPICAL
    assert parse_client_hello(data[:-1]) is NEED_MORE_DATA


@pytest.mark.parametrize("name", CAPTURES)
def test_bytearray_and_memoryview_parse_like_bytes(name: str) -> None:
    data = capture(name)
    expected = parsed(data)
    for view in (bytearray(data), memoryview(data)):
        result = parsed(view)  # type: ignore[arg-type]
        assert result == expected
        assert type(result.raw) is bytes


# --- looks_like_tls -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "first_bytes", [b"\x16", b"\x16\x03", b"\x16\x03\x01", b"\x16\x03\x03\x02\x00", b"\x16\x03\x04"]
)
def test_looks_like_tls(first_bytes: bytes) -> None:
    assert looks_like_tls(first_bytes)


@pytest.mark.parametrize("name", CAPTURES)
def test_capture_looks_like_tls(name: str) -> None:
    assert looks_like_tls(capture(name)[:3])


@pytest.mark.parametrize(
    "first_bytes",
    [b"", b"GET / HTTP/1.1", b"\x17\x03\x03", b"\x16\x02\x00", b"\x80\x2e\x01", b"PRI * HTTP/2.0"],
)
def test_does_not_look_like_tls(first_bytes: bytes) -> None:
    assert not looks_like_tls(first_bytes)


# --- fuzzing ------------------------------------------------------------------------------------


def parse_or_error(data: bytes) -> ClientHello | NeedMoreData | ClientHelloError:
    try:
        return parse_client_hello(data)
    except ClientHelloError as exc:
        return exc


@given(st.binary(max_size=600))
def test_arbitrary_bytes_only_raise_client_hello_error(data: bytes) -> None:
    assert isinstance(parse_or_error(data), ClientHello | NeedMoreData | ClientHelloError)


@given(st.binary(max_size=600))
def test_arbitrary_handshake_records_only_raise_client_hello_error(payload: bytes) -> None:
    assert isinstance(
        parse_or_error(records(payload)), ClientHello | NeedMoreData | ClientHelloError
    )


@given(st.sampled_from(CAPTURES), st.integers(min_value=0), st.integers(0, 255))
def test_mutated_captures_only_raise_client_hello_error(name: str, index: int, value: int) -> None:
    data = bytearray(capture(name))
    data[index % len(data)] = value
    assert isinstance(parse_or_error(bytes(data)), ClientHello | NeedMoreData | ClientHelloError)


@given(st.lists(st.integers(1, len(TYPICAL) - 1), max_size=8, unique=True))
def test_any_record_split_parses_the_same(cuts: list[int]) -> None:
    assert parsed(records(TYPICAL, *sorted(cuts))) == parsed(records(TYPICAL))


# --- which leaf key a client can verify ---------------------------------------------------------


@pytest.mark.parametrize("name", CAPTURES)
def test_real_clients_take_the_ecdsa_leaf(name: str) -> None:
    assert not needs_rsa_leaf(parsed(capture(name)))


@pytest.mark.parametrize(
    ("schemes", "rsa"),
    [
        ((0x0804, 0x0805, 0x0401), True),  # rsa_pss_rsae and rsa_pkcs1 only
        ((0x0804, 0x0403), False),  # ecdsa_secp256r1_sha256 among them
        ((), False),  # no signature_algorithms: the versions and suites decide
    ],
    ids=["rsa-only", "ecdsa-too", "absent"],
)
def test_a_tls13_client_without_ecdsa_signatures_needs_the_rsa_leaf(
    schemes: tuple[int, ...], rsa: bool
) -> None:
    # TLS 1.3 makes ECDSA mandatory to implement, but a stack can still be configured without
    # it (openssl s_client -sigalgs RSA-PSS+SHA256): it failed with NO_SUITABLE_SIGNATURE_ALGORITHM.
    sigalgs = ext(13, vec(u16s(*schemes), 2)) if schemes else b""
    extensions = sni_ext(b"new.test") + versions_ext(TLS13, 0x0303) + sigalgs
    data = records(message(body(extensions, u16s(0x1301))))
    assert needs_rsa_leaf(parsed(data)) is rsa


@pytest.mark.parametrize(
    ("suites", "versions", "rsa"),
    [
        (u16s(0xC02F, 0x009C), (0x0303,), True),  # ECDHE-RSA-AES128-GCM, AES128-GCM only
        (u16s(0xC02F, 0xC02B), (0x0303,), False),  # ECDHE-ECDSA-AES128-GCM offered too
        (u16s(0xCCA8, 0xCCA9), (0x0303,), False),  # ChaCha20 with ECDSA
        (u16s(0x1301, 0xC02F), (TLS13, 0x0303), False),  # TLS 1.3: ECDSA is mandatory
        (
            u16s(
                0x002F,
            ),
            (),
            True,
        ),  # no supported_versions at all: TLS 1.2 and below
    ],
)
def test_needs_rsa_leaf_for_clients_without_ecdsa(
    suites: bytes, versions: tuple[int, ...], rsa: bool
) -> None:
    extensions = sni_ext(b"old.test") + (versions_ext(*versions) if versions else b"")
    data = records(message(body(extensions, suites)))
    assert needs_rsa_leaf(parsed(data)) is rsa
