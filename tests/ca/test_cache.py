"""LeafCache: one mint per host, LRU bound, re-mint before expiry, safe reuse of leaf files, and
handshakes that a strict Python client and curl accept."""

from __future__ import annotations

import datetime as dt
import os
import ssl
import stat
import subprocess
import threading
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from mitmlite.ca.authority import RootCA
from mitmlite.ca.cache import REMINT_MARGIN, LeafCache
from mitmlite.ca.files import LEAF_KEY_NAME, RSA_LEAF_KEY_NAME
from mitmlite.errors import InvalidHostError
from tests.ca.conftest import NOW, handshake, handshake_fails, pem, serve_tls, strict_client

LONG = "a-very-long-host-name-that-does-not-fit-in-a-common-name.example.com"


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: dt.datetime) -> None:
        self.now = now

    def __call__(self) -> dt.datetime:
        return self.now


def leaf_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.iterdir() if p.name != LEAF_KEY_NAME)


def sans(cert: x509.Certificate) -> list[object]:
    return list(cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)


def test_one_mint_per_host(tmp_path: Path, root: RootCA) -> None:
    cache = LeafCache(root, tmp_path)
    first = cache.context_for("example.com")
    assert cache.context_for("example.com") is first
    assert cache.mints == 1
    assert cache.context_for("example.org") is not first
    assert cache.mints == 2
    assert len(cache) == 2
    assert len(leaf_files(tmp_path)) == 2


def test_invalid_host_is_not_minted(tmp_path: Path, root: RootCA) -> None:
    cache = LeafCache(root, tmp_path)
    with pytest.raises(InvalidHostError):
        cache.context_for("bad host")
    assert (cache.mints, len(cache), leaf_files(tmp_path)) == (0, 0, [])


def test_lru_evicts_least_recently_used(tmp_path: Path, root: RootCA) -> None:
    cache = LeafCache(root, tmp_path, max_hosts=2)
    a, b = cache.context_for("a.test"), cache.context_for("b.test")
    assert cache.context_for("a.test") is a  # a is now the most recently used
    cache.context_for("c.test")
    assert len(cache) == 2
    assert cache.context_for("a.test") is a
    assert cache.context_for("b.test") is not b  # evicted, rebuilt (from its file: no mint)
    assert cache.mints == 3


def test_remint_before_expiry(tmp_path: Path, root: RootCA) -> None:
    clock = Clock(NOW)
    cache = LeafCache(root, tmp_path, clock=clock)
    first = cache.leaf_for("example.com")
    clock.now = first.cert.not_valid_after_utc - REMINT_MARGIN - dt.timedelta(seconds=1)
    assert cache.leaf_for("example.com") is first
    assert cache.mints == 1
    clock.now += dt.timedelta(seconds=1)
    second = cache.leaf_for("example.com")
    assert cache.mints == 2
    assert second.cert.serial_number != first.cert.serial_number
    assert second.cert.not_valid_after_utc > first.cert.not_valid_after_utc
    assert second.fresh(clock.now)
    assert not first.fresh(clock.now)


def test_restart_reuses_files_of_the_same_ca(tmp_path: Path, root: RootCA) -> None:
    before = LeafCache(root, tmp_path).leaf_for("example.com").cert
    after = LeafCache(root, tmp_path)
    assert after.leaf_for("example.com").cert == before
    assert after.mints == 0


def test_restart_replaces_leaf_of_another_ca(
    tmp_path: Path, root: RootCA, other_root: RootCA
) -> None:
    LeafCache(other_root, tmp_path).context_for("example.com")
    cache = LeafCache(root, tmp_path)
    cert = cache.leaf_for("example.com").cert
    assert cache.mints == 1
    cert.verify_directly_issued_by(root.cert)  # raises when another CA signed it
    assert LeafCache(root, tmp_path).leaf_for("example.com").cert == cert  # replaced on disk


def test_restart_replaces_expiring_leaf(tmp_path: Path, root: RootCA) -> None:
    first = LeafCache(root, tmp_path).leaf_for("example.com").cert
    later = Clock(first.not_valid_after_utc - REMINT_MARGIN)
    cache = LeafCache(root, tmp_path, clock=later)
    assert cache.leaf_for("example.com").cert != first
    assert cache.mints == 1


def test_restart_replaces_corrupt_leaf(tmp_path: Path, root: RootCA) -> None:
    LeafCache(root, tmp_path).context_for("example.com")
    (path,) = leaf_files(tmp_path)
    path.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
    cache = LeafCache(root, tmp_path)
    cache.context_for("example.com")
    assert cache.mints == 1
    assert x509.load_pem_x509_certificate(path.read_bytes())


def test_restart_with_new_leaf_key_remints(tmp_path: Path, root: RootCA) -> None:
    LeafCache(root, tmp_path).context_for("example.com")
    (tmp_path / LEAF_KEY_NAME).write_bytes(b"corrupt")
    cache = LeafCache(root, tmp_path)
    cache.context_for("example.com")
    assert cache.mints == 1


