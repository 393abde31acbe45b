"""The reconciler: on an interval, make what runs match what is wanted.

For each provider it reads ``inventory`` (everything labelled as ctrlplane's) and, for each live
instance with no operation in flight, ``status``:

* containers whose instance does not exist or is destroyed are removed (orphans);
* an instance that should run but has no or too few replicas gets a ``repair`` operation, which
  re-provisions the missing ones (idempotently);
* an exited replica is restarted (through a ``restart`` operation) as the instance's
  ``restart_policy`` says (``always``; or ``on-failure`` when it exited non-zero or was
  OOM-killed; never for ``never``), each restart is an ``instance.restarted`` event with the exit
  code; more than ``CTRLPLANE_CRASHLOOP_RESTARTS`` within ``CTRLPLANE_CRASHLOOP_WINDOW_SECONDS``
  marks the instance ``failed`` (crash loop) and stops restarting it (a ``failed`` instance is left
  alone until a start or restart, so its reason stays readable);
* an instance that should be stopped (or sleep, ``network.sleep``) but runs gets a ``stop`` operation;
* every decision is taken under the instance's row lock and dropped if the instance changed since
  it was observed (its version moved) or an operation is in flight, so the reconciler never undoes
  what the API asked for a moment ago; it changes no instance's workload itself, it queues
  operations (only orphans, which have no instance, are removed directly);
* what was observed (state, endpoints, the reason of a failure) is recorded.

It also finishes tenant deletions whose instances are all gone, and purges expired idempotency
records.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.context import AppServices
from ctrlplane.errors import CtrlplaneError
from ctrlplane.events.service import append as append_event
from ctrlplane.idempotency.service import purge_expired
from ctrlplane.instances.models import Instance
from ctrlplane.instances.observe import record_status, set_state
from ctrlplane.operations import queue
from ctrlplane.operations.models import Operation
from ctrlplane.provisioning.contract import Provider, ReplicaStatus
from ctrlplane.tenants.models import Tenant
from ctrlplane.tenants.repository import TenantRepository

log = structlog.get_logger("ctrlplane.reconciler")


class Reconciler:
    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.enqueued = False

    async def run_once(self) -> None:
        self.enqueued = False
        for provider in self.services.providers:
            try:
                await self._reconcile_provider(provider)
            except CtrlplaneError as exc:
                log.warning("reconcile_provider_failed", provider=provider.name, error=exc.message)
        await self._finish_tenant_deletions()
        await purge_expired(self.services.db)
        await self.services.events.notify()
        if self.enqueued:
            await self.services.work.notify()

    async def _reconcile_provider(self, provider: Provider) -> None:
        inventory = await provider.inventory()
        async with self.services.db.read() as session:
            instances = {
                row.id: row
                for row in (
                    await session.execute(select(Instance).where(Instance.provider_name == provider.name))
                ).scalars()
            }
            busy = set(
                (
                    await session.execute(select(Operation.instance_id).where(Operation.state.in_(queue.UNFINISHED)))
                ).scalars()
            )
        orphans = {
            item.instance_id
            for item in inventory
            if item.instance_id
            and item.instance_id not in busy
            and (item.instance_id not in instances or instances[item.instance_id].state == "destroyed")
        }
        for instance_id in sorted(orphans):
            log.warning("orphan_removed", provider=provider.name, instance=instance_id)
            await provider.deprovision(instance_id)
        for instance in instances.values():
            if instance.id in busy or instance.state in ("destroyed", "destroying", "provisioning"):
                continue
            await self._reconcile_instance(provider, instance)

    async def _reconcile_instance(self, provider: Provider, instance: Instance) -> None:
        status = await provider.status(instance.id)
        if instance.desired_state in ("stopped", "sleeping"):
            if any(r.state == "running" for r in status.replicas):
                await self._decide(instance, lambda session, row: self._enqueue(session, row, "stop"))
            else:
                await self._decide(instance, lambda session, row: record_status(session, row, status))
            return
        if instance.desired_state != "running" or instance.state == "failed":
            return
        current = [r for r in status.replicas if r.generation == instance.generation]
        if len(current) < instance.replicas:
            reason = f"{len(current)} of {instance.replicas} replicas exist"
            await self._decide(instance, lambda session, row: self._repair(session, row, reason))
            return
        exited = [r for r in current if r.state in ("exited", "dead", "created")]
        to_restart = [r for r in exited if _should_restart(instance.restart_policy, r)]
        if to_restart:
            await self._decide(instance, lambda session, row: self._restart(session, row, to_restart))
            return
        await self._decide(instance, lambda session, row: record_status(session, row, status))

    async def _decide(self, seen: Instance, act: Callable[[AsyncSession, Instance], Awaitable[None]]) -> None:
        """Act on what was observed only if nothing changed since: the row is locked, and an act is
        skipped when the instance's version moved (the API changed what is wanted) or an operation
        is in flight. Changes go through the operation queue, so they run in order with the API's."""
        async with self.services.db.write() as session, session.begin():
            row = await session.get(Instance, seen.id, with_for_update=True, populate_existing=True)
            if row is None or row.version != seen.version or row.state in ("destroying", "destroyed"):
                return
            if await queue.unfinished_for(session, row.id):
                return
            await act(session, row)

    async def _enqueue(self, session: AsyncSession, row: Instance, kind: str, **payload: Any) -> None:
        queue.enqueue(session, tenant_id=row.tenant_id, instance_id=row.id, kind=kind, payload=payload)
        self.enqueued = True

    async def _repair(self, session: AsyncSession, row: Instance, reason: str) -> None:
        await self._enqueue(session, row, "repair", reason=reason)
        await append_event(
            session, tenant_id=row.tenant_id, instance_id=row.id, type="instance.repairing", data={"reason": reason}
        )
        log.info("repair_enqueued", instance=row.id, reason=reason)

    async def _restart(self, session: AsyncSession, row: Instance, replicas: list[ReplicaStatus]) -> None:
        settings = self.services.settings
        now = time.time()
        window = [t for t in row.recent_restarts if now - t < settings.crashloop_window_seconds]
        if len(window) >= settings.crashloop_restarts:
            await set_state(
                session,
                row,
                "failed",
                f"crash loop: {len(window)} restarts in {settings.crashloop_window_seconds:g}s; "
                f"last: {_exit_reason(replicas[0])}",
            )
            return
        for replica in replicas:
            await append_event(
                session,
                tenant_id=row.tenant_id,
                instance_id=row.id,
                type="instance.restarted",
                data={
                    "replica": replica.replica,
                    "exit_code": replica.exit_code,
                    "oom_killed": replica.oom_killed,
                    "reason": _exit_reason(replica),
                },
            )
        row.restart_count += len(replicas)
        row.recent_restarts = [*window, *([now] * len(replicas))]
        await self._enqueue(session, row, "restart", replicas=[r.replica for r in replicas])
        log.info("replicas_restarted", instance=row.id, replicas=[r.replica for r in replicas])

    async def _finish_tenant_deletions(self) -> None:
        async with self.services.db.write() as session, session.begin():
            deleting = list((await session.execute(select(Tenant).where(Tenant.status == "deleting"))).scalars())
            for tenant in deleting:
                live = (
                    await session.execute(
                        select(func.count())
                        .select_from(Instance)
                        .where(Instance.tenant_id == tenant.id, Instance.state != "destroyed")
                    )
                ).scalar_one()
                if live == 0:
                    await TenantRepository(session).remove(tenant)
                    log.info("tenant_deleted", tenant=tenant.id)


def _should_restart(policy: str, replica: ReplicaStatus) -> bool:
    if policy == "always":
        return True
    if policy == "on-failure":
        return replica.oom_killed or (replica.exit_code or 0) != 0
    return False


def _exit_reason(replica: ReplicaStatus) -> str:
    if replica.oom_killed:
        return "OOM-killed"
    if replica.error:
        return replica.error
    return f"exit code {replica.exit_code}"
