"""Limits every request meets before anything parses it: JSON nesting depth, header sizes, and the
size of a gzip'd body once inflated.

A decoder recursing into a 1,000-level document runs out of stack (a 500, or worse); a header of
100 KiB is no credential; a 1 MiB gzip body may inflate to 1 GiB. All are refused early, as
ctrlplane's JSON errors, on every route (the OTLP receiver included), so no handler ever sees such
input.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable

from ctrlplane.errors import HeaderTooLarge, InvalidInput, PayloadTooLarge

MAX_JSON_DEPTH = 64
"""Deepest nesting of arrays and objects a request body may have (OTLP exports need about 12)."""
MAX_HEADER_BYTES = 8192
"""Largest single request header value (a JWT signed with RSA-4096 is under 2 KiB)."""
MAX_HEADERS_TOTAL_BYTES = 32768

_JSON_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


def check_json_depth(body: bytes, limit: int = MAX_JSON_DEPTH) -> None:
    """400 when ``body`` nests arrays/objects deeper than ``limit`` (brackets inside strings do not
    count). Bodies with no more brackets than the limit cannot be too deep and are not scanned."""
    if body.count(b"[") + body.count(b"{") <= limit:
        return
    depth = 0
    for token in _JSON_TOKENS.finditer(body):
        char = token.group()[:1]
        if char in (b"[", b"{"):
            depth += 1
            if depth > limit:
                raise InvalidInput(
                    f"the JSON body nests deeper than {limit} levels",
                    details={"body": f"nesting deeper than {limit} levels"},
                )
        elif char in (b"]", b"}"):
            depth -= 1


def check_headers(headers: Iterable[tuple[bytes, bytes]]) -> None:
    """431 when one header value, or all headers together, pass the limits; the message names the
    header, never its value."""
    total = 0
    for name, value in headers:
        total += len(name) + len(value)
        if len(value) > MAX_HEADER_BYTES:
            shown = name.decode("latin-1")[:64]
            raise HeaderTooLarge(
                f"header {shown} is larger than {MAX_HEADER_BYTES} bytes",
                details={"header": shown, "limit": MAX_HEADER_BYTES},
            )
    if total > MAX_HEADERS_TOTAL_BYTES:
        raise HeaderTooLarge(
            f"the request headers are larger than {MAX_HEADERS_TOTAL_BYTES} bytes together",
            details={"limit": MAX_HEADERS_TOTAL_BYTES},
        )


def decompress(body: bytes, encoding: str | None, limit: int, *, what: str = "the body") -> bytes:
    """``body``, gunzipped when ``Content-Encoding: gzip``; 413 past ``limit`` bytes (decompressed:
    inflation stops one byte past the limit, so a small gzip bomb costs nothing), 400 for another
    encoding or a body that is not (whole) gzip."""
    encoding = (encoding or "identity").strip().lower()
    if encoding == "identity":
        if len(body) > limit:
            raise PayloadTooLarge(f"{what} is over {limit} bytes", details={"limit": limit})
        return body
    if encoding != "gzip":
        raise InvalidInput("Content-Encoding must be gzip or identity", details={"Content-Encoding": encoding[:64]})
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(body, limit + 1)
    except zlib.error:
        raise InvalidInput(f"{what} is not valid gzip", details={"body": "not gzip"}) from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise PayloadTooLarge(f"{what} is over {limit} bytes decompressed", details={"limit": limit})
    if not inflater.eof:
        raise InvalidInput(f"{what} is truncated gzip", details={"body": "truncated gzip"})
    return out
