"""The example hook scripts in scripts/, each run by a real mitmlite and driven by curl.

One proxy loads all six scripts (they act on disjoint hosts, parameters and content types), set
up through their environment variables; the session's script-free proxy is the "without the
script" twin. Tests that need their own options (a map target with an origin's port, a script
edited while the proxy runs, scripts that cannot load) start their own.
"""

from __future__ import annotations

import gzip
import json
import os
import socket
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import brotli  # type: ignore[import-untyped]  # no type stubs
import pytest
import trio

from tests.e2e.conftest import Origin, OriginCerts, Proxy, curl, start_proxy
from tests.origin import HTML_PAGE
from tests.scripting import write

pytestmark = pytest.mark.e2e

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
# Every script hook in command-line order; those that answer locally come first.
EXAMPLES = [
    "block_hosts.py",
    "json_mock.py",
    "map_remote.py",
    "rewrite_query.py",
    "headers.py",
    "replace_html.py",
]
# Every variable the scripts read; the tests set them or clear them, never inherit them.
SCRIPT_VARIABLES = [
    "MITMLITE_QUERY_FIND",
    "MITMLITE_QUERY_REPLACE",
    "MITMLITE_UA_SUFFIX",
    "MITMLITE_REMOVE_HEADERS",
    "MITMLITE_HTML_REPLACE",
    "MITMLITE_BLOCK_HOSTS",
    "MITMLITE_BLOCK_REGEX",
    "MITMLITE_MAP_REMOTE",
    "MITMLITE_MOCK_HOST",
]
# The scripted proxy's settings; the query, header and regex scripts run with their defaults.
SETTINGS = {
    "MITMLITE_HTML_REPLACE": "hello=mitmlite",
    "MITMLITE_BLOCK_HOSTS": "blocked.localhost",
    "MITMLITE_MAP_REMOTE": "mapped.localhost=b.localhost",
    "MITMLITE_MOCK_HOST": "mock.localhost",
}


def script_args(*names: str) -> list[str]:
    return [arg for name in names for arg in ("-s", str(SCRIPTS / name))]


def start_with(home: Path, settings: dict[str, str], *args: str) -> Proxy:
    """start_proxy with exactly ``settings`` among the scripts' variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name in SCRIPT_VARIABLES:
            patch.delenv(name, raising=False)
        for name, value in settings.items():
            patch.setenv(name, value)
        return start_proxy(home, *args)


@pytest.fixture(scope="module")
def scripted(
    tmp_path_factory: pytest.TempPathFactory, origin_certs: OriginCerts
) -> Iterator[Proxy]:
    home = tmp_path_factory.mktemp("scripted-home")
    upstream_ca = ["--upstream-ca", str(origin_certs.ca_path)]
    running = start_with(home, SETTINGS, *upstream_ca, *script_args(*EXAMPLES))
    yield running
    running.stop()


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # names lower-cased; enough for these responses, which repeat none
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def fetch(proxy: Proxy, url: str, *args: str) -> Reply:
    """One request through ``proxy`` (http_proxy or https_proxy, following the URL)."""
    result = await curl(proxy, "-i", *args, url, https=url.startswith("https:"))
    assert result.returncode == 0, result.stderr
    raw = result.stdout
    if raw.startswith(b"HTTP/1.1 200 Connection established"):  # curl -i shows the CONNECT too
        raw = raw.split(b"\r\n\r\n", 1)[1]
    # The body may be compressed bytes that contain CRLFCRLF: split at the first one only.
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    fields = (line.split(":", 1) for line in lines)
    headers = {name.lower(): value.strip() for name, value in fields}
    return Reply(int(status_line.split()[1]), headers, body)


def echoed_headers(reply: Reply) -> dict[str, str]:
    """The request headers the origin's /echo saw, names lower-cased."""
    return {name.lower(): value for name, value in reply.json()["headers"]}


class SilentHost:
    """A listening port nobody should connect to: it never accepts, so the kernel's accept
    queue tells afterwards, without any waiting, whether a connection was made."""

    def __init__(self) -> None:
        self.socket = socket.socket()
        self.socket.bind(("127.0.0.1", 0))
        self.socket.listen()
        self.socket.setblocking(False)
        self.port: int = self.socket.getsockname()[1]

    def connections(self) -> int:
        count = 0
        while True:
            try:
                accepted, _ = self.socket.accept()
            except BlockingIOError:
                return count
            accepted.close()
            count += 1


@pytest.fixture
def silent_host() -> Iterator[SilentHost]:
    host = SilentHost()
    yield host
    host.socket.close()


