"""``Idempotency-Key`` at the boundary: a POST with a key claims it, or replays the stored response.

The records themselves (claim, complete, release, expiry) are the ``idempotency`` room's; this
module decides which requests take part and what is kept: fields a route declares ``shown_once``
(an API key's value) are replaced by ``REDACTED`` in the stored response, so the database never
holds them, and a body declared ``secret_body`` is fingerprinted with a keyed digest.
"""

from __future__ import annotations

from datetime import timedelta

import msgspec
from litestar.types import HTTPScope

from ctrlplane.auth.providers import Principal
from ctrlplane.idempotency import service as records
from ctrlplane.idempotency.service import Claim, StoredResponse
from ctrlplane.web.context import AppServices
from ctrlplane.web.responses import Captured
from ctrlplane.web.scope import header

REDACTED = "<shown once; not replayed>"


async def claim(services: AppServices, scope: HTTPScope, principal: Principal, body: bytes) -> Claim | None:
    """The caller's claim on its ``Idempotency-Key``; ``None`` for a request without one, or not a POST."""
    key = header(scope, b"idempotency-key")
    if key is None or scope["method"] != "POST":
        return None
    settings = services.settings
    fingerprint = records.request_fingerprint(scope["method"], scope["path"], scope.get("query_string", b""), body)
    if scope["route_handler"].opt.get("secret_body"):
        # a plain hash of a body holding a secret would let a database copy confirm guesses
        fingerprint = services.vault.keyed_digest(fingerprint.encode())
    return await records.claim(
        services.db,
        scope=f"{principal.tenant_id or '-'}|{principal.kind}|{principal.subject}",
        key=records.validate_key(key),
        fingerprint=fingerprint,
        ttl=timedelta(seconds=settings.idempotency_ttl_seconds),
        lease=timedelta(seconds=settings.idempotency_lease_seconds),
    )


def replayed(stored: StoredResponse) -> Captured:
    """The stored response, to be sent again."""
    response = Captured()
    response.status = stored.status
    response.headers = [(b"content-type", (stored.content_type or "application/json").encode())]
    if stored.etag is not None:
        response.headers.append((b"etag", stored.etag.encode("latin-1")))
    response.body.extend(stored.body)
    return response


def redacted_fields(scope: HTTPScope) -> tuple[str, ...]:
    return tuple(scope["route_handler"].opt.get("shown_once", ()))


def stored(captured: Captured, redact: tuple[str, ...] = ()) -> StoredResponse:
    """The response as kept for replay; fields a route shows only once (an API key's value) are
    replaced, so the database never holds them."""
    body = bytes(captured.body)
    if redact and captured.status < 300:
        document = msgspec.json.decode(body)
        if isinstance(document, dict):
            for field in redact:
                if field in document:
                    document[field] = REDACTED
            body = msgspec.json.encode(document)
    return StoredResponse(
        status=captured.status, body=body, content_type=captured.content_type, etag=captured.header(b"etag")
    )
