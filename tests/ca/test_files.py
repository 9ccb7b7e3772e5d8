"""The CA on disk: init, the three places a key is found, every loading error, private writes."""

from __future__ import annotations

import datetime as dt
import os
import socket
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from mitmlite.ca import files
from mitmlite.ca.authority import PrivateKey, RootCA, mint_leaf
from mitmlite.ca.cache import LeafCache
from mitmlite.ca.files import (
    create_private,
    default_home,
    ensure_private_dir,
    init_ca,
    key_to_pem,
    load_ca,
    load_or_init,
    write_file,
    write_private,
)
from mitmlite.ca.names import leaf_name
from mitmlite.errors import CAError
from tests.ca.conftest import (
    NOW,
    handshake,
    handshake_fails,
    openssl_verify,
    pem,
    serve_tls,
    strict_client,
    write_pair,
)


def same(loaded: RootCA, expected: RootCA) -> bool:
    """Private keys do not compare equal; their public halves and the certificate do."""
    return loaded.cert == expected.cert and loaded.key.public_key() == expected.key.public_key()


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_zero() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_init_ca_writes_private_files(tmp_path: Path, umask_zero: None) -> None:
    directory = tmp_path / "new" / "ca"
    loaded = init_ca(directory, NOW)
    assert sorted(p.name for p in directory.iterdir()) == ["rootCA-key.pem", "rootCA.pem"]
    assert (loaded.cert_path, loaded.key_path) == (
        directory / "rootCA.pem",
        directory / "rootCA-key.pem",
    )
    assert mode(directory) == 0o700
    assert mode(loaded.key_path) == 0o600
    assert mode(loaded.cert_path) == 0o644
    assert x509.load_pem_x509_certificate(loaded.cert_path.read_bytes()) == loaded.root.cert
    assert b"PRIVATE KEY" not in loaded.cert_path.read_bytes()
    reloaded = load_ca(loaded.cert_path, None, None, NOW)
    assert reloaded.root.cert == loaded.root.cert
    assert reloaded.key_path == loaded.key_path
    assert reloaded.warnings == ()


