"""Jobs fire here: every replica runs a ``JobScheduler``, and each firing happens exactly once.

Every ``CTRLPLANE_JOB_TICK_SECONDS`` the scheduler looks for enabled jobs whose ``next_run_at`` has
come. It deals with each in one short transaction that **claims** the job's firings:

* the job row is locked (``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so a replica never waits on
  another; ``BEGIN IMMEDIATE`` serialises SQLite) and re-read, and the firings due since its
  ``last_scheduled_at`` are computed; ``last_scheduled_at`` then moves to the newest of them. A
  replica that comes second finds nothing due any more;
* every firing it records is a ``runs`` row whose ``(job_id, scheduled_at)`` is unique, so even a
  scheduler that raced past the lock could not insert the same firing twice (its transaction
  fails and changes nothing).

What a due firing becomes:

* the newest due firing runs (a pending run of kind ``job``, carried out by a run worker) if it is
  at most ``CTRLPLANE_JOB_STARTING_DEADLINE_SECONDS`` old; older firings (the control plane was
  down across several) are **missed**: each is recorded as a run in state ``missed`` (the newest
  ``CTRLPLANE_RUN_HISTORY`` of them) and one ``job.missed`` event counts them. A newest firing past
  the starting deadline is missed too: nothing runs late;
* ``concurrency``: ``allow`` starts it whatever runs; ``forbid`` records it ``missed`` (reason
  ``the previous run is still running``) while an earlier run of the job is pending or running;
  ``replace`` asks the running ones to cancel and starts it;
* an instance that is not running, is suspended or has no release, or a tenant whose CPU or memory
  quota has no room for one more run (runs count against it while pending or running): ``missed``
  with that reason.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import anyio
import structlog
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from ctrlplane.events.service import append as append_event
from ctrlplane.instances.models import Instance
from ctrlplane.runs import cron
from ctrlplane.runs.models import Job, Run
from ctrlplane.runs.service import ACTIVE, new_run, prune, run_fits_quota
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices

log = structlog.get_logger("ctrlplane.jobs")

BATCH = 100


class JobScheduler:
    def __init__(self, services: AppServices) -> None:
        self.services = services
        self.settings = services.settings

    async def run_forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:
                log.error("job_scheduler_error", exc_info=exc)
            await anyio.sleep(self.settings.job_tick_seconds)

    async def run_once(self, now: datetime | None = None) -> int:
        """Fire every due job; how many firings were claimed."""
        now = now or utc_now()
        async with self.services.db.read() as session:
            due = list(
                (
                    await session.execute(
                        select(Job.id)
                        .where(Job.enabled.is_(True), Job.next_run_at <= now)
                        .order_by(Job.next_run_at)
                        .limit(BATCH)
                    )
                ).scalars()
            )
        claimed = 0
        for job_id in due:
            try:
                claimed += await self.fire(job_id, now)
            except IntegrityError:
                log.info("job_firing_taken", job=job_id)  # another replica recorded it first
        if claimed:
            await self.services.work.notify()
            await self.services.events.notify()
        return claimed

    async def fire(self, job_id: str, now: datetime) -> int:
        async with self.services.db.write() as session, session.begin():
            job = (
                await session.execute(
                    select(Job)
                    .where(Job.id == job_id)
                    .with_for_update(skip_locked=True)
                    .execution_options(populate_existing=True)
                )
            ).scalar_one_or_none()
            if job is None or not job.enabled:
                return 0
            firings = cron.due(job.schedule, job.timezone, job.last_scheduled_at, now)
            if not firings:
                job.next_run_at = cron.next_after(job.schedule, job.timezone, job.last_scheduled_at)
                return 0
            instance = await session.get(Instance, job.instance_id)
            if instance is None:
                return 0
            latest, older = firings[-1], firings[:-1]
            missed: list[tuple[datetime, str]] = [(moment, "the control plane was not running") for moment in older]
            deadline = timedelta(seconds=self.settings.job_starting_deadline_seconds)
            reason = self._blocked(instance)
            if now - latest > deadline:
                missed.append((latest, "past its starting deadline when the control plane came back"))
            elif reason is not None:
                missed.append((latest, reason))
            else:
                active = list(
                    (await session.execute(select(Run).where(Run.job_id == job.id, Run.state.in_(ACTIVE)))).scalars()
                )
                if active and job.concurrency == "forbid":
                    missed.append((latest, "the previous run is still running (concurrency forbid)"))
                elif job.concurrency != "replace" and not await run_fits_quota(session, instance):
                    missed.append((latest, "the tenant's CPU or memory quota has no room for the run"))
                else:
                    if active and job.concurrency == "replace":
                        await session.execute(
                            update(Run).where(Run.id.in_([r.id for r in active])).values(cancel_requested=True)
                        )
                    session.add(
                        new_run(
                            instance,
                            kind="job",
                            command=list(job.command),
                            timeout=job.timeout_seconds,
                            created_by=f"job:{job.name}",
                            job_id=job.id,
                            scheduled_at=latest,
                        )
                    )
            for moment, why in missed[-self.settings.run_history :]:
                row = new_run(
                    instance,
                    kind="job",
                    command=list(job.command),
                    timeout=job.timeout_seconds,
                    created_by=f"job:{job.name}",
                    job_id=job.id,
                    scheduled_at=moment,
                    state="missed",
                )
                row.error = why
                session.add(row)
            if missed:
                await append_event(
                    session,
                    tenant_id=job.tenant_id,
                    instance_id=job.instance_id,
                    type="job.missed",
                    data={
                        "job_id": job.id,
                        "name": job.name,
                        "count": len(missed),
                        "scheduled_at": [m.isoformat() for m, _ in missed[-10:]],
                        "reason": missed[-1][1],
                    },
                )
            job.last_scheduled_at = latest
            job.next_run_at = cron.next_after(job.schedule, job.timezone, latest)
            await session.flush()
            await prune(session, instance_id=job.instance_id, job_id=job.id, keep=self.settings.run_history)
            log.info("job_fired", job=job.id, scheduled_at=latest.isoformat(), missed=len(missed))
            return len(firings)

    @staticmethod
    def _blocked(instance: Instance) -> str | None:
        if instance.suspended_at is not None:
            return "the instance is suspended"
        if instance.current_release_id is None or instance.state in ("destroying", "destroyed"):
            return f"the instance is {instance.state}"
        if instance.desired_state != "running":
            return f"the instance is meant to be {instance.desired_state}"
        return None
