"""Pure telemetry rules: log levels, OTLP tokens and span parsing, time-series bucketing."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec
import pytest

from ctrlplane.errors import InvalidInput
from ctrlplane.settings import Settings
from ctrlplane.telemetry import logparse, otlp
from ctrlplane.telemetry.repository import bucket_start
from ctrlplane.telemetry.schemas import LogEntry
from ctrlplane.telemetry.service import series

SETTINGS = Settings(jwt_secret="unit-test-secret-long-enough-for-hs256-0123456789", host="10.0.0.1", port=9000)


@pytest.mark.parametrize(
    ("line", "level", "message"),
    [
        ('{"level":"error","msg":"db down"}', "error", "db down"),
        ('{"severity":"WARNING","message":"slow"}', "warn", "slow"),
        ('{"level":50,"msg":"pino error"}', "error", "pino error"),
        ('{"level":30,"msg":"pino info"}', "info", "pino info"),
        ('{"log":{"level":"debug"},"message":"ecs"}', "debug", "ecs"),
        ('{"msg":"no level but ERROR inside"}', "error", "no level but ERROR inside"),
        ('level=warn msg="disk almost full" pct=91', "warn", "disk almost full"),
        ('ts=2024-01-01T00:00:00Z lvl=ERR msg="quoted \\"inner\\" text"', "error", 'quoted "inner" text'),
        ("level=info user=bob", "info", "level=info user=bob"),
        ("ERROR could not connect", "error", "ERROR could not connect"),
        ("2024-01-01 WARN retrying", "warn", "2024-01-01 WARN retrying"),
        ("Traceback (most recent call last):", "error", "Traceback (most recent call last):"),
        ("java.lang.IllegalStateException: boom", "error", "java.lang.IllegalStateException: boom"),
        ("panic: runtime error: index out of range", "fatal", "panic: runtime error: index out of range"),
        ("GET / 200 12ms", "info", "GET / 200 12ms"),
        ("[DEBUG] cache warm", "debug", "[DEBUG] cache warm"),
        ("{not json at all ERROR}", "error", "{not json at all ERROR}"),
        ('["a json array"]', "info", '["a json array"]'),
        ("level=verbose-ish msg=x", "info", "level=verbose-ish msg=x"),
    ],
)
def test_log_levels_are_parsed_from_json_logfmt_then_keywords(line: str, level: str, message: str) -> None:
    assert logparse.parse(line) == (level, message)


def test_level_filter_is_a_minimum() -> None:
    assert logparse.at_least("error", "warn")
    assert logparse.at_least("warn", "warn")
    assert not logparse.at_least("info", "warn")


def test_instance_token_verifies_only_for_its_instance() -> None:
    token = otlp.instance_token(SETTINGS, "inst_a")
    assert token.startswith("cpt_inst_a.")
    assert otlp.instance_token(SETTINGS, "inst_a") == token
    assert otlp.token_instance(SETTINGS, token) == "inst_a"
    forged = token.replace("cpt_inst_a.", "cpt_inst_b.")
    assert otlp.token_instance(SETTINGS, forged) is None
    assert otlp.token_instance(SETTINGS, token[:-1] + ("A" if token[-1] != "A" else "B")) is None
    assert otlp.token_instance(SETTINGS, "cpk_some-api-key") is None
    other = msgspec.structs.replace(SETTINGS, otlp_token_secret="another-secret")
    assert otlp.token_instance(other, token) is None


def test_otlp_env_points_the_sdk_at_the_control_plane() -> None:
    env = otlp.otlp_env(SETTINGS, instance_id="inst_a", name="web")
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://10.0.0.1:9000/v1/otlp"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == f"authorization=Bearer%20{otlp.instance_token(SETTINGS, 'inst_a')}"
    assert env["OTEL_SERVICE_NAME"] == "web"
    configured = msgspec.structs.replace(SETTINGS, otlp_endpoint="http://172.17.0.1:8080/v1/otlp/")
    assert otlp.otlp_env(configured, instance_id="i", name="n")["OTEL_EXPORTER_OTLP_ENDPOINT"] == (
        "http://172.17.0.1:8080/v1/otlp"
    )


def export(**span: object) -> otlp.ExportTraceServiceRequest:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "shop"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": "5B8EFFF798038103D269B633813FC60C",
                                "spanId": "EEE19B7EC3C1B174",
                                "name": "GET /cart",
                                "kind": 2,
                                "startTimeUnixNano": "1700000000000000000",
                                "endTimeUnixNano": "1700000000250000000",
                                "status": {"code": 2, "message": "boom"},
                                "attributes": [
                                    {"key": "http.status_code", "value": {"intValue": "500"}},
                                    {"key": "ok", "value": {"boolValue": False}},
                                    {"key": "ratio", "value": {"doubleValue": 0.5}},
                                    {"key": "tags", "value": {"arrayValue": {"values": [{"stringValue": "a"}]}}},
                                ],
                                **span,
                            }
                        ]
                    }
                ],
            }
        ]
    }
    return msgspec.json.decode(msgspec.json.encode(body), type=otlp.ExportTraceServiceRequest)


def test_otlp_json_spans_are_read_with_their_attributes_and_status() -> None:
    [span] = list(otlp.spans(export()))
    assert (span.trace_id, span.span_id) == ("5b8efff798038103d269b633813fc60c", "eee19b7ec3c1b174")
    assert span.duration_ms == 250.0
    assert span.start_time == datetime.fromtimestamp(1_700_000_000, UTC)
    assert (span.kind, span.status_code, span.status_message) == ("server", "error", "boom")
    assert span.service_name == "shop"
    assert span.attributes == {"http.status_code": 500, "ok": False, "ratio": 0.5, "tags": ["a"]}


@pytest.mark.parametrize(
    "bad",
    [
        {"traceId": "xyz"},
        {"traceId": "0" * 32},
        {"spanId": "123"},
        {"startTimeUnixNano": "soon"},
        {"endTimeUnixNano": "1600000000000000000"},
        {"kind": 9},
        {"status": {"code": 7}},
    ],
)
def test_malformed_spans_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(InvalidInput):
        list(otlp.spans(export(**bad)))


def test_buckets_align_to_the_step() -> None:
    moment = datetime(2025, 1, 1, 12, 7, 42, 500000, tzinfo=UTC)
    assert bucket_start(moment, 60) == datetime(2025, 1, 1, 12, 7, tzinfo=UTC)
    assert bucket_start(moment, 300) == datetime(2025, 1, 1, 12, 5, tzinfo=UTC)


@dataclass
class Row:
    taken_at: datetime
    cpu_percent: float
    network_rx_bytes: int
    samples: int = 1


def test_series_averages_gauges_and_keeps_the_maximum_of_counters_per_step() -> None:
    at = datetime(2025, 1, 1, tzinfo=UTC)
    rows = [
        Row(at.replace(second=5), 10.0, 100),
        Row(at.replace(second=35), 30.0, 300, samples=3),
        Row(at.replace(minute=1, second=5), 50.0, 400),
    ]
    cpu, rx = series(rows, ("cpu_percent", "network_rx_bytes"), 60)
    assert [(p.timestamp.minute, p.value) for p in cpu.points] == [(0, 25.0), (1, 50.0)]
    assert [(p.timestamp.minute, p.value) for p in rx.points] == [(0, 300.0), (1, 400.0)]
    [raw] = series(rows, ("cpu_percent",), None)
    assert [p.value for p in raw.points] == [10.0, 30.0, 50.0]


async def test_a_quiet_follow_sends_heartbeats_and_ends_with_the_stream() -> None:
    from ctrlplane.provisioning.contract import Resources, WorkloadSpec
    from ctrlplane.telemetry.service import follow_logs
    from tests.fakes import FakeProvider

    fake = FakeProvider()
    spec = WorkloadSpec(instance_id="inst_a", tenant_id="ten_a", name="web", image="img", resources=Resources(100, 32))
    await fake.provision(spec)
    fake.emit_log("inst_a", "level=error msg=first")
    stream = follow_logs(fake, "inst_a", level="warn", tail=10, since=None, heartbeat_seconds=0.05)
    first = await anext(stream)
    assert first is not None and (first.level, first.message) == ("error", "first")
    assert await anext(stream) is None, "a heartbeat while nothing is written"
    fake.emit_log("inst_a", "info line below the level")
    fake.emit_log("inst_a", "WARN shown")
    seen = [entry async for entry in _until_message(stream, "WARN shown")]
    assert all(e is None or e.message != "info line below the level" for e in seen)
    await fake.stop("inst_a")
    assert [entry async for entry in stream if entry is not None] == []


async def _until_message(stream: AsyncIterator[LogEntry | None], message: str) -> AsyncIterator[LogEntry | None]:
    async for entry in stream:
        yield entry
        if entry is not None and entry.message == message:
            return


def _point(value: float, at: int, *, start: int = 1, count: int = 0, buckets: tuple[int, ...] = ()) -> otlp.MetricPoint:
    return otlp.MetricPoint(
        name="orders",
        unit="",
        kind="histogram" if buckets else "sum",
        cumulative=True,
        attributes={},
        start_nanos=start,
        time_nanos=at,
        value=value,
        count=count,
        bucket_counts=buckets,
        bounds=(1.0,) if buckets else (),
    )


def test_cumulative_points_become_increments_and_a_reset_counts_whole() -> None:
    from ctrlplane.telemetry.appmetrics import increment

    first = increment(None, _point(10, at=100))
    assert first is not None and first[0].value == 10, "the first point ever seen counts whole"
    second = increment(first[1], _point(25, at=200))
    assert second is not None and second[0].value == 15
    assert increment(second[1], _point(25, at=200)) is None, "a re-sent point is dropped"
    assert increment(second[1], _point(30, at=150)) is None, "an older point too"
    went_down = increment(second[1], _point(4, at=300))
    assert went_down is not None and went_down[0].value == 4, "a value that went down is a reset"
    restarted = increment(second[1], _point(30, at=300, start=250))
    assert restarted is not None and restarted[0].value == 30, "a new start time is a reset"
    histogram = increment(None, _point(1.5, at=100, count=3, buckets=(1, 2)))
    assert histogram is not None
    more = increment(histogram[1], _point(2.0, at=200, count=5, buckets=(2, 3)))
    assert more is not None and (more[0].count, more[0].bucket_counts, more[0].value) == (2, (1, 1), 0.5)


def test_histogram_quantiles_interpolate_inside_explicit_bounds() -> None:
    from ctrlplane.telemetry.appmetrics import quantile

    assert quantile([0.1, 0.5, 1.0], [2, 4, 2, 0], 0.5) == pytest.approx(0.3)
    assert quantile([0.1, 0.5, 1.0], [0, 0, 0, 5], 0.5) == 1.0, "the open bucket answers the highest bound"
    assert quantile([0.1], [0, 0], 0.5) is None and quantile([], [3], 0.5) is None


def test_metric_points_refuse_what_cannot_be_kept_and_say_why() -> None:
    def gauge(name: str, **point: object) -> dict[str, object]:
        return {"name": name, "gauge": {"dataPoints": [{"timeUnixNano": "500", "asDouble": 1.0, **point}]}}

    histogram = {"name": "h", "histogram": {"aggregationTemporality": 1, "dataPoints": [
        {"timeUnixNano": "500", "count": "3", "bucketCounts": ["1", "1"], "explicitBounds": [1.0]},  # adds up to 2
        {"timeUnixNano": "500", "count": "2", "bucketCounts": ["1", "1", "0"], "explicitBounds": [2.0, 1.0]},
    ]}}  # fmt: skip
    body = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        gauge("ok"),
        gauge("nan", asDouble="NaN"),
        gauge("too.old", timeUnixNano="10"),
        gauge("9starts-with-a-digit"),
        gauge("cpu_percent"),
        gauge("many", attributes=[{"key": f"k{i}", "value": {"intValue": i}} for i in range(17)]),
        {"name": "s", "summary": {"dataPoints": [{}, {}]}},
        {"name": "unspecified", "sum": {"dataPoints": [{"timeUnixNano": "500", "asInt": "1"}]}},
        histogram,
    ]}]}]}  # fmt: skip
    request = msgspec.json.decode(msgspec.json.encode(body), type=otlp.ExportMetricsServiceRequest)
    points, refused = otlp.metric_points(
        request, reserved=frozenset({"cpu_percent"}), oldest_nanos=100, newest_nanos=1000
    )
    assert [p.name for p in points] == ["ok"]
    assert refused.count == 10
    message = refused.message()
    for reason in ("finite value", "older than the metrics retention", "is not a metric name", "ctrlplane's own",
                   "more than 16 attributes", "a summary", "aggregationTemporality", "add up to count",
                   "increasing order"):  # fmt: skip
        assert reason in message, reason


def test_cumulative_streams_of_two_replicas_are_increments_of_their_own() -> None:
    """Two replicas push the same series, each with its own start time: interleaved, each point is
    an increment against its own stream's previous point, not a reset of the other's."""
    from ctrlplane.telemetry.appmetrics import MAX_STREAMS, increment

    state = None
    total = 0.0
    for export in range(1, 6):
        for start in (1, 2):  # replica A started at 1, replica B at 2; each counts +10 per export
            found = increment(state, _point(10.0 * export, at=100 * export + start, start=start))
            assert found is not None
            total += found[0].value
            state = found[1]
    assert total == 100.0
    assert increment(state, _point(50, at=502, start=2)) is None, "a re-send of one stream is still dropped"
    for start in range(10, 10 + MAX_STREAMS + 5):
        found = increment(state, _point(1, at=1000 + start, start=start))
        assert found is not None
        state = found[1]
    assert state is not None and len(state["streams"]) == MAX_STREAMS, "the least recently pushed are dropped"


def test_a_histogram_whose_sum_goes_down_is_no_reset() -> None:
    from ctrlplane.telemetry.appmetrics import increment

    first = increment(None, _point(5.0, at=100, count=3, buckets=(1, 2)))
    assert first is not None
    negative = increment(first[1], _point(-4.0, at=200, count=4, buckets=(2, 2)))
    assert negative is not None, "a negative observation lowered the sum"
    assert (negative[0].count, negative[0].bucket_counts, negative[0].value) == (1, (1, 0), -9.0)
    fewer = increment(negative[1], _point(1.0, at=300, count=2, buckets=(1, 1)))
    assert fewer is not None and fewer[0].count == 2, "a count that went down is a reset"


def test_a_trailing_newline_does_not_pass_a_name_id_or_token_check() -> None:
    """``$`` matches before a trailing newline: ``cpu_percent\\n`` would pass as a name that is not
    the reserved ``cpu_percent``."""
    body = {"resourceMetrics": [{"scopeMetrics": [{"metrics": [
        {"name": "cpu_percent\n", "gauge": {"dataPoints": [{"timeUnixNano": "500", "asDouble": 1.0}]}},
    ]}]}]}  # fmt: skip
    request = msgspec.json.decode(msgspec.json.encode(body), type=otlp.ExportMetricsServiceRequest)
    points, refused = otlp.metric_points(request, reserved=frozenset({"cpu_percent"}), oldest_nanos=1, newest_nanos=999)
    assert points == [] and refused.count == 1
    token = otlp.instance_token(SETTINGS, "inst_1")
    assert otlp.token_instance(SETTINGS, token) == "inst_1"
    assert otlp.token_instance(SETTINGS, token + "\n") is None
    span = {"traceId": "5b8efff798038103d269b633813fc60c\n", "spanId": "eee19b7ec3c1b174", "name": "x",
            "startTimeUnixNano": "1", "endTimeUnixNano": "2"}  # fmt: skip
    traces = msgspec.convert({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}, otlp.ExportTraceServiceRequest)
    with pytest.raises(InvalidInput, match="traceId"):
        list(otlp.spans(traces))
