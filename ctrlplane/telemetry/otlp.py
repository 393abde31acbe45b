"""OTLP/HTTP from instances: their tokens, the environment that carries them, reading an export
(JSON or protobuf, gzip'd or not), and turning an ``ExportTraceServiceRequest`` into spans and an
``ExportMetricsServiceRequest`` into data points.

**Instance tokens.** ``cpt_{instance_id}.{mac}`` where ``mac`` is HMAC-SHA256, keyed by a key derived
from ``CTRLPLANE_OTLP_TOKEN_SECRET`` (or, when unset, from the server's JWT signing secret), over
the instance ID. Nothing is stored: the token is re-derived whenever a spec is built (every
provision, deploy, rollback and repair injects the same token), and verification recomputes the MAC
and compares in constant time. A token names one instance and authenticates only the OTLP route;
it stops working when the instance is destroyed (the route checks that the instance is live) or
the secret is rotated (instances then get the new token when their containers are next replaced).

**Environment.** ``OTEL_EXPORTER_OTLP_ENDPOINT`` is ``CTRLPLANE_OTLP_ENDPOINT`` (the control plane's
``/v1/otlp`` base as instances reach it; default ``http://{CTRLPLANE_HOST}:{CTRLPLANE_PORT}/v1/otlp``),
to which OTLP SDKs append ``/v1/traces``; ``OTEL_EXPORTER_OTLP_HEADERS`` carries the token;
``OTEL_EXPORTER_OTLP_PROTOCOL=http/protobuf`` (the SDKs' default; ``http/json`` is accepted
too); ``OTEL_SERVICE_NAME`` is the instance name; ``OTEL_RESOURCE_ATTRIBUTES`` names the instance
(``ctrlplane.instance.id``), and an export whose resource names another instance than the token's
is refused. An instance's own env wins over these, so an app may send its telemetry elsewhere.

**Encodings.** ``Content-Type: application/x-protobuf`` bodies are decoded with the classes
``opentelemetry-proto`` generates (its upb decoder bounds nesting at 100 messages), then mapped to
OTLP's JSON form (``json_format.MessageToDict``; span and trace IDs from base64 to hex), so both
encodings are validated by the same Structs below. ``Content-Encoding: gzip`` is inflated first,
at most ``CTRLPLANE_OTLP_MAX_BYTES`` (413 past it).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import itertools
import math
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

import msgspec
from google.protobuf import json_format
from google.protobuf.message import DecodeError, Message
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2

from ctrlplane.auth.tokens import ensure_signing_secret
from ctrlplane.errors import InvalidInput, UnsupportedMediaType
from ctrlplane.inputs import check_json_depth, decompress
from ctrlplane.settings import Settings

TOKEN_PREFIX = "cpt_"
# every pattern here is used with fullmatch: ``$`` also matches before a trailing newline
_TOKEN = re.compile(r"cpt_([A-Za-z0-9_]{1,64})\.([A-Za-z0-9_-]{43})")
_HEX_TRACE = re.compile(r"[0-9a-fA-F]{32}")
_HEX_SPAN = re.compile(r"[0-9a-fA-F]{16}")
SPAN_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUS_CODES = {0: "unset", 1: "ok", 2: "error"}
MAX_SPANS_PER_REQUEST = 5000
MAX_ATTRIBUTES_PER_REQUEST = 200_000
"""Attributes of a protobuf export, and values in their arrays and maps: about 1 s of mapping."""
INSTANCE_ATTRIBUTE = "ctrlplane.instance.id"
MAX_ATTRIBUTE_DEPTH = 4


def _key(settings: Settings) -> bytes:
    root = settings.otlp_token_secret or ensure_signing_secret(settings)[0]
    return hmac.new(root.encode(), b"ctrlplane otlp instance token v1", hashlib.sha256).digest()


def _mac(key: bytes, instance_id: str) -> str:
    digest = hmac.new(key, instance_id.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def instance_token(settings: Settings, instance_id: str) -> str:
    """The OTLP token of one instance (the same every time it is asked for)."""
    return f"{TOKEN_PREFIX}{instance_id}.{_mac(_key(settings), instance_id)}"


def token_instance(settings: Settings, token: str) -> str | None:
    """The instance a token was made for, or None when it is not a valid instance token."""
    match = _TOKEN.fullmatch(token)
    if match is None:
        return None
    instance_id, mac = match.groups()
    return instance_id if hmac.compare_digest(_mac(_key(settings), instance_id), mac) else None


def otlp_endpoint(settings: Settings) -> str:
    return (settings.otlp_endpoint or f"http://{settings.host}:{settings.port}/v1/otlp").rstrip("/")


def otlp_env(settings: Settings, *, instance_id: str, name: str) -> dict[str, str]:
    """The environment that points an instance's OpenTelemetry SDK at the control plane."""
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp_endpoint(settings),
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{instance_token(settings, instance_id)}",
        "OTEL_SERVICE_NAME": name,
        "OTEL_RESOURCE_ATTRIBUTES": f"{INSTANCE_ATTRIBUTE}={instance_id}",
    }


