"""Every telemetry query. Per-instance reads take the instance's tenant too, so a query can only
ever see the rows of the tenant whose instance the caller was allowed to load."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.deployments.models import Deployment
from ctrlplane.instances.models import Instance
from ctrlplane.operations.models import Operation
from ctrlplane.provisioning.contract import Usage
from ctrlplane.settings import Settings
from ctrlplane.telemetry.models import MetricSample, TraceSpan
from ctrlplane.telemetry.otlp import ParsedSpan
from ctrlplane.timeutil import utc_now

RAW, MINUTE, FIVE_MINUTES = 0, 60, 300
GAUGES = ("cpu_percent", "memory_used_bytes")
"""Averaged when rolled up; the other fields (limits, growing counters) keep their maximum."""


def bucket_start(moment: datetime, step: int) -> datetime:
    epoch = moment.timestamp()
    return datetime.fromtimestamp(epoch - epoch % step, moment.tzinfo)


@dataclass(frozen=True)
class Compaction:
    rolled_to_minute: int
    rolled_to_five_minutes: int
    expired: int


def _insert(session: AsyncSession):  # type: ignore[no-untyped-def]
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


class MetricsRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, tenant_id: str, instance_id: str, taken_at: datetime, usage: Usage) -> None:
        values = {
            "instance_id": instance_id,
            "tenant_id": tenant_id,
            "step_seconds": RAW,
            "taken_at": taken_at,
            "samples": 1,
            "cpu_percent": usage.cpu_percent,
            "memory_used_bytes": usage.memory_used_bytes,
            "memory_limit_bytes": usage.memory_limit_bytes,
            "network_rx_bytes": usage.network_rx_bytes,
            "network_tx_bytes": usage.network_tx_bytes,
            "restarts": usage.restarts,
        }
        await self.session.execute(_insert(self.session)(MetricSample).values(values).on_conflict_do_nothing())

    async def between(
        self, *, tenant_id: str, instance_id: str, since: datetime, until: datetime
    ) -> Sequence[MetricSample]:
        """Every row in the window, whatever its resolution, oldest first."""
        statement = (
            select(MetricSample)
            .where(
                MetricSample.tenant_id == tenant_id,
                MetricSample.instance_id == instance_id,
                MetricSample.taken_at >= since,
                MetricSample.taken_at <= until,
            )
            .order_by(MetricSample.taken_at, MetricSample.step_seconds)
        )
        return list((await self.session.execute(statement)).scalars())

    async def _roll_up(self, source: int, target: int, older_than: datetime) -> int:
        """Fold ``source`` rows older than ``older_than`` (aligned down to ``target``, so only whole
        buckets go) into one ``target`` row per instance and bucket; returns the rows folded."""
        cutoff = bucket_start(older_than, target)
        rows = list(
            (
                await self.session.execute(
                    select(MetricSample).where(MetricSample.step_seconds == source, MetricSample.taken_at < cutoff)
                )
            ).scalars()
        )
        if not rows:
            return 0
        groups: dict[tuple[str, datetime], list[MetricSample]] = {}
        for row in rows:
            groups.setdefault((row.instance_id, bucket_start(row.taken_at, target)), []).append(row)
        for (instance_id, start), members in groups.items():
            existing = await self.session.get(MetricSample, (instance_id, target, start))
            merged = members + ([existing] if existing is not None else [])
            rollup = existing or MetricSample(
                instance_id=instance_id, step_seconds=target, taken_at=start, tenant_id=members[0].tenant_id
            )
            _fold(rollup, merged)
            if existing is None:
                self.session.add(rollup)
        await self.session.flush()
        await self.session.execute(
            delete(MetricSample).where(MetricSample.step_seconds == source, MetricSample.taken_at < cutoff)
        )
        return len(rows)

    async def compact(self, settings: Settings, now: datetime | None = None) -> Compaction:
        """Downsample and expire: raw samples older than the raw retention become 1-minute rows,
        1-minute rows older than the minute retention become 5-minute rows, and 5-minute rows past
        the full retention are deleted."""
        now = now or utc_now()
        minute = await self._roll_up(RAW, MINUTE, now - timedelta(seconds=settings.metrics_raw_retention_seconds))
        five = await self._roll_up(
            MINUTE, FIVE_MINUTES, now - timedelta(seconds=settings.metrics_minute_retention_seconds)
        )
        expired = await self.session.execute(
            delete(MetricSample).where(
                MetricSample.taken_at < now - timedelta(seconds=settings.metrics_retention_seconds)
            )
        )
        return Compaction(minute, five, int(expired.rowcount or 0))  # type: ignore[attr-defined]


def _fold(target: MetricSample, rows: Iterable[MetricSample]) -> None:
    members = list(rows)
    total = sum(max(row.samples, 1) for row in members)
    target.samples = total
    target.cpu_percent = sum(row.cpu_percent * max(row.samples, 1) for row in members) / total
    target.memory_used_bytes = int(sum(row.memory_used_bytes * max(row.samples, 1) for row in members) / total)
    target.memory_limit_bytes = max(row.memory_limit_bytes for row in members)
    target.network_rx_bytes = max(row.network_rx_bytes for row in members)
    target.network_tx_bytes = max(row.network_tx_bytes for row in members)
    target.restarts = max(row.restarts for row in members)


class SpanRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def add(self, *, tenant_id: str, instance_id: str, spans: Sequence[ParsedSpan]) -> None:
        if not spans:
            return
        received = utc_now()
        rows = {
            (span.trace_id, span.span_id): {
                "instance_id": instance_id,
                "tenant_id": tenant_id,
                "trace_id": span.trace_id,
                "span_id": span.span_id,
                "parent_span_id": span.parent_span_id,
                "name": span.name,
                "kind": span.kind,
                "start_time": span.start_time,
                "end_time": span.end_time,
                "duration_ms": span.duration_ms,
                "status_code": span.status_code,
                "status_message": span.status_message,
                "service_name": span.service_name,
                "attributes": span.attributes,
                "resource_attributes": span.resource_attributes,
                "received_at": received,
            }
            for span in spans
        }
        await self.session.execute(
            _insert(self.session)(TraceSpan).values(list(rows.values())).on_conflict_do_nothing()
        )

    async def recent(self, *, tenant_id: str, instance_id: str, limit: int) -> Sequence[TraceSpan]:
        statement = (
            select(TraceSpan)
            .where(TraceSpan.tenant_id == tenant_id, TraceSpan.instance_id == instance_id)
            .order_by(TraceSpan.start_time.desc(), TraceSpan.span_id)
            .limit(limit)
        )
        return list((await self.session.execute(statement)).scalars())

    async def prune(self, settings: Settings, now: datetime | None = None) -> int:
        """Delete spans received before the trace retention, then the oldest spans of any instance
        holding more than ``CTRLPLANE_TRACE_MAX_SPANS_PER_INSTANCE``."""
        now = now or utc_now()
        cap = settings.trace_max_spans_per_instance
        removed = (
            await self.session.execute(
                delete(TraceSpan).where(
                    TraceSpan.received_at < now - timedelta(seconds=settings.trace_retention_seconds)
                )
            )
        ).rowcount or 0  # type: ignore[attr-defined]
        crowded = (
            await self.session.execute(
                select(TraceSpan.instance_id).group_by(TraceSpan.instance_id).having(func.count() > cap)
            )
        ).scalars()
        for instance_id in list(crowded):
            boundary = (
                await self.session.execute(
                    select(TraceSpan.start_time)
                    .where(TraceSpan.instance_id == instance_id)
                    .order_by(TraceSpan.start_time.desc())
                    .offset(cap - 1)
                    .limit(1)
                )
            ).scalar_one()
            removed += (
                await self.session.execute(
                    delete(TraceSpan).where(TraceSpan.instance_id == instance_id, TraceSpan.start_time < boundary)
                )
            ).rowcount or 0  # type: ignore[attr-defined]
        return int(removed)


class ControlPlaneCounts:
    """Counts over every tenant, for the Prometheus scrape."""

    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def operations(self) -> dict[str, int]:
        rows = await self.session.execute(
            select(Operation.state, func.count())
            .where(Operation.state.in_(("pending", "running", "failed")))
            .group_by(Operation.state)
        )
        names = {"pending": "queued", "running": "running", "failed": "failed"}
        return {names[state]: int(count) for state, count in rows.all()}

    async def deploys(self) -> dict[str, int]:
        rows = await self.session.execute(select(Deployment.state, func.count()).group_by(Deployment.state))
        return {state: int(count) for state, count in rows.all()}

    async def instances(self) -> dict[str, int]:
        rows = await self.session.execute(select(Instance.state, func.count()).group_by(Instance.state))
        return {state: int(count) for state, count in rows.all()}

    async def running_instances(self) -> list[tuple[str, str, str]]:
        """(instance, tenant, provider) of every instance observed running."""
        rows = await self.session.execute(
            select(Instance.id, Instance.tenant_id, Instance.provider_name).where(Instance.state == "running")
        )
        return [(str(a), str(b), str(c)) for a, b, c in rows.all()]
