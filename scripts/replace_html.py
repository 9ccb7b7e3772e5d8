"""Replace text in HTML pages, compressed (gzip, br, zstd, deflate) or not.

Usage: mitmlite -s scripts/replace_html.py
"""

from __future__ import annotations

import os

from mitmlite.flow import Flow


def _pairs(spec: str) -> dict[str, str]:
    # "old=new,old2=new2": neither side can contain "," or "="; edit REPLACE for those.
    pairs = (item.split("=", 1) for item in spec.split(",") if "=" in item)
    return {old: new for old, new in pairs if old}


# Each key is replaced by its value, in this order. MITMLITE_HTML_REPLACE="old=new,..." replaces
# the whole table.
REPLACE = _pairs(os.environ.get("MITMLITE_HTML_REPLACE", "")) or {
    "Example Domain": "Example Domain (seen by mitmlite)",
}


def response(flow: Flow) -> None:
    response = flow.response
    if response is None:
        return
    content_type = response.headers.get("Content-Type", "")
    # Only HTML: the same bytes in JSON, JavaScript or an image must reach the client unchanged.
    if content_type.split(";")[0].strip().lower() != "text/html":
        return
    # A body larger than --max-body-size was streamed to the client before this hook ran
    # (raw_content is None): there is nothing left to change.
    if response.raw_content is None:
        return
    # .text undoes Content-Encoding and decodes with the page's charset; assigning it encodes
    # both back and fixes Content-Length. A body that cannot be decoded raises, and the proxy
    # then logs the error and relays the original bytes.
    text = response.text or ""
    new = text
    for old, replacement in REPLACE.items():
        new = new.replace(old, replacement)
    # Assign only on a change: re-compressing costs time, and an empty body (HEAD, 304) must
    # keep the Content-Length of the page it describes.
    if new != text:
        response.text = new
