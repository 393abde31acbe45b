"""The request boundary: request IDs, the access log, and the unit of work around every /v1 call.

``RequestContextASGI`` wraps the whole app: it settles the request ID, adds ``X-Request-ID`` and
``X-Ctrlplane-Version`` to every response and writes one log line per request.

``UnitOfWork`` runs after routing for every ``/v1`` route, in this order:

1. reads the body (413 past ``CTRLPLANE_MAX_BODY_BYTES``; 400 past ``inputs.MAX_JSON_DEPTH`` levels
   of nesting, for the OTLP receiver too; every request's headers are checked by ``RequestContextASGI``: 431);
2. authenticates the bearer token (401), loads the caller's tenant (a vanished tenant is 401;
   a suspended one gets 403 on every mutating call) and checks the route's required role (403);
   then takes the caller's rate-limit tokens (429 with ``Retry-After`` when out; ``RateLimit-*``
   headers on the response: ``ratelimit/service.py``). That is one statement: the tenant's
   standing (status and plan), or for an API key the key joined with it. A read takes the
   standing from the row cache (``rowcache.py``: invalidated by the database on every change,
   on other replicas within the notification's delivery); a write always reads it, so a
   suspended tenant's write, or any request with a revoked key, is refused by every replica at once;
3. claims the ``Idempotency-Key`` of a POST, or replays its stored response;
4. runs the handler inside one database transaction, holding the response back;
5. on success commits the change, its audit entry and the idempotency record together; on failure
   rolls the change back and commits the audit entry (and a 4xx idempotency record) alone;
6. sends the response.

A read (GET, HEAD, OPTIONS) runs steps 2 and 4 in one ``Database.query`` session (autocommit,
read-only: no BEGIN/ROLLBACK round trips), so an authenticated GET costs the standing statement
plus the handler's own (two round trips) when neither is cached, and none when both are (a JWT
caller's standing and an instance's view: ``rowcache.py``), and rate limiting none on most
requests (tokens are reserved in batches). A write's response waits for the row cache's
``barrier``, so the caller's next read on this replica sees what it wrote. When the first
statement finds its pooled connection dead (the pool has no pre-ping), the read is retried once on
a fresh one; a write's admission likewise.

Routes declare ``opt={"resource": ..., "action": ..., "role": ..., "system_admin": ...}``. A route
with ``"own_auth": True`` (the OTLP receiver, which takes instance tokens, not tenant credentials)
is passed through untouched and authenticates, and commits, by itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from typing import Any, cast
from urllib.parse import parse_qsl

import msgspec
import structlog
from litestar import Request, Response
from litestar.enums import ScopeType
from litestar.exceptions import HTTPException, ValidationException
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPScope, Message, Receive, ReceiveMessage, Scope, Send
from sqlalchemy.exc import DataError, DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane import strict
from ctrlplane.audit.service import AuditRecord
from ctrlplane.audit.service import append as append_audit
from ctrlplane.auth.providers import ANONYMOUS, TENANT_STANDING, Principal, TenantStanding
from ctrlplane.context import CONTEXT_KEY, AppServices, AuditDraft, RequestContext
from ctrlplane.errors import (
    HTTP_CODES,
    CtrlplaneError,
    ErrorBody,
    Forbidden,
    HeaderTooLarge,
    InvalidInput,
    PayloadTooLarge,
    RateLimited,
    TenantSuspended,
    Unauthenticated,
    Unavailable,
)
from ctrlplane.idempotency import service as idempotency
from ctrlplane.ids import new_id
from ctrlplane.inputs import check_headers, check_json_depth
from ctrlplane.ratelimit.service import BucketState

log = structlog.get_logger("ctrlplane.http")

REQUEST_ID_KEY = "ctrlplane.request_id"
PRINCIPAL_KEY = "ctrlplane.principal"
RATE_LIMIT_KEY = "ctrlplane.rate_limit"
_VALID_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:\-]{1,128}$")
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REDACTED = "<shown once; not replayed>"


def request_id_for(scope: Scope) -> str:
    existing = scope.get(REQUEST_ID_KEY)
    if existing:
        return str(existing)
    incoming = _header(scope, b"x-request-id")
    request_id = incoming if incoming and _VALID_REQUEST_ID.match(incoming) else new_id("req")
    scope[REQUEST_ID_KEY] = request_id  # type: ignore[literal-required]
    return request_id


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            try:
                return bytes(value).decode("latin-1")
            except UnicodeDecodeError:
                return None
    return None


def read_through(scope: Scope) -> bool:
    """The caller sent ``Cache-Control: no-cache``: its read skips the row cache (``rowcache.py``)."""
    value = _header(scope, b"cache-control")
    return value is not None and "no-cache" in value.lower()


def error_body(scope: Scope, error: CtrlplaneError) -> bytes:
    return msgspec.json.encode(
        ErrorBody(message=error.message, code=error.code, request_id=request_id_for(scope), details=error.details)
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
        content=error_body(request.scope, error),
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
    if not isinstance(field, dict):
        return field
    shown = dict(field)
    if shown.get("key") == "data":
        shown["key"] = "body"
    if isinstance(shown.get("message"), str):
        shown["message"] = strict.in_words(shown["message"])
    return shown


class RequestContextASGI:
    def __init__(self, app: ASGIApp, *, version: str, allowed_methods: Mapping[str, str] | None = None) -> None:
        self.app = app
        self.version = version.encode()
        self.allowed_methods = {k: v.encode() for k, v in (allowed_methods or {}).items()}
        """Path template -> the Allow header of OPTIONS: Litestar's own OPTIONS handler can list only
        the methods of the first handlers registered on a path."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != ScopeType.HTTP:
            await self.app(scope, receive, send)
            return
        http_scope = scope
        request_id = request_id_for(scope)
        started = time.perf_counter()
        status = 0

        async def send_with_headers(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                headers = list(message.get("headers", ()))
                headers.append((b"x-request-id", request_id.encode()))
                headers.append((b"x-ctrlplane-version", self.version))
                allow = self.allowed_methods.get(str(scope.get("path_template")))
                if http_scope["method"] == "OPTIONS" and allow is not None and status < 300:
                    headers = [(k, v) for k, v in headers if k.lower() != b"allow"] + [(b"allow", allow)]
                message = {**message, "headers": headers}
            await send(message)

        try:
            try:
                check_headers(scope.get("headers", ()))
            except HeaderTooLarge as exc:
                await _Captured.of_error(scope, exc).flush(send_with_headers)
                return
            await self.app(scope, receive, send_with_headers)
        finally:
            principal: Principal | None = scope.get(PRINCIPAL_KEY)  # type: ignore[assignment]
            log.info(
                "request",
                method=http_scope["method"],
                route=scope.get("path_template") or scope["path"],
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 2),
                request_id=request_id,
                tenant=principal.tenant_id if principal else None,
                subject=principal.subject if principal else None,
            )


