"""Metrics an instance pushes over OTLP (``POST /v1/otlp/v1/metrics``), kept as its own series and
read back through ``GET /v1/instances/{id}/metrics?name=``.

**Series.** A metric name with one set of data point attributes is one series
(``app_metric_series``). Only the data point attributes are kept (as strings), never the resource's
or the scope's: those describe the process (host, SDK, a per-start instance ID) and would split one
series per restart. The name stays the app's own; ctrlplane's names (``schemas.BUILTIN_METRICS``)
and names starting with ``ctrlplane`` are refused, so a query by name always means one thing.

**Cardinality.** A series holds a slot while it was pushed within ``CTRLPLANE_METRICS_RAW_RETENTION``.
An instance may have ``CTRLPLANE_OTLP_MAX_METRICS`` names with a slot, and each name
``CTRLPLANE_OTLP_MAX_SERIES_PER_METRIC`` series; a point that would open one more is refused (the
export answers ``partial_success``), and so is a point whose name was first pushed as another kind.
Two exports of one instance racing past a limit may each open a series (the check reads, then
writes): the limits bound what an instance keeps, they are not exact to the series.

**Kinds** (``otlp.MetricPoint``). A gauge (and a cumulative non-monotonic sum, a level) is stored
as its value and averaged over time, like ``cpu_percent``. A sum (a monotonic sum, or any delta
sum) is stored as the increment since the series' previous point and added up per bucket, like
``http_requests_total``: a bucket's value is what was counted in it, and value / step is the rate.
A cumulative point becomes an increment against the last point of its own *stream*
(``AppMetricSeries.cumulative`` keeps one state per ``startTimeUnixNano``, at most ``MAX_STREAMS``):
the replicas of an instance push into the same series, each with its own start time, and must not
look like resets of each other. A stream not seen before counts whole (everything since its start
is new to ctrlplane); a value that went down is a reset and counts whole; a point no later than its
stream's last is a re-send and is dropped. A histogram is stored the same way as increments of its
count, sum and bucket counts; its resets are told by its count and buckets (not its sum, which
negative observations lower).

**Retention.** Rows are folded like the usage samples: raw rows older than
``CTRLPLANE_METRICS_RAW_RETENTION`` into 1-minute rows, those older than
``CTRLPLANE_METRICS_MINUTE_RETENTION`` into 5-minute rows, and rows past
``CTRLPLANE_METRICS_RETENTION`` are deleted, with the series not pushed for that long.
"""

from __future__ import annotations

import hashlib
import math
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from sqlalchemy import delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.settings import Settings
from ctrlplane.telemetry import schemas
from ctrlplane.telemetry.models import AppMetricSample, AppMetricSeries
from ctrlplane.telemetry.otlp import MetricPoint, Refusals
from ctrlplane.timeutil import utc_now

RAW, MINUTE, FIVE_MINUTES = 0, 60, 300
MAX_INT = 2**63 - 1
INSERT_CHUNK = 1000
"""Rows per INSERT (and keys per look-up): PostgreSQL takes at most 32,767 bind parameters."""
MAX_FLOAT = sys.float_info.max
QUANTILES = (0.5, 0.9, 0.99)


def series_id(instance_id: str, name: str, attributes: dict[str, str]) -> str:
    canonical = msgspec.json.encode([instance_id, name, sorted(attributes.items())])
    return hashlib.sha256(canonical).hexdigest()[:32]


