"""The domain error tree, and the one place it becomes HTTP.

Services raise these; nothing else picks status codes. Every error response has the body
``{"message", "code", "request_id"}`` plus ``details`` when there is more to say.
``as_domain_error`` maps every other exception onto the tree (framework validation errors, a lost
unique constraint, the database gone, a bug), and ``exception_to_response`` is the one exception
handler; the request pipeline (``ctrlplane/web/``) renders its own refusals with ``error_body``.

    CtrlplaneError
      InvalidInput          400 invalid_input      a body, query or path value is malformed (per-field details)
      Unauthenticated       401 unauthenticated    no token, or one that does not verify
      Forbidden             403 forbidden          authenticated, but not allowed
        TenantSuspended     403 tenant_suspended   the caller's tenant is suspended (reads still work)
        QuotaExceeded       403 quota_exceeded     the change would pass a quota (names quota, limit, used)
      NotFound              404 not_found          no such object in the caller's tenant
      Conflict              409 conflict           unique name taken, or an idempotent request still running
        InvalidState        409 invalid_state      the object's state does not allow the action
      PreconditionFailed    412 precondition_failed  If-Match names an older version
      PayloadTooLarge       413 payload_too_large
      UnsupportedMediaType  415 unsupported_media_type  a body in a Content-Type the route does not read
      HeaderTooLarge        431 header_too_large   a request header (or all of them) over the size limit
      IdempotencyMismatch   422 idempotency_key_reused  same Idempotency-Key, different request
      RateLimited           429 rate_limited
      Unavailable           503 unavailable        the database or a provider cannot be reached
        ProviderUnavailable 503 provider_unavailable   (also a ProviderError)
      ProviderError         502 provider_error     the runtime refused or failed a request

``ProviderError`` is the root of what a provider raises (``ctrlplane.provisioning.errors``: it,
``ProviderUnavailable``, ``ImageNotFound`` and ``WorkloadNotFound``), so a provider, which sees only
the provisioning contract, catches every provisioning error with it; each of these keeps the
status and code of its first base (``ProviderUnavailable`` is 503, not 502).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec
import structlog
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError

from ctrlplane.web.scope import request_id_for

log = structlog.get_logger("ctrlplane.http")


class ErrorBody(msgspec.Struct, omit_defaults=True):
    message: str
    code: str
    request_id: str
    details: dict[str, Any] | None = None


class CtrlplaneError(Exception):
    status: ClassVar[int] = 500
    code: ClassVar[str] = "internal_error"

    def __init__(self, message: str, *, details: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(CtrlplaneError):
    status, code = 400, "invalid_input"


class Unauthenticated(CtrlplaneError):
    status, code = 401, "unauthenticated"


class Forbidden(CtrlplaneError):
    status, code = 403, "forbidden"


class TenantSuspended(Forbidden):
    code = "tenant_suspended"


class QuotaExceeded(Forbidden):
    code = "quota_exceeded"

    def __init__(self, quota: str, *, used: int, limit: int, requested: int) -> None:
        super().__init__(
            f"quota {quota} exceeded: {used} used + {requested} requested > limit {limit}",
            details={"quota": quota, "used": used, "limit": limit, "requested": requested},
        )
        self.quota, self.used, self.limit = quota, used, limit


class NotFound(CtrlplaneError):
    status, code = 404, "not_found"

    @classmethod
    def of(cls, kind: str, object_id: str) -> NotFound:
        return cls(f"{kind} {object_id} not found", details={"resource": kind, "id": object_id})


class Conflict(CtrlplaneError):
    status, code = 409, "conflict"


class InvalidState(Conflict):
    code = "invalid_state"


class PreconditionFailed(CtrlplaneError):
    status, code = 412, "precondition_failed"


class PayloadTooLarge(CtrlplaneError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(CtrlplaneError):
    status, code = 415, "unsupported_media_type"


class HeaderTooLarge(CtrlplaneError):
    status, code = 431, "header_too_large"


class IdempotencyMismatch(CtrlplaneError):
    status, code = 422, "idempotency_key_reused"


class RateLimited(CtrlplaneError):
    status, code = 429, "rate_limited"


class Unavailable(CtrlplaneError):
    status, code = 503, "unavailable"


class ProviderError(CtrlplaneError):
    """The runtime refused or failed a request; the root of every provisioning error."""

    status, code = 502, "provider_error"


class ProviderUnavailable(Unavailable, ProviderError):
    code = "provider_unavailable"


HTTP_CODES: dict[int, str] = {
    400: "invalid_input",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    412: "precondition_failed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "idempotency_key_reused",
    429: "rate_limited",
    431: "header_too_large",
    500: "internal_error",
    502: "provider_error",
    503: "unavailable",
}


def error_body(error: CtrlplaneError, request_id: str) -> bytes:
    return msgspec.json.encode(
        ErrorBody(message=error.message, code=error.code, request_id=request_id, details=error.details)
    )


def exception_to_response(request: Request[Any, Any, Any], exc: Exception) -> Response[bytes]:
    """The one exception handler: domain errors, framework errors, database failures, bugs."""
    error = as_domain_error(exc)
    if error.status >= 500 and not isinstance(error, Unavailable):
        log.error("unhandled_error", exc_info=exc, request_id=request_id_for(request.scope))
    headers = {"Retry-After": "5"} if error.status == 503 else {}
    if isinstance(exc, HTTPException) and exc.headers:
        headers.update(exc.headers)  # the Allow header of a 405, above all
    return Response(
        content=error_body(error, request_id_for(request.scope)),
        status_code=error.status,
        media_type="application/json",
        headers=headers,
    )


def as_domain_error(exc: Exception) -> CtrlplaneError:
    if isinstance(exc, CtrlplaneError):
        return exc
    if isinstance(exc, ValidationException):
        fields = [_plain_field(e) for e in exc.extra] if isinstance(exc.extra, list) else None
        message = (
            "invalid request: "
            + "; ".join(f"{e.get('key') or 'body'}: {e.get('message')}" for e in fields or [] if isinstance(e, dict))
            if fields
            else f"invalid request: {exc.detail}"
        )
        return InvalidInput(message, details={"fields": fields} if fields else None)
    if isinstance(exc, HTTPException):
        error = CtrlplaneError(str(exc.detail))
        error.status = exc.status_code  # type: ignore[misc]
        error.code = HTTP_CODES.get(exc.status_code, "error")  # type: ignore[misc]
        return error
    if isinstance(exc, IntegrityError):
        conflict = CtrlplaneError("the change conflicts with existing data")
        conflict.status, conflict.code = 409, "conflict"  # type: ignore[misc]
        return conflict
    if isinstance(exc, DataError):
        return InvalidInput("a value cannot be stored as given (out of range or a NUL character)")
    if isinstance(exc, DBAPIError | OSError | TimeoutError):
        return Unavailable("the database is unavailable; retry shortly")
    return CtrlplaneError("internal error; the request ID identifies it in the server log")


def _plain_field(field: Any) -> Any:
    """A framework validation entry with the body called ``body`` (not ``data``) and patterns in words."""
    from ctrlplane.strict import in_words  # strict raises this module's InvalidInput

    if not isinstance(field, dict):
        return field
    shown = dict(field)
    if shown.get("key") == "data":
        shown["key"] = "body"
    if isinstance(shown.get("message"), str):
        shown["message"] = in_words(shown["message"])
    return shown
