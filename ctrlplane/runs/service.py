"""One-off runs and scheduled jobs: the API side, and the rules every run follows.

**A run** is one command in a new one-shot container of a release of the instance (never inside a
serving replica): its image, env (plus the run's own ``env`` on top), secrets, files, tenant
network and the instance's per-replica limits. ``POST /v1/instances/{id}/runs`` records a
``pending`` run in the request's transaction; a run worker of any replica claims it with a lease
and carries it out (``executor.py``). While pending or running it counts against the tenant's CPU
and memory quota, beside the instances. Its output is kept (the last lines, secret values
redacted) once it ends, and the container is removed. Cancel asks the worker to kill it.

**A job** is a cron schedule (``cron.py``) plus a command; each firing is a run of kind ``job``
(``scheduler.py`` says how a firing happens once across replicas, and what ``forbid``, ``allow``,
``replace`` and a missed firing do).

**The release phase** of a deploy is a run of kind ``release`` that ``DeploymentService`` plans in
the deploy's transaction (``plan_release``) and the deploy engine carries out itself before any
new replica starts (``release.py``).

Every query is scoped to the caller's tenant: another tenant's run or job is 404.
"""

from __future__ import annotations

from datetime import datetime

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import Conflict, InvalidInput, InvalidState, NotFound
from ctrlplane.ids import TenantId, new_id
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.instances.service import InstanceService
from ctrlplane.provisioning.contract import RunProvider
from ctrlplane.releases.models import Release
from ctrlplane.runs import cron, schemas
from ctrlplane.runs.models import Job, Run
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate

ACTIVE = ("pending", "running")
RUNNABLE = ("running",)


HIDDEN_OUTPUT = "(shown to the deploy role only)"


def to_schema(run: Run, *, show_output: bool = True) -> schemas.Run:
    """A run; ``show_output`` false (a caller without the deploy role) hides what its container
    printed, as for a command health check's message."""
    return schemas.Run(
        id=run.id,
        tenant_id=run.tenant_id,
        instance_id=run.instance_id,
        kind=run.kind,  # type: ignore[arg-type]
        job_id=run.job_id,
        deployment_id=run.deployment_id,
        release_id=run.release_id,
        command=list(run.command),
        state=run.state,  # type: ignore[arg-type]
        exit_code=run.exit_code,
        output=run.output if show_output else HIDDEN_OUTPUT,
        error=run.error,
        timeout=run.timeout_seconds,
        cancel_requested=run.cancel_requested,
        scheduled_at=run.scheduled_at,
        created_by=run.created_by,
        created_at=run.created_at,
        started_at=run.started_at,
        finished_at=run.finished_at,
    )


def job_schema(job: Job, recent: list[Run] | None = None, *, show_output: bool = True) -> schemas.Job:
    return schemas.Job(
        id=job.id,
        tenant_id=job.tenant_id,
        instance_id=job.instance_id,
        name=job.name,
        schedule=job.schedule,
        timezone=job.timezone,
        command=list(job.command),
        timeout=job.timeout_seconds,
        concurrency=job.concurrency,  # type: ignore[arg-type]
        enabled=job.enabled,
        next_run_at=job.next_run_at,
        last_scheduled_at=job.last_scheduled_at,
        version=job.version,
        created_by=job.created_by,
        created_at=job.created_at,
        updated_at=job.updated_at,
        recent_runs=[to_schema(run, show_output=show_output) for run in recent or []],
    )