def _at(nanos: int) -> datetime:
    return datetime.fromtimestamp(nanos // 1000 / 1e6, UTC)


def _bucket(moment: datetime, step: int | None) -> datetime:
    if not step:
        return moment
    epoch = moment.timestamp()
    return datetime.fromtimestamp(epoch - epoch % step, moment.tzinfo)


def _insert(session: AsyncSession):  # type: ignore[no-untyped-def]
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


MAX_STREAMS = 16
"""Cumulative streams (start times) kept per series: one per replica, and a few restarts."""


def _streams(state: dict[str, Any] | None) -> dict[str, dict[str, Any]]:
    if not state:
        return {}
    if "streams" in state:
        return dict(state["streams"])
    return {str(state["start"]): state}  # the one-stream state stored before streams were kept


def increment(state: dict[str, Any] | None, point: MetricPoint) -> tuple[MetricPoint, dict[str, Any]] | None:
    """A cumulative point as the increment since the previous point of the same stream (its
    ``startTimeUnixNano``: each replica of an instance, and each start of one, is its own stream
    of one series), and the series' state to keep; None for a point no later than the stream's
    last one (a re-send). A stream not seen before counts whole, as does a reset: a sum that went
    down, or a histogram whose count or a bucket went down or whose bounds changed (not its sum,
    which negative observations lower). At most ``MAX_STREAMS`` streams are kept, the least
    recently pushed dropped."""
    streams = _streams(state)
    key = str(point.start_nanos)
    last = streams.get(key)
    if last is not None and point.time_nanos <= last["time"]:
        return None
    streams[key] = {
        "start": point.start_nanos,
        "time": point.time_nanos,
        "value": point.value,
        "count": point.count,
        "buckets": list(point.bucket_counts),
        "bounds": list(point.bounds),
    }
    if len(streams) > MAX_STREAMS:
        for oldest in sorted(streams, key=lambda k: streams[k]["time"])[: len(streams) - MAX_STREAMS]:
            del streams[oldest]
    kept = {"streams": streams}
    if last is None:
        return point, kept
    if point.kind == "histogram":
        reset = (
            point.count < last["count"]
            or list(point.bounds) != last["bounds"]
            or len(point.bucket_counts) != len(last["buckets"])
            or any(now < before for now, before in zip(point.bucket_counts, last["buckets"], strict=True))
        )
    else:
        reset = point.value < last["value"]
    if reset:
        return point, kept
    buckets = tuple(now - before for now, before in zip(point.bucket_counts, last["buckets"], strict=True))
    return (
        msgspec.structs.replace(
            point, value=point.value - last["value"], count=point.count - last["count"], bucket_counts=buckets
        ),
        kept,
    )


async def add(
    session: AsyncSession,
    settings: Settings,
    *,
    tenant_id: str,
    instance_id: str,
    points: Sequence[MetricPoint],
    refused: Refusals,
    now: datetime | None = None,
) -> int:
    """Store ``points`` under the instance (in the caller's transaction), refusing into ``refused``
    what the cardinality limits or a name's kind forbid; returns the samples written."""
    if not points:
        return 0
    now = now or utc_now()
    active_since = now - timedelta(seconds=settings.metrics_raw_retention_seconds)
    names = {point.name for point in points}
    known = {
        row.id: row
        for row in (
            await session.execute(
                select(AppMetricSeries)
                .where(AppMetricSeries.instance_id == instance_id, AppMetricSeries.name.in_(names))
                .with_for_update()
            )
        ).scalars()
    }
    kinds = {row.name: row.kind for row in known.values()}
    active: dict[str, int] = {
        str(name): int(count)
        for name, count in (
            await session.execute(
                select(AppMetricSeries.name, func.count())
                .where(AppMetricSeries.instance_id == instance_id, AppMetricSeries.last_seen_at >= active_since)
                .group_by(AppMetricSeries.name)
            )
        ).all()
    }
    samples: dict[tuple[str, datetime], dict[str, Any]] = {}
    adding: set[tuple[str, datetime]] = set()
    for point in points:
        shown = repr(point.name[:100])
        if kinds.get(point.name, point.kind) != point.kind:
            refused.add(f"{shown} was pushed as a {kinds[point.name]}, not a {point.kind}")
            continue
        sid = series_id(instance_id, point.name, point.attributes)
        series = known.get(sid)
        if series is None or series.last_seen_at < active_since:
            if point.name not in active and len(active) >= settings.otlp_max_metrics:
                refused.add(f"{shown}: the instance has {settings.otlp_max_metrics} metric names already")
                continue
            if active.get(point.name, 0) >= settings.otlp_max_series_per_metric:
                refused.add(f"{shown} has {settings.otlp_max_series_per_metric} attribute sets already")
                continue
            active[point.name] = active.get(point.name, 0) + 1
        if series is None:
            # another export may be creating the same series right now: insert-or-ignore (which
            # waits for that one's transaction), then take the row either way, locked
            await session.execute(
                _insert(session)(AppMetricSeries)
                .values(
                    id=sid,
                    instance_id=instance_id,
                    tenant_id=tenant_id,
                    name=point.name,
                    attributes=point.attributes,
                    kind=point.kind,
                    unit=point.unit,
                    last_seen_at=now,
                )
                .on_conflict_do_nothing(index_elements=["id"])
            )
            series = (
                await session.execute(select(AppMetricSeries).where(AppMetricSeries.id == sid).with_for_update())
            ).scalar_one()
            known[sid] = series
            kinds.setdefault(point.name, series.kind)
            if series.kind != point.kind:
                refused.add(f"{shown} was pushed as a {series.kind}, not a {point.kind}")
                continue
        series.last_seen_at = now
        if point.unit:
            series.unit = point.unit
        stored = point
        if point.cumulative:
            found = increment(series.cumulative, point)
            if found is None:
                continue
            stored, series.cumulative = found
        row = samples.get((sid, _at(point.time_nanos)))
        if row is not None:
            # two streams (replicas) with a point at the same moment: a sum or a histogram adds up
            if point.kind != "gauge":
                _add_to(row, stored)
            continue
        samples[(sid, _at(point.time_nanos))] = {
            "series_id": sid,
            "step_seconds": RAW,
            "taken_at": _at(point.time_nanos),
            "instance_id": instance_id,
            "tenant_id": tenant_id,
            "samples": 1,
            "value": stored.value,
            "count": stored.count,
            "bucket_counts": list(stored.bucket_counts) if stored.bucket_counts else None,
            "bounds": list(stored.bounds) if stored.bucket_counts else None,
        }
        if point.cumulative:
            adding.add((sid, _at(point.time_nanos)))
    await session.flush()
    # an increment of a cumulative stream (its re-sends were dropped above) at the moment of a
    # row stored already, by another replica's export: added to it, not dropped as a re-send
    pending = sorted(adding)
    stored_rows: list[AppMetricSample] = []
    for first in range(0, len(pending), INSERT_CHUNK):
        chunk = pending[first : first + INSERT_CHUNK]
        stored_rows.extend(
            (
                await session.execute(
                    select(AppMetricSample).where(
                        AppMetricSample.series_id.in_({sid for sid, _ in chunk}),
                        AppMetricSample.step_seconds == RAW,
                        AppMetricSample.taken_at.in_({at for _, at in chunk}),
                    )
                )
            ).scalars()
        )
    for existing in stored_rows:
        key = (existing.series_id, existing.taken_at)
        row = samples.pop(key, None) if key in adding else None
        if row is None:
            continue
        merged: dict[str, Any] = {
            "value": existing.value,
            "count": existing.count,
            "bucket_counts": existing.bucket_counts,
            "bounds": existing.bounds,
        }
        _add_to(merged, Increment.of(row))
        existing.value, existing.count = merged["value"], merged["count"]
        existing.bucket_counts = merged["bucket_counts"]
    rows = list(samples.values())
    for first in range(0, len(rows), INSERT_CHUNK):
        # PostgreSQL takes at most 32,767 bind parameters per statement: 10 a row
        await session.execute(
            _insert(session)(AppMetricSample).values(rows[first : first + INSERT_CHUNK]).on_conflict_do_nothing()
        )
    return len(samples)


@dataclass(frozen=True)
class Increment:
    """A sample row's numbers in the shape ``_add_to`` takes."""

    value: float
    count: int
    bucket_counts: tuple[int, ...]
    bounds: tuple[float, ...]

    @classmethod
    def of(cls, row: dict[str, Any]) -> Increment:
        return cls(row["value"], row["count"], tuple(row["bucket_counts"] or ()), tuple(row["bounds"] or ()))


def _add_to(row: dict[str, Any], stored: MetricPoint | Increment) -> None:
    """Add a sum's or a histogram's increment to a sample row (its buckets only with the same bounds)."""
    row["value"] = max(-MAX_FLOAT, min(MAX_FLOAT, row["value"] + stored.value))
    row["count"] = min(row["count"] + stored.count, MAX_INT)
    if (
        row["bucket_counts"]
        and list(row["bounds"] or []) == list(stored.bounds)
        and len(row["bucket_counts"]) == len(stored.bucket_counts)
    ):
        row["bucket_counts"] = [
            min(a + b, MAX_INT) for a, b in zip(row["bucket_counts"], stored.bucket_counts, strict=True)
        ]


# -- folding rows: rollups and query buckets alike ----------------------------------------------


class Folded(msgspec.Struct):
    samples: int
    value: float
    count: int
    bucket_counts: list[int] | None
    bounds: list[float] | None


def fold(kind: str, rows: Iterable[Any]) -> Folded:
    """Rows of one series in one bucket as one: a gauge's mean weighted by samples; a sum's and a
    histogram's values added up. Histogram buckets are added up over the rows with the newest
    rows' bounds (an app that changed its bounds keeps only the new ones' quantiles there)."""
    members = sorted(rows, key=lambda r: (r.taken_at, r.step_seconds))
    samples = min(sum(max(r.samples, 1) for r in members), MAX_INT)
    if kind == "gauge":
        value = sum(r.value * max(r.samples, 1) for r in members) / samples
    else:
        value = sum(r.value for r in members)
    # saturate rather than fail: a row must fit its columns, or the compaction of every row fails
    value = 0.0 if math.isnan(value) else max(-MAX_FLOAT, min(MAX_FLOAT, value))
    count = min(sum(r.count for r in members), MAX_INT)
    with_buckets = [r for r in members if r.bucket_counts]
    if not with_buckets:
        return Folded(samples=samples, value=value, count=count, bucket_counts=None, bounds=None)
    bounds = list(with_buckets[-1].bounds or [])
    merged = [0] * (len(bounds) + 1)
    for row in with_buckets:
        if list(row.bounds or []) == bounds and len(row.bucket_counts) == len(merged):
            merged = [min(a + b, MAX_INT) for a, b in zip(merged, row.bucket_counts, strict=True)]
    return Folded(samples=samples, value=value, count=count, bucket_counts=merged, bounds=bounds)


def quantile(bounds: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The ``q`` quantile inside explicit-bound buckets, interpolated linearly as Prometheus'
    ``histogram_quantile`` does (the first bucket from 0 when its bound is positive; the open
    last bucket answers the highest bound)."""
    total = sum(counts)
    if total == 0 or not bounds:
        return None
    rank = q * total
    seen = 0.0
    for i, n in enumerate(counts):
        if n and seen + n >= rank:
            if i == len(bounds):
                return bounds[-1]
            upper = bounds[i]
            lower = bounds[i - 1] if i else min(0.0, upper)
            return lower + (upper - lower) * ((rank - seen) / n)
        seen += n
    return bounds[-1]


async def _roll_up(session: AsyncSession, source: int, target: int, older_than: datetime) -> int:
    cutoff = _bucket(older_than, target)
    rows = (
        await session.execute(
            select(AppMetricSample, AppMetricSeries.kind)
            .join(AppMetricSeries, AppMetricSeries.id == AppMetricSample.series_id)
            .where(AppMetricSample.step_seconds == source, AppMetricSample.taken_at < cutoff)
        )
    ).all()
    if not rows:
        return 0
    groups: dict[tuple[str, datetime], tuple[str, list[AppMetricSample]]] = {}
    for row, kind in rows:
        groups.setdefault((row.series_id, _bucket(row.taken_at, target)), (kind, []))[1].append(row)
    for (sid, start), (kind, members) in groups.items():
        existing = await session.get(AppMetricSample, (sid, target, start))
        folded = fold(kind, members + ([existing] if existing is not None else []))
        rollup = existing or AppMetricSample(
            series_id=sid,
            step_seconds=target,
            taken_at=start,
            instance_id=members[0].instance_id,
            tenant_id=members[0].tenant_id,
        )
        rollup.samples, rollup.value, rollup.count = folded.samples, folded.value, folded.count
        rollup.bucket_counts, rollup.bounds = folded.bucket_counts, folded.bounds
        if existing is None:
            session.add(rollup)
    await session.flush()
    await session.execute(
        delete(AppMetricSample).where(AppMetricSample.step_seconds == source, AppMetricSample.taken_at < cutoff)
    )
    return len(rows)


async def compact(session: AsyncSession, settings: Settings, now: datetime | None = None) -> int:
    """Roll raw rows up to minutes and minutes up to 5 minutes, expire rows and idle series past
    the retention; returns the rows touched."""
    now = now or utc_now()
    touched = await _roll_up(session, RAW, MINUTE, now - timedelta(seconds=settings.metrics_raw_retention_seconds))
    touched += await _roll_up(
        session, MINUTE, FIVE_MINUTES, now - timedelta(seconds=settings.metrics_minute_retention_seconds)
    )
    horizon = now - timedelta(seconds=settings.metrics_retention_seconds)
    expired = await session.execute(delete(AppMetricSample).where(AppMetricSample.taken_at < horizon))
    idle = select(AppMetricSeries.id).where(AppMetricSeries.last_seen_at < horizon)
    await session.execute(delete(AppMetricSample).where(AppMetricSample.series_id.in_(idle)))
    gone = await session.execute(delete(AppMetricSeries).where(AppMetricSeries.last_seen_at < horizon))
    return touched + int(expired.rowcount or 0) + int(gone.rowcount or 0)  # type: ignore[attr-defined]


# -- reading -------------------------------------------------------------------------------------


async def names(session: AsyncSession, *, tenant_id: str, instance_id: str) -> list[str]:
    rows = await session.execute(
        select(AppMetricSeries.name)
        .where(AppMetricSeries.tenant_id == tenant_id, AppMetricSeries.instance_id == instance_id)
        .distinct()
        .order_by(AppMetricSeries.name)
    )
    return [str(name) for name in rows.scalars()]


async def read(
    session: AsyncSession,
    *,
    tenant_id: str,
    instance_id: str,
    name: str,
    since: datetime,
    until: datetime,
    step: int | None,
) -> list[schemas.Series] | None:
    """The series of app metric ``name`` in the window, or None when the instance has no such
    metric. Without ``step`` every stored row is a point; with it, one point per step-aligned
    bucket (``fold``). A histogram answers, per attribute set, its p50, p90 and p99 (labels
    ``quantile``; only with explicit bounds, and only for buckets with observations), its
    ``stat: count`` and ``stat: sum``."""
    series = list(
        (
            await session.execute(
                select(AppMetricSeries).where(
                    AppMetricSeries.tenant_id == tenant_id,
                    AppMetricSeries.instance_id == instance_id,
                    AppMetricSeries.name == name,
                )
            )
        ).scalars()
    )
    if not series:
        return None
    rows = (
        await session.execute(
            select(AppMetricSample)
            .where(
                AppMetricSample.tenant_id == tenant_id,
                AppMetricSample.series_id.in_([s.id for s in series]),
                AppMetricSample.taken_at >= since,
                AppMetricSample.taken_at <= until,
            )
            .order_by(AppMetricSample.taken_at, AppMetricSample.step_seconds)
        )
    ).scalars()
    by_series: dict[str, dict[datetime, list[AppMetricSample]]] = {}
    for row in rows:
        by_series.setdefault(row.series_id, {}).setdefault(_bucket(row.taken_at, step), []).append(row)
    found: list[schemas.Series] = []
    for one in sorted(series, key=lambda s: sorted(s.attributes.items())):
        buckets = [(at, fold(one.kind, members)) for at, members in sorted(by_series.get(one.id, {}).items())]
        labels = dict(one.attributes)
        if one.kind != "histogram":
            points = [schemas.Point(timestamp=at, value=round(f.value, 9)) for at, f in buckets]
            found.append(schemas.Series(name=name, unit=one.unit, labels=labels, points=points))
            continue
        for q in QUANTILES:
            quantiles = [
                (at, quantile(f.bounds or [], f.bucket_counts or [], q)) for at, f in buckets if f.bucket_counts
            ]
            found.append(
                schemas.Series(
                    name=name,
                    unit=one.unit,
                    labels={**labels, "quantile": f"{q:g}"},
                    points=[schemas.Point(timestamp=at, value=round(v, 9)) for at, v in quantiles if v is not None],
                )
            )
        found.append(
            schemas.Series(
                name=name,
                unit="count",
                labels={**labels, "stat": "count"},
                points=[schemas.Point(timestamp=at, value=float(f.count)) for at, f in buckets],
            )
        )
        found.append(
            schemas.Series(
                name=name,
                unit=one.unit,
                labels={**labels, "stat": "sum"},
                points=[schemas.Point(timestamp=at, value=round(f.value, 9)) for at, f in buckets],
            )
        )
    return found
