"""Metrics apps push over OTLP/HTTP (JSON and protobuf, gzip'd or not), read back through
GET /v1/instances/{id}/metrics, and the OTLP receiver's encodings for traces too: on the fake
provider, in-process. The protobuf bodies are built with opentelemetry-proto's classes."""

from __future__ import annotations

import asyncio
import gzip
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from google.protobuf import json_format
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from opentelemetry.proto.common.v1 import common_pb2
from opentelemetry.proto.metrics.v1 import metrics_pb2
from opentelemetry.proto.resource.v1 import resource_pb2
from opentelemetry.proto.trace.v1 import trace_pb2
from sqlalchemy import func, select

from ctrlplane.db import Database
from ctrlplane.settings import Settings
from ctrlplane.telemetry import appmetrics, otlp
from ctrlplane.telemetry.models import AppMetricSample, AppMetricSeries
from tests.api.test_instances import create, tenant_token
from tests.api.test_telemetry import TRACE_ID, otlp_headers
from tests.conftest import Api, bearer
from tests.waiting import eventually

METRICS = "/v1/otlp/v1/metrics"
PROTOBUF = {"Content-Type": "application/x-protobuf"}
GZIP = {"Content-Encoding": "gzip"}
BASE = datetime.now(UTC).replace(minute=10, second=0, microsecond=0) - timedelta(hours=1)
"""Ten past the previous hour: the test points fall into one hour bucket and one 5-minute bucket."""
START = BASE - timedelta(minutes=5)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, otlp_max_bytes=16_384, otlp_max_metrics=4, otlp_max_series_per_metric=2)


def nanos(moment: datetime) -> str:
    return str(int(moment.timestamp()) * 1_000_000_000)


def attrs(**pairs: str) -> list[dict[str, Any]]:
    return [{"key": k, "value": {"stringValue": v}} for k, v in pairs.items()]


def number(value: float, at: datetime, **labels: str) -> dict[str, Any]:
    return {
        "attributes": attrs(**labels),
        "startTimeUnixNano": nanos(START),
        "timeUnixNano": nanos(at),
        **({"asInt": str(value)} if isinstance(value, int) else {"asDouble": value}),
    }


def body(*metrics: dict[str, Any], **resource: str) -> dict[str, Any]:
    return {
        "resourceMetrics": [
            {
                "resource": {"attributes": attrs(**{"service.name": "shop", **resource})},
                "scopeMetrics": [{"scope": {"name": "test"}, "metrics": list(metrics)}],
            }
        ]
    }


def counter(name: str, *points: dict[str, Any], temporality: int = 2) -> dict[str, Any]:
    return {"name": name, "unit": "{order}", "sum": {"dataPoints": list(points), "aggregationTemporality": temporality,
            "isMonotonic": True}}  # fmt: skip


def histogram(name: str, at: datetime, counts: list[int], total: float) -> dict[str, Any]:
    point = {
        "startTimeUnixNano": nanos(START),
        "timeUnixNano": nanos(at),
        "count": str(sum(counts)),
        "sum": total,
        "bucketCounts": [str(n) for n in counts],
        "explicitBounds": [0.1, 0.5, 1.0],
    }
    return {"name": name, "unit": "s", "histogram": {"dataPoints": [point], "aggregationTemporality": 2}}


