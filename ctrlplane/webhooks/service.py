"""Webhook endpoints: the API side.

**Endpoints.** A tenant registers a URL and the event types it wants (exact types such as
``deploy.succeeded``, prefix wildcards such as ``deploy.*``, or ``*``). The URL must be http(s)
without credentials and must not name or resolve to an address the outbound guard refuses
(``outbound.check_target``; 400), and every connection is vetted again when a delivery is sent.
An endpoint receives the events appended after it was created; an endpoint that is disabled and
enabled again skips the events of the time it was off. Its secret (``whsec_...``) is sealed with
the tenant's data key and shown only when created or rotated; a rotation keeps the previous
secret signing for an overlap (default ``CTRLPLANE_WEBHOOK_SECRET_OVERLAP``), so receivers can
switch over without a gap.

**Deliveries** are made by ``delivery.py``. ``redeliver`` queues one again (a new retry period
starts) and marks a failing endpoint active again: asking for a redelivery says the receiver is
back. ``send_test`` queues a ``webhook.test`` message to one endpoint.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import msgspec

from ctrlplane.errors import Conflict, InvalidInput, InvalidState
from ctrlplane.events.service import last_seq
from ctrlplane.ids import new_id
from ctrlplane.outbound import BlockedDestination, OutboundPolicy, check_target, redacted
from ctrlplane.timeutil import parse_duration_input, utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate
from ctrlplane.webhooks import schemas, signing
from ctrlplane.webhooks.models import WebhookDelivery, WebhookEndpoint
from ctrlplane.webhooks.repository import WebhookRepository

MAX_OVERLAP_SECONDS = 30 * 86400
MAX_ENDPOINTS_PER_TENANT = 50


def secret_aad(webhook_id: str) -> bytes:
    return f"webhook-secret:{webhook_id}".encode()


def matches(patterns: list[str], event_type: str) -> bool:
    for pattern in patterns:
        if pattern == "*" or pattern == event_type:
            return True
        if pattern.endswith(".*") and event_type.startswith(pattern[:-1]):
            return True
    return False


def to_webhook(endpoint: WebhookEndpoint) -> schemas.Webhook:
    return msgspec.convert(endpoint, schemas.Webhook, from_attributes=True)


def to_delivery(delivery: WebhookDelivery) -> schemas.Delivery:
    return schemas.Delivery(
        id=delivery.id,
        webhook_id=delivery.webhook_id,
        message_id=delivery.message_id,
        event_seq=delivery.event_seq,
        event_type=delivery.event_type,
        state=delivery.state,  # type: ignore[arg-type]
        attempts=delivery.attempts,
        response_status=delivery.response_status,
        latency_ms=delivery.latency_ms,
        error=delivery.error,
        next_attempt_at=delivery.next_attempt_at if delivery.state == "pending" else None,
        created_at=delivery.created_at,
        delivered_at=delivery.delivered_at,
        attempt_log=msgspec.convert(delivery.attempt_log, list[schemas.Attempt]),
        payload=delivery.payload,
    )


def new_delivery(
    endpoint: WebhookEndpoint, *, message_id: str, event_seq: int | None, event_type: str, payload: dict[str, Any]
) -> WebhookDelivery:
    now = utc_now()
    return WebhookDelivery(
        id=new_id("whd"),
        tenant_id=endpoint.tenant_id,
        webhook_id=endpoint.id,
        message_id=message_id,
        event_seq=event_seq,
        event_type=event_type,
        payload=payload,
        state="pending",
        attempts=0,
        attempt_log=[],
        next_attempt_at=now,
        created_at=now,
    )


class WebhookService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session
        self.settings = context.services.settings
        self.repo = WebhookRepository(context.session, context.principal.tenant_id)

    def _audit(self, endpoint: WebhookEndpoint, **details: Any) -> None:
        self.context.audit.resource_id = endpoint.id
        self.context.audit.tenant_id = endpoint.tenant_id
        self.context.audit.details.update(details)

    async def _check_url(self, url: str) -> str:
        url = url.strip()
        policy = OutboundPolicy(self.settings.outbound_allow_cidrs)
        try:
            await anyio.to_thread.run_sync(check_target, policy, url)
        except BlockedDestination as exc:
            raise InvalidInput(str(exc), details={"url": url[:256]}) from None
        return url

    async def _seal(self, tenant_id: str, webhook_id: str, secret: str) -> bytes:
        vault = self.context.services.vault
        return await vault.seal(self.session, tenant_id, secret.encode(), aad=secret_aad(webhook_id))

    async def create(self, data: schemas.WebhookCreate) -> schemas.WebhookCreated:
        """Register an endpoint; the answer holds its secret, shown only now."""
        tenant_id = self.context.tenant_scope(data.tenant_id)
        url = await self._check_url(data.url)
        if await self.repo.count(tenant_id) >= MAX_ENDPOINTS_PER_TENANT:
            raise Conflict(
                f"a tenant has at most {MAX_ENDPOINTS_PER_TENANT} webhook endpoints; delete one first",
                details={"limit": MAX_ENDPOINTS_PER_TENANT},
            )
        now = utc_now()
        webhook_id = new_id("whk")
        secret = signing.new_secret()
        endpoint = WebhookEndpoint(
            id=webhook_id,
            tenant_id=tenant_id,
            url=url,
            description=data.description,
            event_types=sorted(set(data.event_types)),
            enabled=data.enabled,
            status="active",
            cursor=await last_seq(self.session, tenant_id),
            secret_sealed=await self._seal(tenant_id, webhook_id, secret),
            created_at=now,
            updated_at=now,
        )
        self.session.add(endpoint)
        await self.session.flush()
        self._audit(endpoint, url=redacted(url), event_types=endpoint.event_types)
        view = to_webhook(endpoint)
        return schemas.WebhookCreated(**msgspec.structs.asdict(view), secret=secret)

    async def list(self, *, cursor: str | None, limit: int) -> Page[schemas.Webhook]:
        return await paginate(
            self.session, self.repo.endpoints(), WebhookEndpoint.id, cursor=cursor, limit=limit, convert=to_webhook
        )

    async def get(self, webhook_id: str) -> schemas.Webhook:
        return to_webhook(await self.repo.endpoint(webhook_id))

    async def update(self, webhook_id: str, data: schemas.WebhookUpdate) -> schemas.Webhook:
        """Change only the fields present. Enabling an endpoint clears ``failing``; enabling a
        disabled one starts it at the tenant's newest event."""
        endpoint = await self.repo.endpoint(webhook_id, for_update=True)
        changed: dict[str, Any] = {}
        if not isinstance(data.url, msgspec.UnsetType):
            endpoint.url = await self._check_url(data.url)
            changed["url"] = redacted(endpoint.url)
        if not isinstance(data.event_types, msgspec.UnsetType):
            endpoint.event_types = changed["event_types"] = sorted(set(data.event_types))
        if not isinstance(data.description, msgspec.UnsetType):
            endpoint.description = data.description
        if not isinstance(data.enabled, msgspec.UnsetType):
            if data.enabled and not endpoint.enabled:
                endpoint.cursor = await last_seq(self.session, endpoint.tenant_id)
            if data.enabled:
                endpoint.status, endpoint.failing_since = "active", None
            endpoint.enabled = changed["enabled"] = data.enabled
        endpoint.updated_at = utc_now()
        self._audit(endpoint, **changed)
        return to_webhook(endpoint)

    async def delete(self, webhook_id: str) -> None:
        """Delete the endpoint and its deliveries; one being sent right now may still arrive."""
        endpoint = await self.repo.endpoint(webhook_id, for_update=True)
        self._audit(endpoint, url=redacted(endpoint.url))
        await self.session.delete(endpoint)

    async def rotate_secret(self, webhook_id: str, data: schemas.SecretRotate) -> schemas.WebhookSecret:
        """A new secret; the current one keeps signing beside it for the overlap."""
        endpoint = await self.repo.endpoint(webhook_id, for_update=True)
        overlap = self.settings.webhook_secret_overlap_seconds
        if data.overlap is not None:
            overlap = parse_duration_input("overlap", data.overlap)
        if not 0 <= overlap <= MAX_OVERLAP_SECONDS:
            raise InvalidInput("overlap must be from 0s to 30d", details={"overlap": data.overlap})
        secret = signing.new_secret()
        now = utc_now()
        if overlap > 0:
            endpoint.previous_secret_sealed = endpoint.secret_sealed
            endpoint.previous_secret_expires_at = now + timedelta(seconds=overlap)
        else:
            endpoint.previous_secret_sealed = None
            endpoint.previous_secret_expires_at = None
        endpoint.secret_sealed = await self._seal(endpoint.tenant_id, endpoint.id, secret)
        endpoint.updated_at = now
        self._audit(endpoint, overlap_seconds=overlap)
        return schemas.WebhookSecret(
            webhook_id=endpoint.id, secret=secret, previous_secret_expires_at=endpoint.previous_secret_expires_at
        )

    async def send_test(self, webhook_id: str) -> schemas.Delivery:
        """Queue a ``webhook.test`` message to this endpoint alone."""
        endpoint = await self.repo.endpoint(webhook_id, for_update=True)
        message_id = new_id("whd")
        delivery = new_delivery(
            endpoint,
            message_id=message_id,
            event_seq=None,
            event_type="webhook.test",
            payload={
                "type": "webhook.test",
                "timestamp": utc_now().isoformat().replace("+00:00", "Z"),
                "data": {"webhook_id": endpoint.id, "tenant_id": endpoint.tenant_id},
            },
        )
        delivery.id = message_id
        self.session.add(delivery)
        await self.session.flush()
        self._audit(endpoint, delivery_id=delivery.id)
        return to_delivery(delivery)

    async def deliveries(
        self, webhook_id: str, *, state: str | None, cursor: str | None, limit: int
    ) -> Page[schemas.Delivery]:
        await self.repo.endpoint(webhook_id)
        return await paginate(
            self.session,
            self.repo.deliveries_of(webhook_id, state),
            WebhookDelivery.id,
            cursor=cursor,
            limit=limit,
            convert=to_delivery,
        )

    async def delivery(self, webhook_id: str, delivery_id: str) -> schemas.Delivery:
        await self.repo.endpoint(webhook_id)
        return to_delivery(await self.repo.delivery(webhook_id, delivery_id))

    async def redeliver(self, webhook_id: str, delivery_id: str) -> schemas.Delivery:
        """Send a delivery again, or a queued one now (409 while it is being sent)."""
        endpoint = await self.repo.endpoint(webhook_id, for_update=True)
        delivery = await self.repo.delivery(webhook_id, delivery_id, for_update=True)
        if delivery.state == "sending":
            raise InvalidState(f"delivery {delivery.id} is still {delivery.state}", details={"state": delivery.state})
        now = utc_now()
        delivery.state = "pending"
        delivery.next_attempt_at = now
        delivery.first_attempt_at = None
        delivery.error = None
        endpoint.status, endpoint.failing_since = "active", None
        endpoint.updated_at = now
        self._audit(endpoint, delivery_id=delivery.id)
        return to_delivery(delivery)
