"""Audit entries of what the control plane does to environments by itself (expiry, idleness, warm
pools, settling): the system is the actor, in the environment's tenant's chain, in the same
transaction as the change, like every API change's entry."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.audit.service import AuditKeys, AuditRecord
from ctrlplane.audit.service import append as append_audit
from ctrlplane.environments.models import Environment
from ctrlplane.ids import new_id

SYSTEM_SUBJECT = "ctrlplane"


async def system_change(
    session: AsyncSession, keys: AuditKeys, environment: Environment, action: str, **details: Any
) -> None:
    await append_audit(
        session,
        AuditRecord(
            tenant_id=environment.tenant_id,
            actor_kind="system",
            actor_subject=SYSTEM_SUBJECT,
            action=action,
            resource="environment",
            resource_id=environment.id,
            outcome="success",
            status_code=200,
            request_id=new_id("req"),
            client_addr=None,
            details={"key": environment.key, "instance_id": environment.instance_id, **details},
        ),
        keys=keys,
    )
