"""Deployment queries other rooms need."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.deployments.models import Deployment


async def deployment_running(session: AsyncSession, instance_id: str) -> str | None:
    """The ID of the instance's pending or running deployment, if it has one."""
    statement = select(Deployment.id).where(
        Deployment.instance_id == instance_id, Deployment.state.in_(("pending", "running"))
    )
    row = (await session.execute(statement)).first()
    return None if row is None else str(row[0])