# -- the OTLP JSON encoding (opentelemetry-proto's JSON mapping: lowerCamelCase, hex ids) ----------


class AnyValue(msgspec.Struct, rename="camel", omit_defaults=True):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: int | str | None = None
    double_value: float | str | None = None
    """A number, or protobuf's JSON mapping of a non-finite double: "NaN", "Infinity", "-Infinity"."""
    bytes_value: str | None = None
    array_value: dict[str, Any] | None = None
    kvlist_value: dict[str, Any] | None = None


class KeyValue(msgspec.Struct, rename="camel"):
    key: str
    value: AnyValue = msgspec.field(default_factory=AnyValue)


class Status(msgspec.Struct, rename="camel"):
    code: int | str = 0
    message: str = ""


class Span(msgspec.Struct, rename="camel"):
    """Every field has its protobuf default: the protobuf-to-JSON mapping leaves out fields at
    their default (an empty name, a zero time), and the checks in ``spans`` say what is wrong."""

    trace_id: str = ""
    span_id: str = ""
    name: str = ""
    start_time_unix_nano: int | str = 0
    end_time_unix_nano: int | str = 0
    parent_span_id: str = ""
    kind: int | str = 0
    attributes: list[KeyValue] = msgspec.field(default_factory=list)
    status: Status = msgspec.field(default_factory=Status)


class ScopeSpans(msgspec.Struct, rename="camel"):
    spans: list[Span] = msgspec.field(default_factory=list)


class Resource(msgspec.Struct, rename="camel"):
    attributes: list[KeyValue] = msgspec.field(default_factory=list)


class ResourceSpans(msgspec.Struct, rename="camel"):
    resource: Resource = msgspec.field(default_factory=Resource)
    scope_spans: list[ScopeSpans] = msgspec.field(default_factory=list)


class ExportTraceServiceRequest(msgspec.Struct, rename="camel"):
    """The body of ``POST /v1/otlp/v1/traces`` (OTLP/HTTP, JSON encoding)."""

    resource_spans: list[ResourceSpans] = msgspec.field(default_factory=list)


class NumberDataPoint(msgspec.Struct, rename="camel"):
    attributes: list[KeyValue] = msgspec.field(default_factory=list)
    start_time_unix_nano: int | str = 0
    time_unix_nano: int | str = 0
    as_double: float | str | None = None
    as_int: int | str | None = None
    flags: int = 0


class HistogramDataPoint(msgspec.Struct, rename="camel"):
    attributes: list[KeyValue] = msgspec.field(default_factory=list)
    start_time_unix_nano: int | str = 0
    time_unix_nano: int | str = 0
    count: int | str = 0
    sum: float | str | None = None
    bucket_counts: list[int | str] = msgspec.field(default_factory=list)
    explicit_bounds: list[float | str] = msgspec.field(default_factory=list)
    flags: int = 0


class ExponentialHistogramDataPoint(msgspec.Struct, rename="camel"):
    """Read for its count and sum only (ctrlplane keeps no exponential buckets)."""

    attributes: list[KeyValue] = msgspec.field(default_factory=list)
    start_time_unix_nano: int | str = 0
    time_unix_nano: int | str = 0
    count: int | str = 0
    sum: float | str | None = None
    flags: int = 0


class Gauge(msgspec.Struct, rename="camel"):
    data_points: list[NumberDataPoint] = msgspec.field(default_factory=list)


