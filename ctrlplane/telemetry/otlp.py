"""OTLP/HTTP JSON traces from instances: their tokens, the environment that carries them, and
reading an ``ExportTraceServiceRequest`` into spans.

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
``OTEL_EXPORTER_OTLP_PROTOCOL=http/json`` (the only encoding accepted); ``OTEL_SERVICE_NAME`` is
the instance name; ``OTEL_RESOURCE_ATTRIBUTES`` names the instance (``ctrlplane.instance.id``), and
spans whose resource names another instance than the token's are refused. An instance's own env
wins over these, so an app may send its telemetry elsewhere.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import msgspec

from ctrlplane.auth.tokens import ensure_signing_secret
from ctrlplane.errors import InvalidInput
from ctrlplane.settings import Settings

TOKEN_PREFIX = "cpt_"
_TOKEN = re.compile(r"^cpt_([A-Za-z0-9_]{1,64})\.([A-Za-z0-9_-]{43})$")
_HEX_TRACE = re.compile(r"^[0-9a-fA-F]{32}$")
_HEX_SPAN = re.compile(r"^[0-9a-fA-F]{16}$")
SPAN_KINDS = {0: "unspecified", 1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}
STATUS_CODES = {0: "unset", 1: "ok", 2: "error"}
MAX_SPANS_PER_REQUEST = 5000
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
    match = _TOKEN.match(token)
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
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json",
        "OTEL_EXPORTER_OTLP_HEADERS": f"authorization=Bearer%20{instance_token(settings, instance_id)}",
        "OTEL_SERVICE_NAME": name,
        "OTEL_RESOURCE_ATTRIBUTES": f"{INSTANCE_ATTRIBUTE}={instance_id}",
    }


# -- the OTLP JSON encoding (opentelemetry-proto's JSON mapping: lowerCamelCase, hex ids) ----------


class AnyValue(msgspec.Struct, rename="camel", omit_defaults=True):
    string_value: str | None = None
    bool_value: bool | None = None
    int_value: int | str | None = None
    double_value: float | None = None
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
    trace_id: str
    span_id: str
    name: str
    start_time_unix_nano: int | str
    end_time_unix_nano: int | str
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
        return float(number) if isinstance(number, int | float) else None
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
                if not _HEX_TRACE.match(span.trace_id) or set(span.trace_id) == {"0"}:
                    raise InvalidInput(f"{where}: traceId must be 32 hex digits, not all zero", details={"span": where})
                if not _HEX_SPAN.match(span.span_id) or set(span.span_id) == {"0"}:
                    raise InvalidInput(f"{where}: spanId must be 16 hex digits, not all zero", details={"span": where})
                if span.parent_span_id and not _HEX_SPAN.match(span.parent_span_id):
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
