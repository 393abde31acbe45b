"""Who may make this call: authentication, the tenant's standing, the route's role, the rate limit.

``Admission.admit`` is one statement: the tenant's standing (status and plan), or for an API key
the key joined with it. A read takes the standing from the row cache (``rowcache.py``: invalidated
by the database on every change, on other replicas within the notification's delivery); a write
always reads it, so a suspended tenant's write, or any request with a revoked key, is refused by
every replica at once. A vanished or deleting tenant is 401, a suspended one 403 on every mutating
call, a missing role 403, and an exhausted rate limit 429 with ``Retry-After``; the ``RateLimit-*``
headers go on the response (``rate_limit_headers``; the buckets: ``ratelimit/service.py``).

Routes declare ``opt={"role": ..., "system_admin": ...}``; the role defaults to ``read`` for reads
and ``deploy`` for mutating methods, and ``any`` admits any authenticated caller.
"""

from __future__ import annotations

from litestar.types import HTTPScope, Scope
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.auth.providers import TENANT_STANDING, Principal, TenantStanding
from ctrlplane.errors import Forbidden, RateLimited, TenantSuspended, Unauthenticated
from ctrlplane.ratelimit.service import BucketState
from ctrlplane.web.context import AppServices
from ctrlplane.web.scope import CONFIRM_KEY, PRINCIPAL_KEY, RATE_LIMIT_KEY, header, read_through


class Admission:
    def __init__(self, services: AppServices) -> None:
        self.services = services

    async def admit(self, scope: HTTPScope, session: AsyncSession, *, mutating: bool) -> Principal:
        """Authenticate, authorize and rate-limit the caller, reading through ``session``: one
        statement (the tenant's standing; for an API key, the key joined with it)."""
        authenticated = await self.services.authenticator.authenticate(
            header(scope, b"authorization"), session, defer=not mutating
        )
        if authenticated.confirm is not None:  # a read's: awaited before its answer leaves (UnitOfWork)
            scope[CONFIRM_KEY] = authenticated.confirm  # type: ignore[literal-required]
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

    async def admitted(self, scope: HTTPScope, *, mutating: bool) -> Principal:
        """``admit`` in a query session of its own (a write's transaction comes later), once more
        on a fresh connection when the pooled one turns out dead."""
        for attempt in (1, 2):
            try:
                async with self.services.db.query() as session:
                    return await self.admit(scope, session, mutating=mutating)
            except DBAPIError as exc:
                if attempt == 2 or not exc.connection_invalidated:
                    raise
        raise AssertionError("unreachable")

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


def rate_limit_headers(scope: Scope, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """A response's ``headers`` with the caller's RateLimit-* headers (and Retry-After on a 429),
    when the request was rate-limited (``RequestContextASGI`` adds them to every response)."""
    state: BucketState | None = scope.get(RATE_LIMIT_KEY)  # type: ignore[assignment]
    if state is None:
        return headers
    if state.allowed:
        headers.extend(state.headers())
        return headers
    return [(k, v) for k, v in headers if k.lower() != b"retry-after"] + state.headers()