class Sum(msgspec.Struct, rename="camel"):
    data_points: list[NumberDataPoint] = msgspec.field(default_factory=list)
    aggregation_temporality: int = 0
    is_monotonic: bool = False


class Histogram(msgspec.Struct, rename="camel"):
    data_points: list[HistogramDataPoint] = msgspec.field(default_factory=list)
    aggregation_temporality: int = 0


class ExponentialHistogram(msgspec.Struct, rename="camel"):
    data_points: list[ExponentialHistogramDataPoint] = msgspec.field(default_factory=list)
    aggregation_temporality: int = 0


class Summary(msgspec.Struct, rename="camel"):
    data_points: list[dict[str, Any]] = msgspec.field(default_factory=list)


class Metric(msgspec.Struct, rename="camel"):
    name: str = ""
    unit: str = ""
    gauge: Gauge | None = None
    sum: Sum | None = None
    histogram: Histogram | None = None
    exponential_histogram: ExponentialHistogram | None = None
    summary: Summary | None = None


class ScopeMetrics(msgspec.Struct, rename="camel"):
    metrics: list[Metric] = msgspec.field(default_factory=list)


class ResourceMetrics(msgspec.Struct, rename="camel"):
    resource: Resource = msgspec.field(default_factory=Resource)
    scope_metrics: list[ScopeMetrics] = msgspec.field(default_factory=list)


class ExportMetricsServiceRequest(msgspec.Struct, rename="camel"):
    """The body of ``POST /v1/otlp/v1/metrics`` (OTLP/HTTP, JSON encoding)."""

    resource_metrics: list[ResourceMetrics] = msgspec.field(default_factory=list)


# -- reading an export, in either encoding -------------------------------------------------------

Media = Literal["application/json", "application/x-protobuf"]
JSON_MEDIA: Media = "application/json"
PROTOBUF_MEDIA: Media = "application/x-protobuf"
Export = TypeVar("Export", ExportTraceServiceRequest, ExportMetricsServiceRequest)
_PROTOBUF_OF: dict[type[Any], type[Message]] = {
    ExportTraceServiceRequest: trace_service_pb2.ExportTraceServiceRequest,
    ExportMetricsServiceRequest: metrics_service_pb2.ExportMetricsServiceRequest,
}


def media_of(content_type: str | None) -> Media:
    """The encoding of an export by its ``Content-Type``: JSON when there is none (what the receiver
    always took), protobuf for ``application/x-protobuf``; 415 for anything else."""
    media = (content_type or JSON_MEDIA).split(";", 1)[0].strip().lower()
    if media == JSON_MEDIA:
        return JSON_MEDIA
    if media in (PROTOBUF_MEDIA, "application/protobuf"):
        return PROTOBUF_MEDIA
    raise UnsupportedMediaType(
        f"an OTLP export is {PROTOBUF_MEDIA} or {JSON_MEDIA}", details={"Content-Type": media[:100]}
    )


def _hex(value: Any) -> Any:
    if not isinstance(value, str):
        return value
    try:
        return base64.b64decode(value, validate=True).hex()
    except (binascii.Error, ValueError):
        return value


def _ids_to_hex(body: dict[str, Any]) -> None:
    """Protobuf's JSON mapping writes bytes in base64; OTLP's JSON writes span and trace IDs in hex."""
    for resource in body.get("resourceSpans", []):
        for scope in resource.get("scopeSpans", []):
            for span in scope.get("spans", []):
                for key in ("traceId", "spanId", "parentSpanId"):
                    if key in span:
                        span[key] = _hex(span[key])


