from __future__ import annotations

from datetime import datetime
from typing import Any, Literal, get_args

import msgspec

from ctrlplane.telemetry.health import HealthStatus
from ctrlplane.telemetry.logparse import Level

UsageMetric = Literal[
    "cpu_percent", "memory_used_bytes", "memory_limit_bytes", "network_rx_bytes", "network_tx_bytes", "restarts"
]
HEALTH_LATENCY: Literal["health_check_latency_ms"] = "health_check_latency_ms"
RequestMetric = Literal[
    "http_requests_total", "http_request_duration_seconds", "http_request_bytes", "http_response_bytes"
]
"""Reported by the router (``network.requests``)."""
MetricName = UsageMetric | Literal["health_check_latency_ms"] | RequestMetric
USAGE_METRICS: tuple[UsageMetric, ...] = (
    "cpu_percent",
    "memory_used_bytes",
    "memory_limit_bytes",
    "network_rx_bytes",
    "network_tx_bytes",
    "restarts",
)
BUILTIN_METRICS: frozenset[str] = frozenset((*USAGE_METRICS, HEALTH_LATENCY, *get_args(RequestMetric)))
"""ctrlplane's own metric names: an app may not push metrics under them (``appmetrics``)."""
UNITS: dict[str, str] = {
    "cpu_percent": "percent",
    "memory_used_bytes": "bytes",
    "memory_limit_bytes": "bytes",
    "network_rx_bytes": "bytes",
    "network_tx_bytes": "bytes",
    "restarts": "count",
    HEALTH_LATENCY: "milliseconds",
    "http_requests_total": "count",
    "http_request_duration_seconds": "seconds",
    "http_request_bytes": "bytes",
    "http_response_bytes": "bytes",
}


class Point(msgspec.Struct):
    timestamp: datetime
    value: float


class Series(msgspec.Struct, omit_defaults=True):
    name: str
    """One of ctrlplane's metric names, or a metric the instance pushed over OTLP."""
    unit: str
    points: list[Point]
    labels: dict[str, str] = msgspec.field(default_factory=dict)
    """Request metrics: ``status_class`` and ``method``, or ``quantile``. App metrics: the data
    points' attributes, and for histograms ``quantile`` or ``stat`` (``count``, ``sum``)."""


class MetricsResponse(msgspec.Struct):
    instance_id: str
    since: datetime
    until: datetime
    step_seconds: int | None
    series: list[Series]


class LogEntry(msgspec.Struct):
    timestamp: datetime
    replica: int
    stream: Literal["stdout", "stderr"]
    level: Level
    message: str


class LogPage(msgspec.Struct):
    instance_id: str
    items: list[LogEntry]


class SpanRecord(msgspec.Struct):
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    service_name: str | None
    start_time: datetime
    end_time: datetime
    duration_ms: float
    status: Literal["unset", "ok", "error"]
    status_message: str
    attributes: dict[str, Any]


class TracePage(msgspec.Struct):
    instance_id: str
    items: list[SpanRecord]


class ReplicaResources(msgspec.Struct):
    replica: int
    generation: int
    name: str
    state: str
    running: bool
    cpu_percent: float
    cpu_limit_percent: float
    cpu_used_of_limit_percent: float
    memory_used_bytes: int
    memory_limit_bytes: int
    memory_used_of_limit_percent: float
    network_rx_bytes: int
    network_tx_bytes: int
    restarts: int


class ResourceLimits(msgspec.Struct):
    cpu_millis: int
    memory_mb: int
    replicas: int


class ResourcesResponse(msgspec.Struct):
    instance_id: str
    observed_at: datetime
    limits_per_replica: ResourceLimits
    replicas: list[ReplicaResources]
    total_cpu_percent: float
    total_memory_used_bytes: int
    available: bool
    message: str = ""


class DeploymentSummary(msgspec.Struct):
    id: str
    release_id: str
    strategy: str
    state: str
    error: str | None
    created_at: datetime
    finished_at: datetime | None


class ReleaseSummary(msgspec.Struct):
    id: str
    version: int
    image: str
    created_at: datetime


class TrafficSummary(msgspec.Struct):
    """The last hour of requests through the router (``network.requests.summary``)."""

    last_request_at: datetime | None
    requests: int
    error_ratio: float | None
    """5xx responses over all, or null without requests."""
    p50_seconds: float | None
    p99_seconds: float | None
    request_bytes: int
    response_bytes: int


class Dashboard(msgspec.Struct):
    instance_id: str
    name: str
    state: str
    desired_state: str
    status_message: str
    health: HealthStatus
    current_release: ReleaseSummary | None
    recent_deployments: list[DeploymentSummary]
    resources: ResourcesResponse
    recent_errors: list[LogEntry]
    traffic: TrafficSummary | None = None


class OtlpPartialSuccess(msgspec.Struct, rename="camel", omit_defaults=True):
    rejected_spans: int = 0
    error_message: str = ""


class ExportTraceServiceResponse(msgspec.Struct, rename="camel", omit_defaults=True):
    """OTLP's answer: empty on full success."""

    partial_success: OtlpPartialSuccess | None = None


class OtlpMetricsPartialSuccess(msgspec.Struct, rename="camel", omit_defaults=True):
    rejected_data_points: int = 0
    error_message: str = ""


class ExportMetricsServiceResponse(msgspec.Struct, rename="camel", omit_defaults=True):
    """OTLP's answer: empty on full success; ``partialSuccess`` counts the data points refused and
    says why."""

    partial_success: OtlpMetricsPartialSuccess | None = None