def test_leaf_key_is_private_and_not_the_ca_key(tmp_path: Path, root: RootCA) -> None:
    cache = LeafCache(root, tmp_path / "leaves")
    assert stat.S_IMODE((tmp_path / "leaves").stat().st_mode) == 0o700
    assert stat.S_IMODE(cache.key_path.stat().st_mode) == 0o600
    key = serialization.load_pem_private_key(cache.key_path.read_bytes(), None)
    assert key.public_key() == cache.leaf_key.public_key()
    assert key.public_key() != root.key.public_key()
    cert = cache.leaf_for("example.com").cert
    assert cert.public_key() == key.public_key()
    (path,) = leaf_files(tmp_path / "leaves")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" not in path.read_bytes()
    assert LeafCache(root, tmp_path / "leaves").leaf_key.public_key() == key.public_key()


def test_concurrent_first_requests_mint_once(tmp_path: Path, root: RootCA) -> None:
    cache = LeafCache(root, tmp_path)
    start = threading.Barrier(8)
    results: list[object] = []

    def request() -> None:
        start.wait()
        results.append(cache.context_for("example.com"))

    threads = [threading.Thread(target=request) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 8
    assert all(ctx is results[0] for ctx in results)
    assert cache.mints == 1


@pytest.mark.parametrize(
    ("first", "second"), [("__1", "::1"), ("::1", "__1"), ("mitmlite-leaf-key", "example.com")]
)
def test_hosts_never_share_files(tmp_path: Path, root: RootCA, first: str, second: str) -> None:
    # Files are named after hosts; no host may pick up another host's leaf or the leaf key.
    LeafCache(root, tmp_path).context_for(first)
    cache = LeafCache(root, tmp_path)
    cert = cache.leaf_for(second).cert
    assert cache.mints == 1
    assert [str(getattr(n, "value", "")) for n in sans(cert)] == [second]
    assert LeafCache(root, tmp_path).leaf_for(first).cert is not None


# -- real handshakes: Python's strict verifier and curl ---------------------------------------


@pytest.fixture
def ca_file(tmp_path: Path, root: RootCA) -> Path:
    (tmp_path / "rootCA.pem").write_bytes(pem(root.cert))
    return tmp_path / "rootCA.pem"


@pytest.fixture
def other_ca_file(tmp_path: Path, other_root: RootCA) -> Path:
    (tmp_path / "otherCA.pem").write_bytes(pem(other_root.cert))
    return tmp_path / "otherCA.pem"


HANDSHAKES = [
    ("example.com", "example.com"),
    (LONG, LONG),
    ("bücher.de", "xn--bcher-kva.de"),
    ("127.0.0.1", "127.0.0.1"),
    ("::1", "::1"),
]


@pytest.mark.parametrize(("host", "checked"), HANDSHAKES)
async def test_strict_python_client_accepts_leaf(
    tmp_path: Path, root: RootCA, ca_file: Path, nursery: trio.Nursery, host: str, checked: str
) -> None:
    cache = LeafCache(root, tmp_path / "leaves")
    port = await nursery.start(serve_tls, cache.context_for(host))
    response = await handshake(port, strict_client(ca_file), checked)
    assert response.startswith(b"HTTP/1.1 200 OK")


@pytest.mark.parametrize(("host", "checked"), HANDSHAKES)
async def test_strict_python_client_rejects_other_ca(
    tmp_path: Path,
    root: RootCA,
    other_ca_file: Path,
    nursery: trio.Nursery,
    host: str,
    checked: str,
) -> None:
    cache = LeafCache(root, tmp_path / "leaves")
    port = await nursery.start(serve_tls, cache.context_for(host))
    message = await handshake_fails(port, strict_client(other_ca_file), checked)
    assert message == "self-signed certificate in certificate chain"


@pytest.mark.parametrize(("host", "wrong"), [("example.com", "example.org"), ("::1", "::2")])
async def test_strict_python_client_rejects_wrong_host(
    tmp_path: Path, root: RootCA, ca_file: Path, nursery: trio.Nursery, host: str, wrong: str
) -> None:
    cache = LeafCache(root, tmp_path / "leaves")
    port = await nursery.start(serve_tls, cache.context_for(host))
    message = await handshake_fails(port, strict_client(ca_file), wrong)
    assert "mismatch" in message


async def curl(host: str, port: int, *options: str) -> subprocess.CompletedProcess[bytes]:
    target = f"[{host}]" if ":" in host else host
    argv = ["curl", "-sS", "--noproxy", "*", "--max-time", "20", *options]
    argv += ["--resolve", f"{target}:{port}:127.0.0.1", f"https://{target}:{port}/"]
    return await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)


@pytest.mark.parametrize("host", ["example.com", LONG, "xn--bcher-kva.de", "127.0.0.1"])
async def test_curl_accepts_leaf(
    tmp_path: Path, root: RootCA, ca_file: Path, nursery: trio.Nursery, host: str
) -> None:
    cache = LeafCache(root, tmp_path / "leaves")
    port = await nursery.start(serve_tls, cache.context_for(host))
    result = await curl(host, port, "--cacert", str(ca_file))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"ok"


