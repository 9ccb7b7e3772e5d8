"""Tests for mitmlite.onboarding: the magic host, its routes, the downloads and the page.

The certificate downloads are checked by parsing them back with cryptography; the page by its
facts, its escaping and its headers; every response by the absence of the CA key.
"""

from __future__ import annotations

import ast
import datetime as dt
import re
from html.parser import HTMLParser

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from mitmlite.ca.authority import RootCA, create_root
from mitmlite.flow import Response
from mitmlite.onboarding import MAGIC_HOST, is_onboarding_host, onboarding_response
from tests.test_architecture import IO_MODULES, PURE, ROOT, imported_names, matches, module_name

NOW = dt.datetime.now(dt.UTC)
EVIL_CN = '<script>alert("x")</script>&'

PEM_PATHS = ["/cert/pem", "/mitmlite-ca.pem"]
DER_PATHS = {
    "/cert/der": "mitmlite-ca.cer",
    "/mitmlite-ca.crt": "mitmlite-ca.crt",
    "/mitmlite-ca.cer": "mitmlite-ca.cer",
}
ROUTES = ["/", *PEM_PATHS, *DER_PATHS]


@pytest.fixture(scope="session")
def root() -> RootCA:
    return create_root("mitmlite onboarding test CA", NOW)


@pytest.fixture(scope="session")
def evil_root() -> RootCA:
    return create_root(EVIL_CN, NOW)


@pytest.fixture(scope="session")
def rsa_root() -> RootCA:
    return create_root("mitmlite onboarding RSA CA", NOW, "rsa")


def body(response: Response) -> bytes:
    assert response.raw_content is not None
    return response.raw_content


def page(root: RootCA) -> str:
    response = onboarding_response("GET", "/", root)
    assert response.text is not None
    return response.text


def wire_bytes(response: Response) -> bytes:
    """Everything the proxy would send for ``response``: the reason, every field, the body."""
    fields = b"".join(name + b": " + value + b"\r\n" for name, value in response.headers.fields)
    return response.reason.encode() + b"\r\n" + fields + b"\r\n" + body(response)


