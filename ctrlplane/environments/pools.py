"""Warm pools: running, unassigned instances of a template, claimed by get-or-create.

A pool member is an ``environments`` row in state ``pooled`` (its key ``pool:<id>``, its owner
``pool``) with its instance, made from the template's current version with every parameter at its
default. A get-or-create with exactly those values claims one: a database update of that row
(state ``active``, the caller's key, owner, lifetimes), so no container starts; the partial unique
index still guarantees one active environment per key. The lifetime keeper refills each pool to
``min_ready`` in the background, and retires members of an older version, of a deleted template,
or above ``max_ready``. Pooled instances are instances: they count against the tenant's quotas.
"""

from __future__ import annotations

import msgspec
import structlog
from sqlalchemy import and_, exists, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.auth.providers import Principal
from ctrlplane.environments.audit import system_change
from ctrlplane.environments.furnish import furnish
from ctrlplane.environments.models import Environment
from ctrlplane.errors import CtrlplaneError
from ctrlplane.ids import TenantId, new_id
from ctrlplane.instances.service import InstanceService
from ctrlplane.network.router import default_hostname
from ctrlplane.templates import service as templates
from ctrlplane.templates.models import Template
from ctrlplane.templates.render import render, resolve
from ctrlplane.templates.schemas import Parameter, ParameterValue
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices, AuditDraft, RequestContext

log = structlog.get_logger("ctrlplane.pools")

POOL_OWNER = "pool"
READS = frozenset({Environment.__tablename__, Template.__tablename__})
"""The tables ``deficits`` and ``outdated`` read."""


def pool_values(template: Template) -> dict[str, ParameterValue] | None:
    """The parameter values pool members are made with (all defaults), or None when the template
    has a required parameter without a default (it cannot be pooled)."""
    parameters = [msgspec.convert(p, Parameter) for p in template.parameters]
    try:
        return resolve(parameters, {})
    except CtrlplaneError:
        return None


async def claim(
    session: AsyncSession, template: Template, tenant_id: str, values: dict[str, ParameterValue]
) -> Environment | None:
    """A ready member of the template's pool in the tenant, locked for the caller to assign, when
    ``values`` are the pool's; None otherwise."""
    if template.pool_max_ready <= 0 or values != pool_values(template):
        return None
    statement = (
        select(Environment)
        .where(
            Environment.tenant_id == tenant_id,
            Environment.template_id == template.id,
            Environment.template_version == template.version,
            Environment.state == "pooled",
        )
        .order_by(Environment.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    member: Environment | None = (await session.execute(statement)).scalars().first()
    return member


def _pool_context(services: AppServices, session: AsyncSession, tenant_id: str) -> RequestContext:
    principal = Principal(subject=POOL_OWNER, kind="system", tenant_id=TenantId(tenant_id), roles=frozenset({"deploy"}))
    return RequestContext(
        request_id=new_id("req"),
        principal=principal,
        session=session,
        audit=AuditDraft(resource="environment", action="pool"),
        services=services,
    )


_POOLED = and_(Template.deleted_at.is_(None), Template.tenant_id.is_not(None), Template.pool_min_ready > 0)

ANY_TO_KEEP = select(exists(select(Environment.id)) | exists(select(Template.id).where(_POOLED)))
"""Whether the lifetimes keeper has anything to look at: an environment, or a template that keeps
a pool. Most passes of an installation without environments end at this one read."""


async def pooled_templates(session: AsyncSession) -> list[Template]:
    return list((await session.execute(select(Template).where(_POOLED))).scalars())


async def deficits(session: AsyncSession) -> dict[str, int]:
    """Per template id, how many members its pool lacks (current version)."""
    wanted = await pooled_templates(session)
    result: dict[str, int] = {}
    for template in wanted:
        ready = await _count(session, template)
        if ready < template.pool_min_ready:
            result[template.id] = template.pool_min_ready - ready
    return result


async def _count(session: AsyncSession, template: Template) -> int:
    return int(
        (
            await session.execute(
                select(func.count(Environment.id)).where(
                    Environment.template_id == template.id,
                    Environment.template_version == template.version,
                    Environment.state == "pooled",
                )
            )
        ).scalar_one()
    )


async def outdated(session: AsyncSession, *, lock: bool = False) -> list[Environment]:
    """Pool members of an older version, of a deleted or no longer pooled template, or above
    ``max_ready``."""
    statement = (
        select(Environment, Template)
        .join(Template, Template.id == Environment.template_id)
        .where(Environment.state == "pooled")
        .order_by(Environment.id)
    )
    if lock:
        statement = statement.with_for_update(of=Environment, skip_locked=True)
    rows = (await session.execute(statement)).all()
    kept: dict[str, int] = {}
    retire = []
    for member, template in rows:
        current = (
            template.deleted_at is None
            and member.template_version == template.version
            and kept.get(template.id, 0) < template.pool_max_ready
        )
        if current:
            kept[template.id] = kept.get(template.id, 0) + 1
        else:
            retire.append(member)
    return retire


async def refill(services: AppServices, session: AsyncSession, template: Template, missing: int) -> int:
    """Make up to ``missing`` new members of the template's pool; stops at the tenant's quota."""
    assert template.tenant_id is not None
    values = pool_values(template)
    if values is None:
        return 0
    version = await templates.version_of(session, template.id, template.version)
    spec, _ = templates.declared(version)
    tenant = await TenantRepository(session).get(template.tenant_id)
    made = 0
    for _ in range(missing):
        context = _pool_context(services, session, template.tenant_id)
        wanted = render(spec, values, name=f"pool-{template.name[:40]}-{new_id('env')[-8:]}".lower())
        try:
            async with session.begin_nested():
                instance = await InstanceService(context).create(wanted)
                furnished = await furnish(context, instance.id, spec, values)
        except CtrlplaneError as exc:
            log.warning("pool_refill_stopped", template=template.id, reason=exc.message)
            break
        now = utc_now()
        member_id = new_id("env")
        member = Environment(
            id=member_id,
            tenant_id=template.tenant_id,
            key=f"pool:{member_id}",
            template_id=template.id,
            template_version=template.version,
            parameters=values,
            owner=POOL_OWNER,
            state="pooled",
            instance_id=instance.id,
            hostname=default_hostname(services.settings, instance.name, tenant.slug),
            ttl_seconds=None,
            expires_at=None,
            max_lifetime_at=None,
            extends_used=0,
            idle_timeout_seconds=None,
            on_idle="destroy",
            tags=[],
            version=1,
            created_at=now,
            updated_at=now,
        )
        session.add(member)
        await session.flush()
        await system_change(
            session,
            services.audit_keys,
            member,
            "pool_refill",
            template_id=template.id,
            template_version=template.version,
            **furnished,
        )
        made += 1
    return made


async def environment_counts(session: AsyncSession) -> dict[str, int]:
    """Environments by state across tenants, for ``/v1/admin/stats`` (``pooled``: the warm pools)."""
    rows = await session.execute(select(Environment.state, func.count()).group_by(Environment.state))
    counts = {"pooled": 0, "active": 0, "terminating": 0}
    counts.update({str(state): int(count) for state, count in rows.all()})
    return counts
