from __future__ import annotations

import msgspec


class ApiKeyStats(msgspec.Struct):
    active: int
    revoked: int
    expired: int


class SystemStats(msgspec.Struct):
    tenants: dict[str, int]
    instances: dict[str, int]
    deployments_last_24h: int
    api_keys: ApiKeyStats
    environments: dict[str, int] = msgspec.field(default_factory=dict)
    """Environments by state; ``pooled`` are warm-pool members, running and unassigned."""


class ProviderStatus(msgspec.Struct):
    name: str
    available: bool
    message: str
