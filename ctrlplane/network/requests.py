"""Request metrics per instance, read back: the router's samples as time series, and their rollups.

Kept like the container samples (``telemetry.repository``): flush rows (step 0) older than
``CTRLPLANE_METRICS_RAW_RETENTION`` are folded into 1-minute rows, those older than
``CTRLPLANE_METRICS_MINUTE_RETENTION`` into 5-minute rows, and rows past
``CTRLPLANE_METRICS_RETENTION`` are deleted. Counts, sums and latency buckets add up, so a rollup
loses only time resolution, never a request or a quantile's accuracy.

Series (``series``), per bucket of ``step`` seconds (or per stored row without a step):

* ``http_requests_total``: requests counted in the bucket, one series per status class and method;
* ``http_request_duration_seconds``: p50, p90 and p99 of the bucket's requests (label ``quantile``),
  from the merged latency buckets;
* ``http_request_bytes`` / ``http_response_bytes``: body bytes in the bucket.

``route`` narrows every series to one of the instance's route paths.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.network.access import merge_buckets, quantile
from ctrlplane.network.models import HttpRequestSample, InstanceTraffic, UpstreamRequestSample
from ctrlplane.settings import Settings
from ctrlplane.timeutil import utc_now

RequestMetric = Literal[
    "http_requests_total", "http_request_duration_seconds", "http_request_bytes", "http_response_bytes"
]
REQUEST_METRICS: tuple[RequestMetric, ...] = (
    "http_requests_total",
    "http_request_duration_seconds",
    "http_request_bytes",
    "http_response_bytes",
)
UNITS: dict[str, str] = {
    "http_requests_total": "count",
    "http_request_duration_seconds": "seconds",
    "http_request_bytes": "bytes",
    "http_response_bytes": "bytes",
}
QUANTILES = (0.5, 0.9, 0.99)
RAW, MINUTE, FIVE_MINUTES = 0, 60, 300

Labels = dict[str, str]
Points = list[tuple[datetime, float]]


def _bucket(moment: datetime, step: int | None) -> datetime:
    if step is None:
        return moment
    epoch = moment.timestamp()
    return datetime.fromtimestamp(epoch - epoch % step, moment.tzinfo)


async def samples_between(
    session: AsyncSession,
    *,
    tenant_id: str,
    instance_id: str,
    since: datetime,
    until: datetime,
    route: str | None = None,
) -> Sequence[HttpRequestSample]:
    statement = (
        select(HttpRequestSample)
        .where(
            HttpRequestSample.tenant_id == tenant_id,
            HttpRequestSample.instance_id == instance_id,
            HttpRequestSample.taken_at >= since,
            HttpRequestSample.taken_at <= until,
        )
        .order_by(HttpRequestSample.taken_at)
    )
    if route is not None:
        statement = statement.where(HttpRequestSample.route == route)
    return list((await session.execute(statement)).scalars())


def series(rows: Sequence[HttpRequestSample], name: RequestMetric, step: int | None) -> list[tuple[Labels, Points]]:
    """``name``'s series over ``rows``, each as (labels, points oldest first)."""
    if name == "http_requests_total":
        counts: dict[tuple[str, str], dict[datetime, float]] = {}
        for row in rows:
            per_bucket = counts.setdefault((row.status_class, row.method), {})
            at = _bucket(row.taken_at, step)
            per_bucket[at] = per_bucket.get(at, 0.0) + row.requests
        return [
            ({"status_class": status, "method": method}, sorted(points.items()))
            for (status, method), points in sorted(counts.items())
        ]
    if name == "http_request_duration_seconds":
        merged: dict[datetime, list[list[int]]] = {}
        for row in rows:
            merged.setdefault(_bucket(row.taken_at, step), []).append(row.duration_buckets)
        result: list[tuple[Labels, Points]] = []
        for q in QUANTILES:
            points: Points = []
            for at, buckets in sorted(merged.items()):
                value = quantile(merge_buckets(buckets), q)
                if value is not None:
                    points.append((at, round(value, 6)))
            result.append(({"quantile": f"{q:g}"}, points))
        return result
    field = "request_bytes" if name == "http_request_bytes" else "response_bytes"
    sums: dict[datetime, float] = {}
    for row in rows:
        at = _bucket(row.taken_at, step)
        sums[at] = sums.get(at, 0.0) + getattr(row, field)
    return [({}, sorted(sums.items()))]


