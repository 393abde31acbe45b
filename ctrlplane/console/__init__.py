"""The web console: static pages at ``/console`` that talk only to the public ``/v1`` API with the
user's own credential (docs/console.md). The server holds no console state and no session: the
browser keeps the pasted key in ``sessionStorage`` and sends it as a bearer token, so the console
can do exactly what the API allows that credential and nothing more."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from litestar import Response, Router
from litestar.datastructures import CacheControlHeader
from litestar.static_files import create_static_files_router

STATIC = Path(__file__).parent / "static"

# Everything is served from here: no CDN, no inline script, no framing by another site.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'none'"
)


def _security_headers(response: Response[Any]) -> Response[Any]:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def console_router() -> Router:
    return create_static_files_router(
        path="/console",
        directories=[STATIC],
        html_mode=True,
        name="console",
        include_in_schema=False,
        cache_control=CacheControlHeader(no_cache=True),
        after_request=_security_headers,
    )
