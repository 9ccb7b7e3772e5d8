"""Reverse mode and the TLS proxy listener, driven by curl and openssl s_client."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trustme

from tests.e2e.conftest import Origin, OriginCerts, Proxy, Result, require, start_proxy
from tests.scripting import write

pytestmark = pytest.mark.e2e


async def direct_curl(*args: str, max_time: float = 30) -> Result:
    """curl with no proxy at all: reverse mode is reached as if it were the server."""
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    cmd = [require("curl"), "-sS", "--max-time", str(max_time), *args]
    with trio.fail_after(max_time + 10):
        done = await trio.run_process(
            cmd, capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    return Result(done.returncode, done.stdout, done.stderr.decode(errors="replace"))


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    started: list[Proxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def reverse_proxy(
    proxies: list[Proxy], home: Path, certs: OriginCerts, target: str, *extra: str
) -> Proxy:
    proxy = start_proxy(home, "--mode", f"reverse:{target}", "--upstream-ca", str(certs.ca_path),
                        *extra)  # fmt: skip
    proxies.append(proxy)
    return proxy


async def test_reverse_https_rewrites_host_and_answers_with_a_leaf_for_the_sni(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    proxy = reverse_proxy(
        proxies, tmp_path / "home", origin_certs, origin.url("", "site.localhost")
    )
    result = await direct_curl(
        "--cacert", str(proxy.ca_path), f"https://app.localhost:{proxy.port}/echo?x=1"
    )
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["target"] == "/echo?x=1"
    headers = {n.lower(): v for n, v in info["headers"]}
    assert headers["host"] == f"site.localhost:{origin.port}"
    await proxy.wait_for_log(f"GET https://site.localhost:{origin.port}/echo?x=1 -> 200")


async def test_reverse_refuses_a_client_that_does_not_trust_the_ca(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    proxy = reverse_proxy(
        proxies, tmp_path / "home", origin_certs, origin.url("", "site.localhost")
    )
    result = await direct_curl(f"https://app.localhost:{proxy.port}/echo")
    assert result.returncode == 60  # curl: peer certificate cannot be authenticated
    assert origin.state.requests == []


async def test_reverse_accepts_plain_http_clients_and_runs_hooks(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    script = write(tmp_path / "tag.py", """
        def request(flow):
            flow.request.headers["X-Reverse"] = "seen"
    """)  # fmt: skip
    target = origin.url("", "site.localhost")
    proxy = reverse_proxy(proxies, tmp_path / "home", origin_certs, target, "-s", str(script))
    result = await direct_curl(f"http://127.0.0.1:{proxy.port}/echo")
    headers = {n.lower(): v for n, v in json.loads(result.stdout)["headers"]}
    assert headers["x-reverse"] == "seen"


async def test_reverse_to_an_unreachable_origin_is_502(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts
) -> None:
    proxy = reverse_proxy(proxies, tmp_path / "home", origin_certs, "https://site.localhost:9")
    result = await direct_curl("-i", "--cacert", str(proxy.ca_path),
                               f"https://localhost:{proxy.port}/")  # fmt: skip
    assert result.stdout.startswith(b"HTTP/1.1 502")
    assert b"cannot connect to site.localhost:9" in result.stdout


async def test_reverse_with_a_given_certificate(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    own_ca = trustme.CA()
    own = tmp_path / "own.pem"
    own_ca.issue_cert("localhost").private_key_and_cert_chain_pem.write_to_path(str(own))
    own_ca_path = tmp_path / "own-ca.pem"
    own_ca.cert_pem.write_to_path(str(own_ca_path))
    target = origin.url("", "site.localhost")
    proxy = reverse_proxy(proxies, tmp_path / "home", origin_certs, target, "--cert", str(own))
    good = await direct_curl("--cacert", str(own_ca_path), f"https://localhost:{proxy.port}/hi")
    assert good.stdout == b"origin /hi"
    # The twin: the mitmlite CA did not issue that certificate, so it does not verify it.
    bad = await direct_curl("--cacert", str(proxy.ca_path), f"https://localhost:{proxy.port}/hi")
    assert bad.returncode == 60


async def test_reverse_sni_seen_by_openssl(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    proxy = reverse_proxy(
        proxies, tmp_path / "home", origin_certs, origin.url("", "site.localhost")
    )
    cmd = [require("openssl"), "s_client", "-connect", f"127.0.0.1:{proxy.port}",
           "-servername", "named.localhost", "-CAfile", str(proxy.ca_path),
           "-verify_hostname", "named.localhost", "-verify_return_error"]  # fmt: skip
    with trio.fail_after(20):
        done = await trio.run_process(cmd, stdin=b"", capture_stdout=True, capture_stderr=True,
                                      check=False)  # fmt: skip
    out = done.stdout.decode(errors="replace")
    assert "Verify return code: 0 (ok)" in out
    assert "CN=named.localhost" in out or "CN = named.localhost" in out


def test_bad_mode_and_cert_exit_2(tmp_path: Path) -> None:
    env = {**os.environ, "MITMLITE_HOME": str(tmp_path / "home")}
    for args, message in [
        (["--mode", "sideways"], "expected 'regular' or 'reverse:"),
        (["--mode", "reverse:ftp://x"], "must be http://host or https://host"),
        (["--mode", "reverse:https://x/path"], "no path"),
        (["--listen-tls", "--cert", str(tmp_path / "absent.pem")], "cannot use --cert"),
        (["--key", "k.pem"], "--key needs --cert"),
        (["--mode", "reverse:https://x", "--proxy-auth", "u:p"], "not --mode reverse"),
    ]:
        cmd = [sys.executable, "-m", "mitmlite", "--listen", "127.0.0.1:0", *args]
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30,
                              check=False)  # fmt: skip
        assert done.returncode == 2, (args, done.stderr)
        assert message in done.stderr, (args, done.stderr)


# --- the TLS listener (an https:// proxy URL) -------------------------------------------------


async def test_https_proxy_url_intercepts_tls_inside_tls(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    proxy = start_proxy(tmp_path / "home", "--listen-tls", "--upstream-ca",
                        str(origin_certs.ca_path))  # fmt: skip
    proxies.append(proxy)
    ca = str(proxy.ca_path)
    result = await direct_curl("--proxy", f"https://127.0.0.1:{proxy.port}", "--proxy-cacert", ca,
                               "--cacert", ca, origin.url("/inside"))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"origin /inside"
    await proxy.wait_for_log(f"GET {origin.url('/inside')} -> 200")


async def test_plain_proxy_url_to_the_tls_listener_is_told_why(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, plain_origin: Origin
) -> None:
    proxy = start_proxy(tmp_path / "home", "--listen-tls")
    proxies.append(proxy)
    result = await direct_curl("-i", "--proxy", f"http://127.0.0.1:{proxy.port}",
                               plain_origin.url("/x", scheme="http"))  # fmt: skip
    assert result.stdout.startswith(b"HTTP/1.1 400")
    assert b"use an https:// proxy URL" in result.stdout
    assert plain_origin.state.requests == []
    await proxy.wait_for_log("plain HTTP sent to the TLS listener")