def read_export(body: bytes, kind: type[Export], *, media: Media, content_encoding: str | None, limit: int) -> Export:
    """An export from the body of an OTLP/HTTP request: gunzipped (413 past ``limit`` bytes), then
    decoded as ``media``; 400 when it is not such an export."""
    raw = decompress(body, content_encoding, limit, what="the OTLP export")
    if media == JSON_MEDIA:
        check_json_depth(raw)  # a gzip'd body passed the request pipeline's check unread
        try:
            return msgspec.json.decode(raw, type=kind)
        except msgspec.ValidationError as exc:
            raise InvalidInput(f"invalid OTLP request: {exc}") from None
        except msgspec.DecodeError as exc:
            raise InvalidInput(f"the body is not OTLP JSON: {exc}") from None
    message_type = _PROTOBUF_OF[kind]
    try:
        message = message_type.FromString(raw)
    except DecodeError as exc:
        raise InvalidInput(
            f"the body is not an OTLP protobuf {message_type.DESCRIPTOR.name}: {exc}",
            details={"body": "not protobuf"},
        ) from None
    # sized and trimmed on the decoded message (len() of repeated fields, in C) before the
    # pure-Python mapping below, which costs per field: 4M empty points must not get that far
    if kind is ExportTraceServiceRequest:
        _trim_spans(message)
        _check_attributes(message, "spans")
    else:
        _trim_metrics(message)
        _check_attributes(message, "metrics")
    mapped = json_format.MessageToDict(message, use_integers_for_enums=True)
    if kind is ExportTraceServiceRequest:
        _ids_to_hex(mapped)
    try:
        return msgspec.convert(mapped, type=kind)
    except msgspec.ValidationError as exc:
        raise InvalidInput(f"invalid OTLP request: {exc}") from None


def _too_many_points(points: int) -> InvalidInput:
    return InvalidInput(f"at most {MAX_POINTS_PER_REQUEST} data points per request", details={"points": points})


def _too_many_buckets(buckets: int, bounds: int) -> InvalidInput:
    return InvalidInput(
        f"a histogram data point has at most {MAX_BUCKETS_PER_POINT} bucketCounts "
        f"and {MAX_BUCKETS_PER_POINT - 1} explicitBounds",
        details={"bucketCounts": buckets, "explicitBounds": bounds},
    )


def _attribute_lists(message: Any, kind: str) -> Iterator[Any]:
    """Every repeated ``KeyValue`` field of an export message: resources', scopes', and spans' or
    data points'."""
    for resource in getattr(message, f"resource_{kind}"):
        yield resource.resource.attributes
        for scope in getattr(resource, f"scope_{kind}"):
            yield scope.scope.attributes
            if kind == "spans":
                yield from (span.attributes for span in scope.spans)
                continue
            for metric in scope.metrics:
                which = metric.WhichOneof("data")
                if which is not None:
                    yield from (point.attributes for point in getattr(metric, which).data_points)


def _check_attributes(message: Any, kind: str) -> None:
    """400 past ``MAX_ATTRIBUTES_PER_REQUEST`` attributes and values inside arrays and maps, all
    told: counted on the protobuf message (lengths first, nested values only within the budget)."""
    lists = list(_attribute_lists(message, kind))
    total = sum(len(pairs) for pairs in lists)
    pending = [pair.value for pairs in lists for pair in pairs] if total <= MAX_ATTRIBUTES_PER_REQUEST else []
    while pending and total <= MAX_ATTRIBUTES_PER_REQUEST:
        value = pending.pop()
        which = value.WhichOneof("value")
        if which == "array_value":
            total += len(value.array_value.values)
            pending.extend(value.array_value.values)
        elif which == "kvlist_value":
            total += len(value.kvlist_value.values)
            pending.extend(pair.value for pair in value.kvlist_value.values)
    if total > MAX_ATTRIBUTES_PER_REQUEST:
        raise InvalidInput(
            f"at most {MAX_ATTRIBUTES_PER_REQUEST} attributes per request (values in arrays and maps counted)",
            details={"attributes": total},
        )


def _trim_spans(message: Any) -> None:
    """400 past ``MAX_SPANS_PER_REQUEST`` spans, counted on the protobuf message; clears what no
    one reads (events, links) so the JSON mapping skips it."""
    total = 0
    for resource in message.resource_spans:
        for scope in resource.scope_spans:
            total += len(scope.spans)
            if total > MAX_SPANS_PER_REQUEST:
                raise InvalidInput(f"at most {MAX_SPANS_PER_REQUEST} spans per request", details={"spans": total})
    for resource in message.resource_spans:
        for scope in resource.scope_spans:
            for span in scope.spans:
                span.ClearField("events")
                span.ClearField("links")


