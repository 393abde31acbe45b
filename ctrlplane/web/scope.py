"""What the request pipeline keeps on a request's ASGI scope: its ID, its caller, its rate-limit state.

Every module of ``ctrlplane/web/`` reads these through here, and so does the error mapping
(``errors.py``), which names the request ID in every error body.
"""

from __future__ import annotations

import re

from litestar.types import Scope

from ctrlplane.ids import new_id

REQUEST_ID_KEY = "ctrlplane.request_id"
PRINCIPAL_KEY = "ctrlplane.principal"
RATE_LIMIT_KEY = "ctrlplane.rate_limit"
CONFIRM_KEY = "ctrlplane.confirm"
"""A read's authentication still to pass before its answer leaves (``Authenticated.confirm``)."""
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")


def request_id_for(scope: Scope) -> str:
    existing = scope.get(REQUEST_ID_KEY)
    if existing:
        return str(existing)
    incoming = header(scope, b"x-request-id")
    request_id = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else new_id("req")
    scope[REQUEST_ID_KEY] = request_id  # type: ignore[literal-required]
    return request_id


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            try:
                return bytes(value).decode("latin-1")
            except UnicodeDecodeError:
                return None
    return None


def read_through(scope: Scope) -> bool:
    """The caller sent ``Cache-Control: no-cache``: its read skips the row cache (``rowcache.py``)."""
    value = header(scope, b"cache-control")
    return value is not None and "no-cache" in value.lower()
