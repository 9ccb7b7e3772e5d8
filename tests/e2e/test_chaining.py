"""--upstream-proxy: two mitmlite processes chained, over a plain and a TLS link, with curl.

The client trusts the first proxy's CA; the first proxy trusts the second's (it intercepts too),
and the second trusts the origin's test CA. Both log the flow, so both handled it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.conftest import Origin, OriginCerts, Proxy, curl, start_proxy

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxies() -> Iterator[list[Proxy]]:
    started: list[Proxy] = []
    yield started
    for proxy in started:
        proxy.stop()


def chain(
    proxies: list[Proxy], tmp_path: Path, certs: OriginCerts, scheme: str, *second_args: str,
    credentials: str = "",
) -> tuple[Proxy, Proxy]:  # fmt: skip
    second = start_proxy(tmp_path / "second", "--upstream-ca", str(certs.ca_path), *second_args)
    proxies.append(second)
    first = start_proxy(
        tmp_path / "first",
        "--upstream-proxy", f"{scheme}://{credentials}127.0.0.1:{second.port}",
        "--upstream-ca", str(second.ca_path),
    )  # fmt: skip
    proxies.append(first)
    return first, second


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_https_through_two_proxies(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin, scheme: str
) -> None:
    extra = ("--listen-tls",) if scheme == "https" else ()
    first, second = chain(proxies, tmp_path, origin_certs, scheme, *extra)
    result = await curl(first, origin.url("/chained"))
    assert result.returncode == 0, result.stderr + first.log()
    assert result.stdout == b"origin /chained"
    await first.wait_for_log(f"GET {origin.url('/chained')} -> 200")
    await second.wait_for_log(f"GET {origin.url('/chained')} -> 200")


@pytest.mark.parametrize("scheme", ["http", "https"])
async def test_plain_http_is_forwarded_in_absolute_form(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, plain_origin: Origin,
    scheme: str,
) -> None:  # fmt: skip
    extra = ("--listen-tls",) if scheme == "https" else ()
    first, second = chain(proxies, tmp_path, origin_certs, scheme, *extra)
    url = plain_origin.url("/echo?via=chain", scheme="http")
    result = await curl(first, url, https=False)
    assert json.loads(result.stdout)["target"] == "/echo?via=chain"
    await second.wait_for_log(f"GET {url} -> 200")  # the second proxy saw the absolute URL


async def test_upstream_proxy_credentials(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin,
    plain_origin: Origin,
) -> None:  # fmt: skip
    first, _ = chain(proxies, tmp_path, origin_certs, "http", "--proxy-auth", "u:p w",
                          credentials="u:p%20w@")  # fmt: skip
    result = await curl(first, origin.url("/authed"))
    assert result.stdout == b"origin /authed"
    plain = await curl(first, plain_origin.url("/authed-plain", scheme="http"), https=False)
    assert plain.stdout == b"origin /authed-plain"


async def test_upstream_proxy_refusal_is_a_502_with_its_answer(
    proxies: list[Proxy], tmp_path: Path, origin_certs: OriginCerts, origin: Origin
) -> None:
    first, _ = chain(proxies, tmp_path, origin_certs, "http", "--proxy-auth", "u:p")
    result = await curl(first, "-i", origin.url("/denied"))
    assert b"502 Bad Gateway" in result.stdout
    assert b"refused CONNECT" in result.stdout
    assert b"407" in result.stdout
    assert origin.state.requests == []


async def test_unreachable_upstream_proxy_is_a_502(
    proxies: list[Proxy], tmp_path: Path, origin: Origin
) -> None:
    first = start_proxy(tmp_path / "first", "--upstream-proxy", "http://127.0.0.1:9")
    proxies.append(first)
    result = await curl(first, "-i", "--cacert", str(first.ca_path), origin.url("/x"))
    assert b"502 Bad Gateway" in result.stdout
    assert b"upstream proxy: cannot connect to 127.0.0.1:9" in result.stdout
