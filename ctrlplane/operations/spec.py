"""The workload spec a worker hands a provider: what an instance should run, built from its row, the
secrets of its release, and the runtime settings other rooms own (the tenant's quota, health
probes, HTTP routes)."""

from __future__ import annotations

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.health.probes import runtime_probes_of
from ctrlplane.instances.models import Instance
from ctrlplane.network.router import http_routes_of
from ctrlplane.provisioning.contract import HttpRoute, PortSpec, Probe, Resources, TenantQuota, WorkloadSpec
from ctrlplane.registries import registry_key
from ctrlplane.secrets.schemas import WorkloadSecrets
from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import otlp_env
from ctrlplane.tenants.repository import TenantRepository


class RuntimeConfig(msgspec.Struct, frozen=True, kw_only=True):
    """What an instance's spec carries besides its release, for runtimes that enforce or serve these
    themselves (Kubernetes: ResourceQuota and LimitRange, probes, Ingress); others ignore them. They
    are not part of a release: a rollback keeps today's quota, checks and routes."""

    tenant_quota: TenantQuota | None = None
    probes: tuple[Probe, ...] = ()
    routes: tuple[HttpRoute, ...] = ()


async def runtime_config(session: AsyncSession, instance: Instance, settings: Settings) -> RuntimeConfig:
    """The tenant's quota (``TenantRepository.runtime``), the instance's probes
    (``health.probes.runtime_probes_of``) and its HTTP routes on its default hostname and verified
    domains (``network.router.http_routes_of``), read now, each from the room that owns it."""
    tenant = await TenantRepository(session).runtime(instance.tenant_id)
    probes = await runtime_probes_of(session, instance.id)
    if tenant is None:
        return RuntimeConfig(probes=probes)
    slug, limits = tenant
    quota = (
        TenantQuota(max_instances=limits[0], max_cpu_millis=limits[1], max_memory_mb=limits[2])
        if limits is not None
        else None
    )
    routes = await http_routes_of(
        session, settings, instance_id=instance.id, instance_name=instance.name, tenant_slug=slug
    )
    return RuntimeConfig(tenant_quota=quota, probes=probes, routes=routes)


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
