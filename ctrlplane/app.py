"""The composition root: ``create_app(settings)`` builds everything a server needs and nothing else does."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import msgspec
import structlog
from litestar import Litestar, MediaType, Response, get
from litestar.datastructures import State
from litestar.logging.config import LoggingConfig
from litestar.openapi import OpenAPIConfig
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from sqlalchemy import text

from ctrlplane import __version__
from ctrlplane.admin.api import AdminController
from ctrlplane.apidocs import SCHEMA_PATH, docs_redirect, render_plugins, schema_router
from ctrlplane.auth.api import KeyController
from ctrlplane.auth.providers import APIKeyProvider, Authenticator, JWTProvider
from ctrlplane.auth.tokens import load_signing_secret
from ctrlplane.background import Background, start_relay
from ctrlplane.console import console_router
from ctrlplane.db import Database, connect
from ctrlplane.deployments.api import DeploymentController
from ctrlplane.drains.api import LogDrainController
from ctrlplane.environments import idle as environment_idle
from ctrlplane.environments.api import EnvironmentController
from ctrlplane.errors import ErrorBody, Unavailable, exception_to_response
from ctrlplane.events.api import EventController
from ctrlplane.health.api import HealthController
from ctrlplane.health.view import HealthChecksView
from ctrlplane.installation import SHARED_CHECK_SECONDS, warn_if_shared
from ctrlplane.instances.api import InstanceController
from ctrlplane.network.api import DomainController, RouteController, SleepController
from ctrlplane.nodes.api import ROUTE_HANDLERS as NODE_ROUTE_HANDLERS
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.ratelimit.service import RateLimiter
from ctrlplane.registry_credentials.api import RegistryCredentialController
from ctrlplane.releases.api import ReleaseController
from ctrlplane.runs.api import JobController, RunController
from ctrlplane.runs.service import active_run_usage
from ctrlplane.secrets.api import SecretController
from ctrlplane.secrets.crypto import MasterKeyRing, Vault
from ctrlplane.settings import MAX_BODY_BYTES, Settings
from ctrlplane.telemetry.api import TelemetryController, export_metrics, export_traces, prometheus_metrics
from ctrlplane.telemetry.hub import Telemetry
from ctrlplane.templates.api import TemplateController
from ctrlplane.tenants.api import TenantController
from ctrlplane.web.access_log import RequestContextASGI
from ctrlplane.web.context import AppServices, default_replica_name
from ctrlplane.web.json_response import JSONResponse
from ctrlplane.web.openapi import (
    StrictStructSchemaPlugin,
    fix_openapi,
)
from ctrlplane.web.unit_of_work import UnitOfWork
from ctrlplane.webhooks.api import WebhookController

log = structlog.get_logger("ctrlplane.app")


class Liveness(msgspec.Struct):
    status: str
    version: str


class Readiness(msgspec.Struct):
    status: str
    database: str


@get("/healthz", operation_id="liveness", tags=["health"], include_in_schema=True, security=[{}])
async def healthz() -> Liveness:
    """Liveness: the process serves requests."""
    return Liveness(status="ok", version=__version__)


@get(
    "/readyz",
    operation_id="readiness",
    tags=["health"],
    security=[{}],
    responses={503: ResponseSpec(data_container=ErrorBody, description="The database cannot be reached")},
)
async def readyz(state: State) -> Response[Any]:
    """Readiness: the database answers."""
    services: AppServices = state.services
    try:
        async with services.db.read() as session:
            await session.execute(text("SELECT 1"))
    except Exception as exc:
        raise Unavailable(f"database unreachable: {type(exc).__name__}") from exc
    return Response(Readiness(status="ready", database="ok"), media_type=MediaType.JSON)


def build_services(settings: Settings, *, providers: ProviderRegistry | None, db: Database | None) -> AppServices:
    database = db or connect(settings.resolved_database_url)
    database.rows.enable(settings.read_cache_seconds, needs_listener=database.dialect == "postgresql")
    authenticator = Authenticator(
        [
            APIKeyProvider(settings, database),
            JWTProvider(settings, secret=load_signing_secret(settings)),
        ]
    )
    registry = providers if providers is not None else ProviderRegistry.from_entry_points(settings)
    ring, generated = MasterKeyRing.from_settings(settings)
    if generated:
        log.warning(
            "secrets_master_key_generated",
            path=ring.source,
            hint="back this file up: without it no secret can be decrypted (docs/secrets.md)",
        )
    services = AppServices(
        settings=settings,
        db=database,
        authenticator=authenticator,
        providers=registry,
        version=__version__,
        vault=Vault(ring),
        telemetry=Telemetry(health=HealthChecksView()),
        replica=settings.replica_name or default_replica_name(),
        rate_limiter=RateLimiter(settings, database),
    )
    # here, not in create_app: services given to a built app (use_services) need these too
    environment_idle.register(services)
    services.reserved_usage.append(active_run_usage)
    for provider in registry:
        # the nodes provider plugin places instances through the control plane's desired state
        bind = getattr(provider, "bind_node_assignments", None)
        if bind is not None:
            bind(services.nodes)
    return services


def create_app(
    settings: Settings, *, providers: ProviderRegistry | None = None, db: Database | None = None
) -> Litestar:
    """The server: services for ``settings`` (a database of its own unless ``db`` is given, the
    providers of the entry points unless ``providers`` is) on an app of ``build_app``, or on the one
    ``prebuild_app`` made earlier in this process or in the parent it was forked from."""
    services = build_services(settings, providers=providers, db=db)
    app = _PREBUILT.pop(settings.max_body_bytes, None) or build_app(settings.max_body_bytes)
    app.state.owns_db = db is None
    use_services(app, services)
    return app


_PREBUILT: dict[int, Litestar] = {}
"""Apps built ahead by ``prebuild_app``, by ``max_body_bytes``; ``create_app`` takes one once."""


def prebuild_app(max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """Build the app ahead, for this process's next ``create_app`` of that ``max_body_bytes``: a
    parent that forks servers (the tests' fork server, ``tests/forkserve.py``) registers every
    handler once instead of in each child. The app has no services, starts nothing and reads no
    setting until ``create_app`` gives it its own."""
    if max_body_bytes not in _PREBUILT:
        _PREBUILT[max_body_bytes] = build_app(max_body_bytes)


def build_app(max_body_bytes: int) -> Litestar:
    """Every route, the middleware and the OpenAPI document, without services: registering the
    handlers is most of a server's start (about 0.3 s of CPU), and none of it depends on settings
    other than ``max_body_bytes``. ``use_services`` gives the app what it serves."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        services: AppServices = app.state.services  # the ones use_services gave it last
        try:
            async with anyio.create_task_group() as group:
                start_relay(services, group)
                if services.settings.background:
                    # before the reconciler's first pass, which would take the other's objects for orphans
                    with anyio.move_on_after(SHARED_CHECK_SECONDS):
                        await warn_if_shared(services.settings, services.providers)
                    Background(services).start(group)
                try:
                    yield
                finally:
                    group.cancel_scope.cancel()
        finally:
            services.feeds.close()
            if services.rate_limiter is not None:
                await services.rate_limiter.drain()
            await services.providers.close()
            if app.state.get("owns_db"):
                await services.db.dispose()

    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            docs_redirect,
            TenantController,
            KeyController,
            AdminController,
            InstanceController,
            EventController,
            ReleaseController,
            DeploymentController,
            RunController,
            JobController,
            SecretController,
            HealthController,
            TelemetryController,
            export_traces,
            export_metrics,
            prometheus_metrics,
            RouteController,
            DomainController,
            SleepController,
            TemplateController,
            EnvironmentController,
            WebhookController,
            LogDrainController,
            RegistryCredentialController,
            console_router(),
            *NODE_ROUTE_HANDLERS,
        ],
        middleware=[UnitOfWork()],
        response_class=JSONResponse,
        plugins=[StrictStructSchemaPlugin()],
        exception_handlers={Exception: exception_to_response},
        state=State({}),
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="ctrlplane",
            version=__version__,
            description="Multi-tenant PaaS control plane. Errors: {message, code, request_id}.",
            path=SCHEMA_PATH,
            render_plugins=render_plugins(),
            openapi_router=schema_router(),
            components=Components(
                security_schemes={
                    "bearer": SecurityScheme(type="http", scheme="bearer", bearer_format="JWT or cpk_ API key"),
                    "instanceToken": SecurityScheme(type="http", scheme="bearer", bearer_format="cpt_ instance token"),
                    "metricsToken": SecurityScheme(type="http", scheme="bearer", bearer_format="metrics token"),
                    "nodeCredential": SecurityScheme(
                        type="http", scheme="bearer", bearer_format="cpx_node_ node credential"
                    ),
                }
            ),
            security=[{"bearer": []}],
        ),
        request_max_body_size=max_body_bytes,
        # Litestar's default configures the root logger and starts a thread (its queue's listener)
        # when the app is built. The process's logging is ctrlplane's (logs.configure_logging), and
        # building an app must start nothing, so that an app built before a fork works in the child
        # (prebuild_app): Litestar configures only its own logger (which logs nothing with debug off),
        # through a plain handler.
        logging_config=LoggingConfig(
            configure_root_logger=False,
            handlers={"queue_listener": {"class": "logging.StreamHandler", "level": "DEBUG", "formatter": "standard"}},
        ),
        debug=False,
    )
    fix_openapi(app)
    allowed = {path: ", ".join(sorted(r.methods)) for r in app.routes for path in (r.path, r.path_format)}
    app.asgi_handler = RequestContextASGI(app.asgi_handler, version=__version__, allowed_methods=allowed)
    return app


def use_services(app: Litestar, services: AppServices) -> None:
    """Serve the already built ``app`` with these ``services`` (database, providers, settings...).

    ``create_app`` gives an app its first services this way; the test suite builds one app per
    worker and gives each test its own, instead of registering every handler again for each test.
    Of the settings, only ``max_body_bytes`` is read when the app is built, so it must be the app's.
    """
    if services.settings.max_body_bytes != app.request_max_body_size:
        raise ValueError("use_services: max_body_bytes differs from the app's; build another app")
    app.state.services = services
    for middleware in app.middleware:
        if isinstance(middleware, UnitOfWork):
            middleware.services = services
    context = app.asgi_handler
    assert isinstance(context, RequestContextASGI)
    context.meter = services.telemetry