def new_run(
    instance: Instance,
    *,
    kind: str,
    command: list[str],
    timeout: int,
    created_by: str,
    env: dict[str, str] | None = None,
    release_id: str | None = None,
    generation: int | None = None,
    job_id: str | None = None,
    deployment_id: str | None = None,
    scheduled_at: datetime | None = None,
    state: str = "pending",
) -> Run:
    now = utc_now()
    return Run(
        id=new_id("run"),
        tenant_id=instance.tenant_id,
        instance_id=instance.id,
        kind=kind,
        job_id=job_id,
        deployment_id=deployment_id,
        release_id=release_id if release_id is not None else instance.current_release_id,
        generation=generation if generation is not None else instance.generation,
        command=command,
        env=env or {},
        timeout_seconds=timeout,
        cpu_millis=instance.cpu_millis,
        memory_mb=instance.memory_mb,
        state=state,
        exit_code=None,
        output="",
        error=None,
        cancel_requested=False,
        scheduled_at=scheduled_at,
        lease_owner=None,
        lease_expires_at=None,
        created_by=created_by,
        created_at=now,
        started_at=None,
        finished_at=now if state not in ACTIVE else None,
        updated_at=now,
    )


def plan_release(
    session: AsyncSession,
    instance: Instance,
    *,
    deployment_id: str,
    release: Release,
    generation: int,
    created_by: str,
    default_timeout: float,
) -> Run | None:
    """The release phase of a deployment, if its release has a release command: a pending run of
    kind ``release`` that the deploy engine carries out before the strategy starts."""
    if not release.release_command:
        return None
    run = new_run(
        instance,
        kind="release",
        command=list(release.release_command),
        timeout=release.release_timeout_seconds or int(default_timeout),
        created_by=created_by,
        release_id=release.id,
        generation=generation,
        deployment_id=deployment_id,
    )
    run.cpu_millis, run.memory_mb = release.cpu_millis, release.memory_mb
    session.add(run)
    return run


async def prune(session: AsyncSession, *, instance_id: str, job_id: str | None, keep: int) -> None:
    """Keep the newest ``keep`` finished runs of a job (or the instance's one-off runs)."""
    scope = Run.job_id == job_id if job_id is not None else (Run.instance_id == instance_id) & (Run.kind == "run")
    finished = select(Run.id).where(scope, Run.state.not_in(ACTIVE)).order_by(Run.id.desc()).offset(keep).limit(1000)
    doomed = list((await session.execute(finished)).scalars())
    if doomed:
        await session.execute(delete(Run).where(Run.id.in_(doomed)))


class RunService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self._show_output = context.principal.has_role("deploy")
        self.session = context.session
        self.tenant_id = context.principal.tenant_id
        self.settings = context.services.settings

    async def _scoped(self, run_id: str, *, for_update: bool = False) -> Run:
        statement = select(Run).where(Run.id == run_id)
        if self.tenant_id is not None:
            statement = statement.where(Run.tenant_id == self.tenant_id)
        if for_update:
            statement = statement.with_for_update()
        run = (await self.session.execute(statement)).scalar_one_or_none()
        if run is None:
            raise NotFound.of("run", run_id)
        return run

    async def create(self, instance_id: str, data: schemas.RunCreate) -> schemas.Run:
        """A pending one-off run of the instance's current release (201); 409 when the instance has
        no release running, 403 ``quota_exceeded`` past the tenant's CPU or memory."""
        instances = InstanceService(self.context)
        instance = await instances.locked(instance_id)
        await runnable(self.context, instance)
        await check_run_quota(self.session, instances, instance)
        run = new_run(
            instance,
            kind="run",
            command=schemas.argv(data.command),
            env=dict(data.env),
            timeout=data.timeout or int(self.settings.run_default_timeout_seconds),
            created_by=self.context.principal.subject,
        )
        self.session.add(run)
        await self.session.flush()
        self.context.audit.resource_id = run.id
        self.context.audit.tenant_id = instance.tenant_id
        self.context.audit.details.update(instance_id=instance.id, command=run.command[:8])
        return to_schema(run, show_output=self._show_output)

    async def get(self, run_id: str) -> schemas.Run:
        return to_schema(await self._scoped(run_id), show_output=self._show_output)

    async def row(self, run_id: str) -> Run:
        return await self._scoped(run_id)

    async def list(self, instance_id: str, *, cursor: str | None, limit: int) -> Page[schemas.Run]:
        instance = await InstanceRepository(self.session, self.tenant_id).get(instance_id)
        statement = select(Run).where(Run.instance_id == instance.id)
        return await paginate(
            self.session,
            statement,
            Run.id,
            cursor=cursor,
            limit=limit,
            convert=lambda run: to_schema(run, show_output=self._show_output),
        )

    async def cancel(self, run_id: str) -> schemas.Run:
        """Ask the run to stop (202): a pending run ends ``cancelled`` at once, a running one when its
        worker has killed the container. Asking again is idempotent; an ended run is 409."""
        run = await self._scoped(run_id, for_update=True)
        if run.state not in ACTIVE:
            raise InvalidState(f"run already ended {run.state}", details={"state": run.state})
        if run.kind == "release":
            raise InvalidState(
                "a release phase ends with its deployment: cancel the deployment instead",
                details={"deployment_id": run.deployment_id},
            )
        run.cancel_requested = True
        run.updated_at = utc_now()
        if run.state == "pending":
            run.state, run.finished_at, run.error = "cancelled", utc_now(), "cancelled before it started"
        self.context.audit.resource_id = run.id
        self.context.audit.tenant_id = run.tenant_id
        return to_schema(run, show_output=self._show_output)


