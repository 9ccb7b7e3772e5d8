"""Proxy authentication: who may use the proxy, checked from ``Proxy-Authorization: Basic``.

Owns parsing ``--proxy-auth`` (``user:pass``, or ``@FILE`` in htpasswd format with bcrypt or
``{SHA}`` entries), decoding the client's Basic credentials (RFC 7617), and checking them in
constant time. The relay asks ``Credentials.check`` and answers 407 when it says no; nothing here
logs, and a password never leaves this module. Pure: no trio, no sockets (bcrypt is slow on
purpose, so the relay runs ``check`` in a worker thread the first time it sees a credential).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field
from pathlib import Path

import bcrypt

from mitmlite.errors import ConfigError

REALM = "mitmlite"
_BCRYPT_PREFIXES = (b"$2a$", b"$2b$", b"$2y$")
_SHA_PREFIX = "{SHA}"


@dataclass(frozen=True, slots=True)
class _Entry:
    """One user's stored secret: a bcrypt hash, a ``{SHA}`` digest, or a plain password."""

    kind: str  # "bcrypt" | "sha" | "plain"
    secret: bytes


@dataclass(eq=False)
class Credentials:
    """The users allowed to use the proxy."""

    users: dict[str, _Entry]
    source: str  # "--proxy-auth" or the htpasswd path, for messages
    # Checked when the user is unknown, so that an unknown name costs what a wrong password
    # costs and the timing does not tell which names exist.
    decoy: _Entry = field(default_factory=lambda: _Entry("plain", secrets.token_bytes(16)))
    # Credentials already verified, by SHA-256 of the header value: a browser sends the same
    # header on every connection, and bcrypt must not run (tens of ms) for each of them.
    _good: set[bytes] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def known(self, header: bytes | None) -> bool:
        """True when this exact header was verified before (cheap, no hashing of the secret)."""
        if header is None:
            return False
        with self._lock:
            return hashlib.sha256(header).digest() in self._good

    def check(self, header: bytes | None) -> bool:
        """Whether ``Proxy-Authorization: <header>`` names an allowed user with the right secret."""
        if header is None:
            return False
        if self.known(header):
            return True
        decoded = decode_basic(header)
        if decoded is None:
            return False
        user, password = decoded
        entry = self.users.get(user)
        ok = _verify(entry or self.decoy, password) and entry is not None
        if ok:
            with self._lock:
                self._good.add(hashlib.sha256(header).digest())
        return ok

    @property
    def slow(self) -> bool:
        """Whether a check may take long enough (bcrypt) to belong in a worker thread."""
        return any(entry.kind == "bcrypt" for entry in self.users.values())


def _verify(entry: _Entry, password: bytes) -> bool:
    if entry.kind == "bcrypt":
        # bcrypt 5 refuses passwords over 72 bytes; every bcrypt implementation only ever
        # looked at the first 72, which is what htpasswd -B hashed.
        try:
            return bcrypt.checkpw(password[:72], entry.secret)
        except ValueError:  # a malformed hash in the file: nobody gets in with it
            return False
    if entry.kind == "sha":
        digest = base64.b64encode(hashlib.sha1(password, usedforsecurity=False).digest())
        return hmac.compare_digest(digest, entry.secret)
    return hmac.compare_digest(password, entry.secret)


def decode_basic(header: bytes) -> tuple[str, bytes] | None:
    """``Basic base64(user:pass)`` → (user, password), or None when it is not that."""
    scheme, _, token = header.strip().partition(b" ")
    if scheme.lower() != b"basic" or not token:
        return None
    try:
        raw = base64.b64decode(token.strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = raw.partition(b":")
    if not sep:
        return None
    return user.decode("utf-8", "replace"), password


def parse_proxy_auth(value: str) -> Credentials:
    """``user:pass`` or ``@FILE`` (htpasswd: ``user:$2y$...`` bcrypt or ``user:{SHA}...``)."""
    if value.startswith("@"):
        return load_htpasswd(Path(value[1:]))
    user, sep, password = value.partition(":")
    if not sep or not user or not password:
        raise ConfigError("--proxy-auth needs USER:PASSWORD or @HTPASSWD-FILE")
    return Credentials({user: _Entry("plain", password.encode())}, "--proxy-auth")


def load_htpasswd(path: Path) -> Credentials:
    """Read an htpasswd file; an entry we cannot verify safely is an error, not a silent skip."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read --proxy-auth file {path}: {exc.strerror}") from exc
    users: dict[str, _Entry] = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, stored = line.partition(":")
        if not sep or not user or not stored:
            raise ConfigError(f"{path}:{number}: expected USER:HASH")
        users[user] = _entry(stored, f"{path}:{number}")
    if not users:
        raise ConfigError(f"{path}: no users")
    return Credentials(users, str(path), decoy=_decoy(next(iter(users.values()))))


def _decoy(like: _Entry) -> _Entry:
    """A secret nobody knows, hashed like ``like`` (same bcrypt cost), for unknown users."""
    if like.kind != "bcrypt":
        return _Entry(like.kind, secrets.token_bytes(16))
    try:
        cost = int(like.secret.split(b"$")[2])
        salt = bcrypt.gensalt(cost)
    except (IndexError, ValueError):
        salt = bcrypt.gensalt(12)  # that entry lets nobody in anyway (see _verify)
    return _Entry("bcrypt", bcrypt.hashpw(secrets.token_bytes(16), salt))


def _entry(stored: str, where: str) -> _Entry:
    secret = stored.encode()
    if secret.startswith(_BCRYPT_PREFIXES):
        return _Entry("bcrypt", secret)
    if stored.startswith(_SHA_PREFIX):
        return _Entry("sha", stored[len(_SHA_PREFIX) :].encode())
    if stored.startswith("$apr1$") or stored.startswith("$1$"):
        raise ConfigError(f"{where}: MD5 (apr1) hashes are not supported; use htpasswd -B")
    if stored.startswith("$"):
        raise ConfigError(f"{where}: unknown hash type {stored.split('$')[1]!r}; use htpasswd -B")
    raise ConfigError(f"{where}: plain-text or crypt() entries are not supported; use -B (bcrypt)")


def challenge() -> tuple[bytes, bytes]:
    """The header a 407 carries (RFC 9110 §11.7.1)."""
    return b"Proxy-Authenticate", f'Basic realm="{REALM}", charset="UTF-8"'.encode()
