"""Per-host leaf certificates and their server-side SSL contexts, minted once and kept.

Owns the bounded LRU of ``ssl.SSLContext`` per host, re-minting a leaf before it expires (time
comes from an injected clock so tests control it), and the leaf files: Python's ``ssl`` loads
chains only from files, so each leaf is written once into a private directory beside the CA and
reused after a restart when it is still valid, issued by the same CA and carries the current leaf
key. Lookups never await, so two trio tasks cannot both mint one host; a lock makes the same true
across threads (single flight).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import ssl
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mitmlite.ca.authority import PrivateKey, RootCA, is_issued_by, leaf_sans, mint_leaf
from mitmlite.ca.files import (
    LEAF_KEY_NAME,
    LEAVES_DIR,
    RSA_LEAF_KEY_NAME,
    create_private,
    ensure_private_dir,
    key_to_pem,
    write_file,
    write_private,
)
from mitmlite.ca.names import LeafName, extra_name, leaf_name
from mitmlite.tls.contexts import leaf_context

Clock = Callable[[], dt.datetime]

# A leaf with less than this left is replaced, so no client ever sees one expire mid-session.
REMINT_MARGIN = dt.timedelta(days=7)
DEFAULT_MAX_HOSTS = 1000
# Leaf files kept beside the CA (reused after a restart); checked every PRUNE_EVERY mints.
# A client may send any name it likes (a reverse proxy facing the internet sees many), so the
# directory is bounded like the in-memory cache, oldest files first.
MAX_LEAF_FILES = 5000
PRUNE_EVERY = 100
# Names copied from an upstream certificate into a leaf; CDNs list hundreds, clients need few.
MAX_EXTRA = 100


def utc_now() -> dt.datetime:
    """The real clock."""
    return dt.datetime.now(dt.UTC)


@dataclass(frozen=True, slots=True)
class CachedLeaf:
    """One host's leaf and the context that presents it."""

    cert: x509.Certificate
    context: ssl.SSLContext

    def fresh(self, now: dt.datetime) -> bool:
        """True while the leaf has more than the re-mint margin left."""
        return now < self.cert.not_valid_after_utc - REMINT_MARGIN


