"""Tests for mitmlite.encoding: Content-Encoding codecs, stacked codings, streaming, size limits."""

from __future__ import annotations

import gzip
import tracemalloc
import zlib

import brotli  # type: ignore[import-untyped]  # no type stubs
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from mitmlite.encoding import EncodingError, StreamDecoder, decode, encode, parse_codings

CODINGS = ["gzip", "x-gzip", "deflate", "br", "zstd"]
STACKS = ["gzip, br", "br, gzip", "deflate, zstd, gzip", "gzip, gzip", "zstd, identity, br"]
BODY = b"<html>" + b"mitmlite relays, decodes and re-encodes bodies. " * 400 + bytes(range(256))
MiB = 1024 * 1024


def stream(data: bytes, codings: str, piece: int, limit: int | None = None) -> bytes:
    decoder = StreamDecoder(codings, limit=limit)
    decoded = [decoder.feed(data[i : i + piece]) for i in range(0, len(data), piece)]
    return b"".join(decoded) + decoder.flush()


def zstd_streamed(data: bytes, window_log: int | None = None) -> bytes:
    """A zstd frame as a streaming server writes it: no content size in the frame header."""
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=window_log or 0)
    compressor = zstandard.ZstdCompressor(compression_params=params).compressobj()
    return compressor.compress(data) + compressor.flush()


def flip(data: bytes, at: int = 20) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-15)
    return compressor.compress(data) + compressor.flush()


# --- parse_codings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "codings"),
    [
        ("gzip, br", ["gzip", "br"]),
        (" GZip ,BR ", ["gzip", "br"]),
        ("br,gzip", ["br", "gzip"]),
        ("gzip,, identity, ", ["gzip"]),
        ("identity", []),
        ("", []),
        (None, []),
    ],
)
def test_parse_codings(value: str | None, codings: list[str]) -> None:
    assert parse_codings(value) == codings


def test_parse_codings_keeps_unknown_names_for_decode_to_refuse() -> None:
    assert parse_codings("gzip, compress") == ["gzip", "compress"]
    with pytest.raises(EncodingError, match=r"^unknown Content-Encoding 'compress'$"):
        decode(b"", "gzip, compress")


# --- round trips ---------------------------------------------------------------------------------


@pytest.mark.parametrize("codings", [*CODINGS, "identity", "", *STACKS])
def test_round_trip(codings: str) -> None:
    assert decode(encode(BODY, codings), codings) == BODY


@pytest.mark.parametrize("codings", ["gzip", "br", "zstd", "deflate"])
def test_round_trip_accepts_a_list_of_codings(codings: str) -> None:
    stack = [codings, "GZIP"]
    assert (
        decode(encode(BODY, stack), stack) == BODY == decode(encode(BODY, stack), ", ".join(stack))
    )


@pytest.mark.parametrize("codings", ["gzip, br", "deflate, zstd", "br, gzip"])
def test_stacked_codings_undone_in_the_wrong_order_fail(codings: str) -> None:
    reversed_order = ", ".join(reversed(parse_codings(codings)))
    with pytest.raises(EncodingError, match=r"^cannot decode "):
        decode(encode(BODY, codings), reversed_order)


def test_identity_passes_the_body_through_uncopied() -> None:
    assert decode(BODY, None) is BODY
    assert decode(BODY, "identity") is BODY
    assert encode(BODY, "identity") is BODY


def test_identity_body_larger_than_the_limit_fails() -> None:
    assert decode(BODY, None, limit=len(BODY)) is BODY
    with pytest.raises(EncodingError, match=rf"^decoded body exceeds {len(BODY) - 1} bytes$"):
        decode(BODY, None, limit=len(BODY) - 1)


stacks = st.lists(st.sampled_from(CODINGS), max_size=3)


@given(data=st.binary(max_size=4096), codings=stacks)
def test_round_trip_property(data: bytes, codings: list[str]) -> None:
    assert decode(encode(data, codings), codings) == data


@given(data=st.binary(min_size=1, max_size=4096), codings=stacks.filter(bool))
def test_truncated_by_one_byte_property(data: bytes, codings: list[str]) -> None:
    with pytest.raises(EncodingError, match=rf"^cannot decode '{codings[-1]}' body: "):
        decode(encode(data, codings)[:-1], codings)


# --- what encode produces: checked by the reference decoders -------------------------------------


