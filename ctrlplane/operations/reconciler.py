"""The reconciler: on an interval, make what runs match what is wanted.

For each provider it reads ``inventory`` (everything labelled as ctrlplane's) and, for each live
instance with no operation in flight, ``status``:

* containers whose instance does not exist or is destroyed are removed (orphans);
* an instance that should run but has no or too few replicas gets a ``repair`` operation, which
  re-provisions the missing ones (idempotently);
* an exited replica is restarted as the instance's ``restart_policy`` says (``always``; or
  ``on-failure`` when it exited non-zero or was OOM-killed; never for ``never``), each restart is an
  ``instance.restarted`` event with the exit code; more than ``CTRLPLANE_CRASHLOOP_RESTARTS`` within
  ``CTRLPLANE_CRASHLOOP_WINDOW_SECONDS`` marks the instance ``failed`` (crash loop) and stops
  restarting it until someone restarts it (a ``failed`` instance is left alone until a start or
  restart: its reason stays readable);
* an instance that should be stopped but runs is stopped;
* what was observed (state, endpoints, the reason of a failure) is recorded.

It also finishes tenant deletions whose instances are all gone, and purges expired idempotency
records.
"""

from __future__ import annotations

import time

import structlog
from sqlalchemy import delete, func, select

from ctrlplane.context import AppServices
from ctrlplane.errors import CtrlplaneError
from ctrlplane.events.service import append as append_event
from ctrlplane.idempotency.service import purge_expired
from ctrlplane.instances.models import Instance
from ctrlplane.instances.observe import record_status, set_state
from ctrlplane.operations import queue
from ctrlplane.operations.models import Operation
from ctrlplane.provisioning.contract import Provider, ReplicaStatus, WorkloadStatus
from ctrlplane.tenants.models import Tenant

log = structlog.get_logger("ctrlplane.reconciler")


class Reconciler:
    def __init__(self, services: AppServices) -> None:
        self.services = services

    async def run_once(self) -> None:
        for provider in self.services.providers:
            try:
                await self._reconcile_provider(provider)
            except CtrlplaneError as exc:
                log.warning("reconcile_provider_failed", provider=provider.name, error=exc.message)
        await self._finish_tenant_deletions()
        await purge_expired(self.services.db)
        await self.services.events.notify()

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
        if instance.desired_state == "stopped":
            if any(r.state == "running" for r in status.replicas):
                status = await provider.stop(instance.id)
            await self._record(instance.id, status)
            return
        if instance.desired_state != "running" or instance.state == "failed":
            return
        current = [r for r in status.replicas if r.generation == instance.generation]
        if len(current) < instance.replicas:
            await self._enqueue_repair(instance, f"{len(current)} of {instance.replicas} replicas exist")
            return
        exited = [r for r in current if r.state in ("exited", "dead", "created")]
        to_restart = [r for r in exited if _should_restart(instance.restart_policy, r)]
        if to_restart:
            await self._restart(provider, instance, to_restart)
            return
        await self._record(instance.id, status)

    async def _restart(self, provider: Provider, instance: Instance, replicas: list[ReplicaStatus]) -> None:
        settings = self.services.settings
        now = time.time()
        window = [t for t in instance.recent_restarts if now - t < settings.crashloop_window_seconds]
        async with self.services.db.write() as session, session.begin():
            row = await session.get(Instance, instance.id, with_for_update=True, populate_existing=True)
            if row is None or row.desired_state != "running":
                return
            if len(window) >= settings.crashloop_restarts:
                last = replicas[0]
                await set_state(
                    session,
                    row,
                    "failed",
                    f"crash loop: {len(window)} restarts in {settings.crashloop_window_seconds:g}s; "
                    f"last exit {_exit_reason(last)}",
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
        log.info("replicas_restarted", instance=instance.id, replicas=[r.replica for r in replicas])
        status = await provider.restart(instance.id, tuple(r.replica for r in replicas))
        await self._record(instance.id, status)

    async def _enqueue_repair(self, instance: Instance, reason: str) -> None:
        async with self.services.db.write() as session, session.begin():
            if await queue.unfinished_for(session, instance.id):
                return
            queue.enqueue(
                session,
                tenant_id=instance.tenant_id,
                instance_id=instance.id,
                kind="repair",
                payload={"reason": reason},
            )
            await append_event(
                session,
                tenant_id=instance.tenant_id,
                instance_id=instance.id,
                type="instance.repairing",
                data={"reason": reason},
            )
        log.info("repair_enqueued", instance=instance.id, reason=reason)

    async def _record(self, instance_id: str, status: WorkloadStatus) -> None:
        async with self.services.db.write() as session, session.begin():
            row = await session.get(Instance, instance_id, with_for_update=True, populate_existing=True)
            if row is None or row.state in ("destroying", "destroyed") or await queue.unfinished_for(session, row.id):
                return
            await record_status(session, row, status)

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
                    await session.execute(delete(Instance).where(Instance.tenant_id == tenant.id))
                    await session.delete(tenant)
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
