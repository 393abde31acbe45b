"""Shared pieces of every controller: the request context dependency, list parameters, route options
and the error statuses each route documents in the OpenAPI document."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from litestar import Request
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import QueryParameter

from ctrlplane.errors import ErrorBody, InvalidInput
from ctrlplane.timeutil import as_utc
from ctrlplane.web.context import CONTEXT_KEY, RequestContext
from ctrlplane.web.pagination import DEFAULT_LIMIT, MAX_LIMIT

Moment = Annotated[
    str | None,
    QueryParameter(
        description="An RFC 3339 time, e.g. 2026-12-01T19:00:00Z",
        max_length=64,
        schema_extra={"format": "date-time"},
    ),
]


def parse_moment(raw: str | None, field: str) -> datetime | None:
    """A query parameter's RFC 3339 time, in UTC; 400 for anything else (Litestar's own datetime
    parsing would also take a bare number as a Unix time, which the document does not promise)."""
    if raw is None:
        return None
    try:
        moment = datetime.fromisoformat(raw.strip())
    except ValueError as exc:
        raise InvalidInput(
            f"{field} must be an RFC 3339 time such as 2026-12-01T19:00:00Z", details={field: raw[:64]}
        ) from exc
    if moment.tzinfo is None:
        raise InvalidInput(f"{field} needs a time zone (Z or +hh:mm)", details={field: raw[:64]})
    return as_utc(moment, field)


Cursor = Annotated[str | None, QueryParameter(description="Opaque cursor from the previous page's next_cursor")]
Limit = Annotated[int, QueryParameter(ge=1, le=MAX_LIMIT, description=f"Page size, 1 to {MAX_LIMIT}")]
DEFAULT_PAGE = DEFAULT_LIMIT
ApiRequest = Request[Any, Any, Any]

_DESCRIPTIONS = {
    400: "Invalid input; details name each field",
    401: "Missing, malformed, expired or revoked credentials",
    403: "Not allowed: role, tenant, suspension or quota (code says which)",
    404: "No such object in your tenant",
    409: "Conflict with existing data or with the object's state",
    412: "If-Match names an older version",
    413: "Request body over the size limit",
    422: "Idempotency-Key reused with a different request",
    429: "Rate limited",
    503: "Database or provider unavailable",
}


def context_of(request: ApiRequest) -> RequestContext:
    """The request's context, which the unit of work put in its scope. Handlers take the request
    and ask for it rather than have Litestar inject it: resolving a dependency (its signature
    model, its cleanup group) was a tenth of a cached GET's time (docs/benchmarks.md)."""
    context: RequestContext = request.scope[CONTEXT_KEY]  # type: ignore[literal-required]
    return context


def errors(*statuses: int, mutating: bool = False) -> dict[int, ResponseSpec]:
    codes = {400, 401, 403, 429, 503, *statuses}
    if mutating:
        codes |= {409, 413, 422}
    return {
        code: ResponseSpec(data_container=ErrorBody, description=_DESCRIPTIONS[code], generate_examples=False)
        for code in sorted(codes)
    }


def route(
    resource: str,
    action: str,
    *,
    role: str | None = None,
    system_admin: bool = False,
    shown_once: tuple[str, ...] = (),
    secret_body: bool = False,
) -> dict[str, Any]:
    """Route options read by the request boundary: audit naming, the role required (default: read
    for GET, deploy otherwise; "any" for none), response fields never stored for replay, and
    whether the request body carries a secret (its Idempotency-Key fingerprint is then keyed)."""
    return {
        "resource": resource,
        "action": action,
        "role": role,
        "system_admin": system_admin,
        "shown_once": shown_once,
        "secret_body": secret_body,
    }
