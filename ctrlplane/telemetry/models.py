from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class MetricSample(Base):
    """One usage sample of an instance, or a rollup of several (``step_seconds`` > 0).

    Raw samples (step 0) are rolled up into 1-minute rows once they are older than the raw retention,
    and those into 5-minute rows later; see docs/architecture.md "Telemetry". A rollup row holds the
    mean of the gauges (CPU, memory in use) and the maximum of the rest (limits and the network and
    restart counters, which only grow), at the start of its bucket.
    """

    __tablename__ = "metric_samples"
    __table_args__ = (Index("ix_metric_samples_step_taken_at", "step_seconds", "taken_at"),)

    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    step_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    samples: Mapped[int] = mapped_column(Integer, default=1)
    cpu_percent: Mapped[float] = mapped_column(Float)
    memory_used_bytes: Mapped[int] = mapped_column(BigInteger)
    memory_limit_bytes: Mapped[int] = mapped_column(BigInteger)
    network_rx_bytes: Mapped[int] = mapped_column(BigInteger)
    network_tx_bytes: Mapped[int] = mapped_column(BigInteger)
    restarts: Mapped[int] = mapped_column(Integer)


class TraceSpan(Base):
    """A span an instance exported over OTLP; a span sent twice is kept once."""

    __tablename__ = "trace_spans"
    __table_args__ = (
        Index("ix_trace_spans_instance_start", "instance_id", "start_time"),
        Index("ix_trace_spans_received_at", "received_at"),
    )

    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), primary_key=True)
    trace_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    span_id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64))
    parent_span_id: Mapped[str | None] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(String(16))
    start_time: Mapped[datetime] = mapped_column(UTCDateTime())
    end_time: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[str] = mapped_column(String(8))
    status_message: Mapped[str] = mapped_column(Text, default="")
    service_name: Mapped[str | None] = mapped_column(Text)
    attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    resource_attributes: Mapped[dict[str, Any]] = mapped_column(JSON)
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AppMetricSeries(Base):
    """One metric an instance pushed over OTLP with one set of attributes (``telemetry/appmetrics.py``).

    ``id`` is derived from (instance, name, attributes), so the same series always lands on the same
    row. ``cumulative`` keeps the last cumulative point of a monotonic sum or a histogram, from which
    the next point's increment is taken; ``last_seen_at`` (receipt) decides whether the series holds
    one of the instance's cardinality slots and when it expires.
    """

    __tablename__ = "app_metric_series"
    __table_args__ = (Index("ix_app_metric_series_instance_name", "instance_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"))
    tenant_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(255))
    attributes: Mapped[dict[str, str]] = mapped_column(JSON)
    kind: Mapped[str] = mapped_column(String(16))
    unit: Mapped[str] = mapped_column(String(64), default="")
    cumulative: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AppMetricSample(Base):
    """A point of an app metric series, or a rollup of several (``step_seconds`` > 0), kept like the
    usage samples. ``value`` is a gauge's mean (weighted by ``samples``), a sum's increment, or a
    histogram's sum of observations; a histogram also has its ``count`` and, with explicit bounds,
    its ``bucket_counts`` (one more than ``bounds``: the last is the open bucket)."""

    __tablename__ = "app_metric_samples"
    __table_args__ = (
        Index("ix_app_metric_samples_step_taken_at", "step_seconds", "taken_at"),
        Index("ix_app_metric_samples_instance_taken_at", "instance_id", "taken_at"),
    )

    series_id: Mapped[str] = mapped_column(ForeignKey("app_metric_series.id", ondelete="CASCADE"), primary_key=True)
    step_seconds: Mapped[int] = mapped_column(Integer, primary_key=True)
    taken_at: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    instance_id: Mapped[str] = mapped_column(String(64))
    tenant_id: Mapped[str] = mapped_column(String(64))
    samples: Mapped[int] = mapped_column(Integer, default=1)
    value: Mapped[float] = mapped_column(Float)
    count: Mapped[int] = mapped_column(BigInteger, default=0)
    bucket_counts: Mapped[list[int] | None] = mapped_column(JSON)
    bounds: Mapped[list[float] | None] = mapped_column(JSON)
