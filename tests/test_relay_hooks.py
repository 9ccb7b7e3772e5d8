"""The relay with hook scripts: the four seams, local answers, kill, re-targeting, buffering.

Scripts are real files in the test's directory, loaded by ``Scripts`` and run by ``HookRunner``;
the client is h11 over a memory stream and the origin is tests/origin.py, as in test_relay.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h11
import pytest
import trio
import trio.testing

from mitmlite.config import Config, Limits
from mitmlite.errors import UpstreamError
from mitmlite.hooks import HookRunner
from mitmlite.relay import Relay, RelayEnv
from mitmlite.scripts import Scripts
from mitmlite.upstream import Destination
from tests.fakes import MemoryConnector, Sink
from tests.origin import OriginState, pattern_bytes
from tests.scripting import isolated_imports, write  # noqa: F401 - autouse fixture
from tests.test_relay import SITE, Client, Harness


@dataclass
class HookHarness(Harness):
    scripts: Scripts
    reports: list[str]

    def module(self, name: str) -> Any:
        return getattr(self.scripts.scripts[0].module, name)


def load(tmp_path: Path, source: str) -> tuple[Scripts, HookRunner, list[str]]:
    reports: list[str] = []
    scripts = Scripts([write(tmp_path / "hooks.py", source)], reports.append)
    scripts.load()
    return scripts, HookRunner(scripts, reports.append), reports


async def start(
    nursery: trio.Nursery,
    tmp_path: Path,
    source: str,
    *,
    config: Config | None = None,
    loaded: tuple[Scripts, HookRunner, list[str]] | None = None,
) -> HookHarness:
    """A relay for the intercepted origin SITE whose env runs the hooks in ``source``."""
    origin = OriginState()
    connector = MemoryConnector(nursery, origin)
    sink = Sink()
    scripts, hooks, reports = loaded or load(tmp_path, source)
    env = RelayEnv(config or Config(), connector, sink, hooks)
    client_end, proxy_end = trio.testing.memory_stream_pair()
    result: list[h11.Request | None] = []

    async def run() -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            result.append(await Relay(env, proxy_end, conn, "test", SITE).run())
        finally:
            await proxy_end.aclose()

    nursery.start_soon(run)
    client = Client(client_end)
    return HookHarness(client, client_end, connector, sink, origin, result, scripts, reports)


async def post(client: Client, target: bytes, body: bytes, chunked: bool = False) -> None:
    framing = (
        (b"Transfer-Encoding", b"chunked") if chunked else (b"Content-Length", b"%d" % len(body))
    )
    headers = [(b"Host", b"site.test"), framing]
    await client.send(h11.Request(method="POST", target=target, headers=headers))
    for start in range(0, len(body), 40_000):
        await client.send(h11.Data(data=body[start : start + 40_000]))
    await client.send(h11.EndOfMessage())


def echoed(body: bytes) -> dict[str, object]:
    info = json.loads(body)
    assert isinstance(info, dict)
    return info


def header(head: h11.Response, name: bytes) -> bytes | None:
    return next((v for n, v in head.headers.raw_items() if n.lower() == name), None)


# --- requests --------------------------------------------------------------------------------

QUERY_REWRITE = """
    def request(flow):
        if flow.request.query.get("q") == "cybersecurity":
            flow.request.query["q"] = "SEED Labs"
"""


async def test_request_hook_rewrites_the_query(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start(nursery, tmp_path, QUERY_REWRITE)
    _, body = await relay.client.get(b"/echo?q=cybersecurity&page=2")
    assert echoed(body)["target"] == "/echo?q=SEED+Labs&page=2"
    assert (await relay.flows())[0].url == "https://site.test/echo?q=SEED+Labs&page=2"


async def test_other_queries_pass_untouched(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start(nursery, tmp_path, QUERY_REWRITE)
    _, body = await relay.client.get(b"/echo?q=gardening&x=%2F")
    assert echoed(body)["target"] == "/echo?q=gardening&x=%2F"


async def test_requestheaders_adds_and_removes_headers(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def requestheaders(flow):
            flow.request.headers["X-Added"] = "yes"
            del flow.request.headers["X-Secret"]
        """,
    )
    _, body = await relay.client.get(b"/echo", [(b"X-Secret", b"s3cret"), (b"X-Kept", b"1")])
    headers = [tuple(h) for h in echoed(body)["headers"]]  # type: ignore[attr-defined]
    assert ("X-Added", "yes") in headers
    assert ("X-Kept", "1") in headers
    assert not any(name.lower() == "x-secret" for name, _ in headers)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
