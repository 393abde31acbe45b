"""The seam between telemetry and health checks (``ctrlplane/health/``, built separately).

Telemetry shows health in the dashboard and in Prometheus, but does not run checks. It asks a
``HealthView``: ``create_app`` passes ``ctrlplane.health.view.HealthChecksView``; ``NoHealthChecks``
(answering "unknown" and no samples) is what a ``Telemetry`` built without one uses, as unit tests
of telemetry alone do.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncSession

HealthStatus = Literal["healthy", "degraded", "unhealthy", "unknown"]


class HealthView(Protocol):
    async def instance_health(self, session: AsyncSession, instance_id: str) -> HealthStatus:
        """The instance's aggregate health (``unknown`` when it has no checks or no results yet)."""
        ...

    async def latency(
        self, session: AsyncSession, instance_id: str, *, since: datetime, until: datetime
    ) -> Sequence[tuple[datetime, float]]:
        """(time, milliseconds) of the instance's health-check results in the window, oldest
        first: the ``health_check_latency_ms`` metric."""
        ...

    async def result_counts(self, session: AsyncSession) -> Mapping[str, int]:
        """Health-check results kept, counted by result status (e.g. ``healthy``, ``unhealthy``),
        over every tenant: the ``ctrlplane_health_results`` gauge."""
        ...


class NoHealthChecks:
    """The view while no health subsystem is wired: nothing is known."""

    async def instance_health(self, session: AsyncSession, instance_id: str) -> HealthStatus:
        return "unknown"

    async def latency(
        self, session: AsyncSession, instance_id: str, *, since: datetime, until: datetime
    ) -> Sequence[tuple[datetime, float]]:
        return ()

    async def result_counts(self, session: AsyncSession) -> Mapping[str, int]:
        return {}