async def read(api: Api, token: dict[str, str], instance_id: str, name: str, **query: str) -> dict[str, Any]:
    response = await api.client.get(
        f"/v1/instances/{instance_id}/metrics",
        params={"name": name, "since": (BASE - timedelta(hours=1)).isoformat(), **query},
        headers=token,
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


def by_labels(answer: dict[str, Any]) -> dict[tuple[tuple[str, str], ...], list[float]]:
    return {tuple(sorted(s.get("labels", {}).items())): [p["value"] for p in s["points"]] for s in answer["series"]}


async def stored_rows(db: Database) -> tuple[int, int]:
    async with db.read() as session:
        series = (await session.execute(select(func.count()).select_from(AppMetricSeries))).scalar_one()
        samples = (await session.execute(select(func.count()).select_from(AppMetricSample))).scalar_one()
    return int(series), int(samples)


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    error = response.json()
    assert error["code"] == code and error["message"]
    assert error["request_id"] == response.headers["X-Request-ID"]


@pytest.mark.dialects("samples and series are written with the dialect's INSERT ... ON CONFLICT and row locks")
async def test_json_gauges_counters_and_histograms_are_read_back_and_rolled_up(
    api: Api, db: Database, settings: Settings
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    headers = otlp_headers(settings, instance["id"])
    later = BASE + timedelta(seconds=60)
    first = body(
        {"name": "queue.depth", "unit": "{job}", "gauge": {"dataPoints": [number(3.0, BASE, queue="a")]}},
        counter("orders", number(10, BASE)),
        histogram("checkout.duration", BASE, [1, 2, 1, 0], 1.3),
        {"name": "refunds", "sum": {"dataPoints": [number(2, BASE)], "aggregationTemporality": 1}},
        **{"ctrlplane.instance.id": instance["id"]},
    )
    second = body(
        {"name": "queue.depth", "unit": "{job}", "gauge": {"dataPoints": [number(5.0, later, queue="a")]}},
        counter("orders", number(25, later)),
        histogram("checkout.duration", later, [2, 4, 2, 0], 2.6),
        {"name": "refunds", "sum": {"dataPoints": [number(3, later)], "aggregationTemporality": 1}},
    )
    for export in (first, second, second):  # the second twice: a re-sent export counts once
        response = await api.client.post(METRICS, json=export, headers=headers)
        assert response.status_code == 200, response.text
        assert response.json() == {}, "full success leaves partialSuccess unset"
        assert response.headers["content-type"].startswith("application/json")

    gauge = await read(api, token, instance["id"], "queue.depth")
    assert [(s["unit"], s["labels"]) for s in gauge["series"]] == [("{job}", {"queue": "a"})]
    assert by_labels(gauge) == {(("queue", "a"),): [3.0, 5.0]}
    # a cumulative counter is kept as increments, like http_requests_total: counted in each bucket
    assert by_labels(await read(api, token, instance["id"], "orders")) == {(): [10.0, 15.0]}
    assert by_labels(await read(api, token, instance["id"], "orders", step="1h")) == {(): [25.0]}
    assert by_labels(await read(api, token, instance["id"], "refunds", step="1h")) == {(): [5.0]}
    assert by_labels(await read(api, token, instance["id"], "queue.depth", step="1h")) == {(("queue", "a"),): [4.0]}
    hourly = by_labels(await read(api, token, instance["id"], "checkout.duration", step="1h"))
    assert hourly[(("stat", "count"),)] == [8.0]
    assert hourly[(("stat", "sum"),)] == [pytest.approx(2.6)]
    assert hourly[(("quantile", "0.5"),)] == [pytest.approx(0.3)]
    assert hourly[(("quantile", "0.99"),)] == [pytest.approx(0.98)]
    raw = by_labels(await read(api, token, instance["id"], "checkout.duration"))
    assert raw[(("stat", "count"),)] == [4.0, 4.0]

    async with db.write() as session, session.begin():
        await appmetrics.compact(session, settings, now=BASE + timedelta(hours=49))
    assert by_labels(await read(api, token, instance["id"], "orders")) == {(): [25.0]}, "one 5-minute row"
    assert by_labels(await read(api, token, instance["id"], "queue.depth")) == {(("queue", "a"),): [4.0]}
    folded = by_labels(await read(api, token, instance["id"], "checkout.duration"))
    assert folded[(("stat", "count"),)] == [8.0] and folded[(("quantile", "0.5"),)] == [pytest.approx(0.3)]
    async with db.write() as session, session.begin():
        await appmetrics.compact(session, settings, now=BASE + timedelta(days=31))
    assert await stored_rows(db) == (0, 0), "rows and idle series past the retention are gone"


def protobuf_export(instance_id: str) -> bytes:
    point = metrics_pb2.NumberDataPoint(
        start_time_unix_nano=int(START.timestamp()) * 10**9, time_unix_nano=int(BASE.timestamp()) * 10**9, as_int=7
    )
    point.attributes.append(common_pb2.KeyValue(key="route", value=common_pb2.AnyValue(string_value="/cart")))
    histogram_point = metrics_pb2.HistogramDataPoint(
        start_time_unix_nano=int(START.timestamp()) * 10**9,
        time_unix_nano=int(BASE.timestamp()) * 10**9,
        count=3,
        sum=0.9,
        bucket_counts=[1, 2, 0],
        explicit_bounds=[0.25, 1.0],
    )
    request = metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[
            metrics_pb2.ResourceMetrics(
                resource=resource_pb2.Resource(
                    attributes=[
                        common_pb2.KeyValue(
                            key="ctrlplane.instance.id", value=common_pb2.AnyValue(string_value=instance_id)
                        )
                    ]
                ),
                scope_metrics=[
                    metrics_pb2.ScopeMetrics(
                        metrics=[
                            metrics_pb2.Metric(
                                name="carts",
                                sum=metrics_pb2.Sum(
                                    data_points=[point],
                                    aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_CUMULATIVE,
                                    is_monotonic=True,
                                ),
                            ),
                            metrics_pb2.Metric(
                                name="cart.latency",
                                unit="s",
                                histogram=metrics_pb2.Histogram(
                                    data_points=[histogram_point],
                                    aggregation_temporality=metrics_pb2.AGGREGATION_TEMPORALITY_DELTA,
                                ),
                            ),
                        ]
                    )
                ],
            )
        ]
    )
    return request.SerializeToString()


@pytest.mark.parametrize("compressed", [False, True], ids=["protobuf", "protobuf+gzip"])
async def test_protobuf_metrics_gzipped_or_not_are_stored_and_answered_in_protobuf(
    api: Api, settings: Settings, compressed: bool
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    payload = protobuf_export(instance["id"])
    response = await api.client.post(
        METRICS,
        content=gzip.compress(payload) if compressed else payload,
        headers={**otlp_headers(settings, instance["id"]), **PROTOBUF, **(GZIP if compressed else {})},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-protobuf"
    answer = metrics_service_pb2.ExportMetricsServiceResponse.FromString(response.content)
    assert not answer.HasField("partial_success")
    assert by_labels(await read(api, token, instance["id"], "carts")) == {(("route", "/cart"),): [7.0]}
    latency = by_labels(await read(api, token, instance["id"], "cart.latency"))
    assert latency[(("stat", "count"),)] == [3.0] and latency[(("stat", "sum"),)] == [pytest.approx(0.9)]
    assert latency[(("quantile", "0.5"),)] == [pytest.approx(0.25 + 0.75 * 0.25)]


async def test_a_reserved_name_and_the_cardinality_limits_are_refused_in_partial_success(
    api: Api, db: Database, settings: Settings
) -> None:
    """Settings here: 4 metric names per instance, 2 attribute sets per name."""
    _, token = await tenant_token(api)
    instance = await create(api, token)
    export = body(
        counter("http_requests_total", number(1, BASE)),
        counter("CtrlPlane.internal", number(1, BASE)),
        {"name": "temp", "gauge": {"dataPoints": [number(1.0, BASE, room=r) for r in ("a", "b", "c")]}},
        {"name": "one", "gauge": {"dataPoints": [number(1.0, BASE)]}},
        {"name": "two", "gauge": {"dataPoints": [number(1.0, BASE)]}},
        {"name": "three", "gauge": {"dataPoints": [number(1.0, BASE)]}},
        {"name": "four", "gauge": {"dataPoints": [number(1.0, BASE)]}},
    )
    response = await api.client.post(METRICS, json=export, headers=otlp_headers(settings, instance["id"]))
    assert response.status_code == 200, response.text
    partial = response.json()["partialSuccess"]
    assert partial["rejectedDataPoints"] == 4, partial
    message = partial["errorMessage"]
    assert "'http_requests_total' is one of ctrlplane's own metric names" in message
    assert "'CtrlPlane.internal' is one of ctrlplane's own metric names" in message
    assert "'temp' has 2 attribute sets already" in message
    assert "'four': the instance has 4 metric names already" in message
    assert (await stored_rows(db)) == (5, 5), "temp (2 sets), one, two and three"
    assert set(by_labels(await read(api, token, instance["id"], "temp"))) == {(("room", "a"),), (("room", "b"),)}
    router = await read(api, token, instance["id"], "http_requests_total")
    assert router["series"] == [], "the router's metric, not the app's"
    unknown = await api.client.get(f"/v1/instances/{instance['id']}/metrics?name=four", headers=token)
    assert_error(unknown, 400, "invalid_input")
    # a name keeps its kind
    as_counter = await api.client.post(
        METRICS, json=body(counter("one", number(5, BASE))), headers=otlp_headers(settings, instance["id"])
    )
    assert as_counter.json()["partialSuccess"]["rejectedDataPoints"] == 1
    assert "'one' was pushed as a gauge, not a sum" in as_counter.json()["partialSuccess"]["errorMessage"]


async def test_another_instances_token_or_resource_is_refused_and_nothing_is_stored(
    api: Api, db: Database, settings: Settings
) -> None:
    _, token_a = await tenant_token(api, "alpha")
    _, token_b = await tenant_token(api, "bravo")
    a = await create(api, token_a)
    b = await create(api, token_b)
    export = body(counter("orders", number(1, BASE)), **{"ctrlplane.instance.id": a["id"]})
    assert_error(await api.client.post(METRICS, json=export, headers=otlp_headers(settings, b["id"])), 403, "forbidden")
    protobuf = await api.client.post(
        METRICS, content=protobuf_export(a["id"]), headers={**otlp_headers(settings, b["id"]), **PROTOBUF}
    )
    assert_error(protobuf, 403, "forbidden")
    for headers in ({}, bearer(api.tokens.tenant(a["tenant_id"])), token_a):
        assert_error(await api.client.post(METRICS, json=export, headers=headers), 401, "unauthenticated")
    assert await stored_rows(db) == (0, 0)


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field (wire type 2)."""
    size, length = bytearray(), len(payload)
    while True:
        size.append((length & 0x7F) | (0x80 if length > 0x7F else 0))
        length >>= 7
        if not length:
            break
    return bytes([number << 3 | 2]) + bytes(size) + payload


def nested_attribute_export(depth: int) -> bytes:
    """A gauge point whose one attribute nests ``depth`` key-value lists, written field by field
    (the classes refuse to build what they could not decode)."""
    value = _field(1, b"x")  # AnyValue.string_value
    for _ in range(depth):
        value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))  # kvlist_value.values[0]
    point = _field(7, _field(1, b"deep") + _field(2, value))  # NumberDataPoint.attributes
    metric = _field(1, b"deep") + _field(5, _field(1, point))  # Metric.name, .gauge.data_points
    return _field(1, _field(2, _field(2, metric)))  # resource_metrics[0].scope_metrics[0].metrics[0]


async def test_undecodable_oversized_or_foreign_bodies_are_4xx_and_nothing_is_stored(
    api: Api, db: Database, settings: Settings
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    headers = otlp_headers(settings, instance["id"])
    shallow = metrics_service_pb2.ExportMetricsServiceRequest.FromString(nested_attribute_export(3))
    assert shallow.resource_metrics[0].scope_metrics[0].metrics[0].name == "deep", "the hand-made bytes are OTLP"
    bomb = gzip.compress(b"\0" * (settings.otlp_max_bytes * 64))
    assert len(bomb) < settings.otlp_max_bytes
    cases = [
        (b"\xff\xff\xff\xff", {**headers, **PROTOBUF}, 400, "invalid_input"),
        (nested_attribute_export(200), {**headers, **PROTOBUF}, 400, "invalid_input"),
        (b"not gzip at all", {**headers, **PROTOBUF, **GZIP}, 400, "invalid_input"),
        (gzip.compress(protobuf_export(instance["id"]))[:-12], {**headers, **PROTOBUF, **GZIP}, 400, "invalid_input"),
        (bomb, {**headers, **PROTOBUF, **GZIP}, 413, "payload_too_large"),
        (bomb, {**headers, "Content-Type": "application/json", **GZIP}, 413, "payload_too_large"),
        (
            gzip.compress(b'{"resourceMetrics": "nope", "resourceSpans": "nope"}'),
            {**headers, **GZIP},
            400,
            "invalid_input",
        ),
        (gzip.compress(b"[" * 100 + b"]" * 100), {**headers, **GZIP}, 400, "invalid_input"),
        (protobuf_export(instance["id"]), {**headers, "Content-Encoding": "br", **PROTOBUF}, 400, "invalid_input"),
        (protobuf_export(instance["id"]), {**headers, "Content-Type": "text/plain"}, 415, "unsupported_media_type"),
    ]
    for content, sent, status, code in cases:
        response = await api.client.post(METRICS, content=content, headers=sent)
        assert_error(response, status, code)
        traces = await api.client.post("/v1/otlp/v1/traces", content=content, headers=sent)
        assert_error(traces, status, code)
    assert await stored_rows(db) == (0, 0)
    assert (await api.client.get(f"/v1/instances/{instance['id']}/traces", headers=token)).json()["items"] == []


async def test_traces_over_gzipped_protobuf_are_stored_with_hex_ids(api: Api, settings: Settings) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    now = int(datetime.now(UTC).timestamp() * 1e9)
    span = trace_pb2.Span(
        trace_id=bytes.fromhex(TRACE_ID),
        span_id=bytes.fromhex("eee19b7ec3c1b174"),
        parent_span_id=bytes.fromhex("00f067aa0ba902b7"),
        name="GET /cart",
        kind=trace_pb2.Span.SPAN_KIND_SERVER,
        start_time_unix_nano=now - 42_000_000,
        end_time_unix_nano=now,
        status=trace_pb2.Status(code=trace_pb2.Status.STATUS_CODE_ERROR, message="boom"),
        attributes=[common_pb2.KeyValue(key="http.route", value=common_pb2.AnyValue(string_value="/cart"))],
    )
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[
            trace_pb2.ResourceSpans(
                resource=resource_pb2.Resource(
                    attributes=[common_pb2.KeyValue(key="service.name", value=common_pb2.AnyValue(string_value="shop"))]
                ),
                scope_spans=[trace_pb2.ScopeSpans(spans=[span])],
            )
        ]
    )
    response = await api.client.post(
        "/v1/otlp/v1/traces",
        content=gzip.compress(request.SerializeToString()),
        headers={**otlp_headers(settings, instance["id"]), **PROTOBUF, **GZIP},
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-protobuf"
    assert not trace_service_pb2.ExportTraceServiceResponse.FromString(response.content).HasField("partial_success")
    [stored] = (await api.client.get(f"/v1/instances/{instance['id']}/traces", headers=token)).json()["items"]
    assert (stored["trace_id"], stored["span_id"], stored["parent_span_id"]) == (
        TRACE_ID,
        "eee19b7ec3c1b174",
        "00f067aa0ba902b7",
    )
    assert (stored["kind"], stored["status"], stored["status_message"]) == ("server", "error", "boom")
    assert stored["service_name"] == "shop" and stored["attributes"] == {"http.route": "/cart"}
    assert 41.9 < stored["duration_ms"] < 42.1


def _metrics_message(*metrics: metrics_pb2.Metric) -> metrics_service_pb2.ExportMetricsServiceRequest:
    return metrics_service_pb2.ExportMetricsServiceRequest(
        resource_metrics=[metrics_pb2.ResourceMetrics(scope_metrics=[metrics_pb2.ScopeMetrics(metrics=list(metrics))])]
    )


async def test_oversized_protobuf_exports_are_refused_before_the_json_mapping(
    api: Api, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Points of every kind (exponential ones too), buckets per histogram point and spans are
    counted on the decoded protobuf message: an export past a limit never reaches the per-field
    (pure Python) MessageToDict, and exemplars and exponential buckets nobody reads are dropped
    before it."""
    _, token = await tenant_token(api)
    instance = await create(api, token)
    headers = {**otlp_headers(settings, instance["id"]), **PROTOBUF}
    mapped: list[Any] = []
    real = otlp.json_format.MessageToDict

    def spy(message: Any, **kwargs: Any) -> Any:
        mapped.append(message)
        return real(message, **kwargs)

    monkeypatch.setattr(otlp.json_format, "MessageToDict", spy)
    monkeypatch.setattr(otlp, "MAX_POINTS_PER_REQUEST", 50)
    monkeypatch.setattr(otlp, "MAX_SPANS_PER_REQUEST", 50)
    at = int(BASE.timestamp()) * 10**9
    empty_gauge = metrics_pb2.Metric(
        name="g", gauge=metrics_pb2.Gauge(data_points=[metrics_pb2.NumberDataPoint()] * 51)
    )
    exponential = metrics_pb2.Metric(
        name="e",
        exponential_histogram=metrics_pb2.ExponentialHistogram(
            data_points=[metrics_pb2.ExponentialHistogramDataPoint(time_unix_nano=at)] * 51, aggregation_temporality=1
        ),
    )
    wide = metrics_pb2.Metric(
        name="h",
        histogram=metrics_pb2.Histogram(
            data_points=[metrics_pb2.HistogramDataPoint(time_unix_nano=at, count=0, bucket_counts=[0] * 200,
                                                        explicit_bounds=[float(i) for i in range(199)])],
            aggregation_temporality=1,
        ),
    )  # fmt: skip
    spans = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[trace_pb2.Span()] * 51)])]
    )
    for message, path in [
        (_metrics_message(empty_gauge), METRICS),
        (_metrics_message(exponential), METRICS),
        (_metrics_message(wide), METRICS),
        (spans, "/v1/otlp/v1/traces"),
    ]:
        response = await api.client.post(path, content=message.SerializeToString(), headers=headers)
        assert_error(response, 400, "invalid_input")
    assert mapped == []
    wide_json = msgspec.json.decode(json_format.MessageToJson(_metrics_message(wide)))
    assert_error(await api.client.post(METRICS, json=wide_json, headers=otlp_headers(settings, instance["id"])), 400,
                 "invalid_input")  # fmt: skip
    assert await stored_rows(db) == (0, 0)

    kept = metrics_pb2.ExponentialHistogramDataPoint(
        start_time_unix_nano=at - 10**9, time_unix_nano=at, count=3, sum=1.5, scale=2
    )
    kept.positive.bucket_counts.extend([1] * 100)
    kept.exemplars.add(as_double=1.0, time_unix_nano=at)
    readable = metrics_pb2.Metric(
        name="e", exponential_histogram=metrics_pb2.ExponentialHistogram(data_points=[kept], aggregation_temporality=1)
    )
    response = await api.client.post(METRICS, content=_metrics_message(readable).SerializeToString(), headers=headers)
    assert response.status_code == 200, response.text
    [message] = mapped
    [point] = message.resource_metrics[0].scope_metrics[0].metrics[0].exponential_histogram.data_points
    assert not point.positive.bucket_counts and not point.exemplars and point.count == 3
    stat = by_labels(await read(api, token, instance["id"], "e"))
    assert stat[(("stat", "count"),)] == [3.0] and stat[(("stat", "sum"),)] == [1.5]


