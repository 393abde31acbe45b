"""Telemetry for tenants: metrics, logs, traces, resources and the dashboard of one instance, and
the spans and metrics instances push over OTLP.

Every read loads the instance through the tenant-scoped ``InstanceRepository`` first, so another
tenant's instance is 404 and every later query is keyed by an instance the caller may see. Reads
that reach the provider (logs, resources) close the request's database session before they do, so
no transaction is held open across a provider call or a stream. Log lines (plain, followed, the
dashboard's errors) are redacted of the instance's secret values and OTLP token
(``secrets.service.InstanceRedactor``, made once per request or stream).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import aclosing
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.deployments.models import Deployment
from ctrlplane.errors import CtrlplaneError, Forbidden, InvalidInput, Unauthenticated
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.network import requests
from ctrlplane.network.access import quantile
from ctrlplane.provisioning.contract import LogLine, Provider
from ctrlplane.provisioning.errors import WorkloadNotFound
from ctrlplane.releases.models import Release
from ctrlplane.secrets.service import InstanceRedactor
from ctrlplane.telemetry import appmetrics, logparse, otlp, schemas
from ctrlplane.telemetry.repository import GAUGES, MetricsRepository, SpanRepository, bucket_start
from ctrlplane.tenants.models import Tenant
from ctrlplane.timeutil import as_utc, parse_duration_input, utc_now
from ctrlplane.web.context import AppServices, RequestContext

FUTURE_SLACK = timedelta(minutes=5)
"""How far ahead of the server's clock a pushed data point may be stamped."""
DEFAULT_WINDOW = timedelta(hours=1)
MAX_WINDOW = timedelta(days=400)
MAX_POINTS = 10_000
LEVEL_SCAN_LINES = 5000
"""With a level filter, how many of the newest lines are read to find ``limit`` matching ones."""
HEARTBEAT_SECONDS = 15.0
MIB = 1024 * 1024


def log_entry(line: LogLine, redact: Callable[[str], str] | None = None) -> schemas.LogEntry:
    """A line with its parsed level; ``redact`` applies to the message shown (a structured line's
    message field comes out unescaped, so it is redacted after parsing)."""
    level, message = logparse.parse(line.message)
    return schemas.LogEntry(
        timestamp=line.timestamp,
        replica=line.replica,
        stream=line.stream,
        level=level,
        message=redact(message) if redact is not None else message,
    )


def _span(row: Any) -> schemas.SpanRecord:
    return schemas.SpanRecord(
        trace_id=row.trace_id,
        span_id=row.span_id,
        parent_span_id=row.parent_span_id,
        name=row.name,
        kind=row.kind,
        service_name=row.service_name,
        start_time=row.start_time,
        end_time=row.end_time,
        duration_ms=row.duration_ms,
        status=row.status_code,
        status_message=row.status_message,
        attributes=row.attributes,
    )


def _step_seconds(step: str | None) -> int | None:
    if step is None:
        return None
    seconds = parse_duration_input("step", step)
    if seconds < 1 or seconds != int(seconds) or seconds > MAX_WINDOW.total_seconds():
        raise InvalidInput(
            f"step must be a whole number of seconds from 1s to {MAX_WINDOW.days}d", details={"step": step[:64]}
        )
    return int(seconds)


def latency_series(points: Sequence[tuple[datetime, float]], step: int | None) -> schemas.Series:
    """Health-check latency: every result, or with ``step`` the mean per step-aligned bucket."""
    if step is None:
        values = [schemas.Point(timestamp=at, value=float(ms)) for at, ms in points]
    else:
        buckets: dict[datetime, list[float]] = {}
        for at, ms in points:
            buckets.setdefault(bucket_start(at, step), []).append(float(ms))
        values = [
            schemas.Point(timestamp=start, value=round(sum(ms) / len(ms), 6)) for start, ms in sorted(buckets.items())
        ]
    return schemas.Series(name=schemas.HEALTH_LATENCY, unit=schemas.UNITS[schemas.HEALTH_LATENCY], points=values)