async def runnable(context: RequestContext, instance: Instance) -> RunProvider:
    if instance.state in ("destroying", "destroyed") or instance.current_release_id is None:
        raise InvalidState(
            f"instance is {instance.state} and has no release to run a command of", details={"state": instance.state}
        )
    if instance.suspended_at is not None:
        raise InvalidState("cannot run commands in a suspended instance", details={"state": "suspended"})
    provider = await context.services.providers.require_available(instance.provider_name)
    if not isinstance(provider, RunProvider):
        raise InvalidInput(
            f"provider {instance.provider_name} cannot run one-shot containers",
            details={"provider": instance.provider_name},
        )
    return provider


async def active_run_usage(session: AsyncSession, tenant_id: str) -> tuple[int, int]:
    """CPU and memory the tenant's pending and running runs reserve."""
    cpu, memory = (
        await session.execute(
            select(func.coalesce(func.sum(Run.cpu_millis), 0), func.coalesce(func.sum(Run.memory_mb), 0)).where(
                Run.tenant_id == tenant_id, Run.state.in_(ACTIVE)
            )
        )
    ).one()
    return int(cpu), int(memory)


async def run_fits_quota(session: AsyncSession, instance: Instance) -> bool:
    """Whether one more run of the instance fits the tenant's CPU and memory quota (for a job's
    firing, which no request admits)."""
    quota = await TenantRepository(session).quota(instance.tenant_id)
    _, cpu, memory = await InstanceRepository(session, TenantId(instance.tenant_id)).usage(instance.tenant_id)
    run_cpu, run_memory = await active_run_usage(session, instance.tenant_id)
    return (
        cpu + run_cpu + instance.cpu_millis <= quota.max_cpu_millis
        and memory + run_memory + instance.memory_mb <= quota.max_memory_mb
    )


async def check_run_quota(session: AsyncSession, instances: InstanceService, instance: Instance) -> None:
    """A run's container counts against the tenant's CPU and memory quota while it is pending or
    running, on top of the instances' replicas (``check_quota`` counts the active runs through
    ``AppServices.reserved_usage``)."""
    await instances.check_quota(
        instance.tenant_id, instances=0, cpu_millis=instance.cpu_millis, memory_mb=instance.memory_mb
    )


