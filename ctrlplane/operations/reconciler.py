"""The reconciler: on an interval, make what runs match what is wanted.

A pass costs one listing per provider plus work for what changed: for each provider it reads
``observe`` (everything labelled as this installation's, with every instance's status, in one
listing; a provider without it is asked ``inventory`` and each instance's ``status``) and one
read of the live instances, compares them in memory (``plan``), and writes only for the instances
whose observed state differs from what is recorded, in batched transactions. Between passes, a
provider that reports changes (``WatchingProvider``: Docker's event stream, Kubernetes' watches) triggers ``reconcile``
of the one instance that changed. For each live instance with no operation in flight:

* containers whose instance does not exist or is destroyed are removed (orphans);
* shared objects of this installation that nothing uses any more (Docker's tenant networks) are
  removed (``CollectingProvider.collect_unused``; at most every ``COLLECT_SECONDS``);
* an instance that should run but has no or too few replicas gets a ``repair`` operation, which
  re-provisions the missing ones (idempotently);
* an exited replica is restarted (through a ``restart`` operation) as the instance's
  ``restart_policy`` says (``always``; or ``on-failure`` when it exited non-zero or was
  OOM-killed; never for ``never``), each restart is an ``instance.restarted`` event with the exit
  code; more than ``CTRLPLANE_CRASHLOOP_RESTARTS`` within ``CTRLPLANE_CRASHLOOP_WINDOW_SECONDS``
  marks the instance ``failed`` (crash loop) and stops restarting it (a ``failed`` instance is left
  alone until a start or restart, so its reason stays readable);
* an instance that should be stopped (or sleep, ``network.sleep``) but runs gets a ``stop`` operation;
* every decision is applied under the instance's row lock (many rows locked in one transaction)
  and dropped if the instance changed since it was observed (its version moved) or an operation is
  in flight, so the reconciler never undoes what the API asked for a moment ago; it changes no
  instance's workload itself, it queues operations (only orphans, which have no instance, are
  removed directly);
* what was observed (state, endpoints, the reason of a failure) is recorded when it differs from
  what is recorded; an instance whose observation matches its row costs no write and no lock.

It also finishes tenant deletions whose instances are all gone, and purges expired idempotency
records.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import written_tables
from ctrlplane.errors import CtrlplaneError
from ctrlplane.events.service import append as append_event
from ctrlplane.idempotency.service import purge_expired
from ctrlplane.ids import TenantId
from ctrlplane.instances.lifecycle import forget_tenant
from ctrlplane.instances.models import Instance
from ctrlplane.instances.observe import observed_state, record_status, set_state
from ctrlplane.operations import queue
from ctrlplane.operations.models import Operation
from ctrlplane.provisioning.contract import (
    CollectingProvider,
    Observation,
    ObservingProvider,
    Provider,
    ReplicaStatus,
    WorkloadStatus,
)
from ctrlplane.redaction import REDACTED
from ctrlplane.secrets.service import container_text_redactor
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.web.context import AppServices

log = structlog.get_logger("ctrlplane.reconciler")


BATCH = 500
"""Decisions applied per write transaction (rows locked at once)."""

SKIPPED_STATES = ("destroyed", "destroying", "provisioning")

COLLECT_SECONDS = 5.0
"""Shared objects nothing uses any more (``collect_unused``) are looked for at most this often: a
tenant network is removed with the tenant's last instance already, so what is left is only what a
crash leaked, and listing every network of the engine on each pass (every 0.5 s in the tests'
servers) took about 1 ms of CPU of an idle pass's 7.7 ms (measured on Docker)."""