# --- rewrite_query.py --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "rewritten"),
    [
        ("q=cybersecurity&page=2", "q=SEED+Labs&page=2"),
        ("query=Cybersecurity+news", "query=SEED+Labs+news"),
        ("search=cybersecurity", "search=SEED+Labs"),
    ],
)
async def test_rewrite_query_over_https(
    scripted: Proxy, origin: Origin, query: str, rewritten: str
) -> None:
    reply = await fetch(scripted, origin.url(f"/echo?{query}"))
    assert reply.json()["target"] == f"/echo?{rewritten}"


async def test_rewrite_query_over_http(scripted: Proxy, plain_origin: Origin) -> None:
    reply = await fetch(scripted, plain_origin.url("/echo?q=cybersecurity", scheme="http"))
    assert reply.json()["target"] == "/echo?q=SEED+Labs"


@pytest.mark.parametrize(
    "query",
    [
        "q=gardening&x=a%20b",  # another word; re-encoding would have made %20 a "+"
        "q=cybersecurityx",  # not the whole word
        "tag=cybersecurity",  # not a search parameter
    ],
)
async def test_rewrite_query_leaves_other_queries_as_sent(
    scripted: Proxy, origin: Origin, query: str
) -> None:
    reply = await fetch(scripted, origin.url(f"/echo?{query}"))
    assert reply.json()["target"] == f"/echo?{query}"


async def test_without_the_script_the_origin_sees_the_original_query(
    proxy: Proxy, origin: Origin
) -> None:
    reply = await fetch(proxy, origin.url("/echo?q=cybersecurity"))
    assert reply.json()["target"] == "/echo?q=cybersecurity"


# --- headers.py --------------------------------------------------------------------------------

SENT_HEADERS = [
    "-A",
    "curl-test",
    "-H",
    "X-Forwarded-For: 10.1.2.3",
    "-H",
    "Via: 1.1 corporate-proxy",
    "-H",
    "X-Kept: 1",
]


async def test_headers_added_and_removed_over_https(scripted: Proxy, origin: Origin) -> None:
    cross_site = ["-H", "Referer: https://tracker.localhost/page"]
    seen = echoed_headers(await fetch(scripted, origin.url("/echo"), *SENT_HEADERS, *cross_site))
    assert seen["x-mitmlite"] == "1"
    assert seen["user-agent"] == "curl-test via-mitmlite"
    assert seen["x-kept"] == "1"
    assert not {"x-forwarded-for", "via", "referer"} & seen.keys()


async def test_headers_over_http_keep_a_same_site_referer(
    scripted: Proxy, plain_origin: Origin
) -> None:
    same_site = ["-H", "Referer: http://www.site.localhost/page"]
    url = plain_origin.url("/echo", scheme="http")
    seen = echoed_headers(await fetch(scripted, url, *SENT_HEADERS, *same_site))
    assert seen["referer"] == "http://www.site.localhost/page"
    assert (seen["x-mitmlite"], seen["x-kept"]) == ("1", "1")
    assert "x-forwarded-for" not in seen


async def test_without_the_script_headers_pass_as_sent(proxy: Proxy, origin: Origin) -> None:
    seen = echoed_headers(await fetch(proxy, origin.url("/echo"), *SENT_HEADERS))
    assert (seen["user-agent"], seen["x-forwarded-for"]) == ("curl-test", "10.1.2.3")
    assert "x-mitmlite" not in seen


# --- replace_html.py ---------------------------------------------------------------------------


async def test_replace_html_in_a_gzip_page(scripted: Proxy, origin: Origin) -> None:
    reply = await fetch(scripted, origin.url("/gzip"))
    assert reply.headers["content-encoding"] == "gzip"
    assert int(reply.headers["content-length"]) == len(reply.body)
    text = gzip.decompress(reply.body).decode()
    assert "compressed mitmlite " in text
    assert "hello" not in text


async def test_replace_html_in_a_brotli_page(scripted: Proxy, origin: Origin) -> None:
    reply = await fetch(scripted, origin.url("/html-br"))
    assert reply.headers["content-encoding"] == "br"
    assert int(reply.headers["content-length"]) == len(reply.body)
    text = brotli.decompress(reply.body).decode()
    assert text == HTML_PAGE.replace("hello", "mitmlite")  # the UTF-8 "Grüße" survives too


