from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class AuditEntry(msgspec.Struct):
    id: str
    at: datetime
    tenant_id: str | None
    actor_kind: str
    actor_subject: str
    action: str
    resource: str
    resource_id: str | None
    outcome: str
    status_code: int
    request_id: str
    client_addr: str | None
    details: dict[str, Any]
    seq: int
    prev_hash: str
    hash: str


class BrokenLink(msgspec.Struct):
    chain: str
    seq: int
    entry_id: str | None
    reason: str


class AuditVerification(msgspec.Struct):
    intact: bool
    chains: int
    entries: int
    broken: BrokenLink | None
