"""Between an instance row and its provider: the spec it should run, and recording what was seen."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.events.service import append as append_event
from ctrlplane.health.models import HealthCheck
from ctrlplane.health.probes import runtime_probes
from ctrlplane.instances.models import Instance
from ctrlplane.network.models import Domain, Route
from ctrlplane.network.router import default_hostname, http_routes
from ctrlplane.network.traffic import follow_status
from ctrlplane.provisioning.contract import (
    HttpRoute,
    PortSpec,
    Probe,
    Resources,
    TenantQuota,
    WorkloadSpec,
    WorkloadStatus,
)
from ctrlplane.registries import registry_key
from ctrlplane.secrets.schemas import WorkloadSecrets
from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import otlp_env
from ctrlplane.tenants.models import Tenant
from ctrlplane.tenants.models import TenantQuota as TenantQuotaRow
from ctrlplane.timeutil import utc_now


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What an instance's spec carries besides its release, for runtimes that enforce or serve these
    themselves (Kubernetes: ResourceQuota and LimitRange, probes, Ingress); others ignore them. They
    are not part of a release: a rollback keeps today's quota, checks and routes."""

    tenant_quota: TenantQuota | None = None
    probes: tuple[Probe, ...] = ()
    routes: tuple[HttpRoute, ...] = ()


async def runtime_config(session: AsyncSession, instance: Instance, settings: Settings) -> RuntimeConfig:
    """The tenant's quota, the instance's probes (``health.probes.runtime_probes``) and its HTTP
    routes on its default hostname and verified domains (``network.router.http_routes``), read now
    in four queries."""
    tenant = (
        await session.execute(
            select(
                Tenant.slug, TenantQuotaRow.max_instances, TenantQuotaRow.max_cpu_millis, TenantQuotaRow.max_memory_mb
            )
            .outerjoin(TenantQuotaRow, TenantQuotaRow.tenant_id == Tenant.id)
            .where(Tenant.id == instance.tenant_id)
        )
    ).first()
    checks = (
        await session.execute(
            select(HealthCheck)
            .where(HealthCheck.instance_id == instance.id)
            .order_by(HealthCheck.created_at, HealthCheck.id)
        )
    ).scalars()
    routes = (await session.execute(select(Route).where(Route.instance_id == instance.id))).scalars()
    verified = (
        await session.execute(
            select(Domain.hostname).where(Domain.instance_id == instance.id, Domain.status == "verified")
        )
    ).scalars()
    quota = (
        TenantQuota(max_instances=tenant[1], max_cpu_millis=tenant[2], max_memory_mb=tenant[3])
        if tenant is not None and tenant[1] is not None
        else None
    )
    host = default_hostname(settings, instance.name, tenant[0]) if tenant is not None else None
    return RuntimeConfig(
        tenant_quota=quota,
        probes=runtime_probes(list(checks)),
        routes=http_routes(host, list(verified), list(routes)) if host is not None else (),
    )


def spec_for(
    instance: Instance,
    *,
    settings: Settings,
    generation: int | None = None,
    secrets: WorkloadSecrets | None = None,
    config: RuntimeConfig | None = None,
) -> WorkloadSpec:
    """What the instance should run. ``secrets`` are the decrypted secrets of the release it runs (a
    worker supplies them: see ``ctrlplane.secrets.service.for_release``). Its env is, lowest first,
    the OTLP variables (endpoint and the instance's token, see ``telemetry.otlp``), the instance's
    own env, and its env secrets. ``config`` (``runtime_config``) adds the tenant's quota, probes and
    routes; a route to a port the instance does not have (any more) is left out."""
    secrets = secrets or WorkloadSecrets()
    config = config or RuntimeConfig()
    auth = secrets.registry_auth
    if auth is not None and auth.registry != registry_key(instance.image):
        auth = None  # the credential of another image's registry (the release's, not this spec's)
    tcp_ports = {int(port["container_port"]) for port in instance.ports if port.get("protocol", "tcp") == "tcp"}
    return WorkloadSpec(
        instance_id=instance.id,
        tenant_id=instance.tenant_id,
        name=instance.name,
        image=instance.image,
        resources=Resources(cpu_millis=instance.cpu_millis, memory_mb=instance.memory_mb),
        replicas=instance.replicas,
        ports=tuple(msgspec.convert(port, PortSpec) for port in instance.ports),
        env={**otlp_env(settings, instance_id=instance.id, name=instance.name), **instance.env, **secrets.env},
        labels=dict(instance.labels),
        files=secrets.files,
        registry_auth=auth,
        read_only_root_fs=bool(instance.read_only_root_fs),
        pull_policy=instance.pull_policy,  # type: ignore[arg-type]
        release_id=instance.current_release_id,
        generation=generation or instance.generation,
        tenant_quota=config.tenant_quota,
        probes=config.probes,
        routes=tuple(
            route
            for route in config.routes
            if (route.container_port in tcp_ports if route.container_port is not None else tcp_ports)
        ),
    )


def observed_state(status: WorkloadStatus) -> tuple[str, str]:
    if status.state == "running":
        return "running", status.message
    if status.state == "partial":
        return "running", status.message or "some replicas are not running"
    if status.state == "stopped":
        return "stopped", status.message
    if status.state == "unknown":
        return "unknown", status.message or "the runtime cannot tell now"
    if status.state == "failed":
        return "failed", status.message or "a replica failed"
    return "failed", status.message or "no containers found for this instance"


TextRedactor = Callable[[AsyncSession, Instance, str], Awaitable[str]]
"""Removes an instance's secret values and OTLP token from text a runtime reported
(``secrets.service.container_text_redactor``)."""


async def set_state(
    session: AsyncSession,
    instance: Instance,
    state: str,
    message: str,
    *,
    data: dict[str, Any] | None = None,
    redact: TextRedactor | None = None,
) -> None:
    """Record a state; a change is appended to the event log in the same transaction. ``redact``
    (for messages a runtime reported, which may echo what a container printed) cleans a new
    message before it is stored or put in an event."""
    if redact is not None and message and message != instance.status_message:
        message = await redact(session, instance, message)
    previous = instance.state
    changed = previous != state or instance.status_message != message
    instance.state = state
    instance.status_message = message
    if changed:
        instance.updated_at = utc_now()
    if previous != state:
        await append_event(
            session,
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            type="instance.state_changed",
            data={"from": previous, "to": state, "message": message, **(data or {})},
        )


async def record_status(
    session: AsyncSession, instance: Instance, status: WorkloadStatus, *, redact: TextRedactor | None = None
) -> None:
    state, message = observed_state(status)
    if state == "stopped" and instance.desired_state == "sleeping":
        # scaled to zero by network.sleep: stopped, with its hostnames still routed (to wake it)
        state, message = "sleeping", instance.status_message
    endpoints = [msgspec.to_builtins(endpoint) for endpoint in status.endpoints]
    if endpoints != instance.endpoints:
        instance.endpoints = endpoints
        instance.updated_at = utc_now()
    await follow_status(session, instance, status)
    await set_state(session, instance, state, message, redact=redact)
