"""Headless Chromium through mitmlite: a page on one intercepted host pulling from three others.

Chromium trusts only what the throwaway NSS db under a temporary HOME holds, which is the mitmlite
CA and never the origin's test CA, so a page that renders proves it came through the proxy.
``--proxy-bypass-list=<-loopback>`` is needed: Chromium otherwise sends loopback and ``*.localhost``
straight to the (untrusted) origin.
"""

from __future__ import annotations

import os
import ssl
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import h11
import pytest
import trio

from tests.e2e.conftest import OriginCerts, Proxy, Result, require

pytestmark = pytest.mark.e2e

CHROMIUM_SECONDS = 60
MARKERS = ("script ran on site.localhost", "image loaded 3x2", "fetched: hello from c.localhost")


def png(width: int, height: int) -> bytes:
    """A solid red RGB PNG (enough of the format for a browser to decode and size it)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>mitmlite e2e</title></head>
<body>
<p id="script">script pending</p>
<p id="image">image pending</p>
<p id="fetch">fetch pending</p>
<img src="https://b.localhost:{port}/pixel.png" alt=""
     onload="document.getElementById('image').textContent =
             'image loaded ' + this.naturalWidth + 'x' + this.naturalHeight"
     onerror="document.getElementById('image').textContent = 'image failed'">
<script src="https://a.localhost:{port}/app.js"></script>
<script>
fetch("https://c.localhost:{port}/data")
  .then((r) => r.text())
  .then((t) => {{ document.getElementById("fetch").textContent = "fetched: " + t; }},
        (e) => {{ document.getElementById("fetch").textContent = "fetch failed: " + e; }});
</script>
</body></html>
"""

SCRIPT = b"document.getElementById('script').textContent = 'script ran on ' + location.hostname;\n"


