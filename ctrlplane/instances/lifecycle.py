"""The instance room's door for other rooms: reconfigure, destroy and suspend instances.

Tenants suspend, unsuspend and delete all of theirs (``suspend_tenant``, ``unsuspend_tenant``,
``destroy_tenant``) and reconfigure them when their quota changes (``reconfigure_tenant``); health
checks, routes and domains reconfigure the instance they belong to (``reconfigure``); environments
destroy theirs (``destroy_by_id``). Each records the desired state, appends its events and queues
the operation in the caller's transaction; a worker carries it out after the commit.
``InstanceService`` takes the same paths for the instance's own API (``destroy``, ``suspend``,
``unsuspend``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete

from ctrlplane.events.service import append as append_event
from ctrlplane.ids import TenantId
from ctrlplane.instances.models import Instance
from ctrlplane.instances.observe import set_state
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.operations import queue
from ctrlplane.provisioning.contract import ConfigurableProvider
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.timeutil import utc_now

FINAL = ("destroying", "destroyed")


async def reconfigure(session: Any, providers: ProviderRegistry, instances: Iterable[Instance]) -> None:
    """Queue a ``configure`` operation for each of ``instances`` whose runtime enforces quotas, runs
    probes or serves routes itself (``ConfigurableProvider``: Kubernetes) after a change to one of
    those (the tenant's quota, the instance's health checks, routes or domains). Instances on other
    runtimes (Docker), going away, or with a configure still waiting to start get none: that one
    reads the database when it runs."""
    wanted = [
        instance
        for instance in instances
        if instance.state not in FINAL
        and instance.provider_name in providers.names
        and isinstance(providers.get(instance.provider_name), ConfigurableProvider)
    ]
    if not wanted:
        return
    # locked: a worker's SKIP LOCKED claim passes it over until this change commits, so the
    # configure that stands in for it cannot run on the configuration before it
    waiting = await queue.pending_of_kind(session, [i.id for i in wanted], "configure")
    for instance in wanted:
        if instance.id not in waiting:
            queue.enqueue(session, tenant_id=instance.tenant_id, instance_id=instance.id, kind="configure")


async def destroy(session: Any, instance: Instance, *, hard: bool = False) -> None:
    """Mark the instance for destruction and queue its teardown (also used by tenant deletion and
    environments); ``hard`` kills its processes first instead of stopping them gracefully."""
    previous = instance.state
    instance.state, instance.desired_state = "destroying", "destroyed"
    instance.version += 1
    instance.updated_at = utc_now()
    queue.enqueue(
        session,
        tenant_id=instance.tenant_id,
        instance_id=instance.id,
        kind="deprovision",
        payload={"hard": True} if hard else None,
    )
    await append_event(
        session,
        tenant_id=instance.tenant_id,
        instance_id=instance.id,
        type="instance.state_changed",
        data={"from": previous, "to": "destroying", "action": "delete"},
    )


async def suspend(session: Any, instance: Instance, *, reason: str, by: str) -> None:
    """Stop the instance and remember whether it should run again when unsuspended."""
    instance.suspended_at = utc_now()
    instance.suspension_reason = reason
    instance.suspended_by = by
    instance.resume_state = instance.desired_state
    if instance.desired_state == "running":
        instance.desired_state = "stopped"
        await set_state(session, instance, "stopping", f"suspended: {reason}")
        queue.enqueue(session, tenant_id=instance.tenant_id, instance_id=instance.id, kind="stop")
    await _changed(session, instance, "instance.suspended", {"reason": reason, "by": by})


async def unsuspend(session: Any, instance: Instance, *, reason: str) -> None:
    resume = instance.resume_state
    instance.suspended_at = None
    instance.suspension_reason = None
    instance.suspended_by = None
    instance.resume_state = None
    if resume == "running":
        instance.desired_state = "running"
        await set_state(session, instance, "starting", "")
        instance.recent_restarts = []
        queue.enqueue(session, tenant_id=instance.tenant_id, instance_id=instance.id, kind="start")
    await _changed(session, instance, "instance.unsuspended", {"reason": reason})


async def _changed(session: Any, instance: Instance, event: str, data: dict[str, Any]) -> None:
    """A new version of the instance, and the event that says why."""
    instance.version += 1
    instance.updated_at = utc_now()
    await append_event(session, tenant_id=instance.tenant_id, instance_id=instance.id, type=event, data=data)


async def reconfigure_tenant(session: Any, providers: ProviderRegistry, tenant_id: TenantId) -> None:
    """``reconfigure`` every live instance of the tenant (its quota changed)."""
    await reconfigure(session, providers, await InstanceRepository(session, tenant_id).live_for_tenant(tenant_id))


async def destroy_by_id(session: Any, tenant_id: TenantId, instance_id: str, *, hard: bool = False) -> None:
    """``destroy`` the tenant's instance unless it is already going away (locks its row)."""
    instance = await InstanceRepository(session, tenant_id).get(instance_id, for_update=True)
    if instance.state not in FINAL:
        await destroy(session, instance, hard=hard)


async def destroy_tenant(session: Any, tenant_id: TenantId) -> bool:
    """``destroy`` every live instance of the tenant not already being destroyed (locks their rows);
    False when it has none."""
    instances = await InstanceRepository(session, tenant_id).live_for_tenant(tenant_id, for_update=True)
    for instance in instances:
        if instance.state != "destroying":
            await destroy(session, instance)
    return bool(instances)


async def suspend_tenant(session: Any, tenant_id: TenantId, *, reason: str) -> list[str]:
    """``suspend`` the tenant's live instances not suspended already (locks their rows); their IDs."""
    stopped = []
    for instance in await InstanceRepository(session, tenant_id).live_for_tenant(tenant_id, for_update=True):
        if instance.suspended_at is None and instance.state != "destroying":
            await suspend(session, instance, reason=reason, by="tenant")
            stopped.append(instance.id)
    return stopped


async def unsuspend_tenant(session: Any, tenant_id: TenantId, *, reason: str) -> list[str]:
    """``unsuspend`` the instances the tenant's suspension stopped (locks their rows); their IDs."""
    resumed = []
    for instance in await InstanceRepository(session, tenant_id).live_for_tenant(tenant_id, for_update=True):
        if instance.suspended_by == "tenant":
            await unsuspend(session, instance, reason=reason)
            resumed.append(instance.id)
    return resumed


async def forget_tenant(session: Any, tenant_id: TenantId) -> None:
    """Delete the records of a tenant's instances, all destroyed: the tenant is being removed."""
    await session.execute(delete(Instance).where(Instance.tenant_id == tenant_id))
