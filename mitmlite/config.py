"""Validated, immutable configuration: what the command line decided, checked once.

Owns ``Config``, ``Timeouts`` and ``Limits`` and the parsing of option values (listen address,
durations). Everything downstream receives these values and never re-validates them. Pure: no
trio, no sockets, no files read.
"""

from __future__ import annotations

import base64
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

from mitmlite.errors import ConfigError

DEFAULT_LISTEN = "127.0.0.1:8080"


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Seconds the proxy waits on a peer before giving up, one named deadline per wait."""

    connect: float = 10.0  # TCP connect to an upstream (502 on refusal, 504 on expiry)
    handshake: float = 10.0  # a TLS handshake with either peer
    request_header: float = 30.0  # a client finishing its request head (slowloris -> 408)
    idle: float = 60.0  # a keep-alive connection with no request in flight
    upstream_response: float = 120.0  # first byte of an upstream response (504)
    read: float = 300.0  # any later read of a body in either direction
    shutdown: float = 10.0  # flows in progress at Ctrl-C/SIGTERM may finish within this

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if not value > 0:
                raise ConfigError(f"{name} timeout must be positive, got {value}")


@dataclass(frozen=True, slots=True)
class Limits:
    """Sizes and counts that bound what one client can cost the proxy."""

    max_header_bytes: int = 64 * 1024
    max_connections: int = 1024
    leaf_cache_hosts: int = 1000
    read_size: int = 256 * 1024  # one relay step; see streams.TRANSPORT_READ
    # Bodies up to this size are buffered for `request`/`response` hooks; larger ones stream.
    max_body_bytes: int = 32 * 1024 * 1024

    def __post_init__(self) -> None:
        for name in self.__dataclass_fields__:
            value = getattr(self, name)
            if value < 1:
                raise ConfigError(f"{name} must be at least 1, got {value}")


@dataclass(frozen=True, slots=True)
class ReverseTarget:
    """``--mode reverse:URL``: every request goes to this one origin."""

    scheme: str  # "http" or "https"
    host: str
    port: int

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.tls else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_mode(value: str) -> ReverseTarget | None:
    """``regular`` (the forward proxy) or ``reverse:http[s]://host[:port]``."""
    if value == "regular":
        return None
    kind, sep, url = value.partition(":")
    if kind != "reverse" or not sep:
        raise ConfigError(f"--mode {value!r}: expected 'regular' or 'reverse:https://host:port'")
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--mode {value!r}: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"--mode {value!r}: the target must be http://host or https://host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"--mode {value!r}: give only scheme://host[:port], no path")
    return ReverseTarget(
        parts.scheme, parts.hostname, port or (443 if parts.scheme == "https" else 80)
    )


@dataclass(frozen=True, slots=True)
class UpstreamProxy:
    """``--upstream-proxy``: the proxy every upstream connection goes through."""

    scheme: str  # "http", or "https" for TLS to the proxy itself
    host: str
    port: int
    authorization: bytes | None = field(default=None, repr=False)  # never in a repr or log

    @property
    def tls(self) -> bool:
        return self.scheme == "https"

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def parse_upstream_proxy(value: str) -> UpstreamProxy:
    """``http://[user:pass@]host:port`` or ``https://...``; credentials become a Basic header."""
    parts = urlsplit(value)
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"--upstream-proxy: {exc}") from exc
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("--upstream-proxy must be http://[user:pass@]host:port or https://...")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError("--upstream-proxy takes no path: give scheme://host:port")
    authorization = None
    if parts.username is not None:
        user = unquote(parts.username)
        password = unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        authorization = f"Basic {token}".encode("ascii")
    default = 443 if parts.scheme == "https" else 8080
    return UpstreamProxy(parts.scheme, parts.hostname, port or default, authorization)


@dataclass(frozen=True, slots=True)
class Config:
    """Everything one proxy run needs to know, already validated."""

    listen_host: str = "127.0.0.1"
    listen_port: int = 8080
    upstream_cas: tuple[Path, ...] = ()
    insecure: bool = False
    quiet: bool = False
    scripts: tuple[Path, ...] = ()
    reverse: ReverseTarget | None = None  # --mode reverse:URL; None is the forward proxy
    cert: tuple[Path, Path] | None = None  # --cert/--key: what clients see (reverse, TLS listener)
    listen_tls: bool = False  # clients reach the proxy itself over TLS (an https:// proxy URL)
    upstream_proxy: UpstreamProxy | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    limits: Limits = field(default_factory=Limits)

    @property
    def listen_url(self) -> str:
        """The proxy URL clients use, e.g. ``http://127.0.0.1:8080``."""
        host = f"[{self.listen_host}]" if ":" in self.listen_host else self.listen_host
        return f"http://{host}:{self.listen_port}"


def parse_listen(value: str) -> tuple[str, int]:
    """Parse ``HOST:PORT`` (``[v6]:PORT`` for IPv6; a bare ``PORT`` means loopback)."""
    if _is_number(value):
        return "127.0.0.1", _port(value, value)
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"listen address {value!r} is not HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        _check_ip(host, value)
    elif ":" in host:
        raise ConfigError(f"listen address {value!r}: write an IPv6 host as [addr]:port")
    return host, _port(port, value)


def _is_number(text: str) -> bool:
    # str.isdigit() alone accepts "²" and other digits int() refuses, and non-ASCII digits.
    return text.isascii() and text.isdigit()


def _port(text: str, value: str) -> int:
    if not _is_number(text) or not 0 <= int(text) <= 65535:
        raise ConfigError(f"port in listen address {value!r} is not a number in 0-65535")
    return int(text)


def _check_ip(host: str, value: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError as exc:
        raise ConfigError(f"{host!r} in listen address {value!r} is not an IP address") from exc


def is_loopback(host: str) -> bool:
    """True for loopback addresses and ``localhost``: binding elsewhere exposes the proxy."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
