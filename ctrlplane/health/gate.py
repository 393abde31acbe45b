"""Health checks as deploy gates: does a new replica pass the instance's checks?

The deploy engine asks, at every gate poll, for each new replica that runs: every enabled check of
the instance is run against **that** replica (http and tcp through its own endpoint, command
through ``exec`` on it) and it passes when all of them pass in the same poll. A check that fails
keeps the replica waiting until the gate's deadline (``CTRLPLANE_DEPLOY_HEALTH_TIMEOUT_SECONDS``),
because a starting application may not answer yet; the gate then fails with the checks' last
messages, and the engine rolls back. An instance without checks keeps the engine's own test.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
from sqlalchemy import select

from ctrlplane.db import Database
from ctrlplane.errors import ProviderUnavailable
from ctrlplane.health.models import HealthCheck
from ctrlplane.health.probes import Outcome, Target, parse_target, probe
from ctrlplane.provisioning.contract import Provider, ReplicaStatus


class HealthGate:
    def __init__(self, provider: Provider, instance_id: str, checks: list[tuple[str, Target, float]]) -> None:
        self.provider = provider
        self.instance_id = instance_id
        self.checks = checks
        self.failures: dict[int, str] = {}
        """The last failing checks of each replica, by replica index."""

    @classmethod
    async def load(cls, db: Database, provider: Provider, instance_id: str) -> HealthGate:
        async with db.read() as session:
            rows = (
                await session.execute(
                    select(HealthCheck)
                    .where(HealthCheck.instance_id == instance_id, HealthCheck.enabled.is_(True))
                    .order_by(HealthCheck.id)
                )
            ).scalars()
            checks = []
            for check in rows:
                try:
                    checks.append((check.name, parse_target(check.type, check.target), check.timeout_seconds))
                except ValueError:
                    continue
        return cls(provider, instance_id, checks)

    async def passes(self, replica: ReplicaStatus, otherwise: Callable[[ReplicaStatus], Awaitable[bool]]) -> bool:
        """Whether ``replica`` passes now; ``otherwise`` decides for an instance without checks."""
        if not self.checks:
            return await otherwise(replica)
        if replica.state != "running":
            self.failures[replica.replica] = f"replica {replica.replica} is {replica.state}"
            return False
        outcomes: dict[str, Outcome] = {}
        unavailable: list[ProviderUnavailable] = []

        async def one(name: str, target: Target, timeout: float) -> None:
            try:
                outcomes[name] = await probe(self.provider, self.instance_id, target, replica, timeout=timeout)
            except ProviderUnavailable as exc:
                unavailable.append(exc)

        async with anyio.create_task_group() as group:
            for name, target, timeout in self.checks:
                group.start_soon(one, name, target, timeout)
        if unavailable:
            raise unavailable[0]
        failed = [f"check {name}: {outcomes[name].message}" for name, _, _ in self.checks if not outcomes[name].ok]
        if failed:
            self.failures[replica.replica] = "; ".join(failed)
            return False
        self.failures.pop(replica.replica, None)
        return True

    def explain(self, replicas: set[int]) -> str:
        """Why the replicas named have not passed, as far as the checks said."""
        return "; ".join(f"replica {i}: {self.failures[i]}" for i in sorted(replicas) if i in self.failures)
