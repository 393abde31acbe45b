"""The unit of work around every /v1 call: one transaction, its audit entry, the response held back.

``UnitOfWork`` runs after routing for every ``/v1`` route, in this order:

1. reads the body (413 past ``CTRLPLANE_MAX_BODY_BYTES``; 400 past ``inputs.MAX_JSON_DEPTH`` levels
   of nesting, for the OTLP receiver's JSON too; every request's headers are checked by ``RequestContextASGI``: 431);
2. admits the caller (``admission.py``: authentication 401, the tenant's standing, the route's
   role 403, the rate limit 429);
3. claims the ``Idempotency-Key`` of a POST, or replays its stored response (``idempotency.py``);
4. runs the handler inside one database transaction, holding the response back;
5. on success commits the change, its audit entry and the idempotency record together; on failure
   rolls the change back and commits the audit entry (and a 4xx idempotency record) alone;
6. sends the response.

A read (GET, HEAD, OPTIONS) runs steps 2 and 4 in one ``Database.query`` session (autocommit,
read-only: no BEGIN/ROLLBACK round trips), so an authenticated GET costs the standing statement
plus the handler's own (two round trips) when neither is cached, and none when both are (a JWT
caller's standing and an instance's view: ``rowcache.py``), and rate limiting none on most
requests (tokens are reserved in batches). An API key taken from the row cache on PostgreSQL is
confirmed behind the barrier (``auth.providers.APIKeyProvider``): a read runs its handler while the
barrier's round trip is under way and awaits the confirmation when its answer starts; a refused
key's answer is dropped and the 401 sent instead. A write's response waits for the row cache's
``barrier``, so the caller's next read on this replica sees what it wrote. When the first
statement finds its pooled connection dead (the pool has no pre-ping), the read is retried once on
a fresh one; a write's admission likewise.

Routes declare ``opt={"resource": ..., "action": ..., "role": ..., "system_admin": ...}``. A route
with ``"own_auth": True`` (the OTLP receiver, which takes instance tokens, not tenant credentials)
is passed through untouched and authenticates, and commits, by itself.
"""

from __future__ import annotations

from typing import Any, cast
from urllib.parse import parse_qsl

import structlog
from litestar.enums import ScopeType
from litestar.middleware import ASGIMiddleware
from litestar.types import ASGIApp, HTTPScope, Message, Receive, Scope, Send
from sqlalchemy.exc import DBAPIError

from ctrlplane import strict
from ctrlplane.audit.service import AuditRecord
from ctrlplane.audit.service import append as append_audit
from ctrlplane.auth.providers import ANONYMOUS, Principal
from ctrlplane.db import SessionOnDemand, written_tables
from ctrlplane.errors import CtrlplaneError, InvalidInput, as_domain_error
from ctrlplane.idempotency import service as records
from ctrlplane.inputs import check_json_depth
from ctrlplane.web import idempotency
from ctrlplane.web.admission import Admission
from ctrlplane.web.context import CONTEXT_KEY, AppServices, AuditDraft, RequestContext
from ctrlplane.web.responses import Captured, read_body, replay_body
from ctrlplane.web.scope import CONFIRM_KEY, PRINCIPAL_KEY, READ_METHODS, header, read_through, request_id_for

log = structlog.get_logger("ctrlplane.http")


def _outcome(status: int) -> str:
    if status < 400:
        return "success"
    if status in (401, 403):
        return "denied"
    return "rejected" if status < 500 else "error"


