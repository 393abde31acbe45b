from __future__ import annotations

from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import NotFound
from ctrlplane.ids import TenantId
from ctrlplane.webhooks.models import WebhookDelivery, WebhookEndpoint


class WebhookRepository:
    """Every webhook and delivery query of the API, scoped to one tenant (``None`` only for system admins)."""

    def __init__(self, session: AsyncSession, tenant_id: TenantId | None) -> None:
        self.session = session
        self.tenant_id = tenant_id

    def endpoints(self) -> Select[WebhookEndpoint]:
        statement = select(WebhookEndpoint)
        if self.tenant_id is not None:
            statement = statement.where(WebhookEndpoint.tenant_id == self.tenant_id)
        return statement

    async def count(self, tenant_id: str) -> int:
        statement = select(func.count()).select_from(WebhookEndpoint).where(WebhookEndpoint.tenant_id == tenant_id)
        return int((await self.session.execute(statement)).scalar_one())

    async def endpoint(self, webhook_id: str, *, for_update: bool = False) -> WebhookEndpoint:
        statement = self.endpoints().where(WebhookEndpoint.id == webhook_id)
        if for_update:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound.of("webhook", webhook_id)
        return found

    def deliveries_of(self, webhook_id: str, state: str | None) -> Select[WebhookDelivery]:
        statement = select(WebhookDelivery).where(WebhookDelivery.webhook_id == webhook_id)
        if self.tenant_id is not None:
            statement = statement.where(WebhookDelivery.tenant_id == self.tenant_id)
        if state is not None:
            statement = statement.where(WebhookDelivery.state == state)
        return statement

    async def delivery(self, webhook_id: str, delivery_id: str, *, for_update: bool = False) -> WebhookDelivery:
        statement = self.deliveries_of(webhook_id, None).where(WebhookDelivery.id == delivery_id)
        if for_update:
            statement = statement.with_for_update().execution_options(populate_existing=True)
        found = (await self.session.execute(statement)).scalar_one_or_none()
        if found is None:
            raise NotFound.of("delivery", delivery_id)
        return found
