"""On-demand environments: an instance made from a pinned template version, found again by key.

Get-or-create (``POST /v1/environments``) checks everything it was given before it writes
anything, then, under the lock on the tenant's row (the lock instance quotas take too), answers the
key's active environment when there is one (200; 409 when its template or parameters differ,
unless ``replace``), or creates the instance and the environment (201). The partial unique index
``uq_environments_tenant_key_active`` is what guarantees one active environment per key, across
replicas; a create that loses a race to it rolls back to its savepoint and answers the winner.

Lifetimes run on the database clock: ``expires_at`` (``ttl``, moved by ``extend`` up to the
template's ``max_ttl`` from now, at most ``max_extends`` times) and ``max_lifetime_at`` (from
creation; never passed). ``lifetimes.LifetimeKeeper`` terminates what passed them.

Terminating (on demand, on delete, on expiry, on replace) marks the environment ``terminating``,
releases its place in the per-owner quota and its key at once, and queues the instance's
teardown: soft is the provider's graceful stop (SIGTERM, the grace period, SIGKILL), hard kills at
once. The environment becomes ``terminated`` when its instance is destroyed.
"""

from __future__ import annotations

import secrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.environments import pools, schemas
from ctrlplane.environments.furnish import furnish
from ctrlplane.environments.models import Environment
from ctrlplane.errors import Conflict, InvalidInput, NotFound, QuotaExceeded, Unavailable
from ctrlplane.events.service import append as append_event
from ctrlplane.ids import TenantId, new_id
from ctrlplane.instances.lifecycle import destroy_by_id
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.instances.service import InstanceService
from ctrlplane.network.router import default_hostname, router_url
from ctrlplane.network.sleep import set_idle_timeout
from ctrlplane.templates import service as templates
from ctrlplane.templates.render import render, resolve
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate


class ExtendLimit(Conflict):
    code = "extend_limit"


async def database_now(session: AsyncSession) -> datetime:
    """The database's clock: every replica agrees on it, whatever their own clocks say."""
    if session.get_bind().dialect.name == "postgresql":
        raw = (await session.execute(text("SELECT clock_timestamp()"))).scalar_one()
        return raw  # type: ignore[no-any-return]
    raw = (await session.execute(text("SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')"))).scalar_one()
    return datetime.fromisoformat(str(raw) + "+00:00")


def instance_name(key: str) -> str:
    slug = "".join(c if c.isalnum() else "-" for c in key.lower()).strip("-")[:48].strip("-") or "env"
    return f"{slug}-{secrets.token_hex(3)}"


def _seconds(raw: str | None, field: str) -> int | None:
    return templates.duration_seconds(raw, field) if raw is not None else None


def _extends_left(environment: Environment, max_extends: int | None) -> int | None:
    return None if max_extends is None else max(0, max_extends - environment.extends_used)


async def record_event(session: AsyncSession, environment: Environment, type: str, **data: Any) -> None:
    await append_event(
        session,
        tenant_id=environment.tenant_id,
        instance_id=environment.instance_id,
        type=type,
        data={"environment_id": environment.id, "key": environment.key, **data},
    )


async def terminate(session: AsyncSession, environment: Environment, *, reason: str, hard: bool) -> None:
    """Mark ``environment`` terminating (its key and quota place free at once) and queue its
    instance's teardown; the caller holds the environment's row. Used by the API and the keeper."""
    environment.state = "terminating"
    environment.termination_reason = reason
    environment.version += 1
    environment.updated_at = utc_now()
    if environment.instance_id is not None:
        await destroy_by_id(session, TenantId(environment.tenant_id), environment.instance_id, hard=hard)
    if reason == "expired":
        await record_event(session, environment, "environment.expired", hard=hard)


