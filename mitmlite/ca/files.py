"""The CA on disk: where it lives, how it is found, loaded and written.

Owns the CA home (``MITMLITE_HOME`` or ``~/.mitmlite``), the mkcert sibling rule
(``rootCA.pem`` + ``rootCA-key.pem``), loading with one-line errors, and private writes: files
0600 and directories 0700, written atomically so a crash never leaves half a key. It never logs
key material; warnings are returned to the caller as text.
"""

from __future__ import annotations

import datetime as dt
import getpass
import os
import secrets
import socket
import stat
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mitmlite.ca.authority import (
    MAX_CN_LENGTH,
    KeyType,
    PrivateKey,
    RootCA,
    check_root,
    create_root,
)
from mitmlite.errors import CAError

CERT_NAME = "rootCA.pem"
KEY_NAME = "rootCA-key.pem"
LEAF_KEY_NAME = "mitmlite-leaf-key.pem"
RSA_LEAF_KEY_NAME = "mitmlite-leaf-key-rsa.pem"  # for clients that cannot verify ECDSA
LEAVES_DIR = "mitmlite-leaves"


@dataclass(frozen=True, slots=True)
class LoadedCA:
    """A checked root CA, where it came from, and warnings for the user (never key material)."""

    root: RootCA
    cert_path: Path
    key_path: Path
    warnings: tuple[str, ...] = ()


def default_home(environ: dict[str, str] | os._Environ[str]) -> Path:
    """The CA home: ``MITMLITE_HOME`` when set, else ``~/.mitmlite``."""
    home = environ.get("MITMLITE_HOME")
    return Path(home).expanduser() if home else Path.home() / ".mitmlite"


