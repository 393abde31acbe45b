"""The control plane's own metrics: one Prometheus registry per app, never a module global.

``Telemetry`` is built with the app's services (``AppServices.telemetry``). Request counts and
latencies are recorded as requests finish (``request_finished``, called by
``web.access_log.RequestContextASGI``); the gauges that describe the
database (operations, deploys, instances, health results) are read at scrape time by
``telemetry.service.scrape`` and handed to the registry's collector, so nothing polls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ctrlplane.telemetry.health import HealthView, NoHealthChecks


@dataclass
class StateSnapshot:
    """What the database said at the last scrape."""

    operations: Mapping[str, int] = field(default_factory=dict)
    deploys: Mapping[str, int] = field(default_factory=dict)
    instances: Mapping[str, int] = field(default_factory=dict)
    health_results: Mapping[str, int] = field(default_factory=dict)


OPERATION_STATES = ("queued", "running", "failed")
DEPLOY_OUTCOMES = ("succeeded", "failed", "rolled_back", "cancelled")


class _StateCollector(Collector):
    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[Metric]:
        snapshot = self.telemetry.snapshot
        operations = GaugeMetricFamily(
            "ctrlplane_operations", "Operations by state: queued (pending), running, failed", labels=["state"]
        )
        for state in OPERATION_STATES:
            operations.add_metric([state], snapshot.operations.get(state, 0))
        yield operations
        deploys = CounterMetricFamily("ctrlplane_deploys", "Finished deploys by outcome", labels=["outcome"])
        for outcome in DEPLOY_OUTCOMES:
            deploys.add_metric([outcome], snapshot.deploys.get(outcome, 0))
        yield deploys
        instances = GaugeMetricFamily("ctrlplane_instances", "Instances by state", labels=["state"])
        for state, count in sorted(snapshot.instances.items()):
            instances.add_metric([state], count)
        yield instances
        health = GaugeMetricFamily(
            "ctrlplane_health_results", "Health-check results kept, by status", labels=["status"]
        )
        for status, count in sorted(snapshot.health_results.items()):
            health.add_metric([status], count)
        yield health
        lag = GaugeMetricFamily(
            "ctrlplane_reconciler_lag_seconds",
            "Seconds since the reconciler last finished a pass (absent before the first)",
        )
        if self.telemetry.reconciled_at is not None:
            lag.add_metric([], max(0.0, time.monotonic() - self.telemetry.reconciled_at))
        yield lag


class Telemetry:
    """The app's Prometheus registry and what feeds it; ``health`` is the health seam."""

    def __init__(self, health: HealthView | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.health: HealthView = health or NoHealthChecks()
        self.snapshot = StateSnapshot()
        self.reconciled_at: float | None = None
        self.requests = Counter(
            "ctrlplane_http_requests",
            "HTTP requests by method, route template and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ctrlplane_http_request_duration_seconds",
            "HTTP request latency by method and route template (streams: until they end)",
            ["method", "route"],
            registry=self.registry,
        )
        self.instance_requests = Counter(
            "ctrlplane_instance_http_requests",
            "Requests the router served per instance, by method and status class (access-log sink)",
            ["tenant", "instance", "method", "status_class"],
            registry=self.registry,
        )
        self.instance_latency = Histogram(
            "ctrlplane_instance_http_request_duration_seconds",
            "Router-measured request latency per instance",
            ["tenant", "instance"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
            registry=self.registry,
        )
        self.instance_request_bytes = Counter(
            "ctrlplane_instance_http_request_bytes",
            "Request body bytes (Content-Length) per instance",
            ["tenant", "instance"],
            registry=self.registry,
        )
        self.instance_response_bytes = Counter(
            "ctrlplane_instance_http_response_bytes",
            "Response body bytes per instance",
            ["tenant", "instance"],
            registry=self.registry,
        )
        self.registry.register(_StateCollector(self))
        self._request_series: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def request_finished(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request counted and timed; each label set's series are looked up once."""
        series = self._request_series.get((method, route, status))
        if series is None:
            series = (self.requests.labels(method, route, str(status)), self.latency.labels(method, route))
            self._request_series[(method, route, status)] = series
        series[0].inc()
        series[1].observe(seconds)

    def router_request(self, destination: Any, key: tuple[str, ...], record: Any) -> None:
        """One request the router reported (``network.access.RequestBook`` listener)."""
        tenant, instance = destination.tenant_id, destination.instance_id
        self.instance_requests.labels(tenant, instance, key[3], key[4]).inc()
        self.instance_latency.labels(tenant, instance).observe(record.duration_seconds)
        self.instance_request_bytes.labels(tenant, instance).inc(record.request_bytes)
        self.instance_response_bytes.labels(tenant, instance).inc(record.response_bytes)

    def reconciled(self) -> None:
        """The reconciler finished a pass now."""
        self.reconciled_at = time.monotonic()
