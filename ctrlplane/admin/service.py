"""System-wide views for system admins: stats and provider reachability."""

from __future__ import annotations

from datetime import timedelta

import anyio

from ctrlplane.admin import schemas
from ctrlplane.auth.service import key_counts
from ctrlplane.deployments.service import count_since
from ctrlplane.environments.pools import environment_counts
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.provisioning.contract import ProviderHealth
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import RequestContext


class AdminService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session

    async def stats(self) -> schemas.SystemStats:
        tenants = await TenantRepository(self.session).count_by_status()
        now = utc_now()
        revoked, expired, total = await key_counts(self.session, now)
        keys = schemas.ApiKeyStats(revoked=revoked, expired=expired, active=total - revoked - expired)
        return schemas.SystemStats(
            tenants={"active": 0, "suspended": 0, **tenants},
            instances=await InstanceRepository(self.session, None).count_by_state(),
            deployments_last_24h=await count_since(self.session, now - timedelta(hours=24)),
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