def test_encode_output_is_read_by_reference_decoders() -> None:
    assert gzip.decompress(encode(BODY, "gzip")) == BODY
    assert zlib.decompress(encode(BODY, "deflate")) == BODY  # RFC 9110 §8.4.1.2: zlib-wrapped
    assert brotli.decompress(encode(BODY, "br")) == BODY
    assert zstandard.decompress(encode(BODY, "zstd")) == BODY
    assert encode(BODY, "gzip") == encode(BODY, "gzip")  # mtime=0: deterministic


def test_encode_deflate_is_not_raw_and_unknown_codings_are_refused() -> None:
    with pytest.raises(zlib.error):
        zlib.decompress(encode(BODY, "deflate"), wbits=-15)
    with pytest.raises(EncodingError, match=r"^unknown Content-Encoding 'compress'$"):
        encode(BODY, "gzip, compress")


# --- real-world inputs, each from its reference encoder ------------------------------------------

REAL_WORLD = [
    pytest.param("gzip", gzip.compress(BODY), id="gzip"),
    pytest.param("x-gzip", gzip.compress(BODY, compresslevel=1), id="x-gzip"),
    pytest.param("gzip", gzip.compress(BODY[:99]) + gzip.compress(BODY[99:]), id="gzip-members"),
    pytest.param("deflate", zlib.compress(BODY), id="deflate-zlib"),
    pytest.param("deflate", raw_deflate(BODY), id="deflate-raw"),
    pytest.param("deflate", raw_deflate(b"x"), id="deflate-raw-tiny"),
    pytest.param("br", brotli.compress(BODY), id="br"),
    pytest.param("zstd", zstandard.ZstdCompressor().compress(BODY), id="zstd-content-size"),
    pytest.param("zstd", zstd_streamed(BODY), id="zstd-streamed"),
    pytest.param("zstd", zstd_streamed(BODY[:99]) + zstd_streamed(BODY[99:]), id="zstd-frames"),
    pytest.param("zstd", zstd_streamed(BODY, window_log=23), id="zstd-8MiB-window"),
]


@pytest.mark.parametrize(("codings", "data"), REAL_WORLD)
def test_decodes_real_world_inputs(codings: str, data: bytes) -> None:
    assert decode(data, codings) == (b"x" if data == raw_deflate(b"x") else BODY)


def test_streamed_zstd_frame_has_no_content_size_that_zstandard_decompress_needs() -> None:
    frame = zstd_streamed(BODY)
    assert zstandard.get_frame_parameters(frame).content_size == zstandard.CONTENTSIZE_UNKNOWN
    with pytest.raises(zstandard.ZstdError, match=r"content size"):
        zstandard.decompress(frame)
    assert decode(frame, "zstd") == BODY


def test_zstd_window_over_8_mib_is_refused() -> None:
    # RFC 9659 §3: HTTP zstd decoders need not accept a window above 8 MB; we cap memory there.
    with pytest.raises(EncodingError, match=r"^cannot decode 'zstd' body: .*[Ff]rame"):
        decode(zstd_streamed(BODY, window_log=24), "zstd")


# --- corrupt, truncated, trailing, unknown -------------------------------------------------------

CORRUPT = [
    pytest.param(coding, data, id=f"{coding}-{name}")
    for coding in CODINGS
    for name, data in [
        ("garbage", b"this body was never compressed at all"),
        ("zeros", bytes(64)),
        ("flipped", bytes([b ^ 0x55 for b in encode(BODY, coding)])),
        ("trailing", encode(BODY, coding) + b"trailing garbage"),
    ]
] + [
    # A flipped literal is caught by a checksum: CRC-32 (RFC 1952), Adler-32 (RFC 1950), zstd's
    # optional Content_Checksum (RFC 8878 §3.1.1). br has none (RFC 7932), nor raw deflate.
    pytest.param(coding, flip(data), id=f"{coding}-checksum")
    for coding, data in [
        ("gzip", gzip.compress(BODY)),
        ("deflate", zlib.compress(BODY)),
        ("zstd", zstandard.ZstdCompressor(write_checksum=True).compress(BODY)),
    ]
]


@pytest.mark.parametrize(("coding", "data"), CORRUPT)
def test_corrupt_input_names_the_coding(coding: str, data: bytes) -> None:
    with pytest.raises(EncodingError, match=rf"^cannot decode '{coding}' body: ") as caught:
        decode(data, coding)
    assert "\n" not in str(caught.value)
    assert caught.value.status is None


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "zstd"])
def test_trailing_data_is_reported_as_such(coding: str) -> None:
    with pytest.raises(EncodingError, match=rf"^cannot decode '{coding}' body: .*"):
        decode(encode(b"ok", coding) + b"\x00\x01", coding)


