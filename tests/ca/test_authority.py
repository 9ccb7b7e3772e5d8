"""The root and leaf recipes, checked field by field and by ``openssl verify -x509_strict``."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mitmlite.ca.authority import (
    LEAF_VALIDITY,
    PrivateKey,
    RootCA,
    check_root,
    create_root,
    is_issued_by,
    mint_leaf,
)
from mitmlite.ca.files import install_name
from mitmlite.ca.names import leaf_name
from mitmlite.errors import CAError
from tests.ca.conftest import NOW, openssl_verify, pem

LONG = "a-very-long-host-name-that-does-not-fit-in-a-common-name.example.com"


def ext(
    cert: x509.Certificate, kind: type[x509.ExtensionType]
) -> x509.Extension[x509.ExtensionType]:
    return cert.extensions.get_extension_for_class(kind)


def test_root_recipe(root: RootCA) -> None:
    cert = root.cert
    assert cert.version == x509.Version.v3
    assert cert.subject == cert.issuer
    constraints = ext(cert, x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value == x509.BasicConstraints(ca=True, path_length=0)
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert isinstance(usage.value, x509.KeyUsage)
    assert usage.value.key_cert_sign
    assert usage.value.crl_sign
    assert not usage.value.digital_signature
    ski = ext(cert, x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(root.key.public_key())
    assert cert.not_valid_before_utc == (NOW - dt.timedelta(days=1)).replace(microsecond=0)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=3640) < lifetime < dt.timedelta(days=3660)
    assert isinstance(root.key, ec.EllipticCurvePrivateKey)
    assert isinstance(root.key.curve, ec.SECP256R1)
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "mitmlite"
    assert root.fingerprint_sha256 == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    check_root(cert, root.key, NOW)


def test_rsa_root(rsa_root: RootCA) -> None:
    assert isinstance(rsa_root.key, rsa.RSAPrivateKey)
    assert rsa_root.key.key_size == 3072


def test_roots_are_unique() -> None:
    one, two = create_root(install_name(NOW), NOW), create_root(install_name(NOW), NOW)
    assert one.cert.subject != two.cert.subject
    assert one.cert.serial_number != two.cert.serial_number
    assert one.key.public_key() != two.key.public_key()


def mint(root: RootCA, key: PrivateKey, host: str, now: dt.datetime = NOW) -> x509.Certificate:
    return mint_leaf(root, key, leaf_name(host), now)


def san(cert: x509.Certificate) -> x509.Extension[x509.SubjectAlternativeName]:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName)


def test_leaf_recipe(root: RootCA, leaf_key: PrivateKey) -> None:
    cert = mint(root, leaf_key, "Example.COM")
    assert cert.version == x509.Version.v3
    assert cert.issuer == root.cert.subject
    assert cert.subject.rfc4514_string() == "CN=example.com"
    assert not san(cert).critical
    assert san(cert).value.get_values_for_type(x509.DNSName) == ["example.com"]
    assert ext(cert, x509.ExtendedKeyUsage).value == x509.ExtendedKeyUsage(
        [ExtendedKeyUsageOID.SERVER_AUTH]
    )
    usage = ext(cert, x509.KeyUsage)
    assert usage.critical
    assert isinstance(usage.value, x509.KeyUsage)
    assert usage.value.digital_signature
    assert not usage.value.key_encipherment  # an EC key cannot encipher
    assert not usage.value.key_cert_sign
    constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints)
    assert constraints.critical
    assert constraints.value.ca is False
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == root.subject_key_id
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert cert.public_key() == leaf_key.public_key()
    assert cert.public_key() != root.key.public_key()
    assert is_issued_by(cert, root)


def test_leaf_with_rsa_key_allows_key_encipherment(root: RootCA, rsa_root: RootCA) -> None:
    # Any RSA key will do as the leaf key here; reusing the session root's saves a keygen.
    usage = ext(mint(root, rsa_root.key, "example.com"), x509.KeyUsage).value
    assert isinstance(usage, x509.KeyUsage)
    assert usage.digital_signature
    assert usage.key_encipherment


def test_long_name_has_empty_subject_and_critical_san(root: RootCA, leaf_key: PrivateKey) -> None:
    assert len(LONG) > 64
    cert = mint(root, leaf_key, LONG)
    assert len(cert.subject) == 0
    assert san(cert).critical
    assert san(cert).value.get_values_for_type(x509.DNSName) == [LONG]
    short = mint(root, leaf_key, "a" * 60 + ".com")  # exactly 64: still fits in a CN
    assert not san(short).critical
    assert short.subject.rfc4514_string() == "CN=" + "a" * 60 + ".com"


def test_unicode_name_uses_a_label(root: RootCA, leaf_key: PrivateKey) -> None:
    cert = mint(root, leaf_key, "bücher.de")
    assert san(cert).value.get_values_for_type(x509.DNSName) == ["xn--bcher-kva.de"]
    assert cert.subject.rfc4514_string() == "CN=xn--bcher-kva.de"


@pytest.mark.parametrize("host", ["192.0.2.7", "2001:db8::7", "[2001:db8::7]"])
def test_ip_leaf_has_ip_san_only(root: RootCA, leaf_key: PrivateKey, host: str) -> None:
    cert = mint(root, leaf_key, host)
    names = san(cert).value
    assert names.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address(host.strip("[]"))]
    assert names.get_values_for_type(x509.DNSName) == []


def test_serials_are_fresh_per_mint(root: RootCA, leaf_key: PrivateKey) -> None:
    serials = {mint(root, leaf_key, "example.com").serial_number for _ in range(20)}
    assert len(serials) == 20
    assert all(s.bit_length() > 64 for s in serials)


def test_leaf_validity(root: RootCA, leaf_key: PrivateKey) -> None:
    cert = mint(root, leaf_key, "example.com")
    assert cert.not_valid_before_utc == (NOW - dt.timedelta(days=1)).replace(microsecond=0)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=30) < lifetime < dt.timedelta(days=200)
    assert lifetime == LEAF_VALIDITY


def test_leaf_never_outlives_root(root: RootCA, leaf_key: PrivateKey) -> None:
    near_end = root.cert.not_valid_after_utc - dt.timedelta(days=10)
    cert = mint(root, leaf_key, "example.com", near_end)
    assert cert.not_valid_after_utc == root.cert.not_valid_after_utc
    assert mint(root, leaf_key, "example.com").not_valid_after_utc < root.cert.not_valid_after_utc


def custom_ski_root(ski: bytes) -> RootCA:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "custom SKI root")])
    usage = x509.KeyUsage(False, False, False, False, False, True, True, False, False)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - dt.timedelta(days=1))
        .not_valid_after(NOW + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier(ski), critical=False)
        .sign(key, hashes.SHA256())
    )
    return RootCA(cert=cert, key=key)


def test_aki_copies_a_nonstandard_ski(tmp_path: Path, leaf_key: PrivateKey) -> None:
    ski = bytes(range(1, 21))
    custom = custom_ski_root(ski)
    assert ski != x509.SubjectKeyIdentifier.from_public_key(custom.key.public_key()).digest
    cert = mint(custom, leaf_key, "example.com")
    aki = ext(cert, x509.AuthorityKeyIdentifier).value
    assert isinstance(aki, x509.AuthorityKeyIdentifier)
    assert aki.key_identifier == ski
    (tmp_path / "ca.pem").write_bytes(pem(custom.cert))
    (tmp_path / "leaf.pem").write_bytes(pem(cert))
    result = openssl_verify(tmp_path / "ca.pem", tmp_path / "leaf.pem", "example.com")
    assert result.returncode == 0, result.stdout + result.stderr


def test_check_root_accepts_a_good_pair(root: RootCA) -> None:
    assert check_root(root.cert, root.key, NOW) == root


def test_check_root_key_mismatch(root: RootCA, other_root: RootCA, rsa_root: RootCA) -> None:
    for key in (other_root.key, rsa_root.key):
        with pytest.raises(
            CAError, match=r"^the CA private key does not match the CA certificate$"
        ):
            check_root(root.cert, key, NOW)


def test_check_root_not_a_ca(root: RootCA, leaf_key: PrivateKey) -> None:
    leaf = mint(root, leaf_key, "example.com")
    with pytest.raises(CAError, match=r"^certificate 'CN=example.com' is not a CA \(no CA:TRUE\)$"):
        check_root(leaf, leaf_key, NOW)


def test_check_root_expired(root: RootCA) -> None:
    later = root.cert.not_valid_after_utc + dt.timedelta(seconds=1)
    with pytest.raises(CAError, match=r"^the CA expired on \d{4}-\d\d-\d\d \d\d:\d\d UTC$"):
        check_root(root.cert, root.key, later)
    check_root(root.cert, root.key, root.cert.not_valid_after_utc)


def test_check_root_not_yet_valid(root: RootCA) -> None:
    earlier = root.cert.not_valid_before_utc - dt.timedelta(seconds=1)
    with pytest.raises(
        CAError, match=r"^the CA is not valid before \d{4}-\d\d-\d\d \d\d:\d\d UTC$"
    ):
        check_root(root.cert, root.key, earlier)
    check_root(root.cert, root.key, root.cert.not_valid_before_utc)


def test_is_issued_by(root: RootCA, other_root: RootCA, leaf_key: PrivateKey) -> None:
    cert = mint(root, leaf_key, "example.com")
    assert is_issued_by(cert, root)
    assert not is_issued_by(cert, other_root)
    # Same subject name (both test roots share it), different key: the signature decides.
    assert root.cert.subject == other_root.cert.subject


# -- openssl verify -x509_strict: a validator we did not write -------------------------------


VERIFIED = [
    ("example.com", "example.com"),
    (LONG, LONG),
    ("bücher.de", "xn--bcher-kva.de"),
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8::7", "2001:db8::7"),
    ("[2001:db8::7]", "2001:db8::7"),
]


@pytest.fixture(params=["root", "rsa_root", "mkcert"])
def any_root(request: pytest.FixtureRequest) -> RootCA:
    found: RootCA = request.getfixturevalue(request.param)
    return found


def write(tmp_path: Path, root: RootCA, leaf: x509.Certificate) -> tuple[Path, Path]:
    (tmp_path / "rootCA.pem").write_bytes(pem(root.cert))
    (tmp_path / "leaf.pem").write_bytes(pem(leaf))
    return tmp_path / "rootCA.pem", tmp_path / "leaf.pem"


@pytest.mark.parametrize(("host", "checked"), VERIFIED)
def test_openssl_verifies_leaf(
    tmp_path: Path, any_root: RootCA, leaf_key: PrivateKey, host: str, checked: str
) -> None:
    ca, leaf = write(tmp_path, any_root, mint(any_root, leaf_key, host))
    result = openssl_verify(ca, leaf, checked)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == f"{leaf}: OK"


@pytest.mark.parametrize(
    ("host", "wrong"),
    [
        ("example.com", "example.org"),
        ("example.com", "www.example.com"),
        (LONG, "example.com"),
        ("bücher.de", "bucher.de"),
        ("192.0.2.7", "192.0.2.8"),
        ("2001:db8::7", "2001:db8::8"),
    ],
)
def test_openssl_rejects_wrong_host(
    tmp_path: Path, any_root: RootCA, leaf_key: PrivateKey, host: str, wrong: str
) -> None:
    ca, leaf = write(tmp_path, any_root, mint(any_root, leaf_key, host))
    result = openssl_verify(ca, leaf, wrong)
    assert result.returncode != 0
    assert "mismatch" in result.stdout + result.stderr


def test_openssl_rejects_ip_as_dns_name(tmp_path: Path, root: RootCA, leaf_key: PrivateKey) -> None:
    # A name leaf never satisfies an IP check, so the IP must be in an iPAddress entry.
    ca, leaf = write(tmp_path, root, mint(root, leaf_key, "example.com"))
    assert openssl_verify(ca, leaf, "192.0.2.7").returncode != 0


@pytest.mark.parametrize(("host", "checked"), VERIFIED[:4])
def test_openssl_rejects_leaf_from_another_ca(
    tmp_path: Path, root: RootCA, other_root: RootCA, leaf_key: PrivateKey, host: str, checked: str
) -> None:
    ca, leaf = write(tmp_path, root, mint(other_root, leaf_key, host))
    result = openssl_verify(ca, leaf, checked)
    assert result.returncode != 0
    assert "unable to get local issuer certificate" in result.stdout + result.stderr