class EnvironmentService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session
        self.settings = context.services.settings

    def _audit(self, environment: Environment, **details: Any) -> None:
        self.context.audit.resource_id = environment.id
        self.context.audit.tenant_id = environment.tenant_id
        self.context.audit.details.update(details)

    async def view(self, environment: Environment) -> schemas.Environment:
        instance_state = hostname_url = None
        if environment.instance_id is not None:
            try:
                row = await InstanceRepository(self.session, TenantId(environment.tenant_id)).view(
                    environment.instance_id
                )
                instance_state = row.state
            except NotFound:
                instance_state = None
        if environment.hostname is not None and environment.state == "active":
            hostname_url = router_url(self.settings, environment.hostname)
        version = await templates.version_of(self.session, environment.template_id, environment.template_version)
        return schemas.Environment(
            id=environment.id,
            tenant_id=environment.tenant_id,
            key=environment.key,
            template_id=environment.template_id,
            template_version=environment.template_version,
            parameters=environment.parameters,
            owner=environment.owner,
            state=environment.state,  # type: ignore[arg-type]
            instance_id=environment.instance_id,
            instance_state=instance_state,
            hostname=environment.hostname,
            url=hostname_url,
            ttl=templates.format_seconds(environment.ttl_seconds),
            expires_at=environment.expires_at,
            max_lifetime_at=environment.max_lifetime_at,
            extends_used=environment.extends_used,
            extends_left=_extends_left(environment, version.max_extends),
            idle_timeout=templates.format_seconds(environment.idle_timeout_seconds),
            on_idle=environment.on_idle,  # type: ignore[arg-type]
            tags=list(environment.tags),
            termination_reason=environment.termination_reason,
            terminated_at=environment.terminated_at,
            version=environment.version,
            created_at=environment.created_at,
            updated_at=environment.updated_at,
        )

    def owner(self) -> str:
        principal = self.context.principal
        return principal.key_id or principal.subject

    async def _active(self, tenant_id: str, key: str) -> Environment | None:
        statement = (
            select(Environment)
            .where(Environment.tenant_id == tenant_id, Environment.key == key, Environment.state == "active")
            .with_for_update()
            .execution_options(populate_existing=True)
        )
        return (await self.session.execute(statement)).scalars().first()

    async def get_or_create(self, data: schemas.EnvironmentCreate) -> tuple[schemas.Environment, bool]:
        """The key's active environment (False) or a new one (True); see the module docstring."""
        tenant_id = self.context.tenant_scope(data.tenant_id)
        ttl = _seconds(data.ttl, "ttl")
        idle_timeout = _seconds(data.idle_timeout, "idle_timeout")
        max_lifetime = _seconds(data.max_lifetime, "max_lifetime")
        template = await templates.find(self.session, tenant_id, data.template)
        version = await templates.version_of(self.session, template.id, template.version)
        spec, declared = templates.declared(version)
        values = resolve(declared, data.parameters)
        name = instance_name(data.key)
        wanted = render(spec, values, name=name)
        if ttl is None:
            ttl = version.max_ttl_seconds
        elif version.max_ttl_seconds is not None and ttl > version.max_ttl_seconds:
            raise InvalidInput(
                f"ttl is over the template's max_ttl ({templates.format_seconds(version.max_ttl_seconds)})",
                details={"ttl": data.ttl, "max_ttl": templates.format_seconds(version.max_ttl_seconds)},
            )
        tenant = await TenantRepository(self.session).get(tenant_id, for_update=True)
        existing = await self._active(tenant_id, data.key)
        if existing is not None:
            if existing.template_id == template.id and existing.parameters == values:
                self._audit(existing, key=data.key, outcome="existing")
                return await self.view(existing), False
            if not data.replace:
                raise Conflict(
                    f"environment {existing.id} with key {data.key!r} was made from other "
                    "template or parameters; send replace: true to replace it",
                    details={
                        "environment_id": existing.id,
                        "template_id": existing.template_id,
                        "parameters": existing.parameters,
                    },
                )
            await terminate(self.session, existing, reason="replaced", hard=False)
            await self.session.flush()
        owner = self.owner()
        await self._owner_quota(tenant_id, owner, template.max_environments_per_owner)
        now = await database_now(self.session)
        claimed = False
        furnished: dict[str, Any] = {}
        try:
            async with self.session.begin_nested():
                environment = await pools.claim(self.session, template, tenant_id, values)
                if environment is not None:
                    claimed = True
                    environment.key = data.key
                    environment.owner = owner
                    environment.state = "active"
                    environment.version += 1
                    environment.updated_at = now
                else:
                    if template.pool_max_ready > 0 and not template.pool_cold_start:
                        raise Unavailable(
                            f"no pooled instance of template {template.name} is ready; retry shortly",
                            details={"template_id": template.id, "pool": "empty"},
                        )
                    wanted.tenant_id = data.tenant_id
                    try:
                        instance = await InstanceService(self.context).create(wanted)
                    except QuotaExceeded as exc:
                        if template.pool_max_ready <= 0:
                            raise
                        raise Unavailable(
                            f"no pooled instance of template {template.name} is ready and the tenant is at "
                            f"quota {exc.quota}; retry shortly",
                            details={"template_id": template.id, "pool": "empty", "quota": exc.quota},
                        ) from None
                    furnished = await furnish(self.context, instance.id, spec, values)
                    environment = Environment(
                        id=new_id("env"),
                        tenant_id=tenant_id,
                        key=data.key,
                        template_id=template.id,
                        template_version=template.version,
                        parameters=values,
                        owner=owner,
                        state="active",
                        instance_id=instance.id,
                        hostname=default_hostname(self.settings, instance.name, tenant.slug),
                        extends_used=0,
                        version=1,
                        created_at=now,
                        updated_at=now,
                    )
                    self.session.add(environment)
                environment.ttl_seconds = ttl
                environment.expires_at = now + timedelta(seconds=ttl) if ttl is not None else None
                environment.max_lifetime_at = (
                    now + timedelta(seconds=max_lifetime) if max_lifetime is not None else None
                )
                if environment.max_lifetime_at is not None and environment.expires_at is not None:
                    environment.expires_at = min(environment.expires_at, environment.max_lifetime_at)
                environment.idle_timeout_seconds = idle_timeout
                environment.on_idle = data.on_idle
                environment.tags = list(dict.fromkeys(data.tags))
                await self.session.flush()
                if idle_timeout is not None:
                    # the router's request reporting then drives it (environments/idle.py)
                    row = await self.session.get(Instance, environment.instance_id)
                    assert row is not None
                    await set_idle_timeout(self.session, row, idle_timeout)
        except IntegrityError:
            # another replica's create of this key committed first: answer that one
            winner = await self._active(tenant_id, data.key)
            if winner is None:
                raise
            if winner.template_id != template.id or winner.parameters != values:
                raise Conflict(
                    f"environment {winner.id} with key {data.key!r} was made from other template or parameters",
                    details={"environment_id": winner.id},
                ) from None
            self._audit(winner, key=data.key, outcome="existing")
            return await self.view(winner), False
        await record_event(
            self.session,
            environment,
            "environment.claimed" if claimed else "environment.created",
            template_id=template.id,
            version=template.version,
        )
        self._audit(
            environment,
            key=data.key,
            template_id=template.id,
            version=template.version,
            outcome="claimed" if claimed else "created",
            **furnished,
        )

        return await self.view(environment), True

    async def _owner_quota(self, tenant_id: str, owner: str, template_limit: int | None) -> None:
        """The owner's active environments against the tighter of the template's and the tenant's
        ``max_environments_per_owner``; the server's setting when neither sets one. The caller holds
        the tenant's row, so concurrent creates by one owner are counted one after the other."""
        tenant_limit = (await TenantRepository(self.session).quota(tenant_id)).max_environments_per_owner
        limits = {
            source: limit
            for source, limit in (("template", template_limit), ("tenant", tenant_limit))
            if limit is not None
        }
        if not limits and self.settings.environments_max_per_owner is not None:
            limits["server"] = self.settings.environments_max_per_owner
        if not limits:
            return
        source, limit = min(limits.items(), key=lambda item: item[1])
        used = (
            await self.session.execute(
                select(func.count(Environment.id)).where(
                    Environment.tenant_id == tenant_id, Environment.owner == owner, Environment.state == "active"
                )
            )
        ).scalar_one()
        if used + 1 > limit:
            error = QuotaExceeded("max_environments_per_owner", used=used, limit=limit, requested=1)
            error.message = (
                f"quota max_environments_per_owner exceeded: owner {owner} has {used} of at most {limit} "
                f"environments (the {source}'s limit)"
            )
            assert error.details is not None
            error.details["owner"] = owner
            error.details["source"] = source
            raise error

    async def _get(self, environment_id: str, *, for_update: bool = False) -> Environment:
        statement = select(Environment).where(Environment.id == environment_id)
        tenant_id = self.context.principal.tenant_id
        if tenant_id is not None:
            statement = statement.where(Environment.tenant_id == tenant_id)
        if for_update:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        found = (await self.session.execute(statement)).scalars().first()
        if found is None:
            raise NotFound.of("environment", environment_id)
        return found

    async def _locked(self, environment_id: str) -> Environment:
        environment = await self._get(environment_id)
        await TenantRepository(self.session).get(environment.tenant_id, for_update=True)
        return await self._get(environment_id, for_update=True)

    async def get(self, environment_id: str) -> schemas.Environment:
        return await self.view(await self._get(environment_id))

    async def list(
        self,
        *,
        key: str | None,
        tag: str | None,
        owner: str | None,
        state: str | None,
        cursor: str | None,
        limit: int,
    ) -> Page[schemas.Environment]:
        statement = select(Environment)
        tenant_id = self.context.principal.tenant_id
        if tenant_id is not None:
            statement = statement.where(Environment.tenant_id == tenant_id)
        if key is not None:
            statement = statement.where(Environment.key == key)
        if owner is not None:
            statement = statement.where(Environment.owner == owner)
        if state is not None:
            statement = statement.where(Environment.state == state)
        else:
            statement = statement.where(Environment.state.not_in(("terminated", "pooled")))
        page = await paginate(self.session, statement, Environment.id, cursor=cursor, limit=limit, convert=lambda e: e)
        items = [await self.view(e) for e in page.items if tag is None or tag in e.tags]
        return Page(items=items, next_cursor=page.next_cursor, total=page.total)

    async def extend(self, environment_id: str, data: schemas.ExtendRequest) -> schemas.Environment:
        environment = await self._locked(environment_id)
        if environment.state != "active":
            raise Conflict(f"environment is {environment.state}", details={"state": environment.state})
        if environment.expires_at is None:
            raise InvalidInput("the environment has no ttl to extend", details={"ttl": None})
        by = _seconds(data.by, "by") if data.by is not None else environment.ttl_seconds
        assert by is not None
        version = await templates.version_of(self.session, environment.template_id, environment.template_version)
        if version.max_extends is not None and environment.extends_used >= version.max_extends:
            raise ExtendLimit(
                f"environment was extended {environment.extends_used} times, the template's max_extends",
                details={"max_extends": version.max_extends, "extends_used": environment.extends_used},
            )
        now = await database_now(self.session)
        target = max(environment.expires_at, now) + timedelta(seconds=by)
        caps = {}
        if version.max_ttl_seconds is not None:
            caps["max_ttl"] = now + timedelta(seconds=version.max_ttl_seconds)
        if environment.max_lifetime_at is not None:
            caps["max_lifetime"] = environment.max_lifetime_at
        for moment in caps.values():
            target = min(target, moment)
        if target <= environment.expires_at:
            raise ExtendLimit(
                "the environment cannot live longer: "
                + ", ".join(f"{name} reached" for name, moment in caps.items() if moment <= target),
                details={"expires_at": environment.expires_at.isoformat(), "limits": sorted(caps)},
            )
        previous = environment.expires_at
        environment.expires_at = target
        environment.extends_used += 1
        environment.version += 1
        environment.updated_at = utc_now()
        await record_event(self.session, environment, "environment.extended", expires_at=target.isoformat())
        self._audit(environment, previous=previous.isoformat(), expires_at=target.isoformat())
        return await self.view(environment)

    async def terminate(self, environment_id: str, *, hard: bool, reason: str) -> schemas.Environment:
        """Terminate now (409 when it is already going); ``delete`` is the idempotent soft form."""
        environment = await self._locked(environment_id)
        if reason == "deleted" and environment.state != "active":
            return await self.view(environment)
        if environment.state != "active":
            raise Conflict(f"environment is already {environment.state}", details={"state": environment.state})
        await terminate(self.session, environment, reason=reason, hard=hard)
        self._audit(environment, hard=hard, reason=reason)
        return await self.view(environment)