def install_name(now: dt.datetime) -> str:
    """A CN unique to this install so two installs never collide in one trust store."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "user"
    prefix, suffix = "mitmlite CA ", f" {now:%Y-%m-%d} {secrets.token_hex(3)}"
    # The CN is capped at 64 characters: shorten user@host, never the random part that keeps
    # two installs on one machine apart.
    who = f"{user}@{socket.gethostname()}"[: MAX_CN_LENGTH - len(prefix) - len(suffix)]
    return f"{prefix}{who}{suffix}"


def init_ca(directory: Path, now: dt.datetime, key_type: KeyType = "ec") -> LoadedCA:
    """Create ``rootCA.pem`` and ``rootCA-key.pem`` in ``directory``; refuse to overwrite."""
    cert_path, key_path = directory / CERT_NAME, directory / KEY_NAME
    for path in (cert_path, key_path):
        if path.exists():
            raise CAError(f"{path} already exists; refusing to overwrite a CA")
    ensure_private_dir(directory)
    root = create_root(install_name(now), now, key_type)
    # The key is created exclusively: of two processes starting on an empty home at once, one
    # writes the CA and the other uses it (load_or_init), instead of each signing leaves with a
    # CA the other then overwrites.
    if not create_private(key_path, key_to_pem(root.key)):
        raise _CreatedElsewhere(f"{key_path} already exists; refusing to overwrite a CA")
    write_file(cert_path, root.cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return LoadedCA(root=root, cert_path=cert_path, key_path=key_path)


class _CreatedElsewhere(CAError):
    """Another process created the CA key between our check and our write."""


# How long a process that lost the race waits for the winner's certificate (written right after
# its key): far longer than that write takes, short enough to fail clearly if the winner died.
_OTHER_WRITER_SECONDS = 10.0


def load_or_init(directory: Path, now: dt.datetime) -> tuple[LoadedCA, bool]:
    """Load the CA in ``directory``, creating it first when there is none; True when created."""
    cert_path = directory / CERT_NAME
    if cert_path.exists():
        return load_ca(cert_path, None, None, now), False
    if not (directory / KEY_NAME).exists():
        try:
            return init_ca(directory, now), True
        except _CreatedElsewhere:
            pass
    # A key without its certificate: another process is writing this CA right now.
    pause = threading.Event()  # startup code, before any event loop: a plain wait is fine
    deadline = time.monotonic() + _OTHER_WRITER_SECONDS
    while not cert_path.exists() and time.monotonic() < deadline:
        pause.wait(0.02)
    if not cert_path.exists():
        raise CAError(
            f"{directory / KEY_NAME} exists without {CERT_NAME}: another mitmlite started "
            "creating this CA and did not finish; remove the key file and start again"
        )
    return load_ca(cert_path, None, None, now), False


def load_ca(
    cert_path: Path, key_path: Path | None, password: bytes | None, now: dt.datetime
) -> LoadedCA:
    """Load and check a CA; its key comes from ``key_path``, the same file or the mkcert sibling."""
    cert_pem = _read(cert_path, "CA certificate")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
    except ValueError as exc:
        raise CAError(f"no PEM certificate found in {cert_path}") from exc
    key, found_at = _find_key(cert_path, cert_pem, key_path, password)
    root = check_root(cert, key, now)
    warnings = _permission_warnings(found_at)
    return LoadedCA(root=root, cert_path=cert_path, key_path=found_at, warnings=warnings)


def key_candidates(cert_path: Path, key_path: Path | None) -> list[Path]:
    """Every place a CA key is looked for, in order."""
    if key_path is not None:
        return [key_path]
    stem = cert_path.name.removesuffix(".pem").removesuffix(".crt")
    return [cert_path, cert_path.with_name(f"{stem}-key.pem")]


def _find_key(
    cert_path: Path, cert_pem: bytes, key_path: Path | None, password: bytes | None
) -> tuple[PrivateKey, Path]:
    looked: list[str] = []
    for candidate in key_candidates(cert_path, key_path):
        data = cert_pem if candidate == cert_path else _read_optional(candidate, key_path)
        if data is None or b"PRIVATE KEY-----" not in data:
            looked.append(str(candidate))
            continue
        return _parse_key(data, candidate, password), candidate
    raise CAError(f"no CA private key found; looked in: {', '.join(looked)} (use --ca-key)")


def _parse_key(data: bytes, path: Path, password: bytes | None) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except TypeError as exc:
        if password is None:
            raise CAError(
                f"the CA key in {path} is encrypted: give its passphrase with --ca-pass "
                "or MITMLITE_CA_PASS"
            ) from exc
        raise CAError(f"the CA key in {path} is not encrypted, but a passphrase was given") from exc
    except ValueError as exc:
        reason = "wrong passphrase or " if password is not None else ""
        raise CAError(f"cannot read the CA key in {path}: {reason}not a valid PEM key") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise CAError(f"the CA key in {path} is {type(key).__name__}; use an EC or RSA key")
    return key


def _read(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise CAError(f"{what} {path} does not exist") from exc
    except OSError as exc:
        raise CAError(f"cannot read {what} {path}: {exc.strerror}") from exc


def _read_optional(path: Path, explicit: Path | None) -> bytes | None:
    if explicit is not None:
        return _read(path, "CA key")
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise CAError(f"cannot read CA key {path}: {exc.strerror}") from exc


def _permission_warnings(key_path: Path) -> tuple[str, ...]:
    mode = key_path.stat().st_mode
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"warning: CA key {key_path} is readable by group or others "
            f"(mode {stat.S_IMODE(mode):04o}); run: chmod 600 {key_path}",
        )
    return ()


def key_to_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted: the file mode is what protects it, as with mkcert."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def ensure_private_dir(directory: Path) -> None:
    """Create ``directory`` (and parents) 0700, or tighten an existing one of ours to 0700.

    A shared folder (world-writable or sticky, such as /tmp) is left as it is: changing its
    mode would break every other user of it.
    """
    if directory.is_dir():
        mode = directory.stat().st_mode
        if mode & (stat.S_ISVTX | stat.S_IWOTH):
            return
    directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    directory.chmod(0o700)


def write_private(path: Path, data: bytes) -> None:
    """Atomically write a secret: the file is 0600 from its first byte, never world-readable."""
    write_file(path, data, mode=0o600)


def create_private(path: Path, data: bytes) -> bool:
    """Write a secret only if ``path`` does not exist yet; False when another writer won."""
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    write_private(tmp, data)
    try:
        os.link(tmp, path)  # atomic and exclusive: two processes cannot both create the key
    except FileExistsError:
        return False
    finally:
        tmp.unlink(missing_ok=True)
    return True


def write_file(path: Path, data: bytes, *, mode: int, durable: bool = True) -> None:
    """Write ``data`` to a temporary sibling created with ``mode``, then rename it over ``path``.

    ``durable`` adds an fsync first; leaf files skip it because a torn leaf is simply re-minted.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            if durable:
                handle.flush()
                os.fsync(handle.fileno())
        os.chmod(tmp, mode)  # the umask may have narrowed or (for 0644) cut the mode
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
