"""System-wide views for system admins: stats and provider reachability."""

from __future__ import annotations

from datetime import timedelta

import anyio
from sqlalchemy import case, func, select

from ctrlplane.admin import schemas
from ctrlplane.auth.models import ApiKey
from ctrlplane.deployments.models import Deployment
from ctrlplane.environments.pools import environment_counts
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.provisioning.contract import ProviderHealth
from ctrlplane.tenants.models import Tenant
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import RequestContext


class AdminService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session

    async def stats(self) -> schemas.SystemStats:
        tenants = dict((await self.session.execute(select(Tenant.status, func.count()).group_by(Tenant.status))).all())
        now = utc_now()
        revoked = ApiKey.revoked_at.is_not(None)
        expired = ApiKey.revoked_at.is_(None) & ApiKey.expires_at.is_not(None) & (ApiKey.expires_at <= now)
        row = (
            await self.session.execute(
                select(
                    func.count(case((revoked, 1))),
                    func.count(case((expired, 1))),
                    func.count(ApiKey.id),
                )
            )
        ).one()
        keys = schemas.ApiKeyStats(revoked=row[0], expired=row[1], active=row[2] - row[0] - row[1])
        return schemas.SystemStats(
            tenants={"active": 0, "suspended": 0, **tenants},
            instances=await InstanceRepository(self.session, None).count_by_state(),
            deployments_last_24h=(
                await self.session.execute(
                    select(func.count(Deployment.id)).where(Deployment.created_at >= now - timedelta(hours=24))
                )
            ).scalar_one(),
            api_keys=keys,
            environments=await environment_counts(self.session),
        )

    async def providers(self) -> list[schemas.ProviderStatus]:
        registry = self.context.services.providers
        results: dict[str, ProviderHealth] = {}

        async def ping(name: str) -> None:
            results[name] = await registry.health(name)

        async with anyio.create_task_group() as group:
            for name in registry.names:
                group.start_soon(ping, name)
        return [
            schemas.ProviderStatus(name=name, available=results[name].available, message=results[name].message)
            for name in registry.names
        ]
