"""The root CA and the leaf recipe: what every certificate mitmlite issues looks like.

Owns creating a root (subject unique to the install, CA:TRUE pathlen 0, keyCertSign + cRLSign,
SKI), checking a loaded one (key matches, is a CA, currently valid) and minting leaves that strict
verifiers accept (RFC 5280 profile, CA/Browser Forum validity, AKI = the root's own SKI bytes).
Pure: values in, certificates out; no files, no trio, no sockets. Files live in ``ca.files``.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypeAlias

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from mitmlite.ca.names import LeafName
from mitmlite.errors import CAError

PrivateKey: TypeAlias = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
KeyType = Literal["ec", "rsa"]

ROOT_VALIDITY = dt.timedelta(days=3650)
# Chromium rejects leaves valid for more than 398 days (and Android-system-store-style known roots
# at 825/200 days); 90 days total keeps us far below every limit while making re-mints rare.
LEAF_VALIDITY = dt.timedelta(days=90)
# Clients whose clock runs a little behind ours must still accept a fresh certificate.
BACKDATE = dt.timedelta(days=1)
# Longest subject CN allowed by RFC 5280's upper bound ub-common-name.
MAX_CN_LENGTH = 64


@dataclass(frozen=True, slots=True)
class RootCA:
    """A root certificate with its private key, checked to belong together."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def subject_key_id(self) -> bytes:
        """The root's own SKI bytes; leaves copy them into their AKI (never recomputed)."""
        try:
            ext = self.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        except x509.ExtensionNotFound:
            # An old root without SKI: derive it the way OpenSSL does (RFC 5280 §4.2.1.2 method 1).
            return x509.SubjectKeyIdentifier.from_public_key(self.key.public_key()).digest
        return ext.value.digest

    @property
    def fingerprint_sha256(self) -> str:
        """Colon-separated upper-case SHA-256 of the DER certificate, as browsers show it."""
        return self.cert.fingerprint(hashes.SHA256()).hex(":").upper()


def generate_key(key_type: KeyType) -> PrivateKey:
    """A fresh EC P-256 key (the default) or RSA 3072 (for old clients)."""
    if key_type == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=3072)
    return ec.generate_private_key(ec.SECP256R1())


def create_root(common_name: str, now: dt.datetime, key_type: KeyType = "ec") -> RootCA:
    """Create a root CA with the recipe every trust store accepts."""
    key = generate_key(key_type)
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, common_name[:MAX_CN_LENGTH]),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "mitmlite"),
        ]
    )
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + ROOT_VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(ski, critical=False)
        .sign(key, hashes.SHA256())
    )
    return RootCA(cert=cert, key=key)


def check_root(cert: x509.Certificate, key: PrivateKey, now: dt.datetime) -> RootCA:
    """Return the pair as a RootCA, or raise CAError saying what is wrong with it."""
    if cert.public_key() != key.public_key():
        raise CAError("the CA private key does not match the CA certificate")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.ca:
        raise CAError(f"certificate {cert.subject.rfc4514_string()!r} is not a CA (no CA:TRUE)")
    if now < cert.not_valid_before_utc:
        raise CAError(f"the CA is not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC")
    if now > cert.not_valid_after_utc:
        raise CAError(f"the CA expired on {cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC")
    return RootCA(cert=cert, key=key)


def mint_leaf(
    root: RootCA,
    leaf_key: PrivateKey,
    name: LeafName,
    now: dt.datetime,
    extra: Sequence[LeafName] = (),
) -> x509.Certificate:
    """Mint a leaf for ``name``, signed by ``root``, carrying ``leaf_key`` (never the root key).

    ``extra`` names (copied from the upstream's certificate) follow ``name`` in the SAN.
    """
    not_after = min(now - BACKDATE + LEAF_VALIDITY, root.cert.not_valid_after_utc)
    fits_cn = len(name.text) <= MAX_CN_LENGTH
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name.text)] if fits_cn else [])
    sans = leaf_sans(name, extra)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(root.cert.subject)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        # RFC 5280 §4.2.1.6: with an empty subject the SAN must be critical.
        .add_extension(x509.SubjectAlternativeName(sans), critical=not fits_cn)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            _key_usage(key_encipherment=isinstance(leaf_key, rsa.RSAPrivateKey)), critical=True
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(leaf_key.public_key()), critical=False
        )
        .add_extension(_authority_key_id(root), critical=False)
    )
    return builder.sign(root.key, hashes.SHA256())


def leaf_sans(name: LeafName, extra: Sequence[LeafName] = ()) -> list[x509.GeneralName]:
    """The SAN entries of a leaf: ``name`` first, then each extra name once."""
    sans = [san_entry(name)]
    for other in extra:
        entry = san_entry(other)
        if entry not in sans:
            sans.append(entry)
    return sans


def san_entry(name: LeafName) -> x509.GeneralName:
    """The one SubjectAltName entry a leaf for ``name`` carries."""
    return x509.IPAddress(name.ip) if name.ip is not None else x509.DNSName(name.text)


def is_issued_by(leaf: x509.Certificate, root: RootCA) -> bool:
    """True when ``root`` signed ``leaf`` (name match and a good signature)."""
    if leaf.issuer != root.cert.subject:
        return False
    try:
        leaf.verify_directly_issued_by(root.cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _authority_key_id(root: RootCA) -> x509.AuthorityKeyIdentifier:
    # Python 3.13's VERIFY_X509_STRICT rejects leaves without an AKI; the keyid must equal the
    # root's SKI bytes exactly, whatever method produced them, or chain building fails.
    return x509.AuthorityKeyIdentifier(
        key_identifier=root.subject_key_id,
        authority_cert_issuer=None,
        authority_cert_serial_number=None,
    )


def _key_usage(*, cert_sign: bool = False, key_encipherment: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=not cert_sign,
        content_commitment=False,
        key_encipherment=key_encipherment,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )
