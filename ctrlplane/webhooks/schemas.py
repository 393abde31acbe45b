from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048, description="An http or https URL")]
EventPattern = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=64,
        pattern=r"^(\*|[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?)$",
        description="An event type (deploy.succeeded), a prefix wildcard (deploy.*) or * for every event",
    ),
]
EventPatterns = Annotated[list[EventPattern], msgspec.Meta(min_length=1, max_length=50)]
Description = Annotated[str, msgspec.Meta(max_length=256)]
Overlap = Annotated[
    str, msgspec.Meta(max_length=32, description="How long the previous secret still signs, e.g. 24h; 0s for none")
]
WebhookStatus = Literal["active", "failing"]
DeliveryState = Literal["pending", "sending", "succeeded", "failed"]


class WebhookCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    event_types: EventPatterns = msgspec.field(default_factory=lambda: ["*"])
    enabled: bool = True
    description: Description = ""
    tenant_id: str | None = None
    """Only system admins name it; a tenant's token creates in its own tenant."""


class WebhookUpdate(msgspec.Struct, forbid_unknown_fields=True):
    url: Url | msgspec.UnsetType = msgspec.UNSET
    event_types: EventPatterns | msgspec.UnsetType = msgspec.UNSET
    enabled: bool | msgspec.UnsetType = msgspec.UNSET
    description: Description | msgspec.UnsetType = msgspec.UNSET


class Webhook(msgspec.Struct):
    id: str
    tenant_id: str
    url: str
    description: str
    event_types: list[str]
    enabled: bool
    status: WebhookStatus
    """``failing``: a delivery ran out of retries; deliveries wait until the endpoint is enabled
    again (PATCH ``enabled: true``) or a delivery is redelivered."""
    failing_since: datetime | None
    previous_secret_expires_at: datetime | None
    """While in the future, deliveries are signed with the previous secret too."""
    created_at: datetime
    updated_at: datetime


class WebhookCreated(Webhook):
    secret: str
    """The signing secret (``whsec_...``), shown only in this answer."""


class SecretRotate(msgspec.Struct, forbid_unknown_fields=True):
    overlap: Overlap | None = None
    """Default: CTRLPLANE_WEBHOOK_SECRET_OVERLAP (24h)."""


class WebhookSecret(msgspec.Struct):
    webhook_id: str
    secret: str
    """The new signing secret, shown only in this answer."""
    previous_secret_expires_at: datetime | None


class Attempt(msgspec.Struct):
    at: datetime
    response_status: int | None
    latency_ms: int
    error: str | None


class Delivery(msgspec.Struct):
    id: str
    webhook_id: str
    message_id: str
    """The ``webhook-id`` header: the same on every retry and redelivery of this message."""
    event_seq: int | None
    event_type: str
    state: DeliveryState
    attempts: int
    response_status: int | None
    latency_ms: int | None
    error: str | None
    next_attempt_at: datetime | None
    created_at: datetime
    delivered_at: datetime | None
    attempt_log: list[Attempt]
    """The most recent attempts, oldest first."""
    payload: dict[str, Any]
