"""Between an instance row and its provider: the spec it should run, and recording what was seen."""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.events.service import append as append_event
from ctrlplane.instances.models import Instance
from ctrlplane.network.traffic import follow_status
from ctrlplane.provisioning.contract import PortSpec, Resources, WorkloadSpec, WorkloadStatus
from ctrlplane.secrets.schemas import WorkloadSecrets
from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import otlp_env
from ctrlplane.timeutil import utc_now


def spec_for(
    instance: Instance,
    *,
    settings: Settings,
    generation: int | None = None,
    secrets: WorkloadSecrets | None = None,
) -> WorkloadSpec:
    """What the instance should run. ``secrets`` are the decrypted secrets of the release it runs (a
    worker supplies them: see ``ctrlplane.secrets.service.for_release``). Its env is, lowest first,
    the OTLP variables (endpoint and the instance's token, see ``telemetry.otlp``), the instance's
    own env, and its env secrets."""
    secrets = secrets or WorkloadSecrets()
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
        pull_policy=instance.pull_policy,  # type: ignore[arg-type]
        release_id=instance.current_release_id,
        generation=generation or instance.generation,
    )


def observed_state(status: WorkloadStatus) -> tuple[str, str]:
    if status.state == "running":
        return "running", status.message
    if status.state == "partial":
        return "running", status.message or "some replicas are not running"
    if status.state == "stopped":
        return "stopped", status.message
    if status.state == "failed":
        return "failed", status.message or "a replica failed"
    return "failed", status.message or "no containers found for this instance"


async def set_state(
    session: AsyncSession, instance: Instance, state: str, message: str, *, data: dict[str, Any] | None = None
) -> None:
    """Record a state; a change is appended to the event log in the same transaction."""
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


async def record_status(session: AsyncSession, instance: Instance, status: WorkloadStatus) -> None:
    state, message = observed_state(status)
    endpoints = [msgspec.to_builtins(endpoint) for endpoint in status.endpoints]
    if endpoints != instance.endpoints:
        instance.endpoints = endpoints
        instance.updated_at = utc_now()
    await follow_status(session, instance, status)
    await set_state(session, instance, state, message)
