"""Content-Encoding: decode and encode message bodies, whole or streamed, under a size limit.

Owns the codings a proxy meets in practice (RFC 9110 §8.4): ``gzip``/``x-gzip``, ``deflate`` (zlib
wrapper or raw), ``br``, ``zstd`` and ``identity``, stacked in any order, and the one error they
raise, `EncodingError`. Decoding is incremental everywhere, so a decompression bomb stops at the
limit instead of allocating its whole output.

Pure: bytes in, bytes out or `EncodingError`. No trio, no sockets, no I/O; it imports nothing from
mitmlite but the error tree.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

import brotli  # type: ignore[import-untyped]  # no type stubs; narrowed by _BrotliDecoder below
import zstandard

from mitmlite.errors import MitmliteError

__all__ = ["EncodingError", "StreamDecoder", "decode", "encode", "parse_codings"]

_CHUNK = 64 * 1024  # output piece size: large enough to be cheap, small enough to bound memory
# RFC 9659 §3: zstd encoders for HTTP must not need a window over 8 MB, and decoders need not
# accept one; refusing larger windows caps the decoder's own buffer as well as its output.
_ZSTD_MAX_WINDOW = 8 * 1024 * 1024
# RFC 8878 §3.1.1.2.4: a block decodes to at most 128 KiB, and a block that produces output takes
# at least 4 bytes (3-byte header + 1 RLE byte): the bound behind the zstd input slicing below.
_ZSTD_BLOCK_MAX = 128 * 1024
_ZSTD_MIN_BLOCK = 4
# Levels servers use for dynamic content (zlib's default; ngx_brotli's default; zstd's default):
# re-encoding sits on the request path, and brotli's maximum quality 11 runs at ~1 MB/s.
_GZIP_LEVEL = 6
_BROTLI_QUALITY = 6
_ZSTD_LEVEL = 3


class EncodingError(MitmliteError):
    """A body cannot be decoded or encoded: unknown coding, corrupt or truncated data, too large.

    No ``status``: the raw bytes are still relayed as they are; only reading ``content`` fails.
    """


def parse_codings(header_value: str | None) -> list[str]:
    """Split a Content-Encoding value into codings in the order they were applied.

    RFC 9110 §8.4: the field lists codings in application order; names are case-insensitive and
    ``identity`` means "no coding", so it is dropped.
    """
    if not header_value:
        return []
    items = (item.strip().lower() for item in header_value.split(","))
    return [item for item in items if item and item != "identity"]


def decode(data: bytes, codings: list[str] | str | None, *, limit: int | None = None) -> bytes:
    """Undo ``codings`` (as listed in Content-Encoding) on a whole body.

    ``limit`` caps the decoded size in bytes; exceeding it raises `EncodingError` before the
    output is allocated. An empty body decodes to ``b""`` whatever its coding.
    """
    decoder = StreamDecoder(codings, limit=limit)
    decoded, rest = decoder.feed(data), decoder.flush()
    return decoded + rest if rest else decoded  # identity passes the body through uncopied


def encode(data: bytes, codings: list[str] | str | None) -> bytes:
    """Apply ``codings`` to a body in the order listed, as a server would for Content-Encoding."""
    for coding in _normalize(codings):
        data = _encoder(coding)(data)
    return data


class StreamDecoder:
    """Decode a body that arrives in pieces; ``feed`` each piece, then ``flush`` at its end.

    After an `EncodingError` the decoder is spent: the caller keeps the raw bytes instead.
    """

    def __init__(self, codings: list[str] | str | None, *, limit: int | None = None) -> None:
        self.codings = _normalize(codings)
        # RFC 9110 §8.4: codings are listed in the order applied, so they are undone from the end.
        undo = list(reversed(self.codings))
        self._stages = [
            _stage(coding, _Budget(limit if index == len(undo) - 1 else _slack(limit), limit))
            for index, coding in enumerate(undo)
        ] or [_IdentityStage(_Budget(limit, limit))]

    def feed(self, chunk: bytes) -> bytes:
        """Decode the next piece of the body; returns the bytes decoded so far from it."""
        return b"".join(self._push(0, [chunk]))

    def flush(self) -> bytes:
        """End the body: returns the last decoded bytes; raises if it was cut short or corrupt."""
        out: list[bytes] = []
        for index, stage in enumerate(self._stages):
            out.extend(self._push(index + 1, stage.finish()))
        return b"".join(out)

    def _push(self, index: int, pieces: Iterable[bytes]) -> Iterator[bytes]:
        # Pieces flow through the stages lazily, so no stage ever holds more than one piece.
        if index == len(self._stages):
            yield from pieces
            return
        for piece in pieces:
            yield from self._push(index + 1, self._stages[index].feed(piece))


def _normalize(codings: list[str] | str | None) -> list[str]:
    if codings is None or isinstance(codings, str):
        return parse_codings(codings)
    return [coding for item in codings for coding in parse_codings(item)]


def _slack(limit: int | None) -> int | None:
    # An intermediate stage of a stacked coding yields the next coding's compressed bytes: honest
    # encoders add a few bytes per block at most (RFC 1951 §3.2.4 stored blocks: 5 per 64 KiB), so a
    # sixteenth plus 64 KiB is generous, and it stops a bomb of empty blocks burning CPU.
    return None if limit is None else limit + limit // 16 + _CHUNK


class _Budget:
    """How many more bytes one stage may output before the body counts as too large."""

    def __init__(self, cap: int | None, limit: int | None) -> None:
        self.remaining = cap
        self._limit = limit

    def ask(self) -> int:
        """A max_length for the next piece: one byte past the cap is enough to detect overflow."""
        return _CHUNK if self.remaining is None else min(_CHUNK, self.remaining + 1)

    def take(self, size: int) -> None:
        if self.remaining is None:
            return
        self.remaining -= size
        if self.remaining < 0:
            raise EncodingError(f"decoded body exceeds {self._limit} bytes")


class _Stage(Protocol):
    def feed(self, data: bytes) -> Iterator[bytes]: ...

    def finish(self) -> Iterator[bytes]: ...


class _IdentityStage:
    """No coding: the body passes through, still counted against the limit."""

    def __init__(self, budget: _Budget) -> None:
        self._budget = budget

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._budget.take(len(data))
        yield data

    def finish(self) -> Iterator[bytes]:
        yield from ()


def _stage(coding: str, budget: _Budget) -> _Stage:
    stages: dict[str, Callable[[], _Stage]] = {
        "gzip": lambda: _ZlibStage(coding, budget, wbits=31),
        "x-gzip": lambda: _ZlibStage(coding, budget, wbits=31),
        "deflate": lambda: _ZlibStage(coding, budget, wbits=None),
        "br": lambda: _BrotliStage(coding, budget),
        "zstd": lambda: _ZstdStage(coding, budget),
    }
    if coding not in stages:
        raise EncodingError(f"unknown Content-Encoding {coding!r}")
    return stages[coding]()


def _corrupt(coding: str, reason: object) -> EncodingError:
    return EncodingError(f"cannot decode {coding!r} body: {reason}")


def _is_zlib_header(head: bytes) -> bool:
    # RFC 1950 §2.2: CM = 8 (deflate), CINFO <= 7, no preset dictionary, and CMF*256 + FLG is a
    # multiple of 31. A raw deflate stream (RFC 1951) almost never starts with such a pair.
    cmf, flg = head[0], head[1]
    return cmf & 0x0F == 8 and cmf >> 4 <= 7 and not flg & 0x20 and (cmf << 8 | flg) % 31 == 0


class _ZlibStage:
    """gzip (RFC 1952) and deflate; ``wbits=None`` picks zlib-wrapped or raw from the first bytes.

    RFC 9110 §8.4.1.2 says deflate is zlib-wrapped (RFC 1950), but many servers send raw deflate
    (RFC 1951), and browsers accept both; so does this.
    """

    def __init__(self, coding: str, budget: _Budget, *, wbits: int | None) -> None:
        self._coding, self._budget, self._wbits = coding, budget, wbits
        self._head = b""  # deflate bytes held until two are known
        self._obj = None if wbits is None else zlib.decompressobj(wbits)
        self._seen = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if self._obj is None:
            self._head += data
            if len(self._head) < 2:
                return
            data, self._head = self._head, b""
            self._obj = zlib.decompressobj(15 if _is_zlib_header(data) else -15)
        yield from self._inflate(self._obj, data)

    def finish(self) -> Iterator[bytes]:
        if self._obj is None and self._head:  # a single byte: try it raw, then report truncation
            self._obj = zlib.decompressobj(-15)
            yield from self._inflate(self._obj, self._head)
        if self._seen and self._obj is not None and not self._obj.eof:
            raise _corrupt(self._coding, "truncated stream")

    def _inflate(self, obj: zlib._Decompress, data: bytes) -> Iterator[bytes]:
        self._seen = self._seen or bool(data)
        while data or not obj.eof:
            if obj.eof:
                obj = self._next_member(data)
            max_length = self._budget.ask()
            try:
                piece = obj.decompress(data, max_length)
            except zlib.error as exc:
                raise _corrupt(self._coding, exc) from exc
            self._budget.take(len(piece))
            yield piece
            data = obj.unused_data if obj.eof else obj.unconsumed_tail
            if not data and len(piece) < max_length:
                return  # input used up and zlib holds no more output

    def _next_member(self, data: bytes) -> zlib._Decompress:
        # RFC 1952 §2.2: a gzip body is a series of members; zlib and raw deflate are one stream.
        if self._wbits != 31:
            raise _corrupt(self._coding, "trailing data after end of stream")
        self._obj = zlib.decompressobj(31)
        return self._obj


class _BrotliDecoder(Protocol):
    """The part of ``brotli.Decompressor`` (brotli >= 1.2, which added the output limit) used."""

    def process(self, data: bytes, output_buffer_limit: int) -> bytes: ...

    def can_accept_more_data(self) -> bool: ...

    def is_finished(self) -> bool: ...


class _BrotliStage:
    """br (RFC 7932), decoded under ``output_buffer_limit`` so a bomb stops near the budget."""

    def __init__(self, coding: str, budget: _Budget) -> None:
        self._coding, self._budget = coding, budget
        self._decoder: _BrotliDecoder = brotli.Decompressor()
        self._seen = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        if data and self._decoder.is_finished():  # RFC 7932 §9: one stream, ended by ISLAST
            raise _corrupt(self._coding, "trailing data after end of stream")
        self._seen = self._seen or bool(data)
        try:
            while True:
                max_length = self._budget.ask()
                piece = self._decoder.process(data, output_buffer_limit=max_length)
                self._budget.take(len(piece))
                yield piece
                # Output cut at the limit may leave more in the decoder, and input it could not
                # take yet must be drained with empty calls before new input (brotli >= 1.2).
                if len(piece) < max_length and self._decoder.can_accept_more_data():
                    return
                data = b""
        except brotli.error as exc:
            raise _corrupt(self._coding, exc) from exc

    def finish(self) -> Iterator[bytes]:
        if self._seen and not self._decoder.is_finished():
            raise _corrupt(self._coding, "truncated stream")
        yield from ()


class _ZstdStage:
    """zstd (RFC 8878), one or more frames.

    ``zstandard``'s streaming decoder has no max_length, so under a budget the input goes in
    slices small enough that one call can return at most the remaining budget plus two blocks.
    """

    def __init__(self, coding: str, budget: _Budget) -> None:
        self._coding, self._budget = coding, budget
        self._context = zstandard.ZstdDecompressor(max_window_size=_ZSTD_MAX_WINDOW)
        self._obj = self._context.decompressobj(write_size=_CHUNK)
        self._seen = False

    def feed(self, data: bytes) -> Iterator[bytes]:
        self._seen = self._seen or bool(data)
        view, position = memoryview(data), 0
        while position < len(view):
            if self._obj.eof:  # RFC 8878 §3: a body may hold several frames back to back
                self._obj = self._context.decompressobj(write_size=_CHUNK)
            piece = view[position : position + self._slice()]
            position += len(piece)
            yield self._decompress(piece)
            position -= len(self._obj.unused_data) if self._obj.eof else 0

    def finish(self) -> Iterator[bytes]:
        if self._seen and not self._obj.eof:
            raise _corrupt(self._coding, "truncated stream")
        yield from ()

    def _slice(self) -> int:
        if self._budget.remaining is None:
            return 1 << 62
        blocks = max(1, self._budget.remaining // _ZSTD_BLOCK_MAX)
        return blocks * _ZSTD_MIN_BLOCK

    def _decompress(self, data: memoryview) -> bytes:
        try:
            piece = self._obj.decompress(data)
        except zstandard.ZstdError as exc:
            raise _corrupt(self._coding, exc) from exc
        self._budget.take(len(piece))
        return piece


def _encoder(coding: str) -> Callable[[bytes], bytes]:
    encoders: dict[str, Callable[[bytes], bytes]] = {
        # mtime=0: the same body always encodes to the same bytes (RFC 1952 §2.3.1 allows 0).
        "gzip": lambda data: gzip.compress(data, _GZIP_LEVEL, mtime=0),
        "x-gzip": lambda data: gzip.compress(data, _GZIP_LEVEL, mtime=0),
        # RFC 9110 §8.4.1.2: deflate means the zlib format (RFC 1950), not raw deflate.
        "deflate": lambda data: zlib.compress(data, _GZIP_LEVEL),
        "br": _brotli_compress,
        "zstd": zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress,
    }
    if coding not in encoders:
        raise EncodingError(f"unknown Content-Encoding {coding!r}")
    return encoders[coding]


def _brotli_compress(data: bytes) -> bytes:
    encoded: bytes = brotli.compress(data, quality=_BROTLI_QUALITY)
    return encoded
