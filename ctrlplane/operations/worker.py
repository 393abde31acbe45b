"""Workers: claim an operation, apply it to the provider, record what happened.

No transaction is open while a provider is called. The lease is renewed while the call runs; a
worker that lost its lease (it stalled past the lease and another worker took over) discards its
result. Failures are classified: an unreachable provider is retried with capped backoff for as
long as it takes (the instance says it is waiting); a missing image or invalid spec fails the
operation and the instance at once; other provider errors are retried up to
``CTRLPLANE_OPERATION_MAX_ATTEMPTS`` times.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import anyio
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import written_tables
from ctrlplane.deployments.engine import DeployEngine
from ctrlplane.errors import CtrlplaneError, InvalidInput, ProviderUnavailable
from ctrlplane.events.service import append as append_event
from ctrlplane.ids import new_id
from ctrlplane.instances.models import Instance
from ctrlplane.instances.observe import record_status, set_state
from ctrlplane.operations import queue
from ctrlplane.operations.models import Operation
from ctrlplane.operations.spec import runtime_config, spec_for
from ctrlplane.provisioning.contract import (
    ConfigurableProvider,
    KillableProvider,
    Provider,
    WorkloadSpec,
    WorkloadStatus,
)
from ctrlplane.secrets.service import container_text_redactor
from ctrlplane.secrets.service import for_release as secrets_for_release
from ctrlplane.web.context import AppServices

log = structlog.get_logger("ctrlplane.worker")

MAX_BACKOFF_SECONDS = 30.0


def backoff(attempts: int) -> timedelta:
    return timedelta(seconds=min(MAX_BACKOFF_SECONDS, 0.5 * 2 ** max(0, attempts - 1)))


class OperationWorker:
    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.owner = f"{services.replica}/" + new_id("op").replace("op_", "worker_")
        self.lease = timedelta(seconds=services.settings.operation_lease_seconds)
        self.redact_text = container_text_redactor(services)

    async def run_once(
        self,
        *,
        claimed: Callable[[], None] | None = None,
        recording: Callable[[], None] | None = None,
        look_first: bool = True,
    ) -> bool:
        """Claim and run one operation (calling ``claimed`` once it is claimed, ``recording`` just
        before its outcome is recorded); True when there may be more to do now: False when there
        was nothing to claim, or when the run's record found nothing else claimable."""
        operation = await queue.claim(self.services.db, owner=self.owner, lease=self.lease, look_first=look_first)
        if operation is None:
            return False
        if claimed is not None:
            claimed()
        async with self.services.db.read() as session:
            instance = await session.get(Instance, operation.instance_id)
        status: WorkloadStatus | None = None
        error: Exception | None = None
        if instance is not None:  # (one deleted meanwhile: the record just finishes the operation)
            status, error = await self._run(operation, instance)
        if recording is not None:
            recording()
        return await self._record(operation, status, error)

    async def _run(self, operation: Operation, instance: Instance) -> tuple[WorkloadStatus | None, Exception | None]:
        """Apply the operation to the instance's provider, renewing its lease meanwhile; its status
        or the error it ended with."""
        status: WorkloadStatus | None = None
        error: Exception | None = None
        async with anyio.create_task_group() as group:
            group.start_soon(self._heartbeat, operation.id)
            try:
                provider = self.services.providers.get(instance.provider_name)
                status = await self._apply(provider, operation, instance)
            except Exception as exc:  # noqa: BLE001 - classified and recorded on the operation
                error = exc
            finally:
                group.cancel_scope.cancel()
        if error is None and status is not None and operation.kind in ("start", "provision", "repair"):
            # a request held for this instance's wake proxies to it now, not after the record
            self.services.started.announce(instance.id, status)
        return status, error

    async def _heartbeat(self, operation_id: str) -> None:
        while True:
            await anyio.sleep(self.lease.total_seconds() / 3)
            await queue.renew(self.services.db, operation_id, owner=self.owner, lease=self.lease)

    async def _apply(self, provider: Provider, operation: Operation, instance: Instance) -> WorkloadStatus | None:
        kind = operation.kind
        settings = self.services.settings
        log.info("operation_started", operation=operation.id, kind=kind, instance=instance.id)
        if kind not in ("deprovision", "deploy") and instance.desired_state == "destroyed":
            # a deletion was asked for since: creating containers now would only leak them, and
            # stopping, restarting or resizing what the queued deprovision removes anyway is moot
            # (and fails when the skipped provision left nothing to act on)
            return None
        if kind == "configure" and not isinstance(provider, ConfigurableProvider):
            return None
        observed: WorkloadStatus | None = None
        if kind == "start":
            observed = await provider.status(instance.id)
            if _has_its_replicas(observed, instance):
                # a start of what exists (a wake, POST .../start, an unsuspend): nothing to create, so
                # no spec to build (secrets decrypted, configuration read) and no image or network
                # to check first; this is the wake's cold start
                return await provider.start(instance.id)
        if kind in ("provision", "repair", "start", "scale", "update", "configure"):
            # the secrets of the release the instance runs, decrypted just for this call, and the
            # tenant's quota, probes and routes as they are now
            async with self.services.db.read() as session:
                secrets = await secrets_for_release(self.services, instance.current_release_id, session)
                config = await runtime_config(session, instance, settings)
            spec: WorkloadSpec = spec_for(instance, settings=settings, secrets=secrets, config=config)
        if kind == "configure":
            assert isinstance(provider, ConfigurableProvider)
            return await provider.configure(spec)
        if kind in ("provision", "repair", "start"):
            if observed is None and (kind != "provision" or operation.attempts > 1):
                # a first attempt of an instance's provision finds nothing of it to replace
                observed = await provider.status(instance.id)
            if observed is not None and any(r.generation != instance.generation for r in observed.replicas):
                # changed while stopped: the new generation replaces the old containers
                return await provider.deploy(spec, "recreate")
            # provision creates what is missing and starts what is stopped, so it is also "start"
            return await provider.provision(spec)
        if kind == "stop":
            return await provider.stop(instance.id)
        if kind == "restart":
            replicas = operation.payload.get("replicas")
            return await provider.restart(instance.id, tuple(replicas) if replicas else None)
        if kind == "scale":
            return await provider.scale(spec)
        if kind == "update":
            return await provider.deploy(spec, "rolling")
        if kind == "deploy":
            return await DeployEngine(self.services, provider).run(str(operation.payload["deployment_id"]))
        if kind == "deprovision":
            if operation.payload.get("hard") and isinstance(provider, KillableProvider):
                await provider.kill(instance.id)
            await provider.deprovision(instance.id)
            return None
        raise InvalidInput(f"unknown operation kind {kind!r}")

    async def _record(self, operation: Operation, status: WorkloadStatus | None, error: Exception | None) -> bool:
        """Record the outcome; True when an operation may be claimable after it (the next one of
        the instance, one this record queued, or any other)."""
        async with self.services.db.write() as session, session.begin():
            current = await queue.locked(session, operation.id, self.owner)
            if current is None:
                log.warning("operation_lease_lost", operation=operation.id)
                return True
            instance = (
                await session.execute(
                    select(Instance)
                    .where(Instance.id == operation.instance_id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
            ).scalar_one_or_none()
            if instance is None:
                queue.finish(current)
            else:
                await self._settle(session, current, instance, status, error)
            written = await written_tables(session)
            more = await queue.any_claimable(session)
        if written is not None and not more:
            # the finish wrote the queue but left nothing to claim: no worker (here or on another
            # replica) is sent to look, and this one waits too; at the moment a create's `running`
            # event is on its way, those looks were two reads in the way (docs/benchmarks.md)
            written -= queue.READS
        await self.services.events.notify(written)
        await self.services.work.notify(written)
        return more

    async def _settle(
        self,
        session: AsyncSession,
        operation: Operation,
        instance: Instance,
        status: WorkloadStatus | None,
        error: Exception | None,
    ) -> None:
        if error is None:
            queue.finish(operation)
            if operation.kind == "deprovision":
                instance.endpoints = []
                await set_state(session, instance, "destroyed", "")
            if status is not None and not await _superseded(session, operation):
                await record_status(session, instance, status, redact=self.redact_text)
            log.info("operation_succeeded", operation=operation.id, kind=operation.kind, instance=instance.id)
            return
        # a runtime's error may echo what a container printed: cleaned before it is stored anywhere
        message = await self.redact_text(session, instance, _describe(error))
        if isinstance(error, ProviderUnavailable):
            queue.retry_later(operation, error=message, delay=backoff(operation.attempts))
            instance.status_message = f"waiting for the provider: {message}"
            log.warning("operation_waiting", operation=operation.id, error=message)
            return
        permanent = (
            isinstance(error, InvalidInput) or operation.attempts >= self.services.settings.operation_max_attempts
        )
        if not permanent:
            queue.retry_later(operation, error=message, delay=backoff(operation.attempts))
            log.warning("operation_retrying", operation=operation.id, error=message, attempts=operation.attempts)
            return
        queue.finish(operation, error=message)
        log.error("operation_failed", operation=operation.id, kind=operation.kind, error=message)
        if operation.kind == "configure":
            # only the runtime's copy of quota, probes or routes is behind; the workload itself was
            # not touched and still serves, so the instance keeps its state and says what failed
            instance.status_message = f"configuration not applied: {message}"
            await append_event(
                session,
                tenant_id=instance.tenant_id,
                instance_id=instance.id,
                type="instance.configure_failed",
                data={"operation": operation.id, "error": message},
            )
            return
        await set_state(session, instance, "failed", message, data={"operation": operation.kind})


async def _superseded(session: AsyncSession, operation: Operation) -> bool:
    """Whether a later operation of the instance waits: what this one saw is no longer the news."""
    return any(other.id != operation.id for other in await queue.unfinished_for(session, operation.instance_id))


def _has_its_replicas(status: WorkloadStatus, instance: Instance) -> bool:
    """Whether the runtime holds exactly the instance's replicas of its generation, nothing else."""
    found = {(r.generation, r.replica) for r in status.replicas}
    return len(found) == len(status.replicas) and found == {(instance.generation, i) for i in range(instance.replicas)}


def _describe(error: Exception) -> str:
    if isinstance(error, CtrlplaneError):
        return error.message
    return f"{type(error).__name__}: {error}"