def _trim_metrics(message: Any) -> None:
    """400 past ``MAX_POINTS_PER_REQUEST`` data points (of any kind) or for a histogram point with
    more buckets than ``MAX_BUCKETS_PER_POINT``, counted on the protobuf message; clears what no
    one reads (exemplars, exponential buckets, summary quantiles) so the JSON mapping skips it."""
    total = 0
    for resource in message.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                which = metric.WhichOneof("data")
                if which is not None:
                    total += len(getattr(metric, which).data_points)
    if total > MAX_POINTS_PER_REQUEST:
        raise _too_many_points(total)
    for resource in message.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                which = metric.WhichOneof("data")
                if which is None:
                    continue
                for point in getattr(metric, which).data_points:
                    if which == "histogram" and (
                        len(point.bucket_counts) > MAX_BUCKETS_PER_POINT
                        or len(point.explicit_bounds) >= MAX_BUCKETS_PER_POINT
                    ):
                        raise _too_many_buckets(len(point.bucket_counts), len(point.explicit_bounds))
                    if which == "exponential_histogram":
                        point.ClearField("positive")
                        point.ClearField("negative")
                    if which == "summary":
                        point.ClearField("quantile_values")
                    else:
                        point.ClearField("exemplars")


def encode_response(response: msgspec.Struct, message_type: type[Message], media: Media) -> bytes:
    """An export's answer in the request's own encoding, as OTLP/HTTP requires."""
    as_json = msgspec.json.encode(response)
    if media == JSON_MEDIA:
        return as_json
    return json_format.Parse(as_json, message_type()).SerializeToString()


class ParsedSpan(msgspec.Struct, frozen=True, kw_only=True):
    trace_id: str
    span_id: str
    parent_span_id: str | None
    name: str
    kind: str
    start_time: datetime
    end_time: datetime
    duration_ms: float
    status_code: str
    status_message: str
    service_name: str | None
    attributes: dict[str, Any]
    resource_attributes: dict[str, Any]


def _clean(text: str) -> str:
    return text.replace("\x00", "")


def _value(value: AnyValue | dict[str, Any], depth: int = 0) -> Any:
    raw = msgspec.to_builtins(value) if isinstance(value, AnyValue) else value
    if not isinstance(raw, dict) or depth > MAX_ATTRIBUTE_DEPTH:
        return None
    if "stringValue" in raw:
        return _clean(str(raw["stringValue"]))
    if "boolValue" in raw:
        return bool(raw["boolValue"])
    if "intValue" in raw:
        try:
            return int(raw["intValue"])
        except (TypeError, ValueError):
            return None
    if "doubleValue" in raw:
        number = raw["doubleValue"]
        if isinstance(number, str) and number in ("NaN", "Infinity", "-Infinity"):
            return number  # kept as its name: JSON (and the database's JSON columns) has no NaN
        return float(number) if isinstance(number, int | float) and math.isfinite(number) else None
    if "bytesValue" in raw:
        return _clean(str(raw["bytesValue"]))
    if "arrayValue" in raw and isinstance(raw["arrayValue"], dict):
        return [_value(item, depth + 1) for item in raw["arrayValue"].get("values") or [] if isinstance(item, dict)]
    if "kvlistValue" in raw and isinstance(raw["kvlistValue"], dict):
        return {
            _clean(str(item.get("key", ""))): _value(item.get("value") or {}, depth + 1)
            for item in raw["kvlistValue"].get("values") or []
            if isinstance(item, dict)
        }
    return None


def attributes(pairs: list[KeyValue]) -> dict[str, Any]:
    return {_clean(pair.key): _value(pair.value) for pair in pairs}


def _nanos(value: int | str, field: str, where: str) -> int:
    try:
        nanos = int(value)
    except ValueError:
        raise InvalidInput(f"{where}: {field} must be an integer", details={"field": field, "span": where}) from None
    if not 0 < nanos < 2**63:
        raise InvalidInput(f"{where}: {field} is out of range", details={"field": field, "span": where})
    return nanos


def _enum(value: int | str, names: dict[int, str], prefix: str) -> str | None:
    if isinstance(value, int):
        return names.get(value)
    text = value.lower().removeprefix(prefix)
    return text if text in names.values() else None


