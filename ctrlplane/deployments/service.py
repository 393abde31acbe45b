"""Deployments and rollbacks: the API side.

A deploy records, in the request's transaction, the instance's new desired configuration (image,
env overlaid on the current env), a new generation, an immutable release (reason ``deploy``), a
``pending`` deployment and a ``deploy`` operation; the engine (``engine.py``) carries it out. A
rollback does the same with the whole configuration of an earlier release of the same instance
(reason ``rollback``). One deployment at a time per instance: another while one is unfinished is
409. The instance's ``current_release_id`` moves to the new release only when the deploy succeeds.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.deployments import schemas
from ctrlplane.deployments.analysis import Analysis
from ctrlplane.deployments.analysis import check as check_analysis
from ctrlplane.deployments.models import Deployment
from ctrlplane.errors import Conflict, InvalidInput, InvalidState, NotFound
from ctrlplane.ids import new_id
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.instances.schemas import argv
from ctrlplane.instances.service import InstanceService
from ctrlplane.operations import queue
from ctrlplane.releases.models import Release
from ctrlplane.releases.service import cut as cut_release
from ctrlplane.releases.service import restore
from ctrlplane.runs.service import plan_release
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate
from ctrlplane.web.preconditions import require_version

DEPLOYABLE = ("running", "failed")


def to_schema(deployment: Deployment) -> schemas.Deployment:
    return msgspec.convert(deployment, schemas.Deployment, from_attributes=True)


class DeploymentService:
    def __init__(self, context: RequestContext, *, if_match: str | None = None) -> None:
        self.context = context
        self.session = context.session
        self.tenant_id = context.principal.tenant_id
        self.instances = InstanceService(context, if_match=if_match)

    async def _scoped(self, deployment_id: str, *, for_update: bool = False) -> Deployment:
        statement = select(Deployment).where(Deployment.id == deployment_id)
        if self.tenant_id is not None:
            statement = statement.where(Deployment.tenant_id == self.tenant_id)
        if for_update:
            statement = statement.with_for_update()
        deployment = (await self.session.execute(statement)).scalar_one_or_none()
        if deployment is None:
            raise NotFound.of("deployment", deployment_id)
        return deployment

    async def _start(
        self,
        instance: Instance,
        *,
        strategy: str,
        reason: str,
        notes: str,
        commit_sha: str | None,
        secrets_revision: int | None = None,
        run_release: bool = True,
        analysis: Analysis | None = None,
        canary_steps: list[int] | None = None,
    ) -> schemas.Deployment:
        unfinished = (
            await self.session.execute(
                select(Deployment.id).where(
                    Deployment.instance_id == instance.id, Deployment.state.in_(("pending", "running"))
                )
            )
        ).first()
        if unfinished is not None:
            raise Conflict(
                f"deployment {unfinished[0]} of this instance is still in progress",
                details={"deployment_id": unfinished[0]},
            )
        previous_release_id, previous_generation = instance.current_release_id, instance.generation
        instance.generation += 1
        instance.version += 1
        instance.updated_at = utc_now()
        release = await cut_release(
            self.session,
            instance,
            reason=reason,
            created_by=self.context.principal.subject,
            notes=notes,
            commit_sha=commit_sha,
            make_current=False,
            secrets_revision=secrets_revision,
        )
        now = utc_now()
        settings = self.context.services.settings
        deployment = Deployment(
            id=new_id("dep"),
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            release_id=release.id,
            previous_release_id=previous_release_id,
            strategy=strategy,
            state="pending",
            generation=instance.generation,
            previous_generation=previous_generation,
            steps=[],
            error=None,
            cancel_requested=False,
            version=1,
            deadline_at=now + timedelta(seconds=settings.deploy_deadline_seconds),
            created_by=self.context.principal.subject,
            created_at=now,
            updated_at=now,
            analysis=msgspec.to_builtins(analysis) if analysis is not None else None,
            canary_steps=canary_steps,
        )
        self.session.add(deployment)
        await self.session.flush()
        if run_release:
            plan_release(
                self.session,
                instance,
                deployment_id=deployment.id,
                release=release,
                generation=instance.generation,
                created_by=self.context.principal.subject,
                default_timeout=settings.run_default_timeout_seconds,
            )
        queue.enqueue(
            self.session,
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            kind="deploy",
            payload={"deployment_id": deployment.id},
        )
        self.context.audit.resource_id = deployment.id
        self.context.audit.tenant_id = instance.tenant_id
        self.context.audit.details.update(
            instance_id=instance.id, release=release.version, strategy=strategy, image=instance.image
        )
        return to_schema(deployment)

    async def _deployable(self, instance_id: str) -> Instance:
        instance = await self.instances.locked(instance_id)
        if instance.state not in DEPLOYABLE:
            raise InvalidState(
                f"cannot deploy to an instance that is {instance.state}",
                details={"state": instance.state, "allowed": list(DEPLOYABLE)},
            )
        if instance.suspended_at is not None:
            raise InvalidState("cannot deploy to a suspended instance", details={"state": "suspended"})
        await self.context.services.providers.require_available(instance.provider_name)
        return instance

    async def deploy(self, instance_id: str, data: schemas.DeployRequest) -> schemas.Deployment:
        check_analysis(data.analysis, data.steps, data.strategy)
        await self.context.services.registries.admit(data.image)
        instance = await self._deployable(instance_id)
        instance.image = data.image
        instance.env = {**instance.env, **data.env}
        if not isinstance(data.release_command, msgspec.UnsetType):
            instance.release_command = argv(data.release_command) if data.release_command is not None else None
        if not isinstance(data.release_timeout, msgspec.UnsetType):
            instance.release_timeout_seconds = data.release_timeout
        return await self._start(
            instance,
            strategy=data.strategy,
            reason="deploy",
            notes=data.notes,
            commit_sha=data.commit_sha,
            analysis=data.analysis,
            canary_steps=data.steps,
        )

    async def rollback(self, instance_id: str, data: schemas.RollbackRequest) -> schemas.Deployment:
        instance = await self._deployable(instance_id)
        target = await self.session.get(Release, data.release_id)
        if target is None or target.instance_id != instance.id:
            raise InvalidInput(
                "release_id must name a release of this instance", details={"release_id": data.release_id}
            )
        await self.instances.check_quota(
            instance.tenant_id,
            instances=0,
            cpu_millis=target.cpu_millis * target.replicas,
            memory_mb=target.memory_mb * target.replicas,
            except_id=instance.id,
        )
        restore(instance, target)
        return await self._start(
            instance,
            strategy=data.strategy,
            reason="rollback",
            notes=f"rollback to v{target.version}",
            commit_sha=target.commit_sha,
            secrets_revision=target.secrets_revision,
            run_release=data.run_release,
        )

    async def redeploy(self, instance_id: str, *, notes: str, strategy: str = "rolling") -> schemas.Deployment:
        """Roll the current configuration out again as a new release, which picks up what changed
        beside it (the instance's secrets)."""
        instance = await self._deployable(instance_id)
        current = await self.session.get(Release, instance.current_release_id) if instance.current_release_id else None
        return await self._start(
            instance,
            strategy=strategy,
            reason="deploy",
            notes=notes,
            commit_sha=current.commit_sha if current else None,
        )

    async def list(self, instance_id: str, *, cursor: str | None, limit: int) -> Page[schemas.Deployment]:
        instance = await InstanceRepository(self.session, self.tenant_id).get(instance_id)
        statement = select(Deployment).where(Deployment.instance_id == instance.id)
        return await paginate(self.session, statement, Deployment.id, cursor=cursor, limit=limit, convert=to_schema)

    async def get(self, deployment_id: str) -> schemas.Deployment:
        return to_schema(await self._scoped(deployment_id))

    async def cancel(self, deployment_id: str, *, if_match: str | None = None) -> schemas.Deployment:
        """Ask the deployment to stop. ``if_match`` names the deployment's own ETag (not the
        instance's); asking again is idempotent and leaves the version as it is."""
        deployment = await self._scoped(deployment_id, for_update=True)
        require_version(if_match, resource="deployment", resource_id=deployment.id, version=deployment.version)
        if deployment.state in schemas.TERMINAL:
            raise InvalidState(f"deployment already ended {deployment.state}", details={"state": deployment.state})
        if not deployment.cancel_requested:
            deployment.cancel_requested = True
            deployment.version += 1
        deployment.updated_at = utc_now()
        self.context.audit.resource_id = deployment.id
        self.context.audit.tenant_id = deployment.tenant_id
        return to_schema(deployment)


async def count_since(session: AsyncSession, since: datetime) -> int:
    """Deployments of every tenant created since ``since``, for the system stats."""
    statement = select(func.count(Deployment.id)).where(Deployment.created_at >= since)
    return int((await session.execute(statement)).scalar_one())