@dataclass
class PageOrigin:
    """An HTTPS origin serving one page and its subresources, by Host header."""

    port: int = 0
    requests: list[tuple[str, str]] = field(default_factory=list)

    def route(self, host: str, target: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        if (host, target) == ("site.localhost", "/page"):
            return 200, [(b"Content-Type", b"text/html; charset=utf-8")], self.page()
        if (host, target) == ("a.localhost", "/app.js"):
            return 200, [(b"Content-Type", b"text/javascript")], SCRIPT
        if (host, target) == ("b.localhost", "/pixel.png"):
            return 200, [(b"Content-Type", b"image/png")], png(3, 2)
        if (host, target) == ("c.localhost", "/data"):
            cors = (b"Access-Control-Allow-Origin", b"*")
            return 200, [(b"Content-Type", b"text/plain"), cors], b"hello from c.localhost"
        return 404, [(b"Content-Type", b"text/plain")], b"not here"

    def page(self) -> bytes:
        return PAGE.format(port=self.port).encode()

    async def serve(self, stream: trio.abc.Stream) -> None:
        conn = h11.Connection(h11.SERVER)
        try:
            while True:
                event = conn.next_event()
                if event is h11.NEED_DATA:
                    conn.receive_data(bytes(await stream.receive_some(65536)))
                    continue
                if isinstance(event, h11.Request):
                    host = dict(event.headers).get(b"host", b"").decode().rsplit(":", 1)[0]
                    target = event.target.decode()
                    self.requests.append((host, target))
                    status, headers, body = self.route(host, target)
                    headers.append((b"Content-Length", str(len(body)).encode()))
                    data = conn.send(h11.Response(status_code=status, headers=headers))
                    await stream.send_all((data or b"") + (conn.send(h11.Data(data=body)) or b""))
                elif isinstance(event, h11.EndOfMessage):
                    await stream.send_all(conn.send(h11.EndOfMessage()) or b"")
                    if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                        return
                    conn.start_next_cycle()
                elif not isinstance(event, h11.Data):
                    return
        except (trio.BrokenResourceError, trio.ClosedResourceError, h11.ProtocolError):
            pass
        finally:
            await trio.aclose_forcefully(stream)


async def serve_pages(
    origin: PageOrigin,
    tls: ssl.SSLContext,
    *,
    task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED,
) -> None:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    origin.port = listeners[0].socket.getsockname()[1]

    async def handler(stream: trio.SocketStream) -> None:
        ssl_stream = trio.SSLStream(stream, tls, server_side=True, https_compatible=True)
        try:
            await ssl_stream.do_handshake()
        except trio.BrokenResourceError:
            await trio.aclose_forcefully(stream)
            return
        await origin.serve(ssl_stream)

    task_status.started(origin.port)
    await trio.serve_listeners(handler, listeners)


@pytest.fixture
async def pages(nursery: trio.Nursery, origin_certs: OriginCerts) -> PageOrigin:
    origin = PageOrigin()
    await nursery.start(serve_pages, origin, origin_certs.good)
    return origin


async def make_home(directory: Path, ca: Path | None) -> Path:
    """A HOME whose NSS db (where Chromium on Linux looks for trust) holds ``ca`` or nothing."""
    certutil = require("certutil")
    nssdb = directory / ".pki" / "nssdb"
    nssdb.mkdir(parents=True)
    db = f"sql:{nssdb}"
    await trio.run_process([certutil, "-d", db, "-N", "--empty-password"], capture_stdout=True)
    if ca is not None:
        add = [certutil, "-d", db, "-A", "-t", "C,,", "-n", "mitmlite", "-i", str(ca)]
        await trio.run_process(add, capture_stdout=True)
        listed = await trio.run_process([certutil, "-d", db, "-L"], capture_stdout=True)
        assert b"mitmlite" in listed.stdout
    return directory


async def dump_dom(proxy: Proxy, home: Path, profile: Path, url: str) -> Result:
    chromium = require("chromium")
    cmd = [
        chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--disable-dev-shm-usage", f"--user-data-dir={profile}",
        f"--proxy-server={proxy.url}", "--proxy-bypass-list=<-loopback>",
        "--virtual-time-budget=5000", "--dump-dom", url,
    ]  # fmt: skip
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env["HOME"] = str(home)
    with trio.fail_after(CHROMIUM_SECONDS):
        done = await trio.run_process(
            cmd, capture_stdout=True, capture_stderr=True, check=False, env=env
        )
    return Result(done.returncode, done.stdout, done.stderr.decode(errors="replace"))


async def test_chromium_renders_a_page_from_four_intercepted_hosts(
    proxy: Proxy, pages: PageOrigin, tmp_path: Path
) -> None:
    home = await make_home(tmp_path / "home", proxy.ca_path)
    result = await dump_dom(
        proxy, home, tmp_path / "profile", f"https://site.localhost:{pages.port}/page"
    )
    dom = result.stdout.decode(errors="replace")
    assert result.returncode == 0, result.stderr
    for marker in MARKERS:
        assert marker in dom, f"{marker!r} missing from:\n{dom}\n{result.stderr}"
    assert "ERR_CERT" not in result.stderr
    assert "handshake failed" not in result.stderr
    assert set(pages.requests) >= {
        ("site.localhost", "/page"),
        ("a.localhost", "/app.js"),
        ("b.localhost", "/pixel.png"),
        ("c.localhost", "/data"),
    }
    for host, path in [("site", "/page"), ("a", "/app.js"), ("b", "/pixel.png"), ("c", "/data")]:
        # One flow line per subresource: the proxy relayed each of them.
        await proxy.wait_for_log(f"GET https://{host}.localhost:{pages.port}{path} -> 200 ")


async def test_chromium_without_the_ca_gets_a_certificate_error(
    proxy: Proxy, pages: PageOrigin, tmp_path: Path
) -> None:
    home = await make_home(tmp_path / "home", None)
    result = await dump_dom(
        proxy, home, tmp_path / "profile", f"https://site.localhost:{pages.port}/page"
    )
    dom = result.stdout.decode(errors="replace")
    for marker in MARKERS:
        assert marker not in dom
    # Older builds log the name, newer ones the number (-202 is ERR_CERT_AUTHORITY_INVALID in
    # Chromium's net_error_list.h).
    assert "ERR_CERT_AUTHORITY_INVALID" in result.stderr or "net_error -202" in result.stderr
    assert pages.requests == []
    await proxy.wait_for_log("client does not trust the mitmlite CA for site.localhost")