def spans(request: ExportTraceServiceRequest) -> Iterator[ParsedSpan]:
    """Every span of the request, validated (hex ids, times, enums); raises InvalidInput naming
    the first bad span."""
    count = 0
    for resource_spans in request.resource_spans:
        resource = attributes(resource_spans.resource.attributes)
        service = resource.get("service.name")
        for scope in resource_spans.scope_spans:
            for span in scope.spans:
                count += 1
                where = f"span {count}"
                if count > MAX_SPANS_PER_REQUEST:
                    raise InvalidInput(f"at most {MAX_SPANS_PER_REQUEST} spans per request")
                if not _HEX_TRACE.fullmatch(span.trace_id) or set(span.trace_id) == {"0"}:
                    raise InvalidInput(f"{where}: traceId must be 32 hex digits, not all zero", details={"span": where})
                if not _HEX_SPAN.fullmatch(span.span_id) or set(span.span_id) == {"0"}:
                    raise InvalidInput(f"{where}: spanId must be 16 hex digits, not all zero", details={"span": where})
                if span.parent_span_id and not _HEX_SPAN.fullmatch(span.parent_span_id):
                    raise InvalidInput(f"{where}: parentSpanId must be 16 hex digits", details={"span": where})
                start = _nanos(span.start_time_unix_nano, "startTimeUnixNano", where)
                end = _nanos(span.end_time_unix_nano, "endTimeUnixNano", where)
                if end < start:
                    raise InvalidInput(f"{where}: ends before it starts", details={"span": where})
                kind = _enum(span.kind, SPAN_KINDS, "span_kind_")
                status = _enum(span.status.code, STATUS_CODES, "status_code_")
                if kind is None or status is None:
                    raise InvalidInput(f"{where}: unknown kind or status code", details={"span": where})
                yield ParsedSpan(
                    trace_id=span.trace_id.lower(),
                    span_id=span.span_id.lower(),
                    parent_span_id=span.parent_span_id.lower() or None,
                    name=_clean(span.name)[:1000],
                    kind=kind,
                    start_time=datetime.fromtimestamp(start / 1e9, UTC),
                    end_time=datetime.fromtimestamp(end / 1e9, UTC),
                    duration_ms=(end - start) / 1e6,
                    status_code=status,
                    status_message=_clean(span.status.message)[:2000],
                    service_name=_clean(str(service)) if service is not None else None,
                    attributes=attributes(span.attributes),
                    resource_attributes=resource,
                )


# -- metrics: data points, and the ones refused ------------------------------------------------

MAX_POINTS_PER_REQUEST = 10_000
MAX_BUCKETS_PER_POINT = 160
"""A histogram point's bucketCounts (its explicitBounds one fewer); more is 400 for the export."""
MAX_POINT_ATTRIBUTES = 16
MAX_VALUE = 1e300
"""The largest magnitude of a value, a histogram sum or a bound: sums of a few stay finite."""
MAX_COUNT = 2**53
"""The largest histogram count or bucket count: sums of many stay within 64 bits (and exact in a float)."""
MAX_ATTRIBUTE_KEY = 128
MAX_ATTRIBUTE_VALUE = 256
HISTOGRAM_LABELS = frozenset({"quantile", "stat"})
"""Labels a histogram's series get from ctrlplane; its points may not carry attributes so named."""
_METRIC_NAME = re.compile(r"[A-Za-z][A-Za-z0-9_.\-/]{0,254}")
DELTA, CUMULATIVE = 1, 2
NO_RECORDED_VALUE = 1
PointKind = Literal["gauge", "sum", "histogram"]


class MetricPoint(msgspec.Struct, frozen=True, kw_only=True):
    """One data point as ctrlplane keeps it. ``kind``: a ``gauge`` is averaged over time; a ``sum``
    is increments added up per bucket; a ``histogram`` is a count, a sum and bucket counts, added up.
    ``cumulative``: the values count since ``start_nanos`` and become increments against the
    series' previous point when stored."""

    name: str
    unit: str
    kind: PointKind
    cumulative: bool
    attributes: dict[str, str]
    start_nanos: int
    time_nanos: int
    value: float
    count: int = 0
    bucket_counts: tuple[int, ...] = ()
    bounds: tuple[float, ...] = ()