async def test_replace_html_over_http(scripted: Proxy, plain_origin: Origin) -> None:
    reply = await fetch(scripted, plain_origin.url("/html", scheme="http"))
    assert reply.body.decode() == HTML_PAGE.replace("hello", "mitmlite")


async def test_replace_html_leaves_other_types_alone(scripted: Proxy, origin: Origin) -> None:
    plain = await fetch(scripted, origin.url("/hello"))  # text/plain
    assert plain.body == b"origin /hello"
    data = await fetch(scripted, origin.url("/echo?word=hello"))  # application/json
    assert data.json()["target"] == "/echo?word=hello"


# --- block_hosts.py ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["blocked.localhost", "cdn.blocked.localhost", "ads1.localhost"])
async def test_blocked_host_gets_a_403_page_over_https(
    scripted: Proxy, origin: Origin, host: str
) -> None:
    reply = await fetch(scripted, origin.url("/page", host=host))
    assert reply.status == 403
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert f"blocked this request to <b>{host}</b>".encode() in reply.body
    assert origin.state.requests == []


async def test_blocked_host_is_not_contacted_over_http(
    scripted: Proxy, plain_origin: Origin
) -> None:
    url = plain_origin.url("/upload", host="blocked.localhost", scheme="http")
    reply = await fetch(scripted, url, "--data-binary", "x" * 100_000)
    assert reply.status == 403
    assert plain_origin.state.connections == 0


async def test_blocked_host_is_not_contacted_over_https(
    scripted: Proxy, silent_host: SilentHost
) -> None:
    reply = await fetch(scripted, f"https://blocked.localhost:{silent_host.port}/")
    assert reply.status == 403
    assert silent_host.connections() == 0


@pytest.mark.parametrize("host", ["a.localhost", "unblocked.localhost"])
async def test_other_hosts_are_not_blocked(
    scripted: Proxy, plain_origin: Origin, host: str
) -> None:
    # unblocked.localhost ends with "blocked.localhost" but is not a subdomain of it.
    reply = await fetch(scripted, plain_origin.url("/page", host=host, scheme="http"))
    assert (reply.status, reply.body) == (200, b"origin /page")


async def test_unblocked_host_reaches_its_origin_over_https(
    scripted: Proxy, origin: Origin
) -> None:
    reply = await fetch(scripted, origin.url("/page", host="a.localhost"))
    assert (reply.status, reply.body) == (200, b"origin /page")


# --- map_remote.py -----------------------------------------------------------------------------


async def test_mapped_host_goes_to_the_other_host_over_https(
    scripted: Proxy, origin: Origin
) -> None:
    # The origin's certificate does not name mapped.localhost: only a mapped request succeeds.
    reply = await fetch(scripted, origin.url("/echo?x=1", host="mapped.localhost"))
    assert reply.json()["target"] == "/echo?x=1"
    assert echoed_headers(reply)["host"] == f"b.localhost:{origin.port}"


async def test_mapped_host_goes_to_the_other_host_over_http(
    scripted: Proxy, plain_origin: Origin
) -> None:
    url = plain_origin.url("/echo", host="mapped.localhost", scheme="http")
    assert echoed_headers(await fetch(scripted, url))["host"] == f"b.localhost:{plain_origin.port}"


async def test_unmapped_host_goes_to_its_own_origin(scripted: Proxy, origin: Origin) -> None:
    reply = await fetch(scripted, origin.url("/echo", host="a.localhost"))
    assert echoed_headers(reply)["host"] == f"a.localhost:{origin.port}"


async def test_map_to_another_scheme_and_port(tmp_path: Path, plain_origin: Origin) -> None:
    # The target names the plain origin's port, known only now: this test needs its own proxy.
    settings = {"MITMLITE_MAP_REMOTE": f"api.localhost=http://127.0.0.1:{plain_origin.port}"}
    args = script_args("map_remote.py")
    mapper = await trio.to_thread.run_sync(start_with, tmp_path, settings, *args)
    try:
        for url in ("https://api.localhost/echo?x=1", "http://api.localhost/echo?x=1"):
            reply = await fetch(mapper, url)
            assert reply.json()["target"] == "/echo?x=1"
            assert echoed_headers(reply)["host"] == f"127.0.0.1:{plain_origin.port}"
        unmapped = await fetch(mapper, plain_origin.url("/echo", host="b.localhost", scheme="http"))
        assert echoed_headers(unmapped)["host"] == f"b.localhost:{plain_origin.port}"
    finally:
        mapper.stop()
    assert plain_origin.state.requests == ["/echo?x=1", "/echo?x=1", "/echo"]


