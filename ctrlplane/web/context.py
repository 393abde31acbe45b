"""What a request handler can reach: the app's long-lived services and the per-request context."""

from __future__ import annotations

import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.audit.checkpoints import CHECKPOINT_INFO
from ctrlplane.audit.service import AuditKeys
from ctrlplane.auth.providers import Authenticator, Principal
from ctrlplane.db import Database
from ctrlplane.errors import Forbidden, InvalidInput
from ctrlplane.events.fanout import EventFeeds
from ctrlplane.ids import TenantId
from ctrlplane.network.router import Router
from ctrlplane.network.sleep import IdleHandlers
from ctrlplane.nodes.assignments import NodeAssignments
from ctrlplane.provisioning.contract import WorkloadStatus
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.ratelimit.service import RateLimiter
from ctrlplane.registries import RegistryPolicy
from ctrlplane.secrets.crypto import Vault
from ctrlplane.settings import Settings
from ctrlplane.signals import Announcements, Signal
from ctrlplane.telemetry.hub import Telemetry

CONTEXT_KEY = "ctrlplane.context"


def default_replica_name() -> str:
    """This process among the replicas: host and pid, so logs and operation leases say who."""
    return f"{socket.gethostname()[:20]}-{os.getpid()}"[-30:]


ReservedUsage = Callable[[AsyncSession, str], Awaitable[tuple[int, int]]]
"""CPU millis and memory MB a tenant holds outside its instances' replicas (one-off runs)."""


@dataclass
class AppServices:
    settings: Settings
    db: Database
    authenticator: Authenticator
    providers: ProviderRegistry
    version: str
    vault: Vault
    events: Signal = field(default_factory=Signal)
    work: Signal = field(default_factory=Signal)
    started: Announcements[WorkloadStatus] = field(default_factory=Announcements)
    """A provider's status of an instance it just started or provisioned, announced by the worker
    before it records it (the wake listener holds a request for it: ``network/wake.py``)."""
    telemetry: Telemetry = field(default_factory=Telemetry)
    replica: str = field(default_factory=default_replica_name)
    rate_limiter: RateLimiter | None = None
    idle_handlers: IdleHandlers = field(default_factory=IdleHandlers)
    """What idleness means for instances other rooms own (``network.sleep``)."""
    reserved_usage: list[ReservedUsage] = field(default_factory=list)
    """Counted by every quota check of CPU and memory, beside the instances' own (``runs``)."""
    router: Router = field(init=False)
    feeds: EventFeeds = field(init=False)
    """One reader of each followed tenant's events for all its streams (``events/fanout.py``)."""
    registries: RegistryPolicy = field(init=False)
    audit_keys: AuditKeys = field(init=False)
    checkpoint_keys: AuditKeys = field(init=False)
    node_events: Signal = field(default_factory=Signal)
    """Wakes the nodes' event streams after a node event commits (they poll too)."""
    nodes: NodeAssignments = field(init=False)
    """The desired state of instances on nodes (``ctrlplane.nodes.assignments``)."""

    def __post_init__(self) -> None:
        self.router = Router(self.settings, self.db)
        self.feeds = EventFeeds(self.db, self.events, self.settings.event_poll_seconds)
        self.nodes = NodeAssignments(self.db, self.vault, self.node_events)
        self.audit_keys = AuditKeys(self.vault.ring.keys)
        self.checkpoint_keys = AuditKeys(self.vault.ring.keys, info=CHECKPOINT_INFO)
        self.registries = RegistryPolicy(
            allowed_cidrs=self.settings.outbound_allow_cidrs, allowed_registries=self.settings.registry_allow
        )


class AuditDraft(msgspec.Struct):
    """What the audit entry of this request will say; services fill in what only they know."""

    resource: str
    action: str
    resource_id: str | None = None
    tenant_id: str | None = None
    details: dict[str, Any] = msgspec.field(default_factory=dict)


class RequestContext(msgspec.Struct):
    """What a handler acts with (one per request; a Struct, not a dataclass: made on every request,
    and msgspec builds it in C)."""

    request_id: str
    principal: Principal
    session: AsyncSession
    audit: AuditDraft
    services: AppServices
    client_addr: str | None = None
    cached_reads: bool = False
    """A read request that may be answered from the row cache (``rowcache.py``): never a write
    (its transaction may see its own uncommitted rows), nor a read sent with ``Cache-Control:
    no-cache``."""

    def tenant_scope(self, requested: str | None) -> TenantId:
        """The tenant this request acts in.

        A tenant's token acts in its own tenant; naming another one is refused (403). A system
        admin names the tenant explicitly.
        """
        principal = self.principal
        if principal.tenant_id is not None:
            if requested is not None and requested != principal.tenant_id:
                raise Forbidden("tenant_id differs from the tenant of your token")
            return principal.tenant_id
        if requested is None:
            raise InvalidInput("system admins must name tenant_id", details={"tenant_id": "required for system admins"})
        return TenantId(requested)