class Refusals:
    """Data points refused, and why (for ``partial_success``)."""

    MAX_REASONS = 10

    def __init__(self) -> None:
        self.count = 0
        self.reasons: dict[str, int] = {}

    def add(self, reason: str, points: int = 1) -> None:
        if points <= 0:
            return
        self.count += points
        self.reasons[reason] = self.reasons.get(reason, 0) + points

    def message(self) -> str:
        reasons = list(self.reasons.items())[: self.MAX_REASONS]
        shown = [f"{reason} ({n} point{'s' if n != 1 else ''})" for reason, n in reasons]
        more = len(self.reasons) - len(shown)
        return "; ".join(shown) + (f"; and {more} more reasons" if more > 0 else "")


def _shown(name: str) -> str:
    return repr(_clean(name)[:100])


def _label(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int | float):
        return repr(value)
    return msgspec.json.encode(value).decode()


def _number(value: float | int | str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) and abs(number) <= MAX_VALUE else None


def _count(value: int | str) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        return None
    return number if 0 <= number <= MAX_COUNT else None


def _time(value: int | str) -> int | None:
    try:
        nanos = int(value)
    except (TypeError, ValueError):
        return None
    return nanos if 0 <= nanos < 2**63 else None


def point_labels(pairs: list[KeyValue]) -> dict[str, str] | str:
    """A data point's attributes as string labels, or why they are refused."""
    if len(pairs) > MAX_POINT_ATTRIBUTES:
        return f"more than {MAX_POINT_ATTRIBUTES} attributes"
    labels: dict[str, str] = {}
    for key, value in attributes(pairs).items():
        text = _label(value)
        if not key or len(key) > MAX_ATTRIBUTE_KEY or len(text) > MAX_ATTRIBUTE_VALUE:
            return (
                f"an attribute key is empty or over {MAX_ATTRIBUTE_KEY} characters, "
                f"or its value over {MAX_ATTRIBUTE_VALUE}"
            )
        labels[key] = _clean(text)
    return labels


def metric_points(
    request: ExportMetricsServiceRequest, *, reserved: frozenset[str], oldest_nanos: int, newest_nanos: int
) -> tuple[list[MetricPoint], Refusals]:
    """The request's data points that can be kept, and those refused with why. A point is refused
    for a name that is not an OpenTelemetry instrument name or is one of ``reserved`` (compared
    without case, as are names starting with ``ctrlplane``), a summary, an unspecified temporality,
    a time outside [``oldest_nanos``, ``newest_nanos``], a value that is no finite number, buckets
    that do not match their bounds, or attributes past the limits. More than
    ``MAX_POINTS_PER_REQUEST`` points is 400 for the whole request."""
    total = sum(
        len(kind.data_points)
        for resource in request.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        for kind in (metric.gauge, metric.sum, metric.histogram, metric.exponential_histogram, metric.summary)
        if kind is not None
    )
    if total > MAX_POINTS_PER_REQUEST:
        raise _too_many_points(total)
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for histogram in metric.histogram.data_points if metric.histogram is not None else []:
                    if (
                        len(histogram.bucket_counts) > MAX_BUCKETS_PER_POINT
                        or len(histogram.explicit_bounds) >= MAX_BUCKETS_PER_POINT
                    ):
                        raise _too_many_buckets(len(histogram.bucket_counts), len(histogram.explicit_bounds))
    reserved_lower = {name.lower() for name in reserved}
    points: list[MetricPoint] = []
    refused = Refusals()
    for resource in request.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                name, unit = _clean(metric.name), _clean(metric.unit)[:63]
                shown = _shown(name)
                data: Gauge | Sum | Histogram | ExponentialHistogram | Summary | None = (
                    metric.gauge or metric.sum or metric.histogram or metric.exponential_histogram or metric.summary
                )
                size = len(data.data_points) if data is not None else 0
                if not _METRIC_NAME.fullmatch(name):
                    refused.add(f"{shown} is not a metric name (a letter, then up to 254 of A-Z a-z 0-9 _ . - /)", size)
                    continue
                if name.lower() in reserved_lower or name.lower().startswith("ctrlplane"):
                    refused.add(f"{shown} is one of ctrlplane's own metric names: rename it in the app", size)
                    continue
                if isinstance(data, Summary):
                    refused.add(f"{shown} is a summary: send a histogram instead", size)
                    continue
                for point in _points_of(name, unit, data, refused):
                    if not oldest_nanos <= point.time_nanos <= newest_nanos:
                        refused.add(f"{shown}: a point's time is missing, older than the metrics retention or ahead")
                    else:
                        points.append(point)
    return points, refused


