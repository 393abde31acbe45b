"""Carrying a run out on its provider, and the run workers that claim runs.

A run worker claims the oldest ``pending`` run (or a ``running`` one whose lease ran out: its
replica died) with a lease, ``FOR UPDATE SKIP LOCKED`` on PostgreSQL so replicas never take the
same one. ``RunExecutor.execute`` then, with no transaction open during a provider call:

1. builds the one-shot container's spec from the run's release (image, env, decrypted secrets and
   files, limits, tenant network) with the run's own env on top, and ``start_run``\\s it. The
   container is named by the run's ID, so a worker resuming a run after a crash adopts the container
   the dead one started instead of running the command twice;
2. polls ``run_status`` every ``POLL_SECONDS``, renewing its lease, until the container exits, the
   run's timeout passes (counted from its start), or a cancel is asked for;
3. reads the output's last lines, redacts every secret value of the release from them, removes the
   container, and records the outcome: ``succeeded`` (exit 0), ``failed`` (non-zero exit, timeout
   with exit code 137 after the kill, a provider error) or ``cancelled``, with the event
   ``run.succeeded``, ``run.failed`` or ``run.cancelled`` (``run.started`` when it started).

The deploy engine runs a release phase through the same ``execute``, without a lease.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import anyio
import msgspec
import structlog
from sqlalchemy import and_, or_, select, update

from ctrlplane.errors import CtrlplaneError
from ctrlplane.events.service import append as append_event
from ctrlplane.instances.models import Instance
from ctrlplane.operations.spec import spec_for
from ctrlplane.provisioning.contract import LogLine, Provider, RunProvider, RunSpec, RunStatus, WorkloadSpec
from ctrlplane.provisioning.errors import ProviderUnavailable
from ctrlplane.redaction import redact as redact_values
from ctrlplane.releases.models import Release
from ctrlplane.releases.service import restore as restore_release
from ctrlplane.runs import service
from ctrlplane.runs.models import Run
from ctrlplane.secrets.schemas import WorkloadSecrets
from ctrlplane.secrets.service import for_release as secrets_for_release
from ctrlplane.telemetry.otlp import instance_token
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices

log = structlog.get_logger("ctrlplane.runs")

POLL_SECONDS = 0.25
OUTPUT_LINES = 100
OUTPUT_BYTES = 16 * 1024
KILLED_EXIT_CODE = 137


def redactor(secrets: WorkloadSecrets, *, token: str | None = None) -> Callable[[str], str]:
    """Replace every secret value (env values, and file contents that are text) and the instance's
    OTLP ``token``, exactly and in base64 (``redaction.redact``), in a text; values shorter than 4
    characters are left alone (redacting "1" would mangle every number)."""
    values = list(secrets.env.values())
    for secret in secrets.files:
        try:
            text = secret.content.decode("utf-8")
        except UnicodeDecodeError:
            continue
        values.extend((text, text.strip()))
    if token is not None:
        values.append(token)

    def redact(text: str) -> str:
        return redact_values(text, values)

    return redact


def tail_text(lines: list[str]) -> str:
    text = "\n".join(lines[-OUTPUT_LINES:])
    return text[-OUTPUT_BYTES:]


async def run_context(services: AppServices, run: Run) -> tuple[WorkloadSpec, WorkloadSecrets] | None:
    """The workload a run's container is made of: its release's configuration (a release phase's
    release is the instance's newest configuration), decrypted secrets, the run's env on top."""
    async with services.db.read() as session:
        instance = await session.get(Instance, run.instance_id)
        release = await session.get(Release, run.release_id) if run.release_id else None
    if instance is None:
        return None
    secrets = await secrets_for_release(services, run.release_id)
    source = instance
    if release is not None and run.kind != "release":
        source = Instance(
            **{c: getattr(instance, c) for c in ("id", "tenant_id", "name", "pull_policy", "read_only_root_fs")}
        )
        restore_release(source, release)
        source.current_release_id = release.id
    spec = spec_for(source, settings=services.settings, generation=run.generation, secrets=secrets)
    spec = msgspec.structs.replace(
        spec,
        env={**spec.env, **run.env},
        release_id=run.release_id,
        resources=msgspec.structs.replace(spec.resources, cpu_millis=run.cpu_millis, memory_mb=run.memory_mb),
        replicas=1,
        ports=(),
        probes=(),
        routes=(),
    )
    return spec, secrets


class RunExecutor:
    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.settings = services.settings
        self.lease = timedelta(seconds=services.settings.run_lease_seconds)

    async def execute(
        self,
        run: Run,
        provider: Provider,
        *,
        owner: str | None = None,
        on_line: Callable[[LogLine], Any] | None = None,
        stop_when: Callable[[], Any] | None = None,
    ) -> Run:
        """Carry the run out and return its final row. ``owner``: the lease this worker holds (None
        for the deploy engine). ``stop_when``: an extra async check (the engine's cancel and
        deadline) that ends the run as ``cancelled`` when it returns a reason."""
        if not isinstance(provider, RunProvider):
            return await self._finish(run, "failed", None, f"provider {provider.name} cannot run one-shot containers")
        built = await run_context(self.services, run)
        if built is None:
            return await self._finish(run, "failed", None, "the instance no longer exists")
        spec, secrets = built
        redact = redactor(secrets, token=instance_token(self.settings, run.instance_id))
        runs: RunProvider = provider
        try:
            status = await runs.start_run(RunSpec(run_id=run.id, workload=spec, command=tuple(run.command)))
        except ProviderUnavailable as exc:
            if owner is not None:
                return run  # the lease runs out and a worker tries again when the runtime answers
            await self._safe_remove(runs, run)
            return await self._finish(run, "failed", None, exc.message)
        except CtrlplaneError as exc:
            await self._safe_remove(runs, run)
            return await self._finish(run, "failed", None, exc.message)
        run = await self._started(run, owner)
        elapsed = (utc_now() - run.started_at).total_seconds() if run.started_at is not None else 0.0
        deadline = time.monotonic() + run.timeout_seconds - max(elapsed, 0.0)
        renew_at = time.monotonic() + self.lease.total_seconds() / 3
        outcome: tuple[str, int | None, str | None] | None = None
        while outcome is None:
            if status.state == "exited":
                code = status.exit_code if status.exit_code is not None else 1
                reason = "OOM-killed" if status.oom_killed else None if code == 0 else f"exited with code {code}"
                outcome = ("succeeded" if code == 0 else "failed", code, reason)
                break
            if status.state == "missing":
                outcome = ("failed", None, "the run's container disappeared")
                break
            if time.monotonic() >= deadline:
                outcome = ("failed", KILLED_EXIT_CODE, f"timed out after {run.timeout_seconds}s and was killed")
                break
            reason = await self._stop_reason(run, stop_when)
            if reason is not None:
                outcome = ("cancelled", None, reason)
                break
            if owner is not None and time.monotonic() >= renew_at:
                if not await self._renew(run, owner):
                    return run  # another worker took the run over
                renew_at = time.monotonic() + self.lease.total_seconds() / 3
            await anyio.sleep(POLL_SECONDS)
            try:
                status = await runs.run_status(run.instance_id, run.id)
            except CtrlplaneError as exc:
                log.warning("run_status_failed", run=run.id, error=exc.message)
        state, exit_code, reason = outcome
        output = await self._output(runs, run, redact)
        await self._safe_remove(runs, run)
        return await self._finish(run, state, exit_code, reason, output=output)

    async def _stop_reason(self, run: Run, stop_when: Callable[[], Any] | None) -> str | None:
        async with self.services.db.read() as session:
            cancel = (await session.execute(select(Run.cancel_requested).where(Run.id == run.id))).scalar_one_or_none()
        if cancel:
            return "cancelled on request"
        if stop_when is not None:
            reason: str | None = await stop_when()
            return reason
        return None

    async def _output(self, runs: RunProvider, run: Run, redact: Callable[[str], str]) -> str:
        try:
            lines = [line.message async for line in runs.run_logs(run.instance_id, run.id, tail=OUTPUT_LINES)]
        except CtrlplaneError as exc:
            return f"(output unavailable: {exc.message})"
        return tail_text([redact(line) for line in lines])

    async def _safe_remove(self, runs: RunProvider, run: Run) -> None:
        try:
            await runs.remove_run(run.instance_id, run.id)
        except CtrlplaneError as exc:
            log.warning("run_remove_failed", run=run.id, error=exc.message)

    async def _renew(self, run: Run, owner: str) -> bool:
        async with self.services.db.write() as session, session.begin():
            result = await session.execute(
                update(Run)
                .where(Run.id == run.id, Run.lease_owner == owner, Run.state == "running")
                .values(lease_expires_at=utc_now() + self.lease)
            )
            return bool(result.rowcount)  # type: ignore[attr-defined]

    async def _started(self, run: Run, owner: str | None) -> Run:
        async with self.services.db.write() as session, session.begin():
            row = await session.get(Run, run.id, with_for_update=True, populate_existing=True)
            if row is None:
                return run
            first = row.started_at is None
            row.state = "running"
            row.started_at = row.started_at or utc_now()
            row.updated_at = utc_now()
            if owner is not None:
                row.lease_owner, row.lease_expires_at = owner, utc_now() + self.lease
            if first:
                await append_event(
                    session,
                    tenant_id=row.tenant_id,
                    instance_id=row.instance_id,
                    type="run.started",
                    data=_event_data(row),
                )
            session.expunge(row)
        await self.services.events.notify()
        return row

    async def _finish(self, run: Run, state: str, exit_code: int | None, error: str | None, *, output: str = "") -> Run:
        async with self.services.db.write() as session, session.begin():
            row = await session.get(Run, run.id, with_for_update=True, populate_existing=True)
            if row is None:
                return run
            if row.state in service.ACTIVE:
                now = utc_now()
                row.state, row.exit_code, row.error, row.output = state, exit_code, error, output
                row.started_at = row.started_at or now
                row.finished_at = row.updated_at = now
                row.lease_owner = row.lease_expires_at = None
                await append_event(
                    session,
                    tenant_id=row.tenant_id,
                    instance_id=row.instance_id,
                    type=f"run.{state}",
                    data={**_event_data(row), "exit_code": exit_code, "error": error},
                )
                if row.kind != "release":
                    await service.prune(
                        session, instance_id=row.instance_id, job_id=row.job_id, keep=self.settings.run_history
                    )
            session.expunge(row)
        await self.services.events.notify()
        log.info("run_finished", run=run.id, kind=run.kind, state=state, exit_code=exit_code)
        return row


def _event_data(run: Run) -> dict[str, Any]:
    return {
        "run_id": run.id,
        "kind": run.kind,
        "job_id": run.job_id,
        "deployment_id": run.deployment_id,
        "command": run.command[:8],
    }


async def claim(services: AppServices, *, owner: str) -> Run | None:
    """The oldest pending one-off or job run, or a running one whose worker's lease ran out."""
    now = utc_now()
    lease = timedelta(seconds=services.settings.run_lease_seconds)
    claimable = or_(
        Run.state == "pending",
        and_(Run.state == "running", Run.lease_expires_at <= now),
    )
    statement = (
        select(Run).where(claimable, Run.kind != "release").order_by(Run.id).limit(1).with_for_update(skip_locked=True)
    )
    # An idle worker looks with a read first: no write transaction (SQLite's BEGIN IMMEDIATE takes
    # the database's write lock) unless there is something to claim.
    async with services.db.read() as session:
        waiting = (await session.execute(select(Run.id).where(claimable, Run.kind != "release").limit(1))).first()
    if waiting is None:
        return None
    async with services.db.write() as session, session.begin():
        run = (await session.execute(statement)).scalar_one_or_none()
        if run is None:
            return None
        run.lease_owner, run.lease_expires_at = owner, now + lease
        if run.state == "pending":
            run.state = "running"
            run.started_at = None
        await session.flush()
        session.expunge(run)
        return run


async def run_once(
    services: AppServices, executor: RunExecutor, owner: str, *, claimed: Callable[[], None] | None = None
) -> bool:
    """Claim and carry out one run (calling ``claimed`` once it is claimed); False when there was none."""
    run = await claim(services, owner=owner)
    if run is None:
        return False
    if claimed is not None:
        claimed()
    async with services.db.read() as session:
        provider_name = (
            await session.execute(select(Instance.provider_name).where(Instance.id == run.instance_id))
        ).scalar_one_or_none()
    if provider_name is None:
        await executor._finish(run, "failed", None, "the instance no longer exists")
        return True
    try:
        provider = services.providers.get(provider_name)
    except CtrlplaneError as exc:
        await executor._finish(run, "failed", None, exc.message)
        return True
    await executor.execute(run, provider, owner=owner)
    return True


__all__ = ["RunExecutor", "RunStatus", "claim", "redactor", "run_once"]