def test_init_ca_rsa(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives.asymmetric import rsa

    assert isinstance(init_ca(tmp_path, NOW, "rsa").root.key, rsa.RSAPrivateKey)


@pytest.mark.parametrize("existing", ["rootCA.pem", "rootCA-key.pem"])
def test_init_ca_refuses_to_overwrite(tmp_path: Path, existing: str) -> None:
    (tmp_path / existing).write_bytes(b"precious")
    with pytest.raises(
        CAError, match=f"^{tmp_path / existing} already exists; refusing to overwrite a CA$"
    ):
        init_ca(tmp_path, NOW)
    assert (tmp_path / existing).read_bytes() == b"precious"
    assert len(list(tmp_path.iterdir())) == 1


def test_install_names_are_unique_with_a_long_host_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The CN is capped at 64 characters (RFC 5280 ub-common-name); the random part must survive.
    monkeypatch.setattr(socket, "gethostname", lambda: "ip-10-0-0-1.eu-west-1.compute.internal")
    one, two = init_ca(tmp_path / "one", NOW), init_ca(tmp_path / "two", NOW)
    assert one.root.cert.subject != two.root.cert.subject
    for loaded in (one, two):
        (cn,) = loaded.root.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        assert isinstance(cn.value, str)
        assert len(cn.value) <= 64
        assert cn.value.startswith("mitmlite CA ")
        assert f"{NOW:%Y-%m-%d}" in cn.value


def test_load_or_init_creates_once(tmp_path: Path) -> None:
    first, created = load_or_init(tmp_path / "home", NOW)
    second, created_again = load_or_init(tmp_path / "home", NOW)
    assert (created, created_again) == (True, False)
    assert first.root.cert == second.root.cert


def test_processes_starting_together_on_an_empty_home_share_one_ca(tmp_path: Path) -> None:
    # Two mitmlites started at once on a fresh home: before, each could write its own CA and
    # the one overwritten went on signing leaves with a CA that was no longer on disk.
    home = tmp_path / "home"
    start = threading.Barrier(4)
    results: list[tuple[bytes, bool]] = []

    def start_one() -> None:
        start.wait()
        loaded, created = load_or_init(home, NOW)
        results.append((loaded.root.cert.public_bytes(serialization.Encoding.DER), created))

    threads = [threading.Thread(target=start_one) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert len({cert for cert, _ in results}) == 1
    assert sorted(created for _, created in results) == [False, False, False, True]
    on_disk = x509.load_pem_x509_certificate((home / "rootCA.pem").read_bytes())
    assert on_disk.public_bytes(serialization.Encoding.DER) == results[0][0]


def test_the_process_that_lost_the_race_waits_for_the_winners_certificate(
    tmp_path: Path,
) -> None:
    home = tmp_path / "home"
    winner = init_ca(tmp_path / "winner", NOW)
    home.mkdir(mode=0o700)
    (home / "rootCA-key.pem").write_bytes(winner.key_path.read_bytes())  # key written, cert not
    late = threading.Timer(0.2, lambda: (home / "rootCA.pem").write_bytes(
        winner.cert_path.read_bytes()))  # fmt: skip
    late.start()
    loaded, created = load_or_init(home, NOW)
    late.join()
    assert created is False
    assert loaded.root.cert == winner.root.cert


def test_a_key_whose_certificate_never_comes_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files, "_OTHER_WRITER_SECONDS", 0.1)
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    (home / "rootCA-key.pem").write_bytes(b"left by a process that died")
    with pytest.raises(CAError, match=r"exists without rootCA\.pem: another mitmlite started"):
        load_or_init(home, NOW)


def test_default_home(tmp_path: Path) -> None:
    assert default_home({"MITMLITE_HOME": str(tmp_path)}) == tmp_path
    assert default_home({"MITMLITE_HOME": "~/x"}) == Path.home() / "x"
    assert default_home({}) == Path.home() / ".mitmlite"
    assert default_home({"MITMLITE_HOME": ""}) == Path.home() / ".mitmlite"


@pytest.mark.parametrize("key_first", [False, True])
def test_key_in_the_same_file(tmp_path: Path, root: RootCA, key_first: bool) -> None:
    parts = [pem(root.cert), key_to_pem(root.key)]
    path = tmp_path / "ca.pem"
    path.write_bytes(b"".join(reversed(parts) if key_first else parts))
    path.chmod(0o600)
    loaded = load_ca(path, None, None, NOW)
    assert same(loaded.root, root)
    assert loaded.key_path == path


def test_explicit_key_path(tmp_path: Path, root: RootCA) -> None:
    (tmp_path / "cert.pem").write_bytes(pem(root.cert))
    (tmp_path / "elsewhere.key").write_bytes(key_to_pem(root.key))
    (tmp_path / "elsewhere.key").chmod(0o600)
    loaded = load_ca(tmp_path / "cert.pem", tmp_path / "elsewhere.key", None, NOW)
    assert same(loaded.root, root)
    assert loaded.key_path == tmp_path / "elsewhere.key"


def test_mkcert_sibling(tmp_path: Path, mkcert: RootCA) -> None:
    cert_path = write_pair(tmp_path, mkcert)
    loaded = load_ca(cert_path, None, None, NOW)
    assert same(loaded.root, mkcert)
    assert loaded.key_path == tmp_path / "rootCA-key.pem"
    assert loaded.warnings == ()


def test_group_readable_key_warns(tmp_path: Path, root: RootCA) -> None:
    cert_path = write_pair(tmp_path, root)
    (tmp_path / "rootCA-key.pem").chmod(0o640)
    (warning,) = load_ca(cert_path, None, None, NOW).warnings
    assert warning == (
        f"warning: CA key {tmp_path / 'rootCA-key.pem'} is readable by group or others "
        f"(mode 0640); run: chmod 600 {tmp_path / 'rootCA-key.pem'}"
    )
    (tmp_path / "rootCA-key.pem").chmod(0o600)
    assert load_ca(cert_path, None, None, NOW).warnings == ()


# -- every loading error, with its one-line message -------------------------------------------


def test_missing_certificate(tmp_path: Path) -> None:
    with pytest.raises(CAError, match=f"^CA certificate {tmp_path / 'nope.pem'} does not exist$"):
        load_ca(tmp_path / "nope.pem", None, None, NOW)


def test_unreadable_certificate_directory(tmp_path: Path) -> None:
    # Tests run as root, where chmod 000 does not stop a read; a directory fails for everyone.
    with pytest.raises(CAError, match=f"^cannot read CA certificate {tmp_path}: Is a directory$"):
        load_ca(tmp_path, None, None, NOW)


def test_unreadable_certificate_symlink_loop(tmp_path: Path) -> None:
    loop = tmp_path / "loop.pem"
    loop.symlink_to(loop)
    with pytest.raises(
        CAError, match=r"^cannot read CA certificate .*: Too many levels of symbolic"
    ):
        load_ca(loop, None, None, NOW)


def test_no_certificate(tmp_path: Path, root: RootCA) -> None:
    (tmp_path / "rootCA.pem").write_bytes(key_to_pem(root.key))
    with pytest.raises(CAError, match=f"^no PEM certificate found in {tmp_path / 'rootCA.pem'}$"):
        load_ca(tmp_path / "rootCA.pem", None, None, NOW)


def test_no_key_lists_every_place(tmp_path: Path, root: RootCA) -> None:
    (tmp_path / "rootCA.pem").write_bytes(pem(root.cert))
    expected = (
        f"no CA private key found; looked in: {tmp_path / 'rootCA.pem'}, "
        f"{tmp_path / 'rootCA-key.pem'} (use --ca-key)"
    )
    with pytest.raises(CAError) as err:
        load_ca(tmp_path / "rootCA.pem", None, None, NOW)
    assert str(err.value) == expected


def test_explicit_key_missing(tmp_path: Path, root: RootCA) -> None:
    cert_path = write_pair(tmp_path, root)
    with pytest.raises(CAError, match=f"^CA key {tmp_path / 'k.pem'} does not exist$"):
        load_ca(cert_path, tmp_path / "k.pem", None, NOW)


def test_key_mismatch(tmp_path: Path, root: RootCA, other_root: RootCA) -> None:
    cert_path = write_pair(tmp_path, root)
    (tmp_path / "rootCA-key.pem").write_bytes(key_to_pem(other_root.key))
    with pytest.raises(CAError, match=r"^the CA private key does not match the CA certificate$"):
        load_ca(cert_path, None, None, NOW)


def test_not_a_ca(tmp_path: Path, root: RootCA, leaf_key: PrivateKey) -> None:
    leaf = mint_leaf(root, leaf_key, leaf_name("example.com"), NOW)
    (tmp_path / "rootCA.pem").write_bytes(pem(leaf))
    (tmp_path / "rootCA-key.pem").write_bytes(key_to_pem(leaf_key))
    with pytest.raises(CAError, match=r"^certificate 'CN=example.com' is not a CA \(no CA:TRUE\)$"):
        load_ca(tmp_path / "rootCA.pem", None, None, NOW)


def test_expired_and_not_yet_valid(tmp_path: Path, root: RootCA) -> None:
    cert_path = write_pair(tmp_path, root)
    after = root.cert.not_valid_after_utc + dt.timedelta(days=1)
    with pytest.raises(CAError, match=r"^the CA expired on "):
        load_ca(cert_path, None, None, after)
    before = root.cert.not_valid_before_utc - dt.timedelta(days=1)
    with pytest.raises(CAError, match=r"^the CA is not valid before "):
        load_ca(cert_path, None, None, before)


def encrypted(key: PrivateKey, password: bytes) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(password),
    )


