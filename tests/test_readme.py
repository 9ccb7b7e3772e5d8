"""The README's hook example is a real script: it loads and does what the README says."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from mitmlite.flow import ClientInfo, Flow, Headers, Request, Response
from mitmlite.hooks import HookRunner
from mitmlite.scripts import Scripts
from tests.scripting import isolated_imports  # noqa: F401 - autouse fixture

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture
def runner(tmp_path: Path) -> HookRunner:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.DOTALL)
    example = next(block for block in blocks if "mitmlite -s rewrite.py" in block)
    path = tmp_path / "rewrite.py"
    path.write_text(example)
    reports: list[str] = []
    scripts = Scripts([path], reports.append)
    scripts.load()
    return HookRunner(scripts, reports.append)


def flow(host: str, path: str) -> Flow:
    return Flow(Request("GET", "https", host, 443, path), ClientInfo("127.0.0.1:1"))


async def test_readme_example_blocks_and_rewrites_the_query(runner: HookRunner) -> None:
    blocked = flow("ads.example.com", "/")
    await runner.run("request", blocked)
    assert blocked.response is not None
    assert blocked.response.status_code == 403
    search = flow("search.test", "/s?q=cybersecurity")
    await runner.run("request", search)
    assert search.request.path == "/s?q=SEED+Labs"
    assert search.response is None


async def test_readme_example_rewrites_compressed_html(runner: HookRunner) -> None:
    page = flow("example.org", "/")
    page.response = Response(
        200,
        headers=Headers({"content-type": "text/html", "content-encoding": "gzip"}),
        raw_content=gzip.compress(b"<h1>Example Domain</h1>"),
    )
    await runner.run("response", page)
    assert gzip.decompress(page.response.raw_content or b"") == b"<h1>Exemplary Domain</h1>"
    other = flow("example.org", "/data")
    other.response = Response(200, headers=Headers({"content-type": "application/json"}),
                              raw_content=b'{"Example": 1}')  # fmt: skip
    await runner.run("response", other)
    assert other.response.raw_content == b'{"Example": 1}'
