"""How to trust the root CA: the text ``mitmlite ca show`` prints and the first run points to.

Pure text built from the CA's paths and names; no files are read or written here.
"""

from __future__ import annotations

from pathlib import Path

from mitmlite.ca.authority import RootCA


def describe(root: RootCA, cert_path: Path) -> str:
    """Subject, validity and SHA-256 fingerprint of the root, one fact a line."""
    cert = root.cert
    return "\n".join(
        [
            f"CA certificate: {cert_path}",
            f"  subject:     {cert.subject.rfc4514_string()}",
            f"  valid from:  {cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC",
            f"  valid until: {cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC",
            f"  SHA-256:     {root.fingerprint_sha256}",
        ]
    )


def instructions(cert_path: Path, nickname: str = "mitmlite CA") -> str:
    """Per-platform steps to trust the certificate at ``cert_path``."""
    p = str(cert_path)
    return f"""\
How to trust it (only on machines whose traffic you mean to inspect):
  Debian/Ubuntu:  sudo cp {p} /usr/local/share/ca-certificates/mitmlite.crt \\
                    && sudo update-ca-certificates
  Fedora/RHEL:    sudo cp {p} /etc/pki/ca-trust/source/anchors/mitmlite.pem \\
                    && sudo update-ca-trust
  macOS:          sudo security add-trusted-cert -d -r trustRoot \\
                    -k /Library/Keychains/System.keychain {p}
  Windows:        certutil -addstore -f Root mitmlite.cer   (from: mitmlite ca export --der)
  Firefox, Chromium (NSS, Linux):
                  certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n "{nickname}" -i {p}
                  (Firefox: Settings > Privacy & Security > Certificates > Import, or
                   certutil on the profile directory)
  curl:           curl --cacert {p} ...
  Python:         SSL_CERT_FILE={p}  /  REQUESTS_CA_BUNDLE={p}  (requests)
  Node.js:        NODE_EXTRA_CA_CERTS={p}
Anyone holding the CA key can impersonate any site to a machine that trusts it: keep the
key private, and remove the CA from trust stores when you no longer need it."""