async def test_request_body_is_buffered_rewritten_and_reframed(
    nursery: trio.Nursery, tmp_path: Path, chunked: bool
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def request(flow):
            flow.request.content = flow.request.content.replace(b"a", b"bb")
        """,
    )
    await post(relay.client, b"/echo", b"a" * 100_000, chunked=chunked)
    _, body, _ = await relay.client.response()
    info = echoed(body)
    assert info["body_length"] == 200_000
    assert info["body_sha256"] == hashlib.sha256(b"b" * 200_000).hexdigest()
    headers = {n.lower(): v for n, v in info["headers"]}  # type: ignore[attr-defined]
    assert headers["content-length"] == "200000"
    assert "transfer-encoding" not in headers


async def test_request_body_over_the_limit_streams_and_the_hook_sees_it_streamed(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = Config(limits=Limits(max_body_bytes=50_000))
    relay = await start(
        nursery,
        tmp_path,
        """
        seen = []
        def request(flow):
            seen.append((flow.request.stream, flow.request.raw_content))
            flow.request.content = b"too late"
        """,
        config=config,
    )
    payload = pattern_bytes(300_000)
    await post(relay.client, b"/echo", payload)
    _, body, _ = await relay.client.response()
    assert echoed(body)["body_sha256"] == hashlib.sha256(payload).hexdigest()
    assert relay.module("seen") == [(True, None)]
    assert relay.reports == []


async def test_request_stream_transform_rewrites_each_chunk(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def requestheaders(flow):
            flow.request.stream = lambda chunk: chunk.upper()
        """,
    )
    await post(relay.client, b"/echo", b"abc" * 50_000)
    _, body, _ = await relay.client.response()
    info = echoed(body)
    assert info["body_sha256"] == hashlib.sha256(b"ABC" * 50_000).hexdigest()
    headers = {n.lower(): v for n, v in info["headers"]}  # type: ignore[attr-defined]
    assert headers["transfer-encoding"] == "chunked"
    assert "content-length" not in headers


# --- answering locally, killing, re-targeting -----------------------------------------------

LOCAL_ANSWER = """
    from mitmlite.flow import Response
    calls = []
    def request(flow):
        if flow.request.host == "blocked.test" or flow.request.path == "/blocked":
            flow.response = Response.make(403, "blocked by mitmlite", {"X-Why": "policy"})
    def response(flow):
        calls.append(flow.response.status_code)
"""