def test_encrypted_key(tmp_path: Path, root: RootCA) -> None:
    cert_path = write_pair(tmp_path, root)
    key_path = tmp_path / "rootCA-key.pem"
    key_path.write_bytes(encrypted(root.key, b"s3cret"))
    with pytest.raises(CAError) as err:
        load_ca(cert_path, None, None, NOW)
    assert str(err.value) == (
        f"the CA key in {key_path} is encrypted: give its passphrase with --ca-pass "
        "or MITMLITE_CA_PASS"
    )
    with pytest.raises(CAError, match=f"^cannot read the CA key in {key_path}: wrong passphrase"):
        load_ca(cert_path, None, b"wrong", NOW)
    assert same(load_ca(cert_path, None, b"s3cret", NOW).root, root)


def test_passphrase_for_plain_key(tmp_path: Path, root: RootCA) -> None:
    cert_path = write_pair(tmp_path, root)
    with pytest.raises(CAError, match=r"is not encrypted, but a passphrase was given$"):
        load_ca(cert_path, None, b"s3cret", NOW)


def test_garbage_and_unsupported_keys(tmp_path: Path, root: RootCA) -> None:
    cert_path = write_pair(tmp_path, root)
    key_path = tmp_path / "rootCA-key.pem"
    key_path.write_bytes(b"-----BEGIN PRIVATE KEY-----\nnot base64\n-----END PRIVATE KEY-----\n")
    with pytest.raises(CAError, match=r"^cannot read the CA key in .*: not a valid PEM key$"):
        load_ca(cert_path, None, None, NOW)
    ed = ed25519.Ed25519PrivateKey.generate()
    key_path.write_bytes(
        ed.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    with pytest.raises(CAError, match=r"is Ed25519PrivateKey; use an EC or RSA key$"):
        load_ca(cert_path, None, None, NOW)


# -- private writes -----------------------------------------------------------------------------


def test_write_private_is_never_world_readable(
    tmp_path: Path, umask_zero: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int]] = []
    real_replace = os.replace

    def spy(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
        seen.append((Path(src).name, mode(Path(src))))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    write_private(tmp_path / "key.pem", b"secret")
    ((temp_name, temp_mode),) = seen
    assert temp_name.startswith(".key.pem.")
    assert temp_name.endswith(".tmp")
    assert temp_mode == 0o600
    assert mode(tmp_path / "key.pem") == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_write_file_replaces_atomically(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "key.pem"
    write_private(target, b"old")
    write_private(target, b"new")
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]

    def fail(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match=r"No space left"):
        write_file(target, b"torn", mode=0o600)
    assert target.read_bytes() == b"new"
    assert [p.name for p in tmp_path.iterdir()] == ["key.pem"]


def test_write_file_mode_survives_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        write_file(tmp_path / "rootCA.pem", b"cert", mode=0o644)
    finally:
        os.umask(old)
    assert mode(tmp_path / "rootCA.pem") == 0o644


# -- an mkcert CA, loaded through the sibling rule, passes the independent validators ----------


@pytest.fixture
def mkcert_loaded(tmp_path: Path, mkcert: RootCA) -> RootCA:
    return load_ca(write_pair(tmp_path / "mkcert", mkcert), None, None, NOW).root


@pytest.mark.parametrize("host", ["example.com", "192.0.2.7", "2001:db8::7"])
def test_mkcert_ca_leaf_passes_openssl(
    tmp_path: Path, mkcert_loaded: RootCA, leaf_key: PrivateKey, host: str
) -> None:
    leaf = mint_leaf(mkcert_loaded, leaf_key, leaf_name(host), NOW)
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    ca = tmp_path / "mkcert" / "rootCA.pem"
    result = openssl_verify(ca, tmp_path / "leaf.pem", host)
    assert result.returncode == 0, result.stdout + result.stderr
    assert openssl_verify(ca, tmp_path / "leaf.pem", "example.org").returncode != 0


@pytest.mark.parametrize("host", ["example.com", "::1"])
async def test_mkcert_ca_python_handshake(
    tmp_path: Path, mkcert_loaded: RootCA, root: RootCA, nursery: trio.Nursery, host: str
) -> None:
    cache = LeafCache(mkcert_loaded, tmp_path / "leaves")
    port = await nursery.start(serve_tls, cache.context_for(host))
    ca = tmp_path / "mkcert" / "rootCA.pem"
    assert (await handshake(port, strict_client(ca), host)).startswith(b"HTTP/1.1 200 OK")
    (tmp_path / "other.pem").write_bytes(pem(root.cert))
    await handshake_fails(port, strict_client(tmp_path / "other.pem"), host)


def test_shared_sticky_folder_keeps_its_mode(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    ensure_private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o1777


def test_own_loose_folder_is_tightened(tmp_path: Path) -> None:
    own = tmp_path / "ca"
    own.mkdir()
    own.chmod(0o755)  # as git checks out ca/
    ensure_private_dir(own)
    assert stat.S_IMODE(own.stat().st_mode) == 0o700


def test_create_private_never_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "key.pem"
    assert create_private(target, b"first")
    assert not create_private(target, b"second")
    assert target.read_bytes() == b"first"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["key.pem"]