class JobService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self._show_output = context.principal.has_role("deploy")
        self.session = context.session
        self.tenant_id = context.principal.tenant_id
        self.settings = context.services.settings

    async def _scoped(self, job_id: str, *, for_update: bool = False) -> Job:
        statement = select(Job).where(Job.id == job_id)
        if self.tenant_id is not None:
            statement = statement.where(Job.tenant_id == self.tenant_id)
        if for_update:
            statement = statement.with_for_update()
        job = (await self.session.execute(statement)).scalar_one_or_none()
        if job is None:
            raise NotFound.of("job", job_id)
        return job

    def _audit(self, job: Job) -> None:
        self.context.audit.resource_id = job.id
        self.context.audit.tenant_id = job.tenant_id

    async def create(self, instance_id: str, data: schemas.JobCreate) -> schemas.Job:
        """A job (201): its schedule must be valid cron in a known time zone (400); names are unique
        per instance (409). Its first firing is the first one after now."""
        cron.validate(data.schedule, data.timezone, allow_seconds=self.settings.job_allow_seconds)
        instance = await InstanceService(self.context).locked(instance_id)
        if instance.state in ("destroying", "destroyed"):
            raise InvalidState(f"instance is {instance.state}", details={"state": instance.state})
        taken = (
            await self.session.execute(select(Job.id).where(Job.instance_id == instance.id, Job.name == data.name))
        ).first()
        if taken is not None:
            raise Conflict(f"job {data.name} already exists on this instance", details={"name": data.name})
        now = utc_now()
        job = Job(
            id=new_id("job"),
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            name=data.name,
            schedule=" ".join(data.schedule.split()),
            timezone=data.timezone,
            command=schemas.argv(data.command),
            timeout_seconds=data.timeout,
            concurrency=data.concurrency,
            enabled=data.enabled,
            last_scheduled_at=now,
            next_run_at=cron.next_after(data.schedule, data.timezone, now) if data.enabled else None,
            version=1,
            created_by=self.context.principal.subject,
            created_at=now,
            updated_at=now,
        )
        self.session.add(job)
        await self.session.flush()
        self._audit(job)
        return job_schema(job)

    async def _recent(self, job: Job) -> list[Run]:
        statement = select(Run).where(Run.job_id == job.id).order_by(Run.id.desc()).limit(self.settings.run_history)
        return list((await self.session.execute(statement)).scalars())

    async def get(self, job_id: str) -> schemas.Job:
        """The job with its recent runs (the last ``CTRLPLANE_RUN_HISTORY``), newest first."""
        job = await self._scoped(job_id)
        return job_schema(job, await self._recent(job), show_output=self._show_output)

    async def list(self, instance_id: str, *, cursor: str | None, limit: int) -> Page[schemas.Job]:
        instance = await InstanceRepository(self.session, self.tenant_id).get(instance_id)
        statement = select(Job).where(Job.instance_id == instance.id)
        return await paginate(self.session, statement, Job.id, cursor=cursor, limit=limit, convert=job_schema)

    async def update(self, job_id: str, data: schemas.JobUpdate) -> schemas.Job:
        """Change a job; a new schedule, time zone or re-enabling counts from now (no catch-up)."""
        job = await self._scoped(job_id, for_update=True)
        schedule = job.schedule if isinstance(data.schedule, msgspec.UnsetType) else " ".join(data.schedule.split())
        timezone = job.timezone if isinstance(data.timezone, msgspec.UnsetType) else data.timezone
        cron.validate(schedule, timezone, allow_seconds=self.settings.job_allow_seconds)
        rescheduled = schedule != job.schedule or timezone != job.timezone
        if not isinstance(data.enabled, msgspec.UnsetType):
            rescheduled = rescheduled or (data.enabled and not job.enabled)
            job.enabled = data.enabled
        job.schedule, job.timezone = schedule, timezone
        if not isinstance(data.command, msgspec.UnsetType):
            job.command = schemas.argv(data.command)
        if not isinstance(data.timeout, msgspec.UnsetType):
            job.timeout_seconds = data.timeout
        if not isinstance(data.concurrency, msgspec.UnsetType):
            job.concurrency = data.concurrency
        now = utc_now()
        if rescheduled:
            job.last_scheduled_at = now
        job.next_run_at = cron.next_after(job.schedule, job.timezone, job.last_scheduled_at) if job.enabled else None
        job.version += 1
        job.updated_at = now
        self._audit(job)
        return job_schema(job, await self._recent(job), show_output=self._show_output)

    async def delete(self, job_id: str) -> None:
        """Delete the job; its past runs stay (``job_id`` cleared), a running firing runs to its end."""
        job = await self._scoped(job_id, for_update=True)
        self._audit(job)
        await self.session.delete(job)