async def _roll_up(session: AsyncSession, source: int, target: int, older_than: datetime) -> int:
    cutoff = _bucket(older_than, target)
    rows = list(
        (
            await session.execute(
                select(HttpRequestSample).where(
                    HttpRequestSample.step_seconds == source, HttpRequestSample.taken_at < cutoff
                )
            )
        ).scalars()
    )
    if not rows:
        return 0
    groups: dict[tuple[str, datetime, str, str, str], list[HttpRequestSample]] = {}
    for row in rows:
        key = (row.instance_id, _bucket(row.taken_at, target), row.route, row.method, row.status_class)
        groups.setdefault(key, []).append(row)
    for (instance_id, start, route, method, status), members in groups.items():
        existing = await session.get(HttpRequestSample, (instance_id, target, start, route, method, status))
        merged = members + ([existing] if existing is not None else [])
        rollup = existing or HttpRequestSample(
            instance_id=instance_id,
            step_seconds=target,
            taken_at=start,
            route=route,
            method=method,
            status_class=status,
            tenant_id=members[0].tenant_id,
        )
        rollup.requests = sum(m.requests for m in merged)
        rollup.duration_seconds_sum = sum(m.duration_seconds_sum for m in merged)
        rollup.duration_buckets = merge_buckets(m.duration_buckets for m in merged)
        rollup.request_bytes = sum(m.request_bytes for m in merged)
        rollup.response_bytes = sum(m.response_bytes for m in merged)
        if existing is None:
            session.add(rollup)
    await session.flush()
    await session.execute(
        delete(HttpRequestSample).where(HttpRequestSample.step_seconds == source, HttpRequestSample.taken_at < cutoff)
    )
    return len(rows)


async def compact(session: AsyncSession, settings: Settings, now: datetime | None = None) -> int:
    """Roll flush rows up to minutes and minutes up to 5 minutes, and expire the oldest; rows touched."""
    now = now or utc_now()
    touched = await _roll_up(session, RAW, MINUTE, now - timedelta(seconds=settings.metrics_raw_retention_seconds))
    touched += await _roll_up(
        session, MINUTE, FIVE_MINUTES, now - timedelta(seconds=settings.metrics_minute_retention_seconds)
    )
    expired = await session.execute(
        delete(HttpRequestSample).where(
            HttpRequestSample.taken_at < now - timedelta(seconds=settings.metrics_retention_seconds)
        )
    )
    # per-replica round trips serve deploy analyses only: kept as long as the flush rows, never rolled up
    replicas = await session.execute(
        delete(UpstreamRequestSample).where(
            UpstreamRequestSample.taken_at < now - timedelta(seconds=settings.metrics_raw_retention_seconds)
        )
    )
    return touched + int(expired.rowcount or 0) + int(replicas.rowcount or 0)  # type: ignore[attr-defined]


async def summary(
    session: AsyncSession, *, tenant_id: str, instance_id: str, since: datetime, until: datetime
) -> tuple[int, int, list[int], int, int]:
    """(requests, 5xx responses, merged latency buckets, request bytes, response bytes) in the window."""
    rows = await samples_between(session, tenant_id=tenant_id, instance_id=instance_id, since=since, until=until)
    return (
        sum(r.requests for r in rows),
        sum(r.requests for r in rows if r.status_class == "5xx"),
        merge_buckets(r.duration_buckets for r in rows),
        sum(r.request_bytes for r in rows),
        sum(r.response_bytes for r in rows),
    )


async def last_request_at(session: AsyncSession, instance_id: str) -> datetime | None:
    found: datetime | None = (
        await session.execute(select(InstanceTraffic.last_request_at).where(InstanceTraffic.instance_id == instance_id))
    ).scalar_one_or_none()
    return found