def key_secrets(root: RootCA) -> list[bytes]:
    """The CA key in every form a leak could take: PEM, DER and the bare private number."""
    key = root.key
    secrets = [
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        key.private_bytes(
            serialization.Encoding.DER,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        b"PRIVATE KEY",
    ]
    if isinstance(key, ec.EllipticCurvePrivateKey):
        secrets.append(key.private_numbers().private_value.to_bytes(32, "big"))
    else:
        assert isinstance(key, rsa.RSAPrivateKey)
        d = key.private_numbers().d
        secrets.append(d.to_bytes((d.bit_length() + 7) // 8, "big"))
    return secrets


class _Collector(HTMLParser):
    """The page as a browser parses it: script elements, link targets and the title."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.links: list[str] = []
        self.title = ""
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self._in_title = tag == "title"
        self.links += [value for name, value in attrs if name == "href" and value]

    def handle_endtag(self, tag: str) -> None:
        self._in_title = False

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data


def parsed(html: str) -> _Collector:
    collector = _Collector()
    collector.feed(html)
    collector.close()
    return collector


# --- the magic host --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "host",
    [
        "mitmlite.ca",
        "MITMLITE.CA",
        "Mitmlite.Ca",
        "mitmlite.ca.",
        "mitmlite.ca:80",
        "mitmlite.ca:443",
        "MITMLITE.CA.:8080",
        "mitmlite.ca:",
    ],
)
def test_is_onboarding_host(host: str) -> None:
    assert MAGIC_HOST == "mitmlite.ca"
    assert is_onboarding_host(host)


@pytest.mark.parametrize(
    "host",
    [
        "",
        "mitmlite",
        "ca",
        "mitmlite.ca..",
        "www.mitmlite.ca",
        "mitmlite.ca.evil.test",
        "evilmitmlite.ca",
        "mitmlite.com",
        "mitmlite.ca:http",
        "mitmlite.ca:80:80",
        "[mitmlite.ca]",
        "[::1]:80",
        "::1",
        "127.0.0.1:8080",
    ],
)
def test_is_not_onboarding_host(host: str) -> None:
    assert not is_onboarding_host(host)


# --- the downloads ---------------------------------------------------------------------------


@pytest.mark.parametrize("path", PEM_PATHS)
def test_pem_download_is_the_ca_certificate(root: RootCA, path: str) -> None:
    response = onboarding_response("GET", path, root)
    assert response.status_code == 200
    assert response.reason == "OK"
    assert body(response) == root.cert.public_bytes(serialization.Encoding.PEM)
    assert x509.load_pem_x509_certificate(body(response)) == root.cert
    assert response.headers.get_all("content-type") == ["application/x-pem-file"]
    assert response.headers["Content-Disposition"] == 'attachment; filename="mitmlite-ca.pem"'
    assert response.headers["Content-Length"] == str(len(body(response)))


@pytest.mark.parametrize(("path", "filename"), DER_PATHS.items())
def test_der_download_parses_back_to_the_ca_certificate(
    root: RootCA, path: str, filename: str
) -> None:
    response = onboarding_response("GET", path, root)
    assert response.status_code == 200
    cert = x509.load_der_x509_certificate(body(response))
    assert cert == root.cert
    assert response.headers.get_all("content-type") == ["application/x-x509-ca-cert"]
    assert response.headers["Content-Disposition"] == f'attachment; filename="{filename}"'
    assert response.headers["Content-Length"] == str(len(body(response)))


def test_downloads_differ_per_ca(root: RootCA, rsa_root: RootCA) -> None:
    # Twin of the parse-back tests: the bytes come from the root given, not from anywhere else.
    for path in ["/cert/pem", "/cert/der"]:
        ours = body(onboarding_response("GET", path, root))
        theirs = body(onboarding_response("GET", path, rsa_root))
        assert ours != theirs
    der = body(onboarding_response("GET", "/cert/der", rsa_root))
    assert x509.load_der_x509_certificate(der) != root.cert


def test_der_is_not_pem_and_pem_is_not_der(root: RootCA) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - cryptography raises a bare ValueError
        x509.load_der_x509_certificate(body(onboarding_response("GET", "/cert/pem", root)))
    with pytest.raises(ValueError):  # noqa: PT011
        x509.load_pem_x509_certificate(body(onboarding_response("GET", "/cert/der", root)))


def test_a_query_string_does_not_change_the_route(root: RootCA) -> None:
    plain = onboarding_response("GET", "/cert/pem", root)
    cache_busted = onboarding_response("GET", "/cert/pem?v=2", root)
    assert cache_busted.status_code == 200
    assert body(cache_busted) == body(plain)


# --- the page --------------------------------------------------------------------------------


def test_page_headers(root: RootCA) -> None:
    response = onboarding_response("GET", "/", root)
    assert response.status_code == 200
    assert response.headers.get_all("content-type") == ["text/html; charset=utf-8"]
    assert response.headers["Content-Length"] == str(len(body(response)))
    csp = response.headers["Content-Security-Policy"]
    directives = [d.strip() for d in csp.split(";")]
    assert "default-src 'none'" in directives
    assert "style-src 'unsafe-inline'" in directives
    assert not any(d.startswith("script-src") for d in directives)


def test_page_states_the_ca_facts(root: RootCA) -> None:
    html = page(root)
    assert root.fingerprint_sha256 in html
    assert re.fullmatch(r"([0-9A-F]{2}:){31}[0-9A-F]{2}", root.fingerprint_sha256)
    assert "mitmlite onboarding test CA" in html
    assert f"{root.cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC" in html
    assert f"{root.cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC" in html
    assert "mitmlite onboarding test CA" in parsed(html).title


def test_page_shows_the_fingerprint_of_its_own_ca(root: RootCA, rsa_root: RootCA) -> None:
    assert rsa_root.fingerprint_sha256 not in page(root)
    assert root.fingerprint_sha256 not in page(rsa_root)


def test_page_links_resolve_to_downloads(root: RootCA) -> None:
    links = parsed(page(root)).links
    assert {"/mitmlite-ca.pem", "/mitmlite-ca.cer", "/mitmlite-ca.crt"} <= set(links)
    for link in links:
        assert onboarding_response("GET", link, root).status_code == 200, link


@pytest.mark.parametrize(
    "needle",
    [
        "Debian",
        "update-ca-certificates",
        "Fedora",
        "update-ca-trust",
        "macOS",
        "security add-trusted-cert",
        "Windows",
        "certutil -addstore -f Root",
        "Firefox",
        "certutil -d sql:$HOME/.pki/nssdb",
        "Chromium",
        "Android",
        "iOS",
        "curl --cacert",
        "REQUESTS_CA_BUNDLE",
        "SSL_CERT_FILE",
        "httpx",
        "NODE_EXTRA_CA_CERTS",
    ],
)
def test_page_has_trust_instructions(root: RootCA, needle: str) -> None:
    assert needle in page(root)


def test_page_escapes_the_ca_name(evil_root: RootCA) -> None:
    html = page(evil_root)
    assert "<script" not in html
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;&amp;" in html
    tree = parsed(html)
    assert "script" not in tree.tags
    assert EVIL_CN in tree.title  # a browser shows the name as text, exactly


def test_page_without_escaping_would_be_caught(evil_root: RootCA) -> None:
    # Twin: the parser above does see a script element when one is really there.
    assert "script" in parsed(f"<p>{EVIL_CN}</p>").tags
    assert "<script" not in page(evil_root)


# --- methods and unknown paths ---------------------------------------------------------------


@pytest.mark.parametrize("path", ROUTES)
def test_head_gets_the_get_response(root: RootCA, path: str) -> None:
    get = onboarding_response("GET", path, root)
    head = onboarding_response("HEAD", path, root)
    assert head.status_code == get.status_code == 200
    assert head.headers.fields == get.headers.fields
    assert head.raw_content == get.raw_content


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH", "get", "Head"])
@pytest.mark.parametrize("path", ROUTES)
def test_other_methods_get_405_with_allow(root: RootCA, method: str, path: str) -> None:
    response = onboarding_response(method, path, root)
    assert response.status_code == 405
    assert response.reason == "Method Not Allowed"
    assert response.headers["Allow"] == "GET, HEAD"
    assert response.headers["Cache-Control"] == "no-store"
    assert b"BEGIN CERTIFICATE" not in body(response)
    assert body(response) != root.cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize(
    "path",
    [
        "/nope",
        "/cert",
        "/cert/p12",
        "/cert/key",
        "/rootCA-key.pem",
        "/mitmlite-ca.pem/",
        "/MITMLITE-CA.PEM",
        "//cert/pem",
        "/cert/pem/../der",
        "*",
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD", "POST"])
def test_unknown_paths_get_404(root: RootCA, method: str, path: str) -> None:
    response = onboarding_response(method, path, root)
    assert response.status_code == 404
    assert response.reason == "Not Found"
    assert response.headers.get_all("content-type") == ["text/plain; charset=utf-8"]
    assert "Allow" not in response.headers
    assert 0 < len(body(response)) < 200
    assert response.text is not None
    assert "not found" in response.text


def test_an_empty_path_is_the_page(root: RootCA) -> None:
    assert onboarding_response("GET", "", root).raw_content == body(
        onboarding_response("GET", "/", root)
    )


# --- every response --------------------------------------------------------------------------


def every_response(root: RootCA) -> list[Response]:
    requests = [(m, p) for m in ["GET", "HEAD", "POST"] for p in [*ROUTES, "/nope", "/key"]]
    return [onboarding_response(method, path, root) for method, path in requests]


@pytest.mark.parametrize("which", ["root", "rsa_root", "evil_root"])
def test_no_response_holds_the_private_key(which: str, request: pytest.FixtureRequest) -> None:
    ca: RootCA = request.getfixturevalue(which)
    secrets = key_secrets(ca)
    for response in every_response(ca):
        sent = wire_bytes(response)
        for secret in secrets:
            assert secret not in sent


def test_the_key_check_would_see_a_leak(root: RootCA) -> None:
    # Twin: a response that does carry the key fails the same check.
    secrets = key_secrets(root)
    for secret in secrets[:2]:
        leaky = Response.make(200, b"cert\n" + secret)
        assert any(s in wire_bytes(leaky) for s in secrets)
    assert all(s not in body(onboarding_response("GET", "/cert/pem", root)) for s in secrets)


def test_every_response_forbids_caching_and_sniffing(root: RootCA) -> None:
    for response in every_response(root):
        assert response.headers.get_all("cache-control") == ["no-store"]
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Length"] == str(len(body(response)))


def test_each_call_returns_a_fresh_response(root: RootCA) -> None:
    # The caller may edit what it gets (a hook, HEAD handling) without changing the next answer.
    first = onboarding_response("GET", "/", root)
    first.headers["X-Edited"] = "1"
    first.raw_content = b""
    second = onboarding_response("GET", "/", root)
    assert "X-Edited" not in second.headers
    assert body(second) != b""


# --- purity ----------------------------------------------------------------------------------


def test_onboarding_is_pure() -> None:
    # DESIGN §3: the page is values in, a Response out; the proxy does the I/O.
    path = ROOT / "mitmlite" / "onboarding.py"
    source = path.read_text(encoding="utf-8")
    names = imported_names(source, module_name(path))
    no_io = [*IO_MODULES, "os", "io", "pathlib", "shutil", "subprocess", "tempfile"]
    assert sorted(n for n in names if matches(n, no_io)) == []
    pure = {module_name(ROOT / p) for p in PURE}
    internal = {n for n in names if matches(n, ["mitmlite"])}
    assert sorted(n for n in internal if not matches(n, pure)) == []
    calls = {
        node.func.id
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert "open" not in calls


def test_purity_check_would_see_file_io() -> None:
    # Twin: the same import check flags a module that reads files.
    source = "from pathlib import Path\nimport mitmlite.relay\n"
    names = imported_names(source, "mitmlite.onboarding")
    assert [n for n in names if matches(n, ["pathlib"])]
    pure = {module_name(ROOT / p) for p in PURE}
    assert "mitmlite.relay" in {n for n in names if not matches(n, pure)}
