"""Releases: version N of an instance's configuration, immutable once written.

A release is cut when an instance is created (v1) and whenever a change rolls out new containers
(a PATCH of env, ports or labels; deploys and rollbacks with the deployments work). The instance
points at the release it runs (``current_release_id``). Reads are scoped to the caller's tenant.
"""

from __future__ import annotations

import msgspec
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import NotFound
from ctrlplane.ids import TenantId, new_id
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.instances.schemas import Port, Resources
from ctrlplane.releases import schemas
from ctrlplane.releases.models import Release
from ctrlplane.secrets.repository import SecretRepository
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate


def to_schema(release: Release) -> schemas.Release:
    return schemas.Release(
        id=release.id,
        instance_id=release.instance_id,
        tenant_id=release.tenant_id,
        version=release.version,
        image=release.image,
        env=release.env,
        labels=release.labels,
        ports=[msgspec.convert(p, Port) for p in release.ports],
        resources=Resources(cpu_millis=release.cpu_millis, memory_mb=release.memory_mb),
        replicas=release.replicas,
        secrets_revision=release.secrets_revision,
        commit_sha=release.commit_sha,
        notes=release.notes,
        reason=release.reason,  # type: ignore[arg-type]
        created_by=release.created_by,
        created_at=release.created_at,
        release_command=release.release_command,
        release_timeout=release.release_timeout_seconds,
    )


async def cut(
    session: AsyncSession,
    instance: Instance,
    *,
    reason: str,
    created_by: str,
    notes: str = "",
    commit_sha: str | None = None,
    make_current: bool = True,
    secrets_revision: int | None = None,
) -> Release:
    """Snapshot the instance's configuration as its next release (and, unless told not to, make it
    current: a deploy makes its release current only when it succeeds). The release pins the
    instance's newest secrets revision, or the one given (a rollback's)."""
    latest = (
        await session.execute(select(func.max(Release.version)).where(Release.instance_id == instance.id))
    ).scalar_one()
    release = Release(
        id=new_id("rel"),
        tenant_id=instance.tenant_id,
        instance_id=instance.id,
        version=(latest or 0) + 1,
        image=instance.image,
        env=dict(instance.env),
        labels=dict(instance.labels),
        ports=list(instance.ports),
        cpu_millis=instance.cpu_millis,
        memory_mb=instance.memory_mb,
        replicas=instance.replicas,
        secrets_revision=(
            secrets_revision
            if secrets_revision is not None
            else await SecretRepository(session, TenantId(instance.tenant_id)).latest_revision(instance.id)
        ),
        commit_sha=commit_sha,
        release_command=list(instance.release_command) if instance.release_command else None,
        release_timeout_seconds=instance.release_timeout_seconds,
        notes=notes,
        reason=reason,
        created_by=created_by,
        created_at=utc_now(),
    )
    session.add(release)
    await session.flush()
    if make_current:
        instance.current_release_id = release.id
    return release


def restore(instance: Instance, release: Release) -> None:
    """Put a release's whole configuration back on the instance (rollback, or a deploy going back)."""
    instance.image, instance.env, instance.labels = release.image, dict(release.env), dict(release.labels)
    instance.ports = list(release.ports)
    instance.cpu_millis, instance.memory_mb = release.cpu_millis, release.memory_mb
    instance.replicas = release.replicas
    instance.release_command = list(release.release_command) if release.release_command else None
    instance.release_timeout_seconds = release.release_timeout_seconds


class ReleaseService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session
        self.tenant_id = context.principal.tenant_id

    async def list(self, instance_id: str, *, cursor: str | None, limit: int) -> Page[schemas.Release]:
        instance = await InstanceRepository(self.session, self.tenant_id).get(instance_id)
        statement = select(Release).where(Release.instance_id == instance.id)
        return await paginate(self.session, statement, Release.id, cursor=cursor, limit=limit, convert=to_schema)

    async def get(self, release_id: str) -> schemas.Release:
        statement = select(Release).where(Release.id == release_id)
        if self.tenant_id is not None:
            statement = statement.where(Release.tenant_id == self.tenant_id)
        release = (await self.session.execute(statement)).scalar_one_or_none()
        if release is None:
            raise NotFound.of("release", release_id)
        return to_schema(release)
