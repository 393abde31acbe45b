"""Every model, imported once so that ``metadata`` is complete for Alembic and the drift test."""

from ctrlplane.audit.models import AuditChain, AuditEntry
from ctrlplane.auth.models import ApiKey
from ctrlplane.db import Base
from ctrlplane.idempotency.models import IdempotencyRecord
from ctrlplane.tenants.models import Tenant, TenantQuota

metadata = Base.metadata

__all__ = ["ApiKey", "AuditChain", "AuditEntry", "IdempotencyRecord", "Tenant", "TenantQuota", "metadata"]