@pytest.mark.parametrize("host", ["example.com", "127.0.0.1"])
async def test_curl_rejects_leaf_without_the_ca(
    tmp_path: Path, root: RootCA, other_ca_file: Path, nursery: trio.Nursery, host: str
) -> None:
    cache = LeafCache(root, tmp_path / "leaves")
    port = await nursery.start(serve_tls, cache.context_for(host))
    for options in [(), ("--cacert", str(other_ca_file))]:
        result = await curl(host, port, *options)
        assert result.returncode == 60, result.stderr  # CURLE_PEER_FAILED_VERIFICATION
        assert result.stdout == b""


# --- leaves that also carry the upstream certificate's names (--upstream-cert) ------------------


def _sans(cache: LeafCache, host: str, also: list[str]) -> list[str]:
    cert = cache.leaf_for(host, also).cert
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def test_extra_names_follow_the_host_and_bad_ones_are_dropped(tmp_path: Path, root: RootCA) -> None:
    cache = LeafCache(root, tmp_path / "leaves")
    names = _sans(cache, "www.example.test", ["example.test", "*.example.test", "www.example.test",
                                              "bad name", "10.0.0.1"])  # fmt: skip
    assert names == ["www.example.test", "example.test", "*.example.test", "10.0.0.1"]
    assert cache.leaf_for("www.example.test", ["example.test"]) is not cache.leaf_for(
        "www.example.test"
    )
    assert _sans(cache, "www.example.test", []) == ["www.example.test"]


def test_leaves_with_extra_names_are_reused_after_a_restart(tmp_path: Path, root: RootCA) -> None:
    first = LeafCache(root, tmp_path / "leaves")
    first.leaf_for("a.test", ["b.test"])
    second = LeafCache(root, tmp_path / "leaves")
    second.leaf_for("a.test", ["b.test"])
    assert second.mints == 0
    second.leaf_for("a.test", ["c.test"])  # other names: another leaf, another file
    assert second.mints == 1


def test_leaf_files_are_bounded_oldest_first(
    tmp_path: Path, root: RootCA, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("mitmlite.ca.cache.PRUNE_EVERY", 5)
    cache = LeafCache(root, tmp_path / "leaves", max_files=3)
    for index in range(5):
        cache.context_for(f"h{index}.test")
        path = tmp_path / "leaves" / f"h{index}.test.chain.pem"
        os.utime(path, (1_000_000 + index, 1_000_000 + index))  # distinct, ordered mtimes
    files = sorted(p.name for p in (tmp_path / "leaves").glob("*.chain.pem"))
    assert files == ["h2.test.chain.pem", "h3.test.chain.pem", "h4.test.chain.pem"]


def test_leaf_files_under_the_bound_are_kept(tmp_path: Path, root: RootCA) -> None:
    cache = LeafCache(root, tmp_path / "leaves", max_files=3)
    for index in range(3):
        cache.context_for(f"k{index}.test")
    assert len(list((tmp_path / "leaves").glob("*.chain.pem"))) == 3


# --- RSA leaves, for clients that cannot verify ECDSA -------------------------------------------


def test_rsa_leaves_use_their_own_key_file_and_cache_entry(tmp_path: Path, root: RootCA) -> None:
    cache = LeafCache(root, tmp_path)
    ec_leaf = cache.leaf_for("example.com")
    assert not (tmp_path / RSA_LEAF_KEY_NAME).exists()  # only made when a client needs it
    rsa_leaf = cache.leaf_for("example.com", rsa=True)
    assert isinstance(rsa_leaf.cert.public_key(), rsa.RSAPublicKey)
    assert not isinstance(ec_leaf.cert.public_key(), rsa.RSAPublicKey)
    assert sans(rsa_leaf.cert) == sans(ec_leaf.cert)
    assert cache.leaf_for("example.com", rsa=True) is rsa_leaf
    assert cache.leaf_for("example.com") is ec_leaf
    key_file = tmp_path / RSA_LEAF_KEY_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    # A fresh cache (a restart) reuses the RSA leaf file with the same key.
    again = LeafCache(root, tmp_path).leaf_for("example.com", rsa=True)
    assert again.cert == rsa_leaf.cert


async def test_an_rsa_only_client_completes_a_handshake_only_with_the_rsa_leaf(
    tmp_path: Path, root: RootCA, ca_file: Path, nursery: trio.Nursery
) -> None:
    cache = LeafCache(root, tmp_path / "leaves")
    client = strict_client(ca_file)
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    client.set_ciphers("ECDHE-RSA-AES128-GCM-SHA256")  # as old Java or Android stacks offer
    port = await nursery.start(serve_tls, cache.context_for("example.com", rsa=True))
    assert (await handshake(port, client, "example.com")).startswith(b"HTTP/1.1 200 OK")
    # The twin: the usual ECDSA leaf shares no cipher suite with it.
    port = await nursery.start(serve_tls, cache.context_for("example.com"))
    with pytest.raises(trio.BrokenResourceError):
        await handshake(port, client, "example.com")
