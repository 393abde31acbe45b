"""The metrics sampler: on an interval, one ``usage`` sample per running instance, then downsampling
and retention (usage, request and app metrics, and spans). Runs in the background with the workers (``Background``)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio
import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import CtrlplaneError
from ctrlplane.network.requests import compact as compact_requests
from ctrlplane.provisioning.contract import SelfSampledProvider, Usage
from ctrlplane.telemetry import appmetrics
from ctrlplane.telemetry.repository import ControlPlaneCounts, MetricsRepository, SpanRepository
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices

log = structlog.get_logger("ctrlplane.telemetry")

PARALLEL_SAMPLES = 8
SAMPLE_TIMEOUT_SECONDS = 20.0


class MetricsSampler:
    def __init__(self, services: AppServices) -> None:
        self.services = services

    async def run_once(self) -> int:
        """Sample every running instance, store the samples, compact; returns the samples stored."""
        async with self.services.db.read() as session:
            running = await ControlPlaneCounts(session).running_instances()
        taken: list[tuple[str, str, Usage]] = []
        limiter = anyio.CapacityLimiter(PARALLEL_SAMPLES)

        async def sample(instance_id: str, tenant_id: str, provider_name: str) -> None:
            async with limiter:
                try:
                    provider = self.services.providers.get(provider_name)
                    if isinstance(provider, SelfSampledProvider) and provider.samples_usage:
                        return  # its samples arrive on their own (a node's metric batches)
                    with anyio.fail_after(SAMPLE_TIMEOUT_SECONDS):
                        usage = await provider.usage(instance_id)
                except (CtrlplaneError, TimeoutError) as exc:
                    # gone or stopped since it was listed, or the runtime is down: no sample this round
                    log.debug("usage_sample_skipped", instance=instance_id, error=str(exc))
                    return
                taken.append((instance_id, tenant_id, usage))

        async with anyio.create_task_group() as group:
            for instance_id, tenant_id, provider_name in running:
                group.start_soon(sample, instance_id, tenant_id, provider_name)
        now = utc_now()
        async with self.services.db.write() as session, session.begin():
            metrics = MetricsRepository(session)
            for instance_id, tenant_id, usage in taken:
                await metrics.add(tenant_id, instance_id, now, usage)
        await self.compact()
        return len(taken)

    async def compact(self) -> None:
        """Each kind of row in its own transaction: one that fails (logged) is retried on the next
        run and does not hold back the others' retention."""
        settings = self.services.settings
        steps: list[tuple[str, Callable[[AsyncSession], Awaitable[object]]]] = [
            ("usage", lambda session: MetricsRepository(session).compact(settings)),
            ("spans", lambda session: SpanRepository(session).prune(settings)),
            ("requests", lambda session: compact_requests(session, settings)),
            ("app_metrics", lambda session: appmetrics.compact(session, settings)),
        ]
        for what, step in steps:
            try:
                async with self.services.db.write() as session, session.begin():
                    await step(session)
            except Exception:  # logged; the other compactions go on
                log.exception("compaction_failed", rows=what)
