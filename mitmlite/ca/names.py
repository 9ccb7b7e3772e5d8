"""Host names and IP addresses as a leaf certificate names them.

Owns turning the host a client asked for into the one SubjectAltName entry the leaf carries: an
IDNA A-label DNS name (UTS #46 mapping, as browsers apply it) or an iPAddress (IPv4 or IPv6; an IP
never goes into a DNSName, RFC 6125 §6.4.4). Names that are not valid hosts are refused with
:class:`InvalidHostError` rather than minted. Pure: no trio, no sockets, no files.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

from mitmlite.errors import InvalidHostError

# RFC 1035 §2.3.4: 255 octets on the wire is 253 characters in dotted text.
MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# Underscores are not valid in host names (RFC 952), but real servers use them (_dmarc-style
# labels, some CDNs) and clients connect to them, so a leaf must be mintable for them.
_LABEL = re.compile(r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?\Z")


@dataclass(frozen=True, slots=True)
class LeafName:
    """The normalised name a leaf is minted for: exactly one of ``dns`` or ``ip`` is set."""

    dns: str | None = None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None

    @property
    def text(self) -> str:
        """The cache key and the subject CN: A-label name or compressed IP text."""
        return self.dns if self.dns is not None else str(self.ip)


def leaf_name(host: str) -> LeafName:
    """Normalise ``host`` (a name, IPv4, or IPv6 with or without brackets), or refuse it."""
    if not host or "\x00" in host:
        raise InvalidHostError(f"{host!r} is not a host name: empty or contains a NUL byte")
    ip = _as_ip(host)
    if ip is not None:
        return LeafName(ip=ip)
    dns = _as_dns(host)
    # A root dot or UTS #46 mapping ("1.2.3.4.", full-width digits) can leave an IPv4 address,
    # which must be an iPAddress entry, never a DNSName (RFC 6125 §6.4.4).
    ip = _as_ip(dns)
    return LeafName(ip=ip) if ip is not None else LeafName(dns=dns)


def _as_ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    text = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    # A zone index (fe80::1%eth0) names an interface on one machine; no certificate can carry it.
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        raise InvalidHostError(f"{host!r} has an IPv6 zone index, which no certificate can name")
    return ip


def _as_dns(host: str) -> str:
    # A fully qualified name with its root dot names the same host; certificates never carry it.
    name = host[:-1] if host.endswith(".") else host
    if name.isascii():
        name = name.lower()
    else:
        try:
            name = idna.encode(name, uts46=True).decode("ascii")
        except idna.IDNAError as exc:
            raise InvalidHostError(
                f"{host!r} is not a valid internationalised name: {exc}"
            ) from exc
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidHostError(f"host name is {len(name)} characters, over {MAX_NAME_LENGTH}")
    for label in name.split("."):
        _check_label(host, label)
    return name


def _check_label(host: str, label: str) -> None:
    if not label:
        raise InvalidHostError(f"{host!r} has an empty label")
    if len(label) > MAX_LABEL_LENGTH:
        raise InvalidHostError(f"{host!r} has a label over {MAX_LABEL_LENGTH} characters")
    if not _LABEL.match(label):
        raise InvalidHostError(f"{host!r} has an invalid label {label!r}")
    if label.startswith("xn--"):
        try:
            idna.decode(label)
        except idna.IDNAError as exc:
            raise InvalidHostError(f"{host!r} has an invalid A-label {label!r}") from exc


def extra_name(text: str) -> LeafName | None:
    """A name copied from an upstream certificate, normalised like ``leaf_name``; None if bad.

    Wildcards (``*.example.org``) are kept: they are what the real server presents, and a
    leaf that carries them lets a client reuse the connection for those names, as it would with
    the origin.
    """
    try:
        if text.startswith("*."):
            rest = leaf_name(text[2:])
            return LeafName(dns=f"*.{rest.dns}") if rest.dns is not None else None
        return leaf_name(text)
    except InvalidHostError:
        return None
