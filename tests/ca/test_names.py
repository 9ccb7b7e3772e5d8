"""leaf_name: host text in, one normalised SAN entry (A-label DNS name or IP) or a refusal out."""

from __future__ import annotations

import ipaddress
import re
import string

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mitmlite.ca.names import LeafName, leaf_name
from mitmlite.errors import InvalidHostError


@pytest.mark.parametrize(
    ("host", "dns"),
    [
        ("example.com", "example.com"),
        ("EXAMPLE.Com", "example.com"),
        ("example.com.", "example.com"),
        ("bücher.de", "xn--bcher-kva.de"),
        ("BÜCHER.de.", "xn--bcher-kva.de"),
        ("münchen.例え.jp", "xn--mnchen-3ya.xn--r8jz45g.jp"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("_dmarc.example.com", "_dmarc.example.com"),
        ("a" * 63 + ".com", "a" * 63 + ".com"),
        ("localhost", "localhost"),
    ],
)
def test_dns_names_normalise(host: str, dns: str) -> None:
    name = leaf_name(host)
    assert name == LeafName(dns=dns)
    assert name.text == dns
    assert name.ip is None


@pytest.mark.parametrize(
    ("host", "ip"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("10.1.2.3", "10.1.2.3"),
        ("::1", "::1"),
        ("[::1]", "::1"),
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("[2001:db8::1]", "2001:db8::1"),
        ("::ffff:192.0.2.1", "::ffff:192.0.2.1"),
        # A root dot or full-width digits still name an IPv4 address (WHATWG URL host parser):
        # it must become an iPAddress, never an IP inside a DNSName (RFC 6125 §6.4.4).
        ("192.0.2.1.", "192.0.2.1"),
        ("\uff11\uff19\uff12.\uff10.\uff12.\uff11", "192.0.2.1"),
    ],
)
def test_ip_addresses_become_ip_entries(host: str, ip: str) -> None:
    name = leaf_name(host)
    assert name.dns is None
    assert name.ip == ipaddress.ip_address(ip)
    assert name.text == str(ipaddress.ip_address(ip))


def test_name_and_address_are_distinct_kinds() -> None:
    assert leaf_name("1.2.3.4").ip is not None
    assert leaf_name("1.2.3.4.example").ip is None


def test_longest_name_is_accepted() -> None:
    host = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(host) == 253
    assert leaf_name(host).text == host


@pytest.mark.parametrize(
    ("host", "message"),
    [
        ("", "'' is not a host name: empty or contains a NUL byte"),
        ("exa\x00mple.com", "'exa\\x00mple.com' is not a host name: empty or contains a NUL byte"),
        ("a." * 126 + "ab", "host name is 254 characters, over 253"),
        ("a" * 64 + ".com", f"'{'a' * 64}.com' has a label over 63 characters"),
        ("exa mple.com", "'exa mple.com' has an invalid label 'exa mple'"),
        ("exa/mple.com", "'exa/mple.com' has an invalid label 'exa/mple'"),
        ("-example.com", "'-example.com' has an invalid label '-example'"),
        ("example-.com", "'example-.com' has an invalid label 'example-'"),
        ("*.example.com", "'*.example.com' has an invalid label '*'"),
        ("a..b", "'a..b' has an empty label"),
        (".", "'.' has an empty label"),
        ("example.com..", "'example.com..' has an empty label"),
        ("[example.com]", "'[example.com]' has an invalid label '[example'"),
        ("xn--a.com", "'xn--a.com' has an invalid A-label 'xn--a'"),
        ("fe80::1%eth0", "'fe80::1%eth0' has an IPv6 zone index, which no certificate can name"),
        ("[fe80::1%25eth0]", "'[fe80::1%25eth0]' has an IPv6 zone index"),
    ],
)
def test_invalid_hosts_are_refused(host: str, message: str) -> None:
    with pytest.raises(InvalidHostError, match=re.escape(message)) as err:
        leaf_name(host)
    assert str(err.value).startswith(message)
    assert err.value.status == 400


def test_invalid_unicode_name_is_refused() -> None:
    # U+2488 DIGIT ONE FULL STOP is disallowed by UTS #46 (IDNA 2008).
    with pytest.raises(InvalidHostError, match="is not a valid internationalised name"):
        leaf_name("a\u2488b.example")


def _check(host: str) -> None:
    """leaf_name returns an ascii name of at most 253 characters, or refuses: nothing else."""
    try:
        name = leaf_name(host)
    except InvalidHostError:
        return
    assert isinstance(name, LeafName)
    assert (name.dns is None) != (name.ip is None)
    assert name.text.isascii()
    assert 0 < len(name.text) <= 253
    if name.dns is not None:
        # The idempotence of the normalisation: a minted name maps to itself.
        assert leaf_name(name.dns) == name
        with pytest.raises(ValueError, match="does not appear to be"):
            ipaddress.ip_address(name.dns)


_LABEL_CHARS = string.ascii_letters + string.digits + "-_*.[]:%\x00 éü例ß\u200d"
labels = st.text(alphabet=_LABEL_CHARS, min_size=0, max_size=70)


@given(st.lists(labels, min_size=1, max_size=6).map(".".join))
@example("a" * 64)
@example("ü" * 70)
@example("xn--" + "a" * 60)
def test_property_odd_labels(host: str) -> None:
    _check(host)


@given(st.text(max_size=300))
def test_property_any_text(host: str) -> None:
    _check(host)


@given(st.from_regex(r"\A([a-z0-9]{1,63}\.){3,5}[a-z]{2,10}\Z"))
def test_property_long_valid_names(host: str) -> None:
    if len(host) <= 253:
        assert leaf_name(host).text == host
    else:
        with pytest.raises(InvalidHostError, match="over 253"):
            leaf_name(host)


@given(st.ip_addresses(v=6), st.booleans())
def test_property_ipv6(ip: ipaddress.IPv6Address, bracketed: bool) -> None:
    host = f"[{ip.exploded}]" if bracketed else ip.exploded
    assert leaf_name(host) == LeafName(ip=ip)


@given(st.ip_addresses(v=4))
def test_property_ipv4(ip: ipaddress.IPv4Address) -> None:
    assert leaf_name(str(ip)) == LeafName(ip=ip)


unicode_labels = st.text(
    alphabet=st.characters(categories=["Ll", "Lu", "Lo", "Nd"]), min_size=1, max_size=20
)


@given(st.lists(unicode_labels, min_size=1, max_size=4).map(".".join))
def test_property_idn(host: str) -> None:
    _check(host)
