"""Proxy credentials: parsing --proxy-auth and htpasswd files, Basic decoding, checking."""

from __future__ import annotations

import base64
import hashlib
from pathlib import Path

import bcrypt
import pytest

from mitmlite.auth import challenge, decode_basic, load_htpasswd, parse_proxy_auth
from mitmlite.errors import ConfigError


def basic(user: str, password: str) -> bytes:
    return b"Basic " + base64.b64encode(f"{user}:{password}".encode())


def sha_entry(password: str) -> str:
    return (
        "{SHA}"
        + base64.b64encode(hashlib.sha1(password.encode(), usedforsecurity=False).digest()).decode()
    )


def test_user_password_from_the_command_line() -> None:
    creds = parse_proxy_auth("alice:s3cret:with:colons")
    assert creds.check(basic("alice", "s3cret:with:colons"))
    assert not creds.check(basic("alice", "s3cret"))
    assert not creds.check(basic("bob", "s3cret:with:colons"))
    assert not creds.check(None)
    assert not creds.slow


@pytest.mark.parametrize("value", ["alice", ":pw", "alice:", ""])
def test_bad_proxy_auth_values(value: str) -> None:
    with pytest.raises(ConfigError, match="USER:PASSWORD"):
        parse_proxy_auth(value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (basic("a", "b"), ("a", b"b")),
        (b"basic " + base64.b64encode(b"a:"), ("a", b"")),
        (b"Bearer abc", None),
        (b"Basic", None),
        (b"Basic !!!notbase64", None),
        (b"Basic " + base64.b64encode(b"no-colon"), None),
    ],
)
def test_decode_basic(header: bytes, expected: tuple[str, bytes] | None) -> None:
    assert decode_basic(header) == expected


def test_htpasswd_with_bcrypt_and_sha(tmp_path: Path) -> None:
    hashed = bcrypt.hashpw(b"pw-one", bcrypt.gensalt(4)).decode()
    path = tmp_path / "users"
    path.write_text(f"# users\none:{hashed}\n\ntwo:{sha_entry('pw-two')}\n")
    creds = parse_proxy_auth(f"@{path}")
    assert creds.slow
    assert creds.check(basic("one", "pw-one"))
    assert creds.check(basic("two", "pw-two"))
    assert not creds.check(basic("one", "pw-two"))
    assert not creds.check(basic("two", "pw-one"))
    assert not creds.check(basic("nobody", "pw-one"))


def test_a_verified_header_is_remembered_and_a_wrong_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text(f"one:{bcrypt.hashpw(b'pw', bcrypt.gensalt(4)).decode()}\n")
    creds = load_htpasswd(path)
    good, bad = basic("one", "pw"), basic("one", "nope")
    assert not creds.known(good)
    assert creds.check(good)
    assert creds.known(good)
    assert not creds.check(bad)
    assert not creds.known(bad)


def test_long_bcrypt_passwords_compare_on_their_first_72_bytes(tmp_path: Path) -> None:
    long = "x" * 100
    path = tmp_path / "users"
    path.write_text(f"one:{bcrypt.hashpw(long[:72].encode(), bcrypt.gensalt(4)).decode()}\n")
    assert load_htpasswd(path).check(basic("one", long))


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("one:$apr1$abc$def", "MD5"),
        ("one:$5$rounds$abc", "unknown hash type"),
        ("one:plaintext", "plain-text"),
        ("nocolon", "USER:HASH"),
    ],
)
def test_htpasswd_entries_we_cannot_verify_are_errors(
    tmp_path: Path, line: str, message: str
) -> None:
    path = tmp_path / "users"
    path.write_text(line + "\n")
    with pytest.raises(ConfigError, match=message):
        load_htpasswd(path)


def test_htpasswd_missing_or_empty(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_htpasswd(tmp_path / "absent")
    (tmp_path / "empty").write_text("# nobody\n")
    with pytest.raises(ConfigError, match="no users"):
        load_htpasswd(tmp_path / "empty")


def test_a_malformed_bcrypt_hash_lets_nobody_in(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("one:$2b$04$tooshort\n" + f"two:{sha_entry('x')}\n")
    creds = load_htpasswd(path)
    assert not creds.check(basic("one", ""))
    assert creds.check(basic("two", "x"))


def test_challenge_header() -> None:
    name, value = challenge()
    assert name == b"Proxy-Authenticate"
    assert value.startswith(b'Basic realm="mitmlite"')


def test_a_first_entry_with_a_garbled_cost_does_not_stop_the_start(tmp_path: Path) -> None:
    path = tmp_path / "users"
    path.write_text("one:$2b$xx$garbled\n")
    assert not load_htpasswd(path).check(basic("one", ""))
