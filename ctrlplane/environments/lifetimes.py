"""The lifetime keeper: a leader-only background loop that terminates environments whose
``expires_at`` or ``max_lifetime_at`` passed on the database clock, and marks ``terminated`` those
whose instance is gone. It keeps no state of its own: after a restart, or on a new leader, the first
pass finds whatever expired meanwhile, so nothing outlives its time by more than one interval. It
also keeps the warm pools (``pools.py``) filled."""

from __future__ import annotations

import structlog
from sqlalchemy import or_, select

from ctrlplane.environments import pools
from ctrlplane.environments.audit import system_change
from ctrlplane.environments.models import Environment
from ctrlplane.environments.service import database_now, record_event, terminate
from ctrlplane.errors import NotFound
from ctrlplane.ids import TenantId
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.signals import Absence
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices

log = structlog.get_logger("ctrlplane.environments")

_ORPHANED = (
    select(Environment.id)
    .join(Instance, Instance.id == Environment.instance_id)
    .where(Environment.state.in_(("active", "pooled")), Instance.state.in_(("destroying", "destroyed")))
)
"""Environments whose instance is going or gone while they are not: the router's SQL reads
instances the same way (``network/router.py``)."""

BATCH = 100
ABSENCE_SECONDS = 10.0
"""With no environment and no pool, the keeper reads again when a commit writes environments or
templates, or after this long, instead of at every commit that writes instances."""


class LifetimeKeeper:
    READS = pools.READS | {Instance.__tablename__}
    """The tables a pass reads: a commit that wrote none of them changes nothing it would do."""

    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.anything = Absence(services.work, pools.READS, ABSENCE_SECONDS)

    async def _anything_to_keep(self) -> bool:
        async with self.services.db.read() as session:
            return bool((await session.execute(pools.ANY_TO_KEEP)).scalar())

    async def run_once(self) -> int:
        """One pass; the number of environments it changed. A read comes first, so an idle pass
        takes no write lock (on SQLite, the whole database's); with no environment and no pool,
        not even that until a commit writes environments or templates (``signals.Absence``)."""
        if not await self.anything.present(self._anything_to_keep):
            return 0
        async with self.services.db.read() as session:
            now = await database_now(session)
            pending = (
                await session.execute(
                    select(Environment.id)
                    .where(
                        or_(
                            Environment.state == "terminating",
                            (Environment.state == "active")
                            & or_(Environment.expires_at <= now, Environment.max_lifetime_at <= now),
                        )
                    )
                    .limit(1)
                )
            ).first()
            orphaned = (await session.execute(_ORPHANED.limit(1))).first() is not None
            pool_work = bool(await pools.deficits(session)) or bool(await pools.outdated(session))
        if pending is None and not pool_work and not orphaned:
            return 0
        changed = await self._expire() + await self._settle()
        if orphaned:
            changed += await self._orphaned()
        if pool_work:
            changed += await self._pools()
        if changed:
            await self.services.events.notify()
            await self.services.work.notify()
        return changed

    async def _expire(self) -> int:
        async with self.services.db.write() as session, session.begin():
            now = await database_now(session)
            due = (
                (
                    await session.execute(
                        select(Environment)
                        .where(
                            Environment.state == "active",
                            or_(Environment.expires_at <= now, Environment.max_lifetime_at <= now),
                        )
                        .order_by(Environment.expires_at)
                        .limit(BATCH)
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            for environment in due:
                await terminate(session, environment, reason="expired", hard=False)
                await system_change(
                    session,
                    self.services.audit_keys,
                    environment,
                    "expire",
                    expires_at=environment.expires_at.isoformat() if environment.expires_at else None,
                    max_lifetime_at=environment.max_lifetime_at.isoformat() if environment.max_lifetime_at else None,
                )
                log.info("environment_expired", environment=environment.id, tenant=environment.tenant_id)
            return len(due)

    async def _pools(self) -> int:
        """Retire outdated pool members and refill every pool to ``min_ready``."""
        async with self.services.db.write() as session, session.begin():
            retired = await pools.outdated(session, lock=True)
            for member in retired:
                await terminate(session, member, reason="pool_retired", hard=False)
                await system_change(
                    session,
                    self.services.audit_keys,
                    member,
                    "pool_retire",
                    template_id=member.template_id,
                    template_version=member.template_version,
                )
            made = 0
            wanted = {t.id: t for t in await pools.pooled_templates(session)}
            for template_id, missing in (await pools.deficits(session)).items():
                made += await pools.refill(self.services, session, wanted[template_id], missing)
            if made or retired:
                log.info("pools_refilled", made=made, retired=len(retired))
            return made + len(retired)

    async def _orphaned(self) -> int:
        """Active (or pooled) environments whose instance was deleted directly (``DELETE
        /v1/instances/{id}``): they end too, with reason ``instance_deleted``, freeing their key."""
        async with self.services.db.write() as session, session.begin():
            rows = (
                (
                    await session.execute(
                        select(Environment)
                        .where(Environment.id.in_(_ORPHANED.with_only_columns(Environment.id).limit(BATCH)))
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            for environment in rows:
                await terminate(session, environment, reason="instance_deleted", hard=False)
                await system_change(
                    session, self.services.audit_keys, environment, "terminate", reason="instance_deleted"
                )
            return len(rows)

    async def _settle(self) -> int:
        async with self.services.db.write() as session, session.begin():
            terminating = (
                (
                    await session.execute(
                        select(Environment)
                        .where(Environment.state == "terminating")
                        .limit(BATCH)
                        .with_for_update(skip_locked=True)
                    )
                )
                .scalars()
                .all()
            )
            settled = 0
            for environment in terminating:
                if environment.instance_id is not None:
                    try:
                        instance = await InstanceRepository(session, TenantId(environment.tenant_id)).view(
                            environment.instance_id
                        )
                    except NotFound:
                        instance = None
                    if instance is not None and instance.state != "destroyed":
                        continue
                environment.state = "terminated"
                environment.terminated_at = utc_now()
                environment.version += 1
                environment.updated_at = environment.terminated_at
                await record_event(
                    session, environment, "environment.terminated", reason=environment.termination_reason
                )
                await system_change(
                    session, self.services.audit_keys, environment, "settle", reason=environment.termination_reason
                )
                settled += 1
            return settled
