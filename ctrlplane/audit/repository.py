from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, select

from ctrlplane.audit.models import AuditEntry


def audit_query(
    *,
    tenant_id: str | None,
    resource: str | None,
    action: str | None,
    actor: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Select[AuditEntry]:
    statement = select(AuditEntry)
    if tenant_id is not None:
        statement = statement.where(AuditEntry.tenant_id == tenant_id)
    if resource is not None:
        statement = statement.where(AuditEntry.resource == resource)
    if action is not None:
        statement = statement.where(AuditEntry.action == action)
    if actor is not None:
        statement = statement.where(AuditEntry.actor_subject == actor)
    if since is not None:
        statement = statement.where(AuditEntry.at >= since)
    if until is not None:
        statement = statement.where(AuditEntry.at < until)
    return statement