class LeafCache:
    """Bounded LRU of per-host leaf contexts under one root CA."""

    def __init__(
        self,
        root: RootCA,
        directory: Path,
        *,
        max_hosts: int = DEFAULT_MAX_HOSTS,
        clock: Clock = utc_now,
        max_files: int = MAX_LEAF_FILES,
    ) -> None:
        self.root = root
        self.directory = directory
        self.max_hosts = max_hosts
        self.clock = clock
        self.max_files = max_files
        self.mints = 0
        self._entries: OrderedDict[str, CachedLeaf] = OrderedDict()
        self._lock = threading.Lock()
        ensure_private_dir(directory)
        self.key_path = directory / LEAF_KEY_NAME
        self.leaf_key = _load_or_create_leaf_key(self.key_path)
        self.rsa_key_path = directory / RSA_LEAF_KEY_NAME
        self._rsa_key: PrivateKey | None = None  # made on the first client that needs it

    def context_for(
        self, host: str, also: Sequence[str] = (), *, rsa: bool = False
    ) -> ssl.SSLContext:
        """The server-side context for ``host``; raises InvalidHostError for invalid names.

        ``also``: more names for the leaf (the upstream certificate's); invalid ones are left out.
        ``rsa``: a leaf with an RSA key, for a client that offers no ECDSA (old TLS 1.2 stacks).
        """
        return self.leaf_for(host, also, rsa=rsa).context

    def leaf_for(self, host: str, also: Sequence[str] = (), *, rsa: bool = False) -> CachedLeaf:
        """The cached leaf for ``host``, minting or reloading it when missing or near expiry."""
        key = host if not also else f"{host}|{','.join(also)}"
        key = f"{key}#rsa" if rsa else key
        with self._lock:
            entry = self._entries.get(key)
            now = self.clock()
            if entry is not None and entry.fresh(now):
                self._entries.move_to_end(key)
                return entry
            extra = tuple(n for n in (extra_name(text) for text in also[:MAX_EXTRA]) if n)
            entry = self._obtain(leaf_name(host), now, extra, rsa=rsa)
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_hosts:
                self._entries.popitem(last=False)
            return entry

    def __len__(self) -> int:
        return len(self._entries)

    def _obtain(
        self, name: LeafName, now: dt.datetime, extra: tuple[LeafName, ...] = (), *, rsa: bool
    ) -> CachedLeaf:
        key, key_path = (self._rsa(), self.rsa_key_path) if rsa else (self.leaf_key, self.key_path)
        path = self.directory / leaf_file_name(name, extra, rsa=rsa)
        cert = self._reusable(path, name, extra, now, key)
        if cert is None:
            cert = mint_leaf(self.root, key, name, now, extra)
            self.mints += 1
            chain = cert.public_bytes(serialization.Encoding.PEM) + self.root.cert.public_bytes(
                serialization.Encoding.PEM
            )
            write_file(path, chain, mode=0o600, durable=False)
            if self.mints % PRUNE_EVERY == 0:
                self._prune_files()
        return CachedLeaf(cert=cert, context=leaf_context(path, key_path, legacy=rsa))

    def _rsa(self) -> PrivateKey:
        if self._rsa_key is None:
            self._rsa_key = _load_or_create_leaf_key(self.rsa_key_path, want_rsa=True)
        return self._rsa_key

    def _prune_files(self) -> None:
        """Keep the newest ``max_files`` leaf files: any name a client sends mints one."""
        try:
            files = [(p.stat().st_mtime, p) for p in self.directory.glob("*.chain.pem")]
        except OSError:
            return
        if len(files) <= self.max_files:
            return
        files.sort()
        for _, path in files[: len(files) - self.max_files]:
            with contextlib.suppress(OSError):
                path.unlink()

    def _reusable(
        self,
        path: Path,
        name: LeafName,
        extra: tuple[LeafName, ...],
        now: dt.datetime,
        key: PrivateKey,
    ) -> x509.Certificate | None:
        try:
            cert = x509.load_pem_x509_certificate(path.read_bytes())
            names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, ValueError, x509.ExtensionNotFound):
            return None
        ok = (
            list(names) == leaf_sans(name, extra)
            and cert.public_key() == key.public_key()
            and cert.not_valid_before_utc <= now
            and is_issued_by(cert, self.root)
        )
        entry_is_fresh = now < cert.not_valid_after_utc - REMINT_MARGIN
        return cert if ok and entry_is_fresh else None


def leaf_file_name(name: LeafName, extra: Sequence[LeafName] = (), *, rsa: bool = False) -> str:
    """The chain file for ``name``: one file per name, never the leaf key's file.

    ``+`` cannot occur in a host name, so an IPv6 address never maps onto a name like ``__1``,
    and the ``.chain.pem`` suffix keeps a host called ``mitmlite-leaf-key`` off the key file.
    A leaf with extra names gets a digest of them, so it never replaces the plain one.
    """
    base = name.text.replace(":", "+")
    if extra:
        digest = hashlib.sha256(",".join(n.text for n in extra).encode()).hexdigest()[:16]
        base += f"+{digest}"
    return f"{base}+rsa.chain.pem" if rsa else f"{base}.chain.pem"  # "+": never in a name


def leaves_dir(ca_dir: Path) -> Path:
    """Where leaf files for the CA in ``ca_dir`` live."""
    return ca_dir / LEAVES_DIR


def _load_or_create_leaf_key(path: Path, *, want_rsa: bool = False) -> PrivateKey:
    # One key for every leaf: minting then costs a signature, not a key generation. It is never
    # the CA key, so a leaked leaf key cannot issue certificates (and Windows SChannel accepts it).
    key = _read_leaf_key(path, want_rsa=want_rsa)
    if key is not None:
        return key
    fresh: PrivateKey = _new_rsa_key() if want_rsa else ec.generate_private_key(ec.SECP256R1())
    if path.exists():  # unreadable or not an EC key: replace it
        write_private(path, key_to_pem(fresh))
        return fresh
    if create_private(path, key_to_pem(fresh)):
        return fresh
    # Another process created the key first: use theirs, so both mint leaves with one key.
    return _read_leaf_key(path, want_rsa=want_rsa) or fresh


def _new_rsa_key() -> PrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _read_leaf_key(path: Path, *, want_rsa: bool = False) -> PrivateKey | None:
    try:
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return None
    wanted = rsa.RSAPrivateKey if want_rsa else ec.EllipticCurvePrivateKey
    return key if isinstance(key, wanted) else None
