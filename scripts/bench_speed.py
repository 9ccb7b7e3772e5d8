"""How fast this machine is right now: a CPU yardstick printed beside every benchmark table.

The VMs these benchmarks run on drift by a factor of two between runs (the same code's leaf
mint took 1.3 ms in one run and 2.6 ms in another), which no change to the proxy comes close
to. Timing a fixed piece of work that every proxy in the table must also do, OpenSSL
encrypting and decrypting TLS records in memory, at the start and end of a run lets a reader
tell a slower proxy from a slower machine. It is also a floor: a proxy that decrypts and
re-encrypts each byte cannot spend less CPU per MiB than this.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import ssl
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from mitmlite.ca.authority import create_root
from mitmlite.ca.cache import LeafCache

RECORD = 16 * 1024
MIB = 1 << 20


def tls_ms_per_mib(mib: int = 64) -> float:
    """CPU milliseconds to encrypt and decrypt one MiB in 16 KiB TLS records (best of 3)."""
    with tempfile.TemporaryDirectory(prefix="mitmlite-speed-") as directory:
        root = create_root("mitmlite speed reference", dt.datetime.now(dt.UTC))
        server_ctx = LeafCache(root, Path(directory)).context_for("speed.test")
        client_ctx = ssl.create_default_context(
            cadata=root.cert.public_bytes(serialization.Encoding.PEM).decode("ascii")
        )
        client, server, server_in, client_out = _pair(client_ctx, server_ctx)
        data = b"x" * RECORD
        best = float("inf")
        for _ in range(3):
            started = time.process_time()
            for _ in range(mib * MIB // RECORD):
                client.write(data)
                server_in.write(client_out.read())
                server.read(RECORD)
            best = min(best, (time.process_time() - started) * 1000 / mib)
        return best


def _pair(
    client_ctx: ssl.SSLContext, server_ctx: ssl.SSLContext
) -> tuple[ssl.SSLObject, ssl.SSLObject, ssl.MemoryBIO, ssl.MemoryBIO]:
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname="speed.test")
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    for _ in range(10):  # a handshake takes a few flights; memory BIOs never block
        for side in (client, server):
            with contextlib.suppress(ssl.SSLWantReadError):
                side.do_handshake()
        s_in.write(c_out.read())
        c_in.write(s_out.read())
    client.version()  # raises if the handshake did not complete
    return client, server, s_in, c_out