async def test_counts_and_values_that_would_overflow_a_rollup_are_refused(
    api: Api, db: Database, settings: Settings
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    huge = histogram("latency", BASE, [1, 0, 0, 0], 0.5)
    huge["histogram"]["aggregationTemporality"] = 1
    [point] = huge["histogram"]["dataPoints"]
    point["count"], point["bucketCounts"] = str(2**63 - 1), [str(2**63 - 1), "0", "0", "0"]
    export = body(
        huge,
        {"name": "temperature", "gauge": {"dataPoints": [number(1e308, BASE), number(-1e301, BASE)]}},
        counter("orders", number(5, BASE)),
    )
    response = await api.client.post(METRICS, json=export, headers=otlp_headers(settings, instance["id"]))
    assert response.status_code == 200, response.text
    partial = response.json()["partialSuccess"]
    assert partial["rejectedDataPoints"] == 3, partial
    assert "2^53" in partial["errorMessage"] and "1e300" in partial["errorMessage"]
    assert by_labels(await read(api, token, instance["id"], "orders")) == {(): [5.0]}


@pytest.mark.dialects("a rollup past BigInteger fails differently on asyncpg and sqlite3")
async def test_a_failing_app_metric_compaction_does_not_hold_back_the_usage_retention(
    api: Api, db: Database, settings: Settings, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ctrlplane.provisioning.contract import Usage
    from ctrlplane.telemetry.models import MetricSample
    from ctrlplane.telemetry.sampler import MetricsSampler

    tenant_id, token = await tenant_token(api)
    instance = await create(api, token)
    old = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(hours=12)
    usage = Usage(cpu_percent=1.0, memory_used_bytes=1, memory_limit_bytes=1, network_rx_bytes=1, network_tx_bytes=1,
                  restarts=0)  # fmt: skip
    sid = appmetrics.series_id(instance["id"], "legacy", {})
    async with db.write() as session, session.begin():
        from ctrlplane.telemetry.repository import MetricsRepository

        await MetricsRepository(session).add(tenant_id, instance["id"], old, usage)
        session.add(
            AppMetricSeries(id=sid, instance_id=instance["id"], tenant_id=tenant_id, name="legacy", attributes={},
                            kind="histogram", unit="s", cumulative=None, last_seen_at=datetime.now(UTC))
        )  # fmt: skip
        await session.flush()
        for second in (1, 2):  # rows stored before ingestion capped them: their minute overflows int64 and float
            session.add(
                AppMetricSample(series_id=sid, step_seconds=0, taken_at=old + timedelta(seconds=second),
                                instance_id=instance["id"], tenant_id=tenant_id, samples=1, value=1.7e308,
                                count=2**62 + 1, bucket_counts=None, bounds=None)
            )  # fmt: skip

    async def raw_usage() -> int:
        async with db.read() as session:
            query = select(func.count()).select_from(MetricSample).where(MetricSample.step_seconds == 0)
            return int((await session.execute(query)).scalar_one())

    assert await raw_usage() == 1
    await MetricsSampler(app.state.services).compact()
    assert await raw_usage() == 0, "the usage rows were compacted"
    async with db.read() as session:
        rows = (await session.execute(select(AppMetricSample).where(AppMetricSample.series_id == sid))).scalars().all()
    assert [(r.step_seconds, r.count, r.value) for r in rows] == [
        (60, 2**63 - 1, pytest.approx(1.7976931348623157e308))
    ]

    async with db.write() as session, session.begin():
        await MetricsRepository(session).add(tenant_id, instance["id"], old + timedelta(minutes=1), usage)

    async def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("app metrics compaction failed")

    monkeypatch.setattr(appmetrics, "compact", broken)
    await MetricsSampler(app.state.services).compact()
    assert await raw_usage() == 0, "usage compaction ran although the app metrics one failed"


@pytest.mark.dialects("an increment at the moment of a stored row is added to it under the series' row lock")
async def test_replicas_pushing_one_cumulative_counter_are_counted_once(api: Api, settings: Settings) -> None:
    """Every replica of an instance pushes the same series with its own startTimeUnixNano: two
    replicas counting 10 more per export, over 5 interleaved exports each, counted 100."""
    _, token = await tenant_token(api)
    instance = await create(api, token)
    headers = otlp_headers(settings, instance["id"])
    for export in range(1, 6):
        for replica in (0, 1):
            # export 5: both replicas' points at the same moment (one row: their increments add up)
            point = number(10 * export, BASE - timedelta(minutes=5 - export, seconds=0 if export == 5 else replica * 7))
            point["startTimeUnixNano"] = nanos(START - timedelta(seconds=replica + 1))
            response = await api.client.post(METRICS, json=body(counter("orders", point)), headers=headers)
            assert response.status_code == 200 and response.json() == {}, response.text
    assert sum(by_labels(await read(api, token, instance["id"], "orders"))[()]) == 100.0


@pytest.mark.dialects("PostgreSQL takes at most 32,767 bind parameters per statement")
async def test_thousands_of_samples_in_one_export_are_inserted_in_chunks(
    api: Api, db: Database, settings: Settings
) -> None:
    tenant_id, token = await tenant_token(api)
    instance = await create(api, token)
    at = int(BASE.timestamp()) * 10**9
    points = [
        otlp.MetricPoint(name="ticks", unit="", kind="gauge", cumulative=False, attributes={"n": str(i % 2)},
                         start_nanos=at, time_nanos=at + i * 1_000_000, value=float(i))
        for i in range(3500)
    ]  # fmt: skip
    async with db.write() as session, session.begin():
        written = await appmetrics.add(
            session, settings, tenant_id=tenant_id, instance_id=instance["id"], points=points, refused=otlp.Refusals()
        )
    assert written == 3500
    assert await stored_rows(db) == (2, 3500)


@pytest.mark.parametrize("database_url", ["postgres"], indirect=True)
async def test_two_exports_creating_the_same_series_at_once_both_store(
    api: Api, db: Database, settings: Settings
) -> None:
    """One export has inserted a new series and not committed yet; another one creating the same
    series waits for it and then uses its row (it was an IntegrityError: 409, and OTLP does not
    retry a 409)."""
    from sqlalchemy import text

    tenant_id, token = await tenant_token(api)
    instance = await create(api, token)
    at = int(BASE.timestamp()) * 10**9

    def points(offset: int) -> list[otlp.MetricPoint]:
        return [otlp.MetricPoint(name="orders", unit="", kind="sum", cumulative=False, attributes={},
                                 start_nanos=at, time_nanos=at + offset, value=1.0)]  # fmt: skip

    async def second() -> int:
        async with db.write() as session, session.begin():
            return await appmetrics.add(
                session, settings, tenant_id=tenant_id, instance_id=instance["id"], points=points(10**9),
                refused=otlp.Refusals(),
            )  # fmt: skip

    async def waiting() -> bool | None:
        async with db.read() as session:
            query = text("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
                         "WHERE NOT l.granted AND a.datname = current_database()")  # fmt: skip
            return True if (await session.execute(query)).scalar_one() else None

    async with db.write() as session, session.begin():
        assert await appmetrics.add(
            session, settings, tenant_id=tenant_id, instance_id=instance["id"], points=points(0),
            refused=otlp.Refusals(),
        ) == 1  # fmt: skip
        racing = asyncio.ensure_future(second())
        await eventually(waiting, "the second export waiting on the first one's new series", timeout=20)
    assert await racing == 1
    assert await stored_rows(db) == (1, 2)
    assert by_labels(await read(api, token, instance["id"], "orders")) == {(): [1.0, 1.0]}


async def test_a_protobuf_span_without_a_name_and_a_nan_attribute_are_stored(
    api: Api, db: Database, settings: Settings
) -> None:
    """Protobuf's JSON mapping leaves out an empty name and writes a NaN double as "NaN": neither
    may make the export 400."""
    _, token = await tenant_token(api)
    instance = await create(api, token)
    now = int(datetime.now(UTC).timestamp() * 1e9)
    span = trace_pb2.Span(
        trace_id=bytes.fromhex(TRACE_ID), span_id=bytes.fromhex("eee19b7ec3c1b174"), name="",
        start_time_unix_nano=now - 1000, end_time_unix_nano=now,
        attributes=[common_pb2.KeyValue(key="ratio", value=common_pb2.AnyValue(double_value=float("nan")))],
    )  # fmt: skip
    request = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])]
    )
    headers = {**otlp_headers(settings, instance["id"]), **PROTOBUF}
    response = await api.client.post("/v1/otlp/v1/traces", content=request.SerializeToString(), headers=headers)
    assert response.status_code == 200, response.text
    [stored] = (await api.client.get(f"/v1/instances/{instance['id']}/traces", headers=token)).json()["items"]
    assert stored["name"] == "" and stored["attributes"] == {"ratio": "NaN"}
    gauge = metrics_pb2.NumberDataPoint(time_unix_nano=int(BASE.timestamp()) * 10**9, as_double=2.0)
    gauge.attributes.append(common_pb2.KeyValue(key="ratio", value=common_pb2.AnyValue(double_value=float("inf"))))
    metric = metrics_pb2.Metric(name="level", gauge=metrics_pb2.Gauge(data_points=[gauge]))
    response = await api.client.post(METRICS, content=_metrics_message(metric).SerializeToString(), headers=headers)
    assert response.status_code == 200, response.text
    assert by_labels(await read(api, token, instance["id"], "level")) == {(("ratio", "Infinity"),): [2.0]}