class _Captured:
    def __init__(self) -> None:
        self.status = 500
        self.headers: list[tuple[bytes, bytes]] = []
        self.body = bytearray()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
            self.headers = list(message.get("headers", ()))
        elif message["type"] == "http.response.body":
            self.body.extend(message.get("body", b""))

    def header(self, name: bytes) -> str | None:
        for key, value in self.headers:
            if key.lower() == name:
                return value.decode("latin-1")
        return None

    @property
    def content_type(self) -> str | None:
        return self.header(b"content-type")

    async def flush(self, send: Send, extra_headers: list[tuple[bytes, bytes]] | None = None) -> None:
        await send(
            {"type": "http.response.start", "status": self.status, "headers": self.headers + (extra_headers or [])}
        )
        await send({"type": "http.response.body", "body": bytes(self.body), "more_body": False})

    @classmethod
    def of_error(cls, scope: Scope, error: CtrlplaneError) -> _Captured:
        captured = cls()
        captured.status = error.status
        captured.headers = [(b"content-type", b"application/json")]
        if error.status == 503:
            captured.headers.append((b"retry-after", b"5"))
        captured.body.extend(error_body(scope, error))
        return captured


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status in (401, 403):
        return "denied"
    return "rejected" if status < 500 else "error"


class UnitOfWork(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    def __init__(self, services: AppServices) -> None:
        self.services = services

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if not scope["path"].startswith("/v1/"):
            await next_app(scope, receive, send)
            return
        if scope["route_handler"].opt.get("own_auth"):  # its guard authenticates and rate-limits
            if scope.get("method") in READ_METHODS:  # no body; a stream (a node's events) must hear the client leave
                try:
                    _check_query(cast("HTTPScope", scope))
                except CtrlplaneError as exc:
                    await _Captured.of_error(scope, exc).flush(send)
                    return
                await next_app(scope, receive, _with_rate_limit_headers(scope, send))
                return
            try:
                body = await _read_body(receive, self.services.settings.max_body_bytes)
                if _header(scope, b"content-encoding") in (None, "identity"):  # a gzip'd node batch is not JSON
                    check_json_depth(body)
            except CtrlplaneError as exc:
                await _Captured.of_error(scope, exc).flush(send)
                return
            await next_app(scope, _replay(body), _with_rate_limit_headers(scope, send))
            return
        http_scope = cast("HTTPScope", scope)
        send = _with_rate_limit_headers(scope, send)
        if http_scope["method"] in READ_METHODS:
            await self._read(http_scope, receive, send, next_app)
        else:
            await self._write(http_scope, receive, send, next_app)

    @staticmethod
    def _reject_nul(scope: HTTPScope, body: bytes = b"") -> None:
        """NUL characters are refused in paths, queries and JSON strings on every database alike
        (PostgreSQL cannot store them; SQLite would, and behaviour would differ by backend)."""
        if "\x00" in scope["path"] or b"%00" in scope.get("query_string", b"").lower() or b"\\u0000" in body:
            raise InvalidInput("NUL characters are not accepted", details={"input": "contains NUL"})

    async def _admit(self, scope: HTTPScope, session: AsyncSession, *, mutating: bool) -> Principal:
        """Authenticate, authorize and rate-limit the caller, reading through ``session``: one
        statement (the tenant's standing; for an API key, the key joined with it)."""
        authenticated = await self.services.authenticator.authenticate(_header(scope, b"authorization"), session)
        principal = authenticated.principal
        scope[PRINCIPAL_KEY] = principal  # type: ignore[literal-required]
        standing = authenticated.tenant
        if principal.tenant_id is not None and standing is None:
            standing = await self._standing(scope, session, principal.tenant_id, cached=not mutating)
        if principal.tenant_id is not None:
            if standing is None or standing.status == "deleting":
                raise Unauthenticated("the tenant of this token no longer exists")
            if standing.status == "suspended" and mutating:
                raise TenantSuspended("tenant is suspended; only reads are allowed until it is unsuspended")
        opt = scope["route_handler"].opt
        if opt.get("system_admin") and not principal.is_system_admin:
            raise Forbidden("this route needs the system-admin role")
        required = opt.get("role") or ("deploy" if mutating else "read")
        if required != "any" and not principal.has_role(required):
            raise Forbidden(f"this route needs the {required!r} role")
        await self._rate_limit(scope, principal, standing.plan if standing else None)
        return principal

    async def _standing(
        self, scope: HTTPScope, session: AsyncSession, tenant_id: str, *, cached: bool
    ) -> TenantStanding | None:
        """The tenant's status and plan: for a read from the row cache when it has them (unless the
        caller sent ``Cache-Control: no-cache``), for a write always from the database."""
        rows = self.services.db.rows
        if cached and not read_through(scope):
            standing: TenantStanding | None = rows.get("tenants", tenant_id)
            if standing is not None:
                return standing
        ticket = rows.ticket()
        connection = await session.connection()  # Core: no ORM execution for two columns
        row = (await connection.execute(TENANT_STANDING, {"tenant_id": tenant_id})).one_or_none()
        if row is None:
            return None
        standing = TenantStanding(row.status, row.plan)
        rows.put("tenants", tenant_id, ticket, standing)
        return standing

    async def _admitted(self, scope: HTTPScope, *, mutating: bool) -> Principal:
        """``_admit`` in a query session of its own (a write's transaction comes later), once more
        on a fresh connection when the pooled one turns out dead."""
        for attempt in (1, 2):
            try:
                async with self.services.db.query() as session:
                    return await self._admit(scope, session, mutating=mutating)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

    async def _rate_limit(self, scope: HTTPScope, principal: Principal, plan: str | None) -> None:
        if self.services.rate_limiter is None:
            return
        state: BucketState | None = None
        try:
            state = await self.services.rate_limiter.check(principal, plan)
        except RateLimited as exc:
            state = exc.rate_limit  # type: ignore[attr-defined]
            raise
        finally:
            scope[RATE_LIMIT_KEY] = state  # type: ignore[literal-required]

    def _context(self, scope: HTTPScope, principal: Principal, session: Any) -> RequestContext:
        opt = scope["route_handler"].opt
        params = scope.get("path_params", {})
        resource_id = next((str(v) for k, v in params.items() if k.endswith("_id")), None)
        client = scope.get("client")
        context = RequestContext(
            request_id=request_id_for(scope),
            principal=principal,
            session=session,
            audit=AuditDraft(
                resource=opt.get("resource", "unknown"),
                action=opt.get("action", scope["method"].lower()),
                resource_id=resource_id,
                tenant_id=principal.tenant_id,
            ),
            services=self.services,
            client_addr=client[0] if client else None,
            cached_reads=scope["method"] in READ_METHODS and not read_through(scope),
        )
        scope[CONTEXT_KEY] = context  # type: ignore[literal-required]
        return context

    async def _read(self, scope: HTTPScope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        """One query session (autocommit, read-only) for the whole read: admission, then the
        handler. A pooled connection found dead by the first statement is retried once."""
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        for attempt in (1, 2):
            try:
                async with _query_session(self.services) as session:
                    try:
                        self._reject_nul(scope)
                        principal = await self._admit(scope, session, mutating=False)
                        _check_query(scope)
                    except DBAPIError as exc:
                        if attempt == 1 and exc.connection_invalidated:
                            continue
                        raise
                    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
                        await _Captured.of_error(scope, as_domain_error(exc)).flush(send)
                        return
                    self._context(scope, principal, session)
                    await next_app(scope, receive, tracking_send)
                    return
            except (DBAPIError, OSError) as exc:
                # The database went away while the read session closed (or before the handler):
                # an answer already sent stands; none sent is a 503.
                if started:
                    log.warning("read_session_close_failed", request_id=request_id_for(scope), error=str(exc))
                    return
                await _Captured.of_error(scope, as_domain_error(exc)).flush(send)
                return

    async def _write(self, scope: HTTPScope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        services = self.services
        principal = ANONYMOUS
        claim: idempotency.Claim | None = None
        draft = AuditDraft(
            resource=scope["route_handler"].opt.get("resource", "unknown"),
            action=scope["route_handler"].opt.get("action", scope["method"].lower()),
        )
        try:
            body = await _read_body(receive, services.settings.max_body_bytes)
            self._reject_nul(scope, body)
            check_json_depth(body)
            principal = await self._admitted(scope, mutating=True)
            body_type = strict.body_type_of(scope["route_handler"])
            if body_type is not None:
                strict.check_body(body, body_type)
            claim = await self._claim(scope, principal, body)
            if claim is not None and claim.replay is not None:
                replayed = _Captured()
                replayed.status = claim.replay.status
                replayed.headers = [(b"content-type", (claim.replay.content_type or "application/json").encode())]
                if claim.replay.etag is not None:
                    replayed.headers.append((b"etag", claim.replay.etag.encode("latin-1")))
                replayed.body.extend(claim.replay.body)
                await self._audit_alone(scope, principal, draft, replayed.status, outcome="replayed")
                await replayed.flush(send, [(b"idempotent-replayed", b"true")])
                return
            captured = await self._run(scope, principal, body, claim, next_app)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error, and is audited
            principal = scope.get(PRINCIPAL_KEY, principal)  # type: ignore[assignment]
            error = as_domain_error(exc)
            captured = _Captured.of_error(scope, error)
            context: RequestContext | None = scope.get(CONTEXT_KEY)  # type: ignore[assignment]
            await self._settle_failure(scope, principal, context.audit if context else draft, captured, claim)
        await captured.flush(send)

    async def _claim(self, scope: HTTPScope, principal: Principal, body: bytes) -> idempotency.Claim | None:
        key = _header(scope, b"idempotency-key")
        if key is None or scope["method"] != "POST":
            return None
        settings = self.services.settings
        fingerprint = idempotency.request_fingerprint(
            scope["method"], scope["path"], scope.get("query_string", b""), body
        )
        if scope["route_handler"].opt.get("secret_body"):
            # a plain hash of a body holding a secret would let a database copy confirm guesses
            fingerprint = self.services.vault.keyed_digest(fingerprint.encode())
        return await idempotency.claim(
            self.services.db,
            scope=f"{principal.tenant_id or '-'}|{principal.kind}|{principal.subject}",
            key=idempotency.validate_key(key),
            fingerprint=fingerprint,
            ttl=timedelta(seconds=settings.idempotency_ttl_seconds),
            lease=timedelta(seconds=settings.idempotency_lease_seconds),
        )

    async def _run(
        self, scope: HTTPScope, principal: Principal, body: bytes, claim: idempotency.Claim | None, next_app: ASGIApp
    ) -> _Captured:
        captured = _Captured()
        async with self.services.db.write() as session:
            context = self._context(scope, principal, session)
            await session.begin()
            await next_app(scope, _replay(body), captured.send)
            if captured.status >= 400:
                await session.rollback()
                await self._settle_failure(scope, principal, context.audit, captured, claim)
                return captured
            await append_audit(
                session,
                self._record(scope, principal, context.audit, captured.status, None),
                keys=self.services.audit_keys,
            )
            if claim is not None:
                await idempotency.complete(session, claim.record_id, _stored(captured, _redacted_fields(scope)))
            await session.commit()
        await self.services.db.rows.barrier()  # this replica's next read sees what was just written
        await self.services.work.notify()
        await self.services.events.notify()
        return captured

    async def _settle_failure(
        self,
        scope: HTTPScope,
        principal: Principal,
        draft: AuditDraft,
        captured: _Captured,
        claim: idempotency.Claim | None,
    ) -> None:
        try:
            async with self.services.db.write() as session, session.begin():
                await append_audit(
                    session, self._record(scope, principal, draft, captured.status, None), keys=self.services.audit_keys
                )
                if claim is not None and captured.status < 500:
                    await idempotency.complete(session, claim.record_id, _stored(captured))
            if claim is not None and captured.status >= 500:
                await idempotency.release(self.services.db, claim.record_id)
        except (DBAPIError, OSError) as exc:
            log.error("audit_write_failed", request_id=request_id_for(scope), error=str(exc))

    async def _audit_alone(
        self, scope: HTTPScope, principal: Principal, draft: AuditDraft, status: int, *, outcome: str
    ) -> None:
        async with self.services.db.write() as session, session.begin():
            await append_audit(
                session, self._record(scope, principal, draft, status, outcome), keys=self.services.audit_keys
            )

    def _record(
        self, scope: HTTPScope, principal: Principal, draft: AuditDraft, status: int, outcome: str | None
    ) -> AuditRecord:
        client = scope.get("client")
        details = dict(draft.details)
        if status >= 400:
            details.setdefault("status", status)
        return AuditRecord(
            tenant_id=draft.tenant_id or principal.tenant_id,
            actor_kind="api_key"
            if principal.kind == "api_key"
            else ("user" if principal is not ANONYMOUS else "anonymous"),
            actor_subject=principal.subject,
            action=draft.action,
            resource=draft.resource,
            resource_id=draft.resource_id,
            outcome=outcome or _outcome(status),
            status_code=status,
            request_id=request_id_for(scope),
            client_addr=client[0] if client else None,
            details=details,
        )


@asynccontextmanager
async def _query_session(services: AppServices) -> AsyncIterator[AsyncSession]:
    """A query session, closed only if it was used: a read answered from the row cache runs no
    statement, takes no connection, and need not pay for closing what it never opened."""
    session = services.db.query()
    try:
        yield session
    finally:
        if session.sync_session.in_transaction():
            await session.__aexit__(None, None, None)  # AsyncSession's own close, shielded


def _with_rate_limit_headers(scope: Scope, send: Send) -> Send:
    """``send``, adding the caller's RateLimit-* headers (and Retry-After on a 429) to the response."""

    async def sending(message: Message) -> None:
        state: BucketState | None = scope.get(RATE_LIMIT_KEY)  # type: ignore[assignment]
        if message["type"] == "http.response.start" and state is not None:
            headers = [(k, v) for k, v in message.get("headers", ()) if k.lower() != b"retry-after" or state.allowed]
            message = {**message, "headers": headers + state.headers()}
        await send(message)

    return sending


def _check_query(scope: HTTPScope) -> None:
    raw = scope.get("query_string", b"")
    if raw:
        names = [name for name, _ in parse_qsl(raw.decode("latin-1"), keep_blank_values=True)]
        strict.check_query(scope["route_handler"], names, scope.get("path_params", {}))


def _redacted_fields(scope: HTTPScope) -> tuple[str, ...]:
    return tuple(scope["route_handler"].opt.get("shown_once", ()))


def _stored(captured: _Captured, redact: tuple[str, ...] = ()) -> idempotency.StoredResponse:
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
    return idempotency.StoredResponse(
        status=captured.status, body=body, content_type=captured.content_type, etag=captured.header(b"etag")
    )


async def _read_body(receive: Receive, limit: int) -> bytes:
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        body.extend(message.get("body", b""))
        if len(body) > limit:
            raise PayloadTooLarge(f"request body is larger than {limit} bytes")
        if not message.get("more_body", False):
            break
    return bytes(body)


def _replay(body: bytes) -> Callable[[], Awaitable[ReceiveMessage]]:
    sent = False

    async def receive() -> ReceiveMessage:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return {"type": "http.disconnect"}

    return receive
