"""The onboarding site the proxy serves itself at ``http://mitmlite.ca/``, like mitmproxy's mitm.it.

Owns that magic host's content: a page with the root CA's subject, validity and SHA-256
fingerprint and how to trust it on each platform, and the certificate as PEM and DER downloads.
Only the certificate is ever served, never the CA key. Requests are routed by method and path to a
`Response`; deciding that a request is for this host, and sending (or, for HEAD, not sending) the
body, is the caller's job.

Pure: a method, a path and the root in, a `Response` out. No trio, no sockets, no file I/O.
"""

from __future__ import annotations

from collections.abc import Callable
from html import escape

from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from mitmlite.ca.authority import RootCA
from mitmlite.flow import Response
from mitmlite.http1 import reason_phrase

__all__ = ["MAGIC_HOST", "is_onboarding_host", "onboarding_response"]

MAGIC_HOST = "mitmlite.ca"
PEM_NAME = "mitmlite-ca.pem"
ALLOWED_METHODS = ("GET", "HEAD")

# The page needs no script, image, font or form; inline style is its only resource. A page that
# hands out a root CA must not be framed or made to load anything else.
_CSP = (
    "default-src 'none'; style-src 'unsafe-inline'; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
# no-store: a cached copy would outlive a CA that was replaced; nosniff: a download must never be
# rendered as a page.
_COMMON_HEADERS = [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
_PEM_TYPE = "application/x-pem-file"
_DER_TYPE = "application/x-x509-ca-cert"


def is_onboarding_host(host: str) -> bool:
    """True when ``host`` (a Host header or CONNECT/absolute-form host, port optional) is ours."""
    name, colon, port = host.rpartition(":")
    # Without a colon, or when the "port" is not one (an IPv6 literal), the whole value is the name.
    if not colon or not (port == "" or (port.isascii() and port.isdigit())):
        name = host
    # RFC 1034 §3.1: a trailing dot makes a name absolute; "mitmlite.ca." is the same host.
    name = name.removesuffix(".")
    return name.lower() == MAGIC_HOST


def onboarding_response(method: str, path: str, root: RootCA) -> Response:
    """The response to ``method path`` on the onboarding host; HEAD gets GET's response.

    An unknown path is 404 whatever the method; a known one with a method other than GET or HEAD
    is 405 with ``Allow``. Methods are case-sensitive (RFC 9110 §9.1).
    """
    route = _ROUTES.get(path.split("?", 1)[0] or "/")
    if route is None:
        return _response(404, f"not found: see http://{MAGIC_HOST}/\n", "text/plain")
    if method not in ALLOWED_METHODS:
        response = _response(405, "method not allowed: use GET or HEAD\n", "text/plain")
        response.headers["Allow"] = ", ".join(ALLOWED_METHODS)
        return response
    return route(root)


def _response(
    status: int,
    body: bytes | str,
    content_type: str,
    extra: list[tuple[str, str]] | None = None,
) -> Response:
    if isinstance(body, str):
        content_type += "; charset=utf-8"
    headers = [("Content-Type", content_type), *_COMMON_HEADERS, *(extra or [])]
    response = Response.make(status, body, headers)
    response.reason = reason_phrase(status).decode("ascii")
    return response


def _download(filename: str, content_type: str, data: bytes) -> Response:
    disposition = ("Content-Disposition", f'attachment; filename="{filename}"')
    return _response(200, data, content_type, [disposition])


def _pem(root: RootCA) -> Response:
    return _download(PEM_NAME, _PEM_TYPE, root.cert.public_bytes(serialization.Encoding.PEM))


def _der(filename: str) -> Callable[[RootCA], Response]:
    def route(root: RootCA) -> Response:
        return _download(filename, _DER_TYPE, root.cert.public_bytes(serialization.Encoding.DER))

    return route


def _page(root: RootCA) -> Response:
    return _response(200, _html(root), "text/html", [("Content-Security-Policy", _CSP)])


_ROUTES: dict[str, Callable[[RootCA], Response]] = {
    "/": _page,
    "/cert/pem": _pem,
    f"/{PEM_NAME}": _pem,
    # Windows and macOS open .cer, Android's installer lists .crt: the same DER under both names.
    "/cert/der": _der("mitmlite-ca.cer"),
    "/mitmlite-ca.crt": _der("mitmlite-ca.crt"),
    "/mitmlite-ca.cer": _der("mitmlite-ca.cer"),
}


def _common_name(root: RootCA) -> str:
    names = root.cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        return root.cert.subject.rfc4514_string()
    value = names[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def _html(root: RootCA) -> str:
    cert = root.cert
    facts = [
        ("Name", _common_name(root)),
        ("Subject", cert.subject.rfc4514_string()),
        ("SHA-256 fingerprint", root.fingerprint_sha256),
        ("Valid from", f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S} UTC"),
        ("Valid until", f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S} UTC"),
    ]
    rows = "\n".join(
        f"<tr><th>{escape(label)}</th><td><code>{escape(value)}</code></td></tr>"
        for label, value in facts
    )
    return _PAGE.format(title=escape(f"mitmlite CA: {_common_name(root)}"), facts=rows)


# Static except for {title} and {facts}, which _html fills with escaped values; literal braces in
# the CSS are doubled for str.format.
_PAGE = """\
<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 52em; margin: 2em auto; padding: 0 1em; }}
code, pre {{ font-family: ui-monospace, monospace; }}
pre {{ background: #f3f3f3; padding: .6em .8em; overflow-x: auto; }}
th {{ text-align: left; padding-right: 1em; vertical-align: top; }}
td code {{ word-break: break-all; }}
.warn {{ border-left: 4px solid #c60; padding-left: .8em; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p>This proxy decrypts HTTPS traffic with certificates signed by the root CA below. Trust it
only on machines and in programs whose traffic you mean to inspect.</p>
<table>
{facts}
</table>
<p class="warn">This page came over plain HTTP through the proxy. Before trusting the download,
compare its SHA-256 fingerprint with the one <code>mitmlite ca show</code> prints on the machine
that runs the proxy.</p>

<h2>Download</h2>
<ul>
<li><a href="/mitmlite-ca.pem">mitmlite-ca.pem</a> (PEM: Linux, macOS, Firefox, curl, Python,
Node.js, iOS)</li>
<li><a href="/mitmlite-ca.cer">mitmlite-ca.cer</a> (DER: Windows, macOS)</li>
<li><a href="/mitmlite-ca.crt">mitmlite-ca.crt</a> (DER: Android)</li>
</ul>

<h2>Trust it</h2>
<p>The commands expect the downloaded file in the current directory.</p>

<h3>Debian, Ubuntu</h3>
<pre>sudo cp mitmlite-ca.pem /usr/local/share/ca-certificates/mitmlite-ca.crt
sudo update-ca-certificates</pre>

<h3>Fedora, RHEL</h3>
<pre>sudo cp mitmlite-ca.pem /etc/pki/ca-trust/source/anchors/mitmlite-ca.pem
sudo update-ca-trust</pre>

<h3>macOS</h3>
<pre>sudo security add-trusted-cert -d -r trustRoot \\
  -k /Library/Keychains/System.keychain mitmlite-ca.pem</pre>
<p>Or open the file in Keychain Access and set <em>When using this certificate</em> to
<em>Always Trust</em>. Safari and Chrome use this store.</p>

<h3>Windows</h3>
<pre>certutil -addstore -f Root mitmlite-ca.cer</pre>
<p>From an administrator prompt; or open the <code>.cer</code> file, choose
<em>Install Certificate</em> and place it in <em>Trusted Root Certification Authorities</em>.
Edge and Chrome use this store.</p>

<h3>Firefox (its own NSS store, every platform)</h3>
<p>Settings &rarr; Privacy &amp; Security &rarr; Certificates &rarr; View Certificates &rarr;
Authorities &rarr; Import, and tick <em>Trust this CA to identify websites</em>. Or, with NSS's
<code>certutil</code> (Debian: <code>libnss3-tools</code>) and the profile directory from
<code>about:profiles</code>:</p>
<pre>certutil -d sql:PROFILE_DIR -A -t C,, -n "mitmlite CA" -i mitmlite-ca.pem</pre>

<h3>Chromium and Chrome on Linux</h3>
<pre>certutil -d sql:$HOME/.pki/nssdb -A -t C,, -n "mitmlite CA" -i mitmlite-ca.pem</pre>
<p>Or Settings &rarr; Privacy and security &rarr; Security &rarr; Manage certificates &rarr;
Authorities &rarr; Import. Restart the browser afterwards.</p>

<h3>Android</h3>
<p>Download <a href="/mitmlite-ca.crt">mitmlite-ca.crt</a>, then Settings &rarr; Security &rarr;
Encryption &amp; credentials &rarr; Install a certificate &rarr; CA certificate. Chrome trusts
user CAs; apps built for Android 7 or later do not unless their network security configuration
opts in.</p>

<h3>iOS, iPadOS</h3>
<p>Open <a href="/mitmlite-ca.pem">mitmlite-ca.pem</a> in Safari and allow the profile, install
it in Settings &rarr; General &rarr; VPN &amp; Device Management, then turn on full trust in
Settings &rarr; General &rarr; About &rarr; Certificate Trust Settings.</p>

<h3>curl</h3>
<pre>curl --cacert mitmlite-ca.pem https://example.org/</pre>

<h3>Python</h3>
<pre>export REQUESTS_CA_BUNDLE=$PWD/mitmlite-ca.pem   # requests
export SSL_CERT_FILE=$PWD/mitmlite-ca.pem        # httpx, urllib, the ssl module</pre>
<p>Both replace the default CA bundle for that process, so set them only where all traffic goes
through the proxy.</p>

<h3>Node.js</h3>
<pre>export NODE_EXTRA_CA_CERTS=$PWD/mitmlite-ca.pem</pre>
<p>Added to Node's built-in roots when the process starts.</p>

<h2>When you are done</h2>
<p>Anyone holding the CA key can impersonate any site to a machine that trusts this CA: keep the
key private, and remove the CA from every trust store when you no longer need it.</p>
</body>
</html>
"""