def series(rows: list[Any], names: tuple[schemas.UsageMetric, ...], step: int | None) -> list[schemas.Series]:
    """Points per metric: each stored row as it is, or with ``step`` one point per step-aligned
    bucket (gauges averaged by sample count, limits and counters at their maximum)."""
    result: list[schemas.Series] = []
    for name in names:
        if step is None:
            points = [schemas.Point(timestamp=row.taken_at, value=float(getattr(row, name))) for row in rows]
        else:
            buckets: dict[datetime, list[Any]] = {}
            for row in rows:
                buckets.setdefault(bucket_start(row.taken_at, step), []).append(row)
            points = []
            for start, members in sorted(buckets.items()):
                if name in GAUGES:
                    weight = sum(max(m.samples, 1) for m in members)
                    value = sum(float(getattr(m, name)) * max(m.samples, 1) for m in members) / weight
                else:
                    value = max(float(getattr(m, name)) for m in members)
                points.append(schemas.Point(timestamp=start, value=round(value, 6)))
        result.append(schemas.Series(name=name, unit=schemas.UNITS[name], points=points))
    return result


async def read_logs(
    provider: Provider,
    instance_id: str,
    *,
    level: logparse.Level | None,
    limit: int,
    since: datetime | None,
    redact: Callable[[str], str] | None = None,
) -> list[schemas.LogEntry]:
    """The newest ``limit`` lines (at ``level`` or above), oldest first, each message redacted by
    ``redact``; none while no container exists."""
    tail = limit if level is None else max(limit, LEVEL_SCAN_LINES)
    entries: list[schemas.LogEntry] = []
    try:
        async with aclosing(provider.logs(instance_id, tail=tail, since=since)) as lines:  # type: ignore[type-var]
            async for line in lines:
                entry = log_entry(line, redact)
                if level is None or logparse.at_least(entry.level, level):
                    entries.append(entry)
    except WorkloadNotFound:
        return []
    return entries[-limit:]


