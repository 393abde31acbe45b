"""Log drains: the API side. A drain names a receiver URL (checked like a webhook's:
``outbound.check_target``, 400 for a refused address) and either one instance of the tenant or,
without ``instance_id``, all of them. The shipping is ``shipper.py``'s."""

from __future__ import annotations

import anyio
import msgspec
from sqlalchemy import Select, func, select

from ctrlplane.drains import schemas
from ctrlplane.drains.models import LogDrain
from ctrlplane.errors import Conflict, InvalidInput, NotFound
from ctrlplane.ids import new_id
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.outbound import BlockedDestination, OutboundPolicy, check_target, redacted
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate

MAX_DRAINS_PER_TENANT = 20


def to_drain(drain: LogDrain) -> schemas.LogDrain:
    fields = {name: getattr(drain, name) for name in schemas.LogDrain.__struct_fields__ if name != "header_names"}
    return msgspec.convert({**fields, "header_names": list(drain.header_names or [])}, schemas.LogDrain)


def headers_aad(drain_id: str) -> bytes:
    return f"log-drain-headers:{drain_id}".encode()


class LogDrainService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session
        self.tenant_id = context.principal.tenant_id

    def _scoped(self) -> Select[LogDrain]:
        statement = select(LogDrain)
        if self.tenant_id is not None:
            statement = statement.where(LogDrain.tenant_id == self.tenant_id)
        return statement

    async def _drain(self, drain_id: str) -> LogDrain:
        found = (await self.session.execute(self._scoped().where(LogDrain.id == drain_id))).scalar_one_or_none()
        if found is None:
            raise NotFound.of("log drain", drain_id)
        return found

    async def create(self, data: schemas.LogDrainCreate) -> schemas.LogDrain:
        """Start shipping the lines of one instance, or of every instance of the tenant."""
        tenant_id = self.context.tenant_scope(data.tenant_id)
        if data.instance_id is not None:
            await InstanceRepository(self.session, tenant_id).get(data.instance_id)
        reserved = sorted(name for name in data.headers if name.lower() in schemas.RESERVED_HEADERS)
        if reserved:
            raise InvalidInput(
                f"headers may not set {', '.join(reserved)}: the shipper sets them", details={"headers": reserved}
            )
        url = data.url.strip()
        policy = OutboundPolicy(self.context.services.settings.outbound_allow_cidrs)
        try:
            await anyio.to_thread.run_sync(check_target, policy, url)
        except BlockedDestination as exc:
            raise InvalidInput(str(exc), details={"url": url[:256]}) from None
        existing = await self.session.scalar(
            select(func.count()).select_from(LogDrain).where(LogDrain.tenant_id == tenant_id)
        )
        if (existing or 0) >= MAX_DRAINS_PER_TENANT:
            raise Conflict(
                f"a tenant has at most {MAX_DRAINS_PER_TENANT} log drains; delete one first",
                details={"limit": MAX_DRAINS_PER_TENANT},
            )
        drain_id = new_id("drn")
        sealed = (
            await self.context.services.vault.seal(
                self.session, tenant_id, msgspec.json.encode(data.headers), aad=headers_aad(drain_id)
            )
            if data.headers
            else None
        )
        drain = LogDrain(
            id=drain_id,
            tenant_id=tenant_id,
            instance_id=data.instance_id,
            url=url,
            format=data.format,
            sent_lines=0,
            dropped_lines=0,
            created_at=utc_now(),
            header_names=sorted(data.headers),
            headers_sealed=sealed,
        )
        self.session.add(drain)
        await self.session.flush()
        self.context.audit.resource_id, self.context.audit.tenant_id = drain.id, tenant_id
        self.context.audit.details.update(
            url=redacted(url), format=data.format, instance_id=data.instance_id, header_names=sorted(data.headers)
        )
        return to_drain(drain)

    async def list(self, *, cursor: str | None, limit: int) -> Page[schemas.LogDrain]:
        return await paginate(self.session, self._scoped(), LogDrain.id, cursor=cursor, limit=limit, convert=to_drain)

    async def get(self, drain_id: str) -> schemas.LogDrain:
        return to_drain(await self._drain(drain_id))

    async def delete(self, drain_id: str) -> None:
        drain = await self._drain(drain_id)
        self.context.audit.resource_id, self.context.audit.tenant_id = drain.id, drain.tenant_id
        await self.session.delete(drain)
