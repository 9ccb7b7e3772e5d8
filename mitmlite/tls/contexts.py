"""The SSL contexts the proxy uses: one per leaf facing clients, one facing upstreams.

Both are built once (per host and per process respectively) and shared: building a context costs
far more than a handshake, and SSLContext is safe to share across connections. Client-facing
contexts offer only ``http/1.1`` in ALPN because that is all the relay speaks.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path

from mitmlite.errors import ConfigError

ALPN = ["http/1.1"]


# For the RSA leaf only, which goes to clients that cannot use ECDSA: OpenSSL's own default list
# adds the static-RSA suites (AES128-GCM-SHA256, AES128-SHA...) that Python's server default
# leaves out and such old stacks may offer alone. Ours are chosen first when the client has any.
LEGACY_CIPHERS = "DEFAULT"


def leaf_context(chain_file: Path, key_file: Path, *, legacy: bool = False) -> ssl.SSLContext:
    """A server-side context presenting the leaf in ``chain_file`` with ``key_file``.

    ``legacy`` widens the TLS 1.2 cipher suites to ``LEGACY_CIPHERS`` (the RSA leaf's context).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    if legacy:
        ctx.set_ciphers(LEGACY_CIPHERS)
    ctx.load_cert_chain(chain_file, key_file)
    return ctx


def upstream_context(extra_cas: Sequence[Path] = (), *, insecure: bool = False) -> ssl.SSLContext:
    """The context for every upstream: system trust plus ``extra_cas``, hostnames checked.

    ``insecure`` turns verification off entirely; callers must warn loudly when they use it.
    """
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.set_alpn_protocols(ALPN)
    for path in extra_cas:
        try:
            ctx.load_verify_locations(cafile=str(path))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(f"cannot load upstream CA {path}: {exc}") from exc
    if insecure:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx
