from __future__ import annotations

import functools
import hmac
from collections.abc import AsyncIterator
from typing import Annotated, Any, cast

import anyio
import anyio.to_thread
import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.connection import ASGIConnection
from litestar.datastructures import State
from litestar.handlers.base import BaseRouteHandler
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, QueryParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ctrlplane.errors import ErrorBody, RateLimited, Unauthenticated
from ctrlplane.ratelimit.service import BucketState
from ctrlplane.telemetry import otlp, schemas
from ctrlplane.telemetry.logparse import Level
from ctrlplane.telemetry.service import (
    TelemetryService,
    authenticate_instance,
    ingest_metrics,
    ingest_spans,
    scrape,
)
from ctrlplane.web.context import AppServices
from ctrlplane.web.http import ApiRequest, Moment, context_of, errors, parse_moment, route
from ctrlplane.web.openapi import EVENT_STREAM, OTLP_EXPORT
from ctrlplane.web.scope import RATE_LIMIT_KEY

OTLP_SCOPE_KEY = "ctrlplane.otlp_instance"
LogLimit = Annotated[int, QueryParameter(ge=1, le=1000, description="Lines, 1 to 1000 (newest)")]
TraceLimit = Annotated[int, QueryParameter(ge=1, le=1000, description="Spans, 1 to 1000 (newest first)")]


class TelemetryController(Controller):
    path = "/v1/instances/{instance_id:str}"
    tags = ["telemetry"]

    @get("/metrics", operation_id="instanceMetrics", responses=errors(404), opt=route("metrics", "get"))
    async def metrics(
        self,
        instance_id: FromPath[str],
        request: ApiRequest,
        name: Annotated[
            str | None,
            QueryParameter(
                max_length=255,
                description="One of ctrlplane's metrics, or a metric the instance pushed over OTLP",
            ),
        ] = None,
        since: Moment = None,
        until: Moment = None,
        step: Annotated[
            str | None, QueryParameter(description="Bucket size such as 60s or 5m, at most 400d", max_length=32)
        ] = None,
        route: Annotated[
            str | None, QueryParameter(max_length=256, description="Request metrics: one route path only")
        ] = None,
    ) -> schemas.MetricsResponse:
        """Usage, request and pushed app time series (default: the last hour, every usage metric, as stored)."""
        context = context_of(request)
        return await TelemetryService(context).metrics(
            instance_id,
            name=name,
            since=parse_moment(since, "since"),
            until=parse_moment(until, "until"),
            step=step,
            route=route,
        )

    @get(
        "/logs",
        operation_id="instanceLogs",
        responses=errors(404),
        opt={**route("logs", "get"), EVENT_STREAM: True},
    )
    async def logs(
        self,
        instance_id: FromPath[str],
        request: ApiRequest,
        level: Annotated[Level | None, QueryParameter(description="Minimum level")] = None,
        limit: LogLimit = 100,
        since: Moment = None,
        follow: FromQuery[bool] = False,
    ) -> Response[Any]:
        """Container log lines with parsed levels; follow=true streams new ones as Server-Sent Events."""
        context = context_of(request)
        start = parse_moment(since, "since")
        service = TelemetryService(context)
        if not follow:
            return Response(await service.logs(instance_id, level=level, limit=limit, since=start))
        lines = await service.follow(instance_id, level=level, limit=limit, since=start)

        async def messages() -> AsyncIterator[ServerSentEventMessage]:
            async for entry in lines:
                if entry is None:
                    yield ServerSentEventMessage(comment="heartbeat")
                else:
                    yield ServerSentEventMessage(data=msgspec.json.encode(entry).decode(), event="log")

        return ServerSentEvent(messages(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @get("/traces", operation_id="instanceTraces", responses=errors(404), opt=route("traces", "list"))
    async def traces(
        self, instance_id: FromPath[str], request: ApiRequest, limit: TraceLimit = 20
    ) -> schemas.TracePage:
        """The instance's most recent spans, newest first."""
        context = context_of(request)
        return await TelemetryService(context).traces(instance_id, limit=limit)

    @get("/resources", operation_id="instanceResources", responses=errors(404), opt=route("resources", "get"))
    async def resources(self, instance_id: FromPath[str], request: ApiRequest) -> schemas.ResourcesResponse:
        """Usage now against the limits, per replica."""
        context = context_of(request)
        return await TelemetryService(context).resources(instance_id)

    @get("/dashboard", operation_id="instanceDashboard", responses=errors(404), opt=route("dashboard", "get"))
    async def dashboard(self, instance_id: FromPath[str], request: ApiRequest) -> schemas.Dashboard:
        """State, health, current release, recent deployments, resources and recent error lines."""
        context = context_of(request)
        return await TelemetryService(context).dashboard(instance_id)


async def instance_token_guard(connection: ASGIConnection[Any, Any, Any, Any], _: BaseRouteHandler) -> None:
    """The instance's own token, then its rate limits (``RateLimiter.check_instance``): 429 with
    Retry-After past them, and RateLimit-* headers on the answer either way."""
    services: AppServices = connection.app.state.services
    instance_id, tenant_id, plan = await authenticate_instance(services, connection.headers.get("authorization"))
    connection.scope[OTLP_SCOPE_KEY] = (instance_id, tenant_id)  # type: ignore[literal-required]
    if services.rate_limiter is None:
        return
    state: BucketState | None = None
    try:
        state = await services.rate_limiter.check_instance(instance_id, tenant_id, plan)
    except RateLimited as exc:
        state = exc.rate_limit  # type: ignore[attr-defined]
        raise
    finally:
        connection.scope[RATE_LIMIT_KEY] = state  # type: ignore[literal-required]


OTLP_ERRORS = {
    400: ResponseSpec(data_container=ErrorBody, description="Not an OTLP export (bad JSON, protobuf or gzip)"),
    401: ResponseSpec(data_container=ErrorBody, description="Missing or invalid instance token"),
    403: ResponseSpec(data_container=ErrorBody, description="The export names another instance than the token's"),
    409: ResponseSpec(data_container=ErrorBody, description="The instance was removed while the export was stored"),
    413: ResponseSpec(data_container=ErrorBody, description="Body over the size limit, as sent or gunzipped"),
    415: ResponseSpec(data_container=ErrorBody, description="Neither application/x-protobuf nor application/json"),
    429: ResponseSpec(data_container=ErrorBody, description="The instance's or its tenant's telemetry rate limit"),
    503: ResponseSpec(data_container=ErrorBody, description="Database unavailable"),
}


async def _export(
    request: Request[Any, Any, Any], body: bytes, kind: type[otlp.Export]
) -> tuple[otlp.Media, otlp.Export]:
    """The export in the body, inflated and decoded in a worker thread (protobuf's JSON mapping is
    pure Python: even a bounded export should not hold the event loop)."""
    services: AppServices = request.app.state.services
    media = otlp.media_of(request.headers.get("content-type"))
    export = await anyio.to_thread.run_sync(
        functools.partial(
            otlp.read_export,
            body,
            kind,
            media=media,
            content_encoding=request.headers.get("content-encoding"),
            limit=services.settings.otlp_max_bytes,
        )
    )
    return media, export


@post(
    "/v1/otlp/v1/traces",
    operation_id="exportTraces",
    tags=["telemetry"],
    status_code=200,
    guards=[instance_token_guard],
    security=[{"instanceToken": []}],
    responses=OTLP_ERRORS,
    opt={**route("trace", "export"), "own_auth": True, OTLP_EXPORT: "ExportTraceServiceRequest"},
)
async def export_traces(request: Request[Any, Any, Any], state: State) -> Response[schemas.ExportTraceServiceResponse]:
    """OTLP/HTTP trace export (protobuf or JSON, gzip'd or not) from an instance, authenticated by its own token."""
    instance_id, tenant_id = request.scope[OTLP_SCOPE_KEY]  # type: ignore[literal-required]
    media, export = await _export(request, await request.body(), otlp.ExportTraceServiceRequest)
    await ingest_spans(state.services, instance_id=instance_id, tenant_id=tenant_id, request=export)
    answer = otlp.encode_response(
        schemas.ExportTraceServiceResponse(), trace_service_pb2.ExportTraceServiceResponse, media
    )
    return Response(cast(Any, answer), media_type=media)


@post(
    "/v1/otlp/v1/metrics",
    operation_id="exportMetrics",
    tags=["telemetry"],
    status_code=200,
    guards=[instance_token_guard],
    security=[{"instanceToken": []}],
    responses=OTLP_ERRORS,
    opt={**route("metric", "export"), "own_auth": True, OTLP_EXPORT: "ExportMetricsServiceRequest"},
)
async def export_metrics(
    request: Request[Any, Any, Any], state: State
) -> Response[schemas.ExportMetricsServiceResponse]:
    """OTLP/HTTP metrics export (protobuf or JSON, gzip'd or not) from an instance, authenticated by its own token;
    points refused are counted in partialSuccess."""
    instance_id, tenant_id = request.scope[OTLP_SCOPE_KEY]  # type: ignore[literal-required]
    media, export = await _export(request, await request.body(), otlp.ExportMetricsServiceRequest)
    outcome = await ingest_metrics(state.services, instance_id=instance_id, tenant_id=tenant_id, request=export)
    answer = otlp.encode_response(outcome, metrics_service_pb2.ExportMetricsServiceResponse, media)
    return Response(cast(Any, answer), media_type=media)


@get(
    "/metrics",
    operation_id="prometheusMetrics",
    tags=["telemetry"],
    media_type=MediaType.TEXT,
    # open unless CTRLPLANE_METRICS_TOKEN is set: either no credentials or the metrics token
    security=[{}, {"metricsToken": []}],
    responses={
        401: ResponseSpec(data_container=ErrorBody, description="CTRLPLANE_METRICS_TOKEN is set and not sent"),
        503: ResponseSpec(data_container=ErrorBody, description="Database unavailable"),
    },
)
async def prometheus_metrics(request: Request[Any, Any, Any], state: State) -> Response[bytes]:
    """The control plane's own metrics in the Prometheus text format."""
    services: AppServices = state.services
    expected = services.settings.metrics_token
    if expected:
        scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
            raise Unauthenticated("this endpoint needs Authorization: Bearer <CTRLPLANE_METRICS_TOKEN>")
    async with services.db.read() as session:
        await scrape(services, session)
    # Litestar appends the charset to text/* types itself
    return Response(
        generate_latest(services.telemetry.registry), media_type=CONTENT_TYPE_LATEST.removesuffix("; charset=utf-8")
    )