async def follow_logs(
    provider: Provider,
    instance_id: str,
    *,
    level: logparse.Level | None,
    tail: int,
    since: datetime | None,
    redact: InstanceRedactor | None = None,
    heartbeat_seconds: float = HEARTBEAT_SECONDS,
) -> AsyncIterator[schemas.LogEntry | None]:
    """The last ``tail`` lines, then new ones as they are written, each message redacted by
    ``redact`` (refreshed as the stream goes: ``InstanceRedactor.refresh``); None every
    ``heartbeat_seconds`` without a line (a keep-alive). Ends when the provider's stream ends
    (no replica runs)."""
    lines = provider.logs(instance_id, tail=tail, since=since, follow=True)
    pending: asyncio.Future[LogLine] | None = None
    try:
        while True:
            if pending is None:
                pending = asyncio.ensure_future(lines.__anext__())
            done, _ = await asyncio.wait({pending}, timeout=heartbeat_seconds)
            if not done:
                yield None
                continue
            try:
                line = pending.result()
            except (StopAsyncIteration, WorkloadNotFound):
                return
            finally:
                pending = None
            if redact is not None:
                await redact.refresh()
            entry = log_entry(line, redact)
            if level is None or logparse.at_least(entry.level, level):
                yield entry
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(BaseException):
                await pending
        closer = getattr(lines, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()


def resources_of(
    instance: Instance, replicas: list[Any], *, message: str = "", available: bool = True
) -> schemas.ResourcesResponse:
    cpu_limit = instance.cpu_millis / 10.0
    rows: list[schemas.ReplicaResources] = []
    for replica in replicas:
        usage = replica.usage
        memory_limit = (usage.memory_limit_bytes if usage and usage.memory_limit_bytes else 0) or (
            instance.memory_mb * MIB
        )
        cpu = usage.cpu_percent if usage else 0.0
        used = usage.memory_used_bytes if usage else 0
        rows.append(
            schemas.ReplicaResources(
                replica=replica.replica,
                generation=replica.generation,
                name=replica.name,
                state=replica.state,
                running=usage is not None,
                cpu_percent=cpu,
                cpu_limit_percent=cpu_limit,
                cpu_used_of_limit_percent=round(cpu / cpu_limit * 100, 3) if cpu_limit else 0.0,
                memory_used_bytes=used,
                memory_limit_bytes=memory_limit,
                memory_used_of_limit_percent=round(used / memory_limit * 100, 3) if memory_limit else 0.0,
                network_rx_bytes=usage.network_rx_bytes if usage else 0,
                network_tx_bytes=usage.network_tx_bytes if usage else 0,
                restarts=usage.restarts if usage else 0,
            )
        )
    return schemas.ResourcesResponse(
        instance_id=instance.id,
        observed_at=utc_now(),
        limits_per_replica=schemas.ResourceLimits(
            cpu_millis=instance.cpu_millis, memory_mb=instance.memory_mb, replicas=instance.replicas
        ),
        replicas=rows,
        total_cpu_percent=round(sum(r.cpu_percent for r in rows), 3),
        total_memory_used_bytes=sum(r.memory_used_bytes for r in rows),
        available=available,
        message=message,
    )


async def observe_resources(provider: Provider, instance: Instance) -> schemas.ResourcesResponse:
    try:
        replicas = await provider.replica_usage(instance.id)
    except WorkloadNotFound:
        return resources_of(instance, [], message="no containers")
    return resources_of(instance, list(replicas))


class TelemetryService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session
        self.services = context.services
        self.instances = InstanceRepository(context.session, context.principal.tenant_id)

    def _provider(self, instance: Instance) -> Provider:
        return self.services.providers.get(instance.provider_name)

    async def _detach(self) -> None:
        """End the request's read transaction before talking to the provider."""
        await self.session.close()

    async def _redactor(self, instance: Instance) -> InstanceRedactor:
        """What the instance's log lines are redacted of: its secret values and OTLP token."""
        return await InstanceRedactor.load(self.services, tenant_id=instance.tenant_id, instance_id=instance.id)

    async def metrics(
        self,
        instance_id: str,
        *,
        name: str | None,
        since: datetime | None,
        until: datetime | None,
        step: str | None,
        route: str | None = None,
    ) -> schemas.MetricsResponse:
        instance = await self.instances.get(instance_id)
        until = as_utc(until, "until") if until is not None else utc_now()
        since = as_utc(since, "since") if since is not None else until - DEFAULT_WINDOW
        if since >= until:
            raise InvalidInput("since must be before until", details={"since": str(since), "until": str(until)})
        if until - since > MAX_WINDOW:
            raise InvalidInput(f"the window is at most {MAX_WINDOW.days} days", details={"since": str(since)})
        step_seconds = _step_seconds(step)
        if step_seconds is not None and (until - since).total_seconds() / step_seconds > MAX_POINTS:
            raise InvalidInput(
                f"step is too small for this window: at most {MAX_POINTS} points per series",
                details={"step": step},
            )
        if name in requests.REQUEST_METRICS:
            samples = await requests.samples_between(
                self.session,
                tenant_id=instance.tenant_id,
                instance_id=instance.id,
                since=since,
                until=until,
                route=route,
            )
            request_metric = name
            return schemas.MetricsResponse(
                instance_id=instance.id,
                since=since,
                until=until,
                step_seconds=step_seconds,
                series=[
                    schemas.Series(
                        name=request_metric,
                        unit=schemas.UNITS[request_metric],
                        labels=labels,
                        points=[schemas.Point(timestamp=at, value=value) for at, value in points],
                    )
                    for labels, points in requests.series(samples, request_metric, step_seconds)
                ],
            )
        if name is not None and name not in schemas.BUILTIN_METRICS:
            pushed = await appmetrics.read(
                self.session,
                tenant_id=instance.tenant_id,
                instance_id=instance.id,
                name=name,
                since=since,
                until=until,
                step=step_seconds,
            )
            if pushed is None:
                raise InvalidInput(
                    "name is neither one of ctrlplane's metrics nor a metric this instance pushed over OTLP",
                    details={"name": name[:255], "builtin": sorted(schemas.BUILTIN_METRICS)},
                )
            return schemas.MetricsResponse(
                instance_id=instance.id, since=since, until=until, step_seconds=step_seconds, series=pushed
            )
        rows = await MetricsRepository(self.session).between(
            tenant_id=instance.tenant_id, instance_id=instance.id, since=since, until=until
        )
        usage = schemas.USAGE_METRICS if name is None else tuple(n for n in schemas.USAGE_METRICS if n == name)
        found = series(list(rows), usage, step_seconds)
        if name in (None, schemas.HEALTH_LATENCY):
            latency = await self.services.telemetry.health.latency(self.session, instance.id, since=since, until=until)
            found.append(latency_series(latency, step_seconds))
        return schemas.MetricsResponse(
            instance_id=instance.id, since=since, until=until, step_seconds=step_seconds, series=found
        )

    async def logs(
        self, instance_id: str, *, level: logparse.Level | None, limit: int, since: datetime | None
    ) -> schemas.LogPage:
        instance = await self.instances.get(instance_id)
        since = as_utc(since, "since") if since is not None else None
        provider = self._provider(instance)
        await self._detach()
        redact = await self._redactor(instance)
        return schemas.LogPage(
            instance_id=instance.id,
            items=await read_logs(provider, instance.id, level=level, limit=limit, since=since, redact=redact),
        )

    async def follow(
        self, instance_id: str, *, level: logparse.Level | None, limit: int, since: datetime | None
    ) -> AsyncIterator[schemas.LogEntry | None]:
        instance = await self.instances.get(instance_id)
        since = as_utc(since, "since") if since is not None else None
        provider = self._provider(instance)
        await self._detach()
        redact = await self._redactor(instance)
        return follow_logs(provider, instance.id, level=level, tail=limit, since=since, redact=redact)

    async def traces(self, instance_id: str, *, limit: int) -> schemas.TracePage:
        instance = await self.instances.get(instance_id)
        rows = await SpanRepository(self.session).recent(
            tenant_id=instance.tenant_id, instance_id=instance.id, limit=limit
        )
        return schemas.TracePage(instance_id=instance.id, items=[_span(row) for row in rows])

    async def resources(self, instance_id: str) -> schemas.ResourcesResponse:
        instance = await self.instances.get(instance_id)
        provider = self._provider(instance)
        await self._detach()
        return await observe_resources(provider, instance)

    async def dashboard(self, instance_id: str, *, recent: int = 5, errors: int = 10) -> schemas.Dashboard:
        instance = await self.instances.get(instance_id)
        health = await self.services.telemetry.health.instance_health(self.session, instance.id)
        traffic = await self._traffic(instance)
        release = await self.session.get(Release, instance.current_release_id) if instance.current_release_id else None
        deployments = (
            await self.session.execute(
                select(Deployment)
                .where(Deployment.instance_id == instance.id, Deployment.tenant_id == instance.tenant_id)
                .order_by(Deployment.created_at.desc(), Deployment.id.desc())
                .limit(recent)
            )
        ).scalars()
        recent_deployments = [
            schemas.DeploymentSummary(
                id=d.id,
                release_id=d.release_id,
                strategy=d.strategy,
                state=d.state,
                error=d.error,
                created_at=d.created_at,
                finished_at=d.finished_at,
            )
            for d in deployments
        ]
        provider = self._provider(instance)
        await self._detach()
        redact = await self._redactor(instance)
        try:
            resources = await observe_resources(provider, instance)
        except CtrlplaneError as exc:
            resources = resources_of(instance, [], message=exc.message, available=False)
        try:
            error_lines = await read_logs(provider, instance.id, level="error", limit=errors, since=None, redact=redact)
        except CtrlplaneError:
            error_lines = []
        return schemas.Dashboard(
            instance_id=instance.id,
            name=instance.name,
            state=instance.state,
            desired_state=instance.desired_state,
            status_message=instance.status_message,
            health=health,
            current_release=schemas.ReleaseSummary(
                id=release.id, version=release.version, image=release.image, created_at=release.created_at
            )
            if release is not None
            else None,
            recent_deployments=recent_deployments,
            resources=resources,
            recent_errors=error_lines,
            traffic=traffic,
        )

    async def _traffic(self, instance: Instance) -> schemas.TrafficSummary:
        now = utc_now()
        total, errors, buckets, received, sent = await requests.summary(
            self.session, tenant_id=instance.tenant_id, instance_id=instance.id, since=now - DEFAULT_WINDOW, until=now
        )
        p50, p99 = quantile(buckets, 0.5), quantile(buckets, 0.99)
        return schemas.TrafficSummary(
            last_request_at=await requests.last_request_at(self.session, instance.id),
            requests=total,
            error_ratio=round(errors / total, 6) if total else None,
            p50_seconds=round(p50, 6) if p50 is not None else None,
            p99_seconds=round(p99, 6) if p99 is not None else None,
            request_bytes=received,
            response_bytes=sent,
        )


async def authenticate_instance(services: AppServices, authorization: str | None) -> tuple[str, str, str]:
    """(instance, tenant, the tenant's plan) of an OTLP request's ``Authorization: Bearer cpt_...``;
    401 otherwise. Tenant tokens and API keys are not accepted here: only an instance's own token."""
    scheme, _, token = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("send the instance's OTLP token: Authorization: Bearer cpt_...")
    instance_id = otlp.token_instance(services.settings, token.strip())
    if instance_id is None:
        raise Unauthenticated("not a valid instance OTLP token")
    async with services.db.read() as session:
        row = (
            await session.execute(
                select(Instance.tenant_id, Instance.state, Tenant.plan)
                .join(Tenant, Tenant.id == Instance.tenant_id)
                .where(Instance.id == instance_id)
            )
        ).one_or_none()
    if row is None or row.state in ("destroying", "destroyed"):
        raise Unauthenticated("the instance of this OTLP token no longer exists")
    return instance_id, str(row.tenant_id), str(row.plan)


async def ingest_spans(
    services: AppServices, *, instance_id: str, tenant_id: str, request: otlp.ExportTraceServiceRequest
) -> int:
    """Store a request's spans for the token's instance (its own transaction); returns how many.
    A resource naming another instance (``ctrlplane.instance.id``) is refused whole (403): one
    instance's token never files spans under another."""
    parsed = list(otlp.spans(request))
    _own_resources(instance_id, [resource.resource for resource in request.resource_spans], "spans")
    async with services.db.write() as session, session.begin():
        await SpanRepository(session).add(tenant_id=tenant_id, instance_id=instance_id, spans=parsed)
    return len(parsed)


def _own_resources(instance_id: str, resources: list[otlp.Resource], what: str) -> None:
    claimed = otlp.claimed_instances(resources)
    if claimed - {instance_id}:
        raise Forbidden(
            f"these {what} name another instance than the one this token belongs to",
            details={"token_instance": instance_id, "named": sorted(claimed - {instance_id})},
        )


async def ingest_metrics(
    services: AppServices, *, instance_id: str, tenant_id: str, request: otlp.ExportMetricsServiceRequest
) -> schemas.ExportMetricsServiceResponse:
    """Store a request's data points as the token's instance's app metrics (its own transaction),
    and answer which were refused and why. A resource naming another instance is refused whole
    (403), as for spans; single points are refused (``partial_success``) for what
    ``otlp.metric_points`` and ``appmetrics.add`` say: a name that is not allowed, a point outside
    the retention, past a cardinality limit."""
    _own_resources(instance_id, [resource.resource for resource in request.resource_metrics], "metrics")
    settings = services.settings
    now = utc_now()
    points, refused = otlp.metric_points(
        request,
        reserved=schemas.BUILTIN_METRICS,
        oldest_nanos=int((now.timestamp() - settings.metrics_retention_seconds) * 1e9),
        newest_nanos=int((now + FUTURE_SLACK).timestamp() * 1e9),
    )
    async with services.db.write() as session, session.begin():
        await appmetrics.add(
            session, settings, tenant_id=tenant_id, instance_id=instance_id, points=points, refused=refused, now=now
        )
    if not refused.count:
        return schemas.ExportMetricsServiceResponse()
    return schemas.ExportMetricsServiceResponse(
        partial_success=schemas.OtlpMetricsPartialSuccess(
            rejected_data_points=refused.count, error_message=refused.message()
        )
    )


async def scrape(services: AppServices, session: AsyncSession) -> None:
    """Refresh the database-backed gauges of the app's Prometheus registry."""
    from ctrlplane.telemetry.hub import StateSnapshot
    from ctrlplane.telemetry.repository import ControlPlaneCounts

    counts = ControlPlaneCounts(session)
    telemetry = services.telemetry
    telemetry.snapshot = StateSnapshot(
        operations=await counts.operations(),
        deploys=await counts.deploys(),
        instances=await counts.instances(),
        health_results=dict(await telemetry.health.result_counts(session)),
    )