@dataclass(frozen=True, slots=True)
class Seen:
    """What the reconciler reads of an instance to compare it with what runs."""

    id: str
    version: int
    state: str
    desired_state: str
    status_message: str
    endpoints: list[dict[str, Any]]
    generation: int
    replicas: int
    restart_policy: str


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do about one instance: ``stop``, ``repair`` (``reason``), ``restart`` (``replicas``)
    or ``record`` (``status``)."""

    instance_id: str
    version: int
    action: str
    status: WorkloadStatus
    reason: str = ""
    replicas: tuple[ReplicaStatus, ...] = ()


SEEN_COLUMNS = (
    Instance.id,
    Instance.version,
    Instance.state,
    Instance.desired_state,
    Instance.status_message,
    Instance.endpoints,
    Instance.generation,
    Instance.replicas,
    Instance.restart_policy,
)


def missing(instance_id: str) -> WorkloadStatus:
    return WorkloadStatus(instance_id=instance_id, state="missing", message="no containers")


def _recorded(seen: Seen, status: WorkloadStatus) -> bool:
    state, message = observed_state(status)
    # A stored message that was redacted (record_status) never equals the runtime's raw one; the
    # same state is then taken as recorded, rather than decrypting and rewriting it every pass.
    same_message = seen.status_message == message or REDACTED in seen.status_message
    if seen.state != state or not same_message:
        return False
    return [msgspec.to_builtins(endpoint) for endpoint in status.endpoints] == seen.endpoints


def plan(seen: Seen, status: WorkloadStatus) -> Decision | None:
    """What the reconciler does about an instance given what runs for it; None when nothing (what
    runs is what is wanted and is what the row records). Pure: the diff logic of a pass."""
    if seen.state in SKIPPED_STATES:
        return None

    def decision(action: str, **extra: Any) -> Decision:
        return Decision(seen.id, seen.version, action, status, **extra)

    if status.state == "unknown":
        # the runtime cannot see the replicas now (a node out of touch): acting would duplicate them
        return None if _recorded(seen, status) else decision("record")
    if seen.desired_state in ("stopped", "sleeping"):
        if any(r.state == "running" for r in status.replicas):
            return decision("stop")
        return None if _recorded(seen, status) else decision("record")
    if seen.desired_state != "running" or seen.state == "failed":
        return None
    current = [r for r in status.replicas if r.generation == seen.generation]
    if len(current) < seen.replicas:
        return decision("repair", reason=f"{len(current)} of {seen.replicas} replicas exist")
    exited = [r for r in current if r.state in ("exited", "dead", "created")]
    to_restart = tuple(r for r in exited if _should_restart(seen.restart_policy, r))
    if to_restart:
        return decision("restart", replicas=to_restart)
    return None if _recorded(seen, status) else decision("record")


async def observe(provider: Provider, instance_ids: Iterable[str]) -> Observation:
    """The provider's ``observe``, or (a provider without it) its inventory and the status of each
    of ``instance_ids``: the old per-instance cost, kept for such providers."""
    if isinstance(provider, ObservingProvider):
        return await provider.observe()
    items = tuple(await provider.inventory())
    workloads = {instance_id: await provider.status(instance_id) for instance_id in instance_ids}
    return Observation(items=items, workloads=workloads, exact=True)


class Reconciler:
    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.enqueued = False
        self.written: set[str] | None = set()
        """The tables this pass wrote (None: it may have written any); a pass that wrote nothing
        wakes no one."""
        self.redact_text = container_text_redactor(services)
        self._collected: dict[str, float] = {}
        """When each provider's unused objects were last collected (``time.monotonic``)."""

    def _noted(self, written: frozenset[str] | None) -> None:
        self.written = None if written is None or self.written is None else self.written | written

    async def _announce(self) -> None:
        if self.written is None or self.written:
            await self.services.events.notify(self.written)
        if self.enqueued:
            await self.services.work.notify(self.written)

    async def run_once(self) -> None:
        self.enqueued, self.written = False, set()
        for provider in self.services.providers:
            try:
                await self._reconcile_provider(provider)
            except CtrlplaneError as exc:
                log.warning("reconcile_provider_failed", provider=provider.name, error=exc.message)
        await self._finish_tenant_deletions()
        await purge_expired(self.services.db)  # nothing waits on idempotency records
        await self._announce()

    async def reconcile(self, provider: Provider, instance_id: str) -> None:
        """Reconcile one instance now (a provider reported a change to it): its ``status``, the
        same plan and the same guarded write as a pass."""
        self.enqueued, self.written = False, set()
        async with self.services.db.read() as session:
            row = (
                await session.execute(
                    select(*SEEN_COLUMNS).where(Instance.id == instance_id, Instance.provider_name == provider.name)
                )
            ).first()
            if row is None:
                return
            if await queue.unfinished_for(session, instance_id):
                return
        seen = Seen(*row)
        if seen.state in SKIPPED_STATES:
            return
        decision = plan(seen, await provider.status(instance_id))
        if decision is not None:
            await self._apply([decision])
        await self._announce()

    async def _reconcile_provider(self, provider: Provider) -> None:
        async with self.services.db.read() as session:
            rows = (
                await session.execute(
                    select(*SEEN_COLUMNS).where(Instance.provider_name == provider.name, Instance.state != "destroyed")
                )
            ).all()
            busy = set(
                (
                    await session.execute(select(Operation.instance_id).where(Operation.state.in_(queue.UNFINISHED)))
                ).scalars()
            )
        instances = {row[0]: Seen(*row) for row in rows}
        live = [seen for seen in instances.values() if seen.id not in busy and seen.state not in SKIPPED_STATES]
        observation = await observe(provider, [seen.id for seen in live])
        orphans = {
            item.instance_id
            for item in observation.items
            if item.instance_id and item.instance_id not in busy and item.instance_id not in instances
        }
        for instance_id in sorted(orphans):
            log.warning("orphan_removed", provider=provider.name, instance=instance_id)
            await provider.deprovision(instance_id)
        now, last = time.monotonic(), self._collected.get(provider.name)
        if isinstance(provider, CollectingProvider) and (last is None or now - last >= COLLECT_SECONDS):
            self._collected[provider.name] = now
            for name in await provider.collect_unused():
                log.info("unused_object_removed", provider=provider.name, name=name)
        decisions: list[Decision] = []
        for seen in live:
            decision = plan(seen, observation.workloads.get(seen.id) or missing(seen.id))
            if decision is not None and not observation.exact:
                # the listing said something changed; act on the instance's full status
                decision = plan(seen, await provider.status(seen.id))
            if decision is not None:
                decisions.append(decision)
        await self._apply(decisions)

    async def _apply(self, decisions: Sequence[Decision]) -> None:
        """Apply decisions in batches, each under its rows' locks; one is dropped when its instance
        changed since it was read (its version moved) or an operation is in flight for it. Changes
        go through the operation queue, so they run in order with the API's."""
        for start in range(0, len(decisions), BATCH):
            batch = decisions[start : start + BATCH]
            ids = [d.instance_id for d in batch]
            async with self.services.db.write() as session, session.begin():
                rows = {
                    row.id: row
                    for row in (
                        await session.execute(
                            select(Instance)
                            .where(Instance.id.in_(ids))
                            .order_by(Instance.id)
                            .with_for_update()
                            .execution_options(populate_existing=True)
                        )
                    ).scalars()
                }
                busy = set(
                    (
                        await session.execute(
                            select(Operation.instance_id).where(
                                Operation.instance_id.in_(ids), Operation.state.in_(queue.UNFINISHED)
                            )
                        )
                    ).scalars()
                )
                for decision in batch:
                    row = rows.get(decision.instance_id)
                    if row is None or row.version != decision.version or row.state in ("destroying", "destroyed"):
                        continue
                    if row.id in busy:
                        continue
                    await self._act(session, row, decision)
                self._noted(await written_tables(session))

    async def _act(self, session: AsyncSession, row: Instance, decision: Decision) -> None:
        if decision.action == "stop":
            await self._enqueue(session, row, "stop")
        elif decision.action == "repair":
            await self._repair(session, row, decision.reason)
        elif decision.action == "restart":
            await self._restart(session, row, list(decision.replicas))
        else:
            await record_status(session, row, decision.status, redact=self.redact_text)

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
        async with self.services.db.read() as session:  # most passes: none, and no write lock taken
            if not await TenantRepository(session).deleting():
                return
        async with self.services.db.write() as session, session.begin():
            for tenant in await TenantRepository(session).deleting():
                live = (
                    await session.execute(
                        select(func.count())
                        .select_from(Instance)
                        .where(Instance.tenant_id == tenant.id, Instance.state != "destroyed")
                    )
                ).scalar_one()
                if live == 0:
                    await forget_tenant(session, TenantId(tenant.id))
                    await TenantRepository(session).remove(tenant)
                    log.info("tenant_deleted", tenant=tenant.id)
                    self._noted(None)


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