async def test_protobuf_exports_with_too_many_attributes_are_refused_before_the_json_mapping(
    api: Api, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Attributes (and values nested in arrays and maps) cost the JSON mapping as much as points:
    4M empty attributes fit in 8 MB. They are counted on the protobuf message too."""
    _, token = await tenant_token(api)
    instance = await create(api, token)
    headers = {**otlp_headers(settings, instance["id"]), **PROTOBUF}
    mapped: list[Any] = []
    monkeypatch.setattr(otlp.json_format, "MessageToDict", lambda message, **kwargs: mapped.append(message))
    monkeypatch.setattr(otlp, "MAX_ATTRIBUTES_PER_REQUEST", 50)
    at = int(BASE.timestamp()) * 10**9
    flat = metrics_pb2.NumberDataPoint(time_unix_nano=at, as_double=1.0)
    flat.attributes.extend([common_pb2.KeyValue(key="k")] * 51)
    nested = metrics_pb2.NumberDataPoint(time_unix_nano=at, as_double=1.0)
    deep = common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[common_pb2.AnyValue()] * 30))
    nested.attributes.append(
        common_pb2.KeyValue(key="a", value=common_pb2.AnyValue(array_value=common_pb2.ArrayValue(values=[deep, deep])))
    )
    span = trace_pb2.Span(attributes=[common_pb2.KeyValue(key="k")] * 51)
    spans = trace_service_pb2.ExportTraceServiceRequest(
        resource_spans=[trace_pb2.ResourceSpans(scope_spans=[trace_pb2.ScopeSpans(spans=[span])])]
    )
    for message, path in [
        (_metrics_message(metrics_pb2.Metric(name="g", gauge=metrics_pb2.Gauge(data_points=[flat]))), METRICS),
        (_metrics_message(metrics_pb2.Metric(name="g", gauge=metrics_pb2.Gauge(data_points=[nested]))), METRICS),
        (spans, "/v1/otlp/v1/traces"),
    ]:
        response = await api.client.post(path, content=message.SerializeToString(), headers=headers)
        assert_error(response, 400, "invalid_input")
        assert "attributes" in response.json()["message"]
    assert mapped == [] and await stored_rows(db) == (0, 0)
