"""An upload the origin answers before its end, through a proxy whose script buffers bodies.

The script-free relay streams request bodies (tests/e2e/test_curl.py covers it); a `request` hook
makes the relay read the whole body first and send it with the head in one write, which is the
write the origin's reset then fails.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e.conftest import Origin, OriginCerts, Proxy, curl, start_proxy
from tests.scripting import write

pytestmark = pytest.mark.e2e

PAYLOAD = b"u" * 20_000_000  # under the 32 MiB a request hook buffers


@pytest.fixture(scope="module")
def buffering(
    tmp_path_factory: pytest.TempPathFactory, origin_certs: OriginCerts
) -> Iterator[Proxy]:
    directory = tmp_path_factory.mktemp("buffering")
    script = write(directory / "seen.py", "def request(flow):\n    flow.metadata['seen'] = 1\n")
    running = start_proxy(
        directory / "home", "--upstream-ca", str(origin_certs.ca_path), "-s", str(script)
    )
    yield running
    running.stop()


@pytest.mark.parametrize("https", [True, False], ids=["https", "http"])
async def test_a_buffered_upload_refused_early_gets_the_servers_answer(
    buffering: Proxy, origin: Origin, plain_origin: Origin, https: bool
) -> None:
    target, scheme = (origin, "https") if https else (plain_origin, "http")
    for _ in range(3):
        result = await curl(
            buffering, "--data-binary", "@-", "-w", "\n%{http_code}",
            target.url("/reject-upload", scheme=scheme), https=https, stdin=PAYLOAD,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"upload refused\n\n413"


@pytest.mark.parametrize("https", [True, False], ids=["https", "http"])
async def test_a_buffered_upload_cut_off_without_an_answer_is_a_502(
    buffering: Proxy, origin: Origin, plain_origin: Origin, https: bool
) -> None:
    target, scheme = (origin, "https") if https else (plain_origin, "http")
    result = await curl(
        buffering, "--data-binary", "@-", "-w", "\n%{http_code}",
        target.url("/cut-upload", scheme=scheme), https=https, stdin=PAYLOAD,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.endswith(b"closed the connection\n\n502"), result.stdout
