"""curl through mitmlite: what users do first, on every framing the relay must get right."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import socket
import ssl
import threading

import pytest
import trio

from tests.e2e.conftest import Origin, OriginCerts, Proxy, curl, require, start_origin
from tests.origin import pattern_sha256

pytestmark = pytest.mark.e2e


async def test_get_through_the_tunnel(proxy: Proxy, origin: Origin) -> None:
    result = await curl(proxy, "-i", origin.url("/hello"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"HTTP/1.1 200 Connection established")
    assert result.stdout.endswith(b"\r\n\r\norigin /hello")


async def test_untrusting_client_rejects_the_leaf(
    proxy: Proxy, origin: Origin, origin_certs: OriginCerts
) -> None:
    # The failing twin of every test here: trusting another CA, curl must refuse our leaf.
    result = await curl(proxy, "--cacert", str(origin_certs.ca_path), origin.url("/"))
    assert result.returncode == 60, result.stderr  # CURLE_PEER_FAILED_VERIFICATION
    assert origin.state.requests == []
    await proxy.wait_for_log("client does not trust the mitmlite CA for site.localhost")


async def test_head(proxy: Proxy, origin: Origin) -> None:
    result = await curl(proxy, "-I", origin.url("/bytes/1234"))
    assert result.returncode == 0, result.stderr
    assert b"content-length: 1234" in result.stdout.lower()


async def test_post_and_chunked_put(proxy: Proxy, origin: Origin) -> None:
    result = await curl(proxy, "-d", "a=1&b=2", origin.url("/echo"))
    echo = json.loads(result.stdout)
    assert (echo["method"], echo["body_sha256"]) == ("POST", hashlib.sha256(b"a=1&b=2").hexdigest())
    result = await curl(
        proxy, "-T", "-", "-H", "Transfer-Encoding: chunked", origin.url("/echo")
    )  # stdin is empty: a chunked PUT with an empty body still frames correctly
    echo = json.loads(result.stdout)
    assert echo["method"] == "PUT"
    assert ["Transfer-Encoding", "chunked"] in echo["headers"]


async def test_chunked_put_with_a_body(proxy: Proxy, origin: Origin) -> None:
    payload = b"x" * 300_000
    cmd_args = ["-X", "PUT", "-H", "Transfer-Encoding: chunked", "--data-binary", "@-"]
    result = await curl(proxy, *cmd_args, origin.url("/echo"), stdin=payload)
    echo = json.loads(result.stdout)
    assert echo["body_sha256"] == hashlib.sha256(payload).hexdigest()


async def test_50_mib_download_is_byte_exact(proxy: Proxy, origin: Origin) -> None:
    size = 50 * 1024 * 1024
    result = await curl(proxy, origin.url(f"/bytes/{size}"))
    assert result.returncode == 0, result.stderr
    assert len(result.stdout) == size
    assert hashlib.sha256(result.stdout).hexdigest() == pattern_sha256(size)


async def test_several_urls_reuse_one_tunnel(proxy: Proxy, origin: Origin) -> None:
    urls = [origin.url(f"/n{i}") for i in range(4)]
    result = await curl(proxy, *urls)
    assert result.stdout == b"".join(f"origin /n{i}".encode() for i in range(4))
    assert origin.state.connections == 1
    assert origin.state.requests == [f"/n{i}" for i in range(4)]


async def test_http10_client(proxy: Proxy, origin: Origin) -> None:
    result = await curl(proxy, "-0", "-i", origin.url("/chunked/30000"))
    assert result.returncode == 0, result.stderr
    head, _, body = result.stdout.rpartition(b"\r\n\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert len(body) == 30000


async def test_trailers_reach_curl_over_http11(proxy: Proxy, origin: Origin) -> None:
    result = await curl(proxy, "--raw", origin.url("/trailers"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(b"0\r\nX-Checksum: abc\r\n\r\n")


async def test_http10_client_gets_a_chunked_body_with_trailers_without_them(
    proxy: Proxy, origin: Origin
) -> None:
    # The twin: no place for trailers in a close-delimited body (this was an empty reply).
    result = await curl(proxy, "-0", "-i", origin.url("/trailers"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(b"\r\n\r\nhello")
    assert b"abc" not in result.stdout


async def test_expect_100_continue(proxy: Proxy, origin: Origin) -> None:
    payload = b"y" * 2_000_000  # curl sends Expect: 100-continue for large bodies
    with trio.fail_after(20):
        result = await curl(
            proxy, "-H", "Expect: 100-continue", "--data-binary", "@-", origin.url("/echo"),
            stdin=payload,
        )  # fmt: skip
    assert json.loads(result.stdout)["body_length"] == len(payload)


@pytest.mark.parametrize("https", [True, False], ids=["https", "http"])
async def test_an_upload_refused_before_its_end_gets_the_servers_answer(
    proxy: Proxy, origin: Origin, plain_origin: Origin, https: bool
) -> None:
    # The origin answers 413 from the head and closes with the body unread (a reset): the
    # answer must reach curl, as it does without a proxy, not a 502 or a reset of its own.
    target = origin if https else plain_origin
    url = target.url("/reject-upload", scheme="https" if https else "http")
    payload = b"u" * 20_000_000
    for _ in range(3):  # the resets race the answer: more than once
        result = await curl(
            proxy, "--data-binary", "@-", "-w", "\n%{http_code}", url, https=https, stdin=payload
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"upload refused\n\n413"
    after = await curl(proxy, target.url("/after", scheme="https" if https else "http"),
                       https=https)  # fmt: skip
    assert after.stdout == b"origin /after"


@pytest.mark.parametrize("https", [True, False], ids=["https", "http"])
async def test_an_upload_cut_off_without_an_answer_is_a_502_saying_so(
    proxy: Proxy, origin: Origin, plain_origin: Origin, https: bool
) -> None:
    target = origin if https else plain_origin
    url = target.url("/cut-upload", scheme="https" if https else "http")
    result = await curl(
        proxy, "--data-binary", "@-", "-w", "\n%{http_code}", url, https=https,
        stdin=b"u" * 20_000_000,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"upstream closed the connection while receiving the request\n\n502"


@pytest.mark.parametrize("status", [204, 304])
async def test_bodiless_statuses(proxy: Proxy, origin: Origin, status: int) -> None:
    result = await curl(proxy, "-i", origin.url(f"/status/{status}"), origin.url("/after"))
    assert result.stdout.startswith(b"HTTP/1.1 200 Connection established")
    assert f"HTTP/1.1 {status}".encode() in result.stdout
    assert result.stdout.endswith(b"origin /after")


async def test_compressed_gzip_passes_unchanged(proxy: Proxy, origin: Origin) -> None:
    raw = await curl(proxy, origin.url("/gzip"))
    assert gzip.decompress(raw.stdout).startswith(b"<html>")
    decoded = await curl(proxy, "--compressed", origin.url("/gzip"))
    assert decoded.stdout.startswith(b"<html><body>compressed hello")


async def test_redirect_across_two_intercepted_hosts(proxy: Proxy, origin: Origin) -> None:
    target = origin.url("/landed", host="b.localhost")
    result = await curl(proxy, "-L", origin.url(f"/redirect?to={target}", host="a.localhost"))
    assert result.stdout == b"origin /landed"


async def test_ip_address_target(proxy: Proxy, origin: Origin) -> None:
    result = await curl(proxy, origin.url("/by-ip", host="127.0.0.1"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"origin /by-ip"


async def test_plain_http_through_http_proxy(proxy: Proxy, plain_origin: Origin) -> None:
    urls = [plain_origin.url(f"/p{i}", scheme="http") for i in range(3)]
    result = await curl(proxy, *urls, https=False)
    assert result.stdout == b"origin /p0origin /p1origin /p2"
    assert plain_origin.state.connections == 1  # upstream reused per host:port


@pytest.mark.parametrize("https", [True, False], ids=["https", "http"])
async def test_a_raw_utf8_query_is_forwarded_percent_encoded(
    proxy: Proxy, origin: Origin, plain_origin: Origin, https: bool
) -> None:
    # curl sends the query as typed, raw UTF-8, which servers take; h11 reads only ASCII in a
    # request target and we answered 400. Now it goes on as the URI it stands for.
    target, scheme = (origin, "https") if https else (plain_origin, "http")
    result = await curl(proxy, target.url("/echo?q=\u00fc&x=1", scheme=scheme), https=https)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["target"] == "/echo?q=%C3%BC&x=1"
    # The twin: an ASCII target goes on byte for byte, already-encoded escapes included.
    result = await curl(proxy, target.url("/echo?q=%c3%bc&x=1", scheme=scheme), https=https)
    assert json.loads(result.stdout)["target"] == "/echo?q=%c3%bc&x=1"


async def test_plain_http_inside_connect(proxy: Proxy, plain_origin: Origin) -> None:
    url = plain_origin.url("/tunnelled", scheme="http")
    result = await curl(proxy, "-p", "-x", proxy.url, url, https=False)
    assert result.stdout == b"origin /tunnelled"


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        ("self_signed", "upstream certificate verify failed: self-signed certificate"),
        (
            "wrong_host",
            "upstream certificate verify failed: hostname mismatch, "
            "certificate is not valid for 'site.localhost'",
        ),
        ("expired", "upstream certificate verify failed: certificate has expired"),
        ("untrusted", "upstream certificate verify failed: unable to get local issuer certificate"),
    ],
)
async def test_bad_upstream_certificate_is_a_502_with_the_reason(
    proxy: Proxy, origin_certs: OriginCerts, nursery: trio.Nursery, cert: str, reason: str
) -> None:
    context: ssl.SSLContext = getattr(origin_certs, cert)
    bad = await start_origin(nursery, context)
    result = await curl(proxy, "-i", bad.url("/secret"))
    assert result.returncode == 0, result.stderr
    assert b"HTTP/1.1 502 Bad Gateway" in result.stdout
    assert result.stdout.endswith(reason.encode() + b"\n")
    assert bad.state.requests == []  # no request, so no origin byte, ever reached it
    assert b"origin /secret" not in result.stdout
    await proxy.wait_for_log(reason)


async def test_an_upstream_that_requires_a_client_certificate_is_a_502_saying_so(
    proxy: Proxy, origin_certs: OriginCerts
) -> None:
    # A blocking-socket server, as OpenSSL servers are: its alert goes out on the socket (a trio
    # server's SSLStream drops it). It holds the socket until the client has its answer, as
    # servers linger; closing at once would reset the proxy's request and lose the alert.
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    answered = threading.Event()

    def refuse(conn: socket.socket) -> None:
        with conn, contextlib.suppress(ssl.SSLError, OSError):
            # A handshake run by wrap_socket closes the socket as soon as it fails.
            tls = origin_certs.client_cert_required.wrap_socket(
                conn, server_side=True, do_handshake_on_connect=False
            )
            with tls:
                try:
                    tls.do_handshake()
                finally:
                    answered.wait(10)

    def accept_all() -> None:
        with contextlib.suppress(OSError):  # closed at the end of the test
            while True:
                conn, _ = server.accept()
                threading.Thread(target=refuse, args=(conn,), daemon=True).start()

    threading.Thread(target=accept_all, daemon=True).start()
    try:
        result = await curl(proxy, "-i", f"https://site.localhost:{port}/secret")
    finally:
        answered.set()
        server.close()
    assert result.returncode == 0, result.stderr
    assert b"HTTP/1.1 502 Bad Gateway" in result.stdout
    assert result.stdout.endswith(
        b"site.localhost requires a client certificate (TLS alert certificate_required); "
        b"mitmlite presents none\n"
    )


@pytest.mark.parametrize(
    "ciphers",
    [
        "ECDHE-RSA-AES128-GCM-SHA256",  # older Java, Android, embedded stacks: no ECDSA suites
        "AES128-GCM-SHA256",  # older still: static RSA, which Python's server default leaves out
    ],
    ids=["ecdhe-rsa", "static-rsa"],
)
async def test_a_client_without_ecdsa_gets_an_rsa_leaf(
    proxy: Proxy, origin: Origin, ciphers: str
) -> None:
    result = await curl(proxy, "--tls-max", "1.2", "--ciphers", ciphers, origin.url("/old-client"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"origin /old-client"


async def test_a_tls13_client_signing_with_rsa_only_gets_the_rsa_leaf(
    proxy: Proxy, origin: Origin
) -> None:
    exe = require("openssl")
    port = origin.port
    cmd = [
        exe, "s_client", "-proxy", f"127.0.0.1:{proxy.port}", "-connect", f"site.localhost:{port}",
        "-servername", "site.localhost", "-tls1_3", "-sigalgs", "rsa_pss_rsae_sha256",
        "-CAfile", str(proxy.ca_path), "-verify_return_error", "-quiet",
    ]  # fmt: skip
    request = b"GET /rsa-signing HTTP/1.1\r\nHost: site.localhost\r\nConnection: close\r\n\r\n"
    with trio.fail_after(20):
        done = await trio.run_process(cmd, stdin=request, capture_stdout=True, check=False,
                                      capture_stderr=True)  # fmt: skip
    assert done.stdout.endswith(b"origin /rsa-signing"), done.stderr.decode(errors="replace")


async def test_closed_port_is_a_502_within_a_second(proxy: Proxy) -> None:
    listener = trio.socket.socket()
    await listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    listener.close()  # nothing listens there now
    with trio.fail_after(1):
        result = await curl(proxy, "-i", f"https://site.localhost:{port}/")
    assert b"HTTP/1.1 502 Bad Gateway" in result.stdout
    assert b"Connection refused" in result.stdout