class UnitOfWork(ASGIMiddleware):
    scopes = (ScopeType.HTTP,)

    services: AppServices
    """What it serves: ``ctrlplane.app.use_services`` gives it these, before the first request."""

    def __init__(self) -> None:
        self._admission: Admission | None = None

    @property
    def admission(self) -> Admission:
        if self._admission is None or self._admission.services is not self.services:
            self._admission = Admission(self.services)
        return self._admission

    async def handle(self, scope: Scope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        if not scope["path"].startswith("/v1/"):
            await next_app(scope, receive, send)
            return
        if scope["route_handler"].opt.get("own_auth"):  # its guard authenticates and rate-limits
            if scope.get("method") in READ_METHODS:  # no body; a stream (a node's events) must hear the client leave
                try:
                    _check_query(cast("HTTPScope", scope))
                except CtrlplaneError as exc:
                    await Captured.of_error(scope, exc).flush(send)
                    return
                await next_app(scope, receive, send)
                return
            try:
                body = await read_body(receive, self.services.settings.max_body_bytes)
                if _maybe_json(scope):
                    check_json_depth(body)
            except CtrlplaneError as exc:
                await Captured.of_error(scope, exc).flush(send)
                return
            await next_app(scope, replay_body(body), send)
            return
        http_scope = cast("HTTPScope", scope)
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
        handler. It is made at its first use, so a read answered from memory builds none. A pooled
        connection found dead by the first statement is retried once."""
        started = refused = False

        async def sending(message: Message) -> None:  # confirms the caller; notes the start
            nonlocal started, refused
            if refused:  # what follows an answer refused below is dropped (a stream ends: its client is gone)
                return
            if message["type"] == "http.response.start":
                confirm = scope.pop(CONFIRM_KEY, None)  # type: ignore[misc]
                if confirm is not None:
                    try:
                        await confirm()
                    except Exception as exc:  # noqa: BLE001 - a revoked key, or no database to tell
                        started = refused = True
                        await Captured.of_error(scope, as_domain_error(exc)).flush(send)
                        return
                started = True
            await send(message)

        for attempt in (1, 2):
            session = SessionOnDemand(self.services.db.query)
            try:
                try:
                    try:
                        self._reject_nul(scope)
                        principal = await self.admission.admit(scope, session.session, mutating=False)
                        _check_query(scope)
                    except DBAPIError as exc:
                        if attempt == 1 and exc.connection_invalidated:
                            continue
                        raise
                    except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error
                        await Captured.of_error(scope, as_domain_error(exc)).flush(sending)
                        return
                    self._context(scope, principal, session.session)
                    await next_app(scope, receive, sending)
                    return
                finally:
                    await session.close()
            except (DBAPIError, OSError) as exc:
                # The database went away while the read session closed (or before the handler):
                # an answer already sent stands; none sent is a 503.
                if started:
                    log.warning("read_session_close_failed", request_id=request_id_for(scope), error=str(exc))
                    return
                await Captured.of_error(scope, as_domain_error(exc)).flush(sending)
                return

    async def _write(self, scope: HTTPScope, receive: Receive, send: Send, next_app: ASGIApp) -> None:
        services = self.services
        principal = ANONYMOUS
        claim: records.Claim | None = None
        draft = AuditDraft(
            resource=scope["route_handler"].opt.get("resource", "unknown"),
            action=scope["route_handler"].opt.get("action", scope["method"].lower()),
        )
        try:
            body = await read_body(receive, services.settings.max_body_bytes)
            self._reject_nul(scope, body)
            check_json_depth(body)
            principal = await self.admission.admitted(scope, mutating=True)
            body_type = strict.body_type_of(scope["route_handler"])
            if body_type is not None:
                strict.check_body(body, body_type)
            claim = await idempotency.claim(services, scope, principal, body)
            if claim is not None and claim.replay is not None:
                replayed = idempotency.replayed(claim.replay)
                await self._audit_alone(scope, principal, draft, replayed.status, outcome="replayed")
                await replayed.flush(send, [(b"idempotent-replayed", b"true")])
                return
            captured = await self._run(scope, principal, body, claim, next_app)
        except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error, and is audited
            principal = scope.get(PRINCIPAL_KEY, principal)  # type: ignore[assignment]
            error = as_domain_error(exc)
            captured = Captured.of_error(scope, error)
            context: RequestContext | None = scope.get(CONTEXT_KEY)  # type: ignore[assignment]
            await self._settle_failure(scope, principal, context.audit if context else draft, captured, claim)
        await captured.flush(send)

    async def _run(
        self, scope: HTTPScope, principal: Principal, body: bytes, claim: records.Claim | None, next_app: ASGIApp
    ) -> Captured:
        captured = Captured()
        async with self.services.db.write() as session:
            context = self._context(scope, principal, session)
            await session.begin()
            await next_app(scope, replay_body(body), captured.send)
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
                await records.complete(
                    session, claim.record_id, idempotency.stored(captured, idempotency.redacted_fields(scope))
                )
            written = await written_tables(session)
            await session.commit()
        await self.services.db.rows.barrier()  # this replica's next read sees what was just written
        # only the loops that read what was written look again (an operation enqueued wakes the
        # workers; a route changed does not)
        await self.services.work.notify(written)
        await self.services.events.notify(written)
        return captured

    async def _settle_failure(
        self,
        scope: HTTPScope,
        principal: Principal,
        draft: AuditDraft,
        captured: Captured,
        claim: records.Claim | None,
    ) -> None:
        try:
            async with self.services.db.write() as session, session.begin():
                await append_audit(
                    session, self._record(scope, principal, draft, captured.status, None), keys=self.services.audit_keys
                )
                if claim is not None and captured.status < 500:
                    await records.complete(session, claim.record_id, idempotency.stored(captured))
            if claim is not None and captured.status >= 500:
                await records.release(self.services.db, claim.record_id)
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


def _maybe_json(scope: Scope) -> bool:
    """Whether an own-auth route's body may be JSON as sent: not a gzip'd node batch or OTLP
    export, not OTLP protobuf (whose bytes may hold any number of brackets). Those routes check
    the JSON they find once they have inflated it."""
    if header(scope, b"content-encoding") not in (None, "identity"):
        return False
    media = (header(scope, b"content-type") or "").split(";", 1)[0].strip().lower()
    return media not in ("application/x-protobuf", "application/protobuf")


def _check_query(scope: HTTPScope) -> None:
    raw = scope.get("query_string", b"")
    if raw:
        names = [name for name, _ in parse_qsl(raw.decode("latin-1"), keep_blank_values=True)]
        strict.check_query(scope["route_handler"], names, scope.get("path_params", {}))