# --- json_mock.py ------------------------------------------------------------------------------


async def test_json_mock_lists_creates_and_reads_over_https(
    scripted: Proxy, origin: Origin
) -> None:
    users = origin.url("/api/users", host="mock.localhost")
    listed = await fetch(scripted, users)
    assert listed.status == 200
    assert listed.headers["content-type"] == "application/json"
    assert {"id": 1, "name": "Ada Lovelace"} in listed.json()

    created = await fetch(scripted, users, "--json", '{"name": "Grace Hopper"}')
    assert created.status == 201
    user = created.json()
    assert user["name"] == "Grace Hopper"
    assert created.headers["location"] == f"/api/users/{user['id']}"

    read = await fetch(scripted, origin.url(created.headers["location"], host="mock.localhost"))
    assert (read.status, read.json()) == (200, user)
    assert user in (await fetch(scripted, users)).json()
    assert origin.state.requests == []


async def test_json_mock_unknown_id_is_a_json_404_over_http(
    scripted: Proxy, plain_origin: Origin
) -> None:
    url = plain_origin.url("/api/users/999", host="mock.localhost", scheme="http")
    reply = await fetch(scripted, url)
    assert (reply.status, reply.json()) == (404, {"error": "no user 999"})
    assert plain_origin.state.connections == 0


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("DELETE", "/api/users/1", "GET"), ("PUT", "/api/users", "GET, POST")],
)
async def test_json_mock_other_methods_are_405(
    scripted: Proxy, origin: Origin, method: str, path: str, allow: str
) -> None:
    reply = await fetch(scripted, origin.url(path, host="mock.localhost"), "-X", method)
    assert (reply.status, reply.headers["allow"]) == (405, allow)
    assert reply.json() == {"error": "method not allowed"}


async def test_json_mock_rejects_a_body_that_is_not_json(scripted: Proxy, origin: Origin) -> None:
    url = origin.url("/api/users", host="mock.localhost")
    reply = await fetch(scripted, url, "--data-binary", "name=Grace")
    assert reply.status == 400


async def test_json_mock_leaves_other_hosts_alone(scripted: Proxy, origin: Origin) -> None:
    reply = await fetch(scripted, origin.url("/api/users/1", host="a.localhost"))
    assert (reply.status, reply.body) == (200, b"origin /api/users/1")


# --- loading and reloading ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "reason"),
    [
        ("def request(flow)\n    pass\n", "SyntaxError: expected ':' (bad.py, line 1)"),
        ("import no_such_module_here\n", "ModuleNotFoundError: No module named"),
    ],
    ids=["syntax-error", "import-error"],
)
async def test_a_script_that_cannot_load_stops_the_start(
    scripted: Proxy, tmp_path: Path, source: str, reason: str
) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text(source)
    # The scripted proxy's home already holds a CA: no "created a new root CA" text on stderr.
    env = {**os.environ, "MITMLITE_HOME": str(scripted.home)}
    cmd = [sys.executable, "-m", "mitmlite", "--listen", "127.0.0.1:0", "-s", str(bad)]
    with trio.fail_after(20):
        done = await trio.run_process(
            cmd, capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    stderr = done.stderr.decode()
    assert done.returncode == 2, stderr
    (line,) = stderr.splitlines()
    assert line.startswith(f"mitmlite: error: cannot load script bad.py: {reason}")
    assert b"listening" not in done.stdout


async def test_an_edited_script_applies_to_the_next_request(
    tmp_path: Path, plain_origin: Origin
) -> None:
    # A copy, edited in place; the other examples run beside it with their defaults, which
    # proves they load as shipped and leave ordinary traffic alone.
    script = write(tmp_path / "rewrite_query.py", (SCRIPTS / "rewrite_query.py").read_text())
    others = script_args(*(name for name in EXAMPLES if name != "rewrite_query.py"))
    args = ["-s", str(script), *others]
    running = await trio.to_thread.run_sync(start_with, tmp_path / "home", {}, *args)
    url = plain_origin.url("/echo?q=cybersecurity", scheme="http")
    try:
        assert (await fetch(running, url)).json()["target"] == "/echo?q=SEED+Labs"
        write(script, script.read_text().replace('"SEED Labs"', '"live reload"'))
        assert (await fetch(running, url)).json()["target"] == "/echo?q=live+reload"
        assert running.process.poll() is None  # the same process: not restarted
    finally:
        running.stop()
    # Script failures are logged as "[hh:mm:ss] script <message>": there was none.
    assert "] script " not in running.log()
