"""--proxy-auth with curl: 407 with a Basic challenge for CONNECT and plain requests alike."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import bcrypt
import pytest

from tests.e2e.conftest import Origin, OriginCerts, Proxy, curl, start_proxy

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def auth_proxy(
    tmp_path_factory: pytest.TempPathFactory, origin_certs: OriginCerts
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("auth-home")
    users = home / "htpasswd"
    users.write_text(f"alice:{bcrypt.hashpw(b'wonder land', bcrypt.gensalt(4)).decode()}\n")
    proxy = start_proxy(home, "--upstream-ca", str(origin_certs.ca_path),
                        "--proxy-auth", f"@{users}", "-v")  # fmt: skip
    yield proxy
    proxy.stop()


async def test_connect_without_credentials_is_407(auth_proxy: Proxy, origin: Origin) -> None:
    result = await curl(auth_proxy, "-w", "%{http_connect}", "-o", "/dev/null", origin.url("/x"))
    assert result.stdout == b"407"
    assert origin.state.requests == []
    await auth_proxy.wait_for_log("-> 407 error: proxy authentication required")


async def test_connect_with_credentials_reaches_the_origin(
    auth_proxy: Proxy, origin: Origin
) -> None:
    result = await curl(auth_proxy, "--proxy-user", "alice:wonder land", origin.url("/ok"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"origin /ok"


async def test_wrong_password_is_407(auth_proxy: Proxy, origin: Origin) -> None:
    result = await curl(auth_proxy, "--proxy-user", "alice:wrong", "-w", "%{http_connect}",
                        "-o", "/dev/null", origin.url("/x"))  # fmt: skip
    assert result.stdout == b"407"
    await auth_proxy.wait_for_log("-> 407 error: wrong proxy credentials")


async def test_plain_http_needs_credentials_too(auth_proxy: Proxy, plain_origin: Origin) -> None:
    url = plain_origin.url("/echo", scheme="http")
    denied = await curl(auth_proxy, "-i", url, https=False)
    assert denied.stdout.startswith(b"HTTP/1.1 407")
    assert b'Proxy-Authenticate: Basic realm="mitmlite"' in denied.stdout
    allowed = await curl(auth_proxy, "--proxy-user", "alice:wonder land", url, https=False)
    headers = [name.lower() for name, _ in json.loads(allowed.stdout)["headers"]]
    assert "proxy-authorization" not in headers  # credentials are for us, not the origin


async def test_credentials_never_reach_the_log(auth_proxy: Proxy, plain_origin: Origin) -> None:
    await curl(auth_proxy, "--proxy-user", "alice:wonder land",
               plain_origin.url("/logged", scheme="http"), https=False)  # fmt: skip
    await auth_proxy.wait_for_log("/logged -> 200")
    token = base64.b64encode(b"alice:wonder land").decode()
    log = auth_proxy.log()
    assert "wonder land" not in log
    assert token not in log
    assert "Proxy-Authorization" not in log


async def test_without_proxy_auth_no_credentials_are_asked(proxy: Proxy, origin: Origin) -> None:
    result = await curl(proxy, origin.url("/open"))
    assert result.stdout == b"origin /open"


def test_proxy_auth_file_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "users"
    bad.write_text("alice:$apr1$abc$def\n")
    env = {**os.environ, "MITMLITE_HOME": str(tmp_path / "home")}
    cmd = [sys.executable, "-m", "mitmlite", "--listen", "127.0.0.1:0", "--proxy-auth", f"@{bad}"]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30, check=False)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].startswith("mitmlite: error: ")
    assert "MD5 (apr1) hashes are not supported" in done.stderr
