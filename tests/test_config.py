"""Configuration values: listen addresses, timeouts, limits, loopback detection."""

from __future__ import annotations

import base64
import math

import pytest

from mitmlite.config import (
    Config,
    Limits,
    ReverseTarget,
    Timeouts,
    is_loopback,
    parse_listen,
    parse_mode,
    parse_upstream_proxy,
)
from mitmlite.errors import ConfigError


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:8080", ("127.0.0.1", 8080)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),
        ("localhost:65535", ("localhost", 65535)),
        ("8080", ("127.0.0.1", 8080)),
        ("[::1]:8080", ("::1", 8080)),
        ("[::]:443", ("::", 443)),
        ("proxy.example:3128", ("proxy.example", 3128)),
    ],
)
def test_parse_listen(value: str, expected: tuple[str, int]) -> None:
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("", "listen address '' is not HOST:PORT"),
        ("localhost", "listen address 'localhost' is not HOST:PORT"),
        (":8080", "listen address ':8080' is not HOST:PORT"),
        ("127.0.0.1:", "port in listen address '127.0.0.1:' is not a number in 0-65535"),
        ("127.0.0.1:x", "port in listen address '127.0.0.1:x' is not a number in 0-65535"),
        ("127.0.0.1:65536", "port in listen address '127.0.0.1:65536' is not a number in 0-65535"),
        ("127.0.0.1:-1", "port in listen address '127.0.0.1:-1' is not a number in 0-65535"),
        ("127.0.0.1:²", "port in listen address '127.0.0.1:²' is not a number in 0-65535"),
        (
            "127.0.0.1:\uff18\uff10",
            "port in listen address '127.0.0.1:\uff18\uff10' is not a number in 0-65535",
        ),
        ("70000", "port in listen address '70000' is not a number in 0-65535"),
        ("::1:8080", "listen address '::1:8080': write an IPv6 host as [addr]:port"),
        ("[::1]", "listen address '[::1]': write an IPv6 host as [addr]:port"),
        ("[nope]:80", "'nope' in listen address '[nope]:80' is not an IP address"),
    ],
)
def test_parse_listen_refuses(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_listen(value)
    assert str(err.value) == message


def test_timeouts_defaults_and_overrides() -> None:
    assert Timeouts().connect == 10.0
    assert Timeouts(idle=0.5, read=math.inf).idle == 0.5


@pytest.mark.parametrize("field", ["connect", "handshake", "request_header", "idle", "read"])
@pytest.mark.parametrize("value", [0.0, -1.0, math.nan])
def test_timeouts_must_be_positive(field: str, value: float) -> None:
    with pytest.raises(ConfigError, match=f"^{field} timeout must be positive, got {value}$"):
        Timeouts(**{field: value})


def test_limits_defaults_and_overrides() -> None:
    assert Limits().leaf_cache_hosts == 1000
    assert Limits(leaf_cache_hosts=1, max_connections=1).leaf_cache_hosts == 1


@pytest.mark.parametrize("field", ["max_header_bytes", "max_connections", "leaf_cache_hosts"])
@pytest.mark.parametrize("value", [0, -5])
def test_limits_must_be_at_least_one(field: str, value: int) -> None:
    with pytest.raises(ConfigError, match=f"^{field} must be at least 1, got {value}$"):
        Limits(**{field: value})


@pytest.mark.parametrize(
    ("host", "url"),
    [("127.0.0.1", "http://127.0.0.1:8080"), ("::1", "http://[::1]:8080")],
)
def test_listen_url(host: str, url: str) -> None:
    assert Config(listen_host=host).listen_url == url


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "127.8.9.10", "::1"])
def test_is_loopback(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.1", "example.com", "localhost.evil"])
def test_is_not_loopback(host: str) -> None:
    assert not is_loopback(host)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("regular", None),
        ("reverse:https://example.org", ReverseTarget("https", "example.org", 443)),
        ("reverse:http://127.0.0.1:8080/", ReverseTarget("http", "127.0.0.1", 8080)),
        ("reverse:https://[::1]:9443", ReverseTarget("https", "::1", 9443)),
    ],
)
def test_parse_mode(value: str, expected: ReverseTarget | None) -> None:
    assert parse_mode(value) == expected


@pytest.mark.parametrize(
    "value",
    ["transparent", "reverse", "reverse:", "reverse:ftp://x", "reverse:https://", "reverse:https://h:99999",
     "reverse:https://h/p", "reverse:https://h?q=1"],
)  # fmt: skip
def test_parse_mode_refuses(value: str) -> None:
    with pytest.raises(ConfigError):
        parse_mode(value)


def test_reverse_target_authority() -> None:
    assert ReverseTarget("https", "a.test", 443).authority == "a.test"
    assert ReverseTarget("http", "a.test", 8080).authority == "a.test:8080"
    assert ReverseTarget("https", "::1", 9443).authority == "[::1]:9443"


def test_parse_upstream_proxy() -> None:
    plain = parse_upstream_proxy("http://127.0.0.1:3128")
    assert (plain.scheme, plain.host, plain.port, plain.tls) == ("http", "127.0.0.1", 3128, False)
    assert plain.authorization is None
    secure = parse_upstream_proxy("https://us%40er:p%3Ass@proxy.test")
    assert (secure.port, secure.tls, secure.address) == (443, True, "proxy.test:443")
    assert secure.authorization == b"Basic " + base64.b64encode(b"us@er:p:ss")
    assert "p:ss" not in repr(secure)
    assert "cHNz" not in repr(secure)
    assert parse_upstream_proxy("http://[::1]:8080").address == "[::1]:8080"


@pytest.mark.parametrize(
    "value", ["socks5://h:1", "h:1", "http://", "http://h:99999", "http://h:1/path"]
)
def test_parse_upstream_proxy_refuses(value: str) -> None:
    with pytest.raises(ConfigError, match="--upstream-proxy"):
        parse_upstream_proxy(value)