def _points_of(
    name: str, unit: str, data: Gauge | Sum | Histogram | ExponentialHistogram | None, refused: Refusals
) -> Iterator[MetricPoint]:
    shown = _shown(name)
    if data is None:
        return
    if isinstance(data, Gauge | Sum):
        if isinstance(data, Sum) and data.aggregation_temporality not in (DELTA, CUMULATIVE):
            refused.add(f"{shown}: a sum needs a delta or cumulative aggregationTemporality", len(data.data_points))
            return
        monotonic = isinstance(data, Sum) and data.is_monotonic
        cumulative = isinstance(data, Sum) and data.aggregation_temporality == CUMULATIVE
        # a cumulative up-down counter is a level: kept as a gauge; any delta sum adds up
        kind: PointKind = "gauge" if isinstance(data, Gauge) or (cumulative and not monotonic) else "sum"
        for number in data.data_points:
            if number.flags & NO_RECORDED_VALUE:
                continue
            labels = point_labels(number.attributes)
            value = _number(number.as_double if number.as_int is None else number.as_int)
            start, at = _time(number.start_time_unix_nano), _time(number.time_unix_nano)
            if isinstance(labels, str):
                refused.add(f"{shown}: {labels}")
            elif value is None or start is None or at is None:
                refused.add(f"{shown}: a point without a finite value (at most 1e300 in magnitude) or a valid time")
            else:
                yield MetricPoint(
                    name=name,
                    unit=unit,
                    kind=kind,
                    cumulative=kind == "sum" and cumulative,
                    attributes=labels,
                    start_nanos=start,
                    time_nanos=at,
                    value=value,
                )
        return
    if data.aggregation_temporality not in (DELTA, CUMULATIVE):
        refused.add(f"{shown}: a histogram needs a delta or cumulative aggregationTemporality", len(data.data_points))
        return
    for histogram in data.data_points:
        if histogram.flags & NO_RECORDED_VALUE:
            continue
        labels = point_labels(histogram.attributes)
        if isinstance(labels, dict) and HISTOGRAM_LABELS & labels.keys():
            labels = "a histogram's attributes may not be named quantile or stat"
        count = _count(histogram.count)
        total = _number(histogram.sum) if histogram.sum is not None else 0.0
        start, at = _time(histogram.start_time_unix_nano), _time(histogram.time_unix_nano)
        read_buckets = [_count(n) for n in getattr(histogram, "bucket_counts", [])]
        read_bounds = [_number(b) for b in getattr(histogram, "explicit_bounds", [])]
        buckets = [n for n in read_buckets if n is not None]
        bounds = [b for b in read_bounds if b is not None]
        if isinstance(labels, str):
            refused.add(f"{shown}: {labels}")
        elif count is None or total is None or start is None or at is None:
            refused.add(
                f"{shown}: a point without a valid count (at most 2^53), a finite sum (at most 1e300 in magnitude) "
                "or a valid time"
            )
        elif len(buckets) < len(read_buckets) or len(bounds) < len(read_bounds) or not _increasing(bounds):
            refused.add(
                f"{shown}: bucket counts (at most 2^53) or explicit bounds that are not numbers in increasing order"
            )
        elif buckets and (len(buckets) != len(bounds) + 1 or sum(buckets) != count):
            refused.add(f"{shown}: bucketCounts must be one more than explicitBounds and add up to count")
        else:
            yield MetricPoint(
                name=name,
                unit=unit,
                kind="histogram",
                cumulative=data.aggregation_temporality == CUMULATIVE,
                attributes=labels,
                start_nanos=start,
                time_nanos=at,
                value=total,
                count=count,
                bucket_counts=tuple(buckets),
                bounds=tuple(bounds) if buckets else (),
            )


def _increasing(bounds: list[float]) -> bool:
    return all(low < high for low, high in itertools.pairwise(bounds))


def claimed_instances(resources: list[Resource]) -> set[str]:
    """The instances the resources name (``ctrlplane.instance.id``)."""
    return {
        str(named)
        for resource in resources
        if (named := attributes(resource.attributes).get(INSTANCE_ATTRIBUTE)) is not None
    }