@pytest.mark.parametrize("coding", ["deflate", "br"])
def test_single_stream_codings_say_trailing(coding: str) -> None:
    with pytest.raises(
        EncodingError, match=r"^cannot decode '.*' body: trailing data after end of stream$"
    ):
        stream(encode(b"ok", coding) + b"\x00\x01", coding, 1)


@pytest.mark.parametrize("coding", ["compress", "x-compress", "exi", "pack200-gzip", "foo"])
def test_unknown_coding_is_refused(coding: str) -> None:
    with pytest.raises(EncodingError, match=rf"^unknown Content-Encoding '{coding}'$"):
        decode(BODY, coding)
    with pytest.raises(EncodingError, match=rf"^unknown Content-Encoding '{coding}'$"):
        StreamDecoder(f"gzip, {coding}")


@pytest.mark.parametrize("coding", CODINGS)
def test_empty_body_decodes_to_empty(coding: str) -> None:
    # Servers label empty bodies (HEAD-like replies, Content-Length: 0) with the coding too.
    assert decode(b"", coding) == b""


@pytest.mark.parametrize("coding", CODINGS)
def test_one_byte_body_is_truncated(coding: str) -> None:
    with pytest.raises(EncodingError, match=rf"^cannot decode '{coding}' body: "):
        decode(encode(BODY, coding)[:1], coding)


# --- limit ---------------------------------------------------------------------------------------

ZEROS = bytes(10_000_000)


@pytest.mark.parametrize("codings", ["gzip", "deflate", "br", "zstd", "gzip, br", "br, zstd"])
def test_bomb_stops_at_the_limit_without_allocating_it(codings: str) -> None:
    bomb = encode(ZEROS, codings)
    assert len(bomb) < 100_000
    tracemalloc.start()
    try:
        with pytest.raises(EncodingError, match=rf"^decoded body exceeds {MiB} bytes$"):
            decode(bomb, codings, limit=MiB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 2 * MiB


@pytest.mark.parametrize("codings", ["gzip", "deflate", "br", "zstd", "gzip, br", "br, zstd"])
def test_body_at_the_limit_decodes_and_one_byte_more_fails(codings: str) -> None:
    assert decode(encode(ZEROS, codings), codings, limit=len(ZEROS)) == ZEROS
    with pytest.raises(EncodingError, match=rf"^decoded body exceeds {len(ZEROS) - 1} bytes$"):
        decode(encode(ZEROS, codings), codings, limit=len(ZEROS) - 1)


def test_limit_holds_for_stream_decoding_across_pieces() -> None:
    data = encode(bytes(1001), "gzip")
    assert stream(data, "gzip", 3, limit=1001) == bytes(1001)
    with pytest.raises(EncodingError, match=r"^decoded body exceeds 1000 bytes$"):
        stream(data, "gzip", 3, limit=1000)


# --- StreamDecoder -------------------------------------------------------------------------------


@pytest.mark.parametrize("codings", [*CODINGS, "", "gzip, br", "deflate, zstd, gzip"])
@pytest.mark.parametrize("piece", [1, 1000])
def test_stream_decoder_matches_decode(codings: str, piece: int) -> None:
    data = encode(BODY, codings)
    assert stream(data, codings, piece) == decode(data, codings) == BODY


@pytest.mark.parametrize("data", [raw_deflate(BODY), zstd_streamed(BODY)], ids=["raw", "zstd"])
@pytest.mark.parametrize("piece", [1, 1000])
def test_stream_decoder_handles_raw_deflate_and_streamed_zstd(data: bytes, piece: int) -> None:
    codings = "deflate" if data == raw_deflate(BODY) else "zstd"
    assert stream(data, codings, piece) == BODY


@pytest.mark.parametrize("codings", [*CODINGS, "gzip, br", "br, deflate"])
def test_truncated_stream_fails_only_at_flush(codings: str) -> None:
    decoder = StreamDecoder(codings)
    data = encode(BODY, codings)
    for i in range(0, len(data) - 1, 1000):
        decoder.feed(data[i : min(i + 1000, len(data) - 1)])
    outermost = parse_codings(codings)[-1]
    with pytest.raises(
        EncodingError, match=rf"^cannot decode '{outermost}' body: truncated stream$"
    ):
        decoder.flush()