async def test_local_answer_never_contacts_the_upstream(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(nursery, tmp_path, LOCAL_ANSWER)
    head, body = await relay.client.get(b"/blocked")
    assert (head.status_code, body) == (403, b"blocked by mitmlite")
    assert header(head, b"x-why") == b"policy"
    assert header(head, b"content-length") == b"19"
    assert relay.origin.connections == 0
    head, body = await relay.client.get(b"/open")  # the client connection is still good
    assert (head.status_code, body) == (200, b"origin /open")
    assert relay.origin.connections == 1
    assert [f.status for f in await relay.flows()] == [403, 200]
    assert relay.module("calls") == [403, 200]


async def test_local_answer_reads_the_request_body_so_the_connection_lives_on(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(nursery, tmp_path, LOCAL_ANSWER)
    await post(relay.client, b"/blocked", b"x" * 100_000)
    head, _, _ = await relay.client.response()
    assert head.status_code == 403
    relay.client.conn.start_next_cycle()
    head, body = await relay.client.get(b"/next")
    assert (head.status_code, body) == (200, b"origin /next")


KILL = """
    errors = []
    def requestheaders(flow):
        if flow.request.path == "/kill":
            flow.kill()
    def error(flow):
        errors.append(flow.error)
"""


async def test_kill_closes_the_client_without_an_answer(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(nursery, tmp_path, KILL)
    await relay.client.send(
        h11.Request(method="GET", target="/kill", headers=[(b"Host", b"site.test")]),
        h11.EndOfMessage(),
    )
    assert await relay.raw.receive_some(100) == b""
    assert relay.origin.connections == 0
    flows = await relay.flows()
    assert flows[0].error is not None
    assert "killed" in flows[0].error
    assert relay.module("errors") == ["killed by a script in its requestheaders hook"]


async def test_flows_not_killed_are_answered(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start(nursery, tmp_path, KILL)
    head, body = await relay.client.get(b"/alive")
    assert (head.status_code, body) == (200, b"origin /alive")


async def test_changing_the_url_retargets_host_port_and_scheme(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def request(flow):
            if flow.request.host == "site.test":
                flow.request.url = "http://mirror.test:8080" + flow.request.path + "&y=2"
        """,
    )
    _, body = await relay.client.get(b"/echo?x=1")
    info = echoed(body)
    assert info["target"] == "/echo?x=1&y=2"
    headers = {n.lower(): v for n, v in info["headers"]}  # type: ignore[attr-defined]
    assert headers["host"] == "mirror.test:8080"
    assert relay.connector.dests == [Destination("mirror.test", 8080, tls=False)]


async def test_same_host_keeps_the_clients_server_name(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def request(flow):
            flow.request.path = "/elsewhere"
        """,
    )
    _, body = await relay.client.get(b"/somewhere")
    assert body == b"origin /elsewhere"
    assert relay.connector.dests == [SITE]


# --- responses -------------------------------------------------------------------------------

REPLACE_HTML = """
    def response(flow):
        if "text/html" in flow.response.headers.get("content-type", ""):
            flow.response.text = flow.response.text.replace("hello", "mitmlite")
"""


async def test_response_hook_rewrites_a_gzip_body(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start(nursery, tmp_path, REPLACE_HTML)
    head, body = await relay.client.get(b"/gzip")
    assert header(head, b"content-encoding") == b"gzip"
    assert header(head, b"content-length") == str(len(body)).encode()
    text = gzip.decompress(body).decode()
    assert "compressed mitmlite" in text
    assert "hello" not in text


async def test_corrupt_gzip_is_relayed_as_is_and_the_hook_error_logged(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def requestheaders(flow):
            flow.request.path = "/echo"
        def responseheaders(flow):
            flow.response.headers["content-type"] = "text/html"
            flow.response.headers["content-encoding"] = "gzip"
        def response(flow):
            flow.response.text = flow.response.text.replace("hello", "mitmlite")
        """,
    )
    head, body = await relay.client.get(b"/x")
    assert head.status_code == 200
    assert echoed(body)["target"] == "/echo"  # the raw bytes, untouched
    (report,) = relay.reports
    assert "error in hook response of hooks.py for GET https://site.test/echo" in report
    assert "gzip" in report


async def test_response_over_the_limit_streams_and_the_hook_runs_after(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    config = Config(limits=Limits(max_body_bytes=100_000))
    relay = await start(
        nursery,
        tmp_path,
        """
        seen = []
        def response(flow):
            seen.append((flow.response.stream, flow.response.raw_content))
        """,
        config=config,
    )
    head, body = await relay.client.get(b"/bytes/1000000")
    assert header(head, b"content-length") == b"1000000"
    assert hashlib.sha256(body).digest() == hashlib.sha256(pattern_bytes(1_000_000)).digest()
    assert relay.module("seen") == [(True, None)]
    assert relay.reports == []


async def test_event_stream_is_never_buffered(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start(nursery, tmp_path, "def response(flow):\n    pass\n")
    await relay.client.send(
        h11.Request(method="GET", target="/sse", headers=[(b"Host", b"site.test")]),
        h11.EndOfMessage(),
    )
    head = await relay.client.next_event()
    assert isinstance(head, h11.Response)
    first = await relay.client.next_event()  # arrives while the origin still holds the rest
    assert isinstance(first, h11.Data)
    assert first.data == b"data: first\n\n"
    relay.origin.release.set()
    second = await relay.client.next_event()
    assert isinstance(second, h11.Data)
    assert second.data == b"data: second\n\n"


async def test_response_stream_transform_rewrites_chunks(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def responseheaders(flow):
            flow.response.stream = lambda chunk: chunk.replace(b"a", b"A")
        """,
    )
    head, body = await relay.client.get(b"/bytes/100000")
    assert header(head, b"transfer-encoding") == b"chunked"
    assert header(head, b"content-length") is None
    assert body == pattern_bytes(100_000).replace(b"a", b"A")


async def test_head_response_keeps_its_content_length(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(nursery, tmp_path, "def response(flow):\n    pass\n")
    await relay.client.send(
        h11.Request(method="HEAD", target="/bytes/100", headers=[(b"Host", b"site.test")]),
        h11.EndOfMessage(),
    )
    head, body, _ = await relay.client.response()
    assert (head.status_code, body, header(head, b"content-length")) == (200, b"", b"100")
    relay.client.conn.start_next_cycle()
    head, body = await relay.client.get(b"/status/204")
    assert (head.status_code, body) == (204, b"")
    head, body = await relay.client.get(b"/after")
    assert body == b"origin /after"


async def test_responseheaders_can_replace_the_response(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        from mitmlite.flow import Response
        def responseheaders(flow):
            if flow.request.path == "/bytes/500000":
                flow.response = Response.make(200, {"replaced": True})
        """,
    )
    head, body = await relay.client.get(b"/bytes/500000")
    assert json.loads(body) == {"replaced": True}
    assert header(head, b"content-type") == b"application/json"
    head, body = await relay.client.get(b"/next")
    assert body == b"origin /next"


# --- failures --------------------------------------------------------------------------------


async def test_upstream_failure_runs_the_error_hook_not_response(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        import sys
        def response(flow):
            print("response", file=sys.stderr)
            raise AssertionError("response hook must not run")
        def error(flow):
            raise RuntimeError("error hook saw: " + flow.error)
        """,
    )
    relay.connector.fail_with = UpstreamError("cannot connect to site.test:443: refused")
    head, _body = await relay.client.get(b"/x")
    assert head.status_code == 502
    (report,) = relay.reports
    assert "error hook saw: cannot connect to site.test:443: refused" in report


async def test_a_raising_hook_is_reported_and_the_flow_goes_on(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def request(flow):
            flow.request.headers["X-Before"] = "1"
            raise ValueError("boom")
        """,
    )
    _, body = await relay.client.get(b"/echo")
    headers = {n.lower(): v for n, v in echoed(body)["headers"]}  # type: ignore[attr-defined]
    assert headers["x-before"] == "1"
    (report,) = relay.reports
    assert "ValueError: boom" in report
    assert "hooks.py" in report


async def test_a_header_that_cannot_be_sent_is_a_500(nursery: trio.Nursery, tmp_path: Path) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def request(flow):
            flow.request.headers["X-Bad"] = "line\\r\\nInjected: 1"
        """,
    )
    head, body = await relay.client.get(b"/echo")
    assert head.status_code == 500
    assert b"cannot be sent" in body
    assert relay.origin.connections == 0


async def test_async_hook_that_waits_does_not_hold_other_connections(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    source = """
        import trio
        gate = trio.Event()
        async def request(flow):
            if flow.request.path == "/wait":
                await gate.wait()
            else:
                gate.set()
    """
    loaded = load(tmp_path, source)
    first = await start(nursery, tmp_path, source, loaded=loaded)
    await first.client.send(
        h11.Request(method="GET", target="/wait", headers=[(b"Host", b"site.test")]),
        h11.EndOfMessage(),
    )
    await trio.testing.wait_all_tasks_blocked()
    assert first.origin.requests == []  # held by its hook
    second = await start(nursery, tmp_path, source, loaded=loaded)
    _, body = await second.client.get(b"/go")  # the other connection is served meanwhile
    assert body == b"origin /go"
    head, _, _ = await first.client.response()  # and /go opened the gate for the first
    assert head.status_code == 200
    assert first.origin.requests == ["/wait"]


async def test_a_reason_phrase_with_a_newline_is_a_500_not_a_split_response(
    nursery: trio.Nursery, tmp_path: Path
) -> None:
    relay = await start(
        nursery,
        tmp_path,
        """
        def response(flow):
            flow.response.reason = "OK\\r\\nSet-Cookie: injected=1"
        """,
    )
    head, _body = await relay.client.get(b"/x")
    assert head.status_code == 500
    assert b"injected" not in b"".join(v for _, v in head.headers.raw_items())
