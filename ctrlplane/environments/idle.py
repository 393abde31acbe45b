"""Idle environments: what ``on_idle`` means, plugged into the router's idle enforcement.

An environment's ``idle_timeout`` becomes its instance's idle policy (``network.sleep``) when it
is created or claimed, so the router's request reporting drives it. When the instance has had no
request for that long, ``on_idle`` decides (``_OnIdle``, registered on the app's
``IdleHandlers``): ``scale_to_zero`` puts it to sleep (containers stopped, hostname kept; the next
request through the router wakes it), ``destroy`` terminates the environment softly, as expiry
does. Either way an ``environment.idle`` event says so; a wake is an ``environment.woken`` event.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.environments.audit import system_change
from ctrlplane.environments.models import Environment
from ctrlplane.environments.service import record_event, terminate
from ctrlplane.instances.models import Instance
from ctrlplane.network.models import InstanceTraffic
from ctrlplane.network.sleep import put_to_sleep
from ctrlplane.web.context import AppServices


async def _environment_of(session: AsyncSession, instance: Instance) -> Environment | None:
    found: Environment | None = (
        await session.execute(
            select(Environment)
            .where(Environment.instance_id == instance.id, Environment.state == "active")
            .with_for_update()
        )
    ).scalar_one_or_none()
    return found


@dataclass(frozen=True)
class _OnIdle:
    """What ``on_idle`` says, for the idle enforcement; instances compare equal whatever services
    they serve, so two compositions of the app register equal handlers."""

    services: AppServices = field(compare=False)

    async def __call__(self, session: AsyncSession, instance: Instance, traffic: InstanceTraffic) -> bool:
        environment = await _environment_of(session, instance)
        if environment is None:
            return False
        last = traffic.last_request_at.isoformat() if traffic.last_request_at else None
        if environment.on_idle == "destroy":
            await record_event(session, environment, "environment.idle", on_idle="destroy", last_request_at=last)
            await terminate(session, environment, reason="idle", hard=False)
        else:
            await put_to_sleep(session, instance, reason=f"environment {environment.key} idle")
            await record_event(session, environment, "environment.idle", on_idle="scale_to_zero", last_request_at=last)
        await system_change(
            session,
            self.services.audit_keys,
            environment,
            "idle",
            on_idle=environment.on_idle,
            last_request_at=last,
        )
        return True


@dataclass(frozen=True)
class _OnWake:
    services: AppServices = field(compare=False)

    async def __call__(self, session: AsyncSession, instance: Instance) -> None:
        environment = await _environment_of(session, instance)
        if environment is not None:
            await record_event(session, environment, "environment.woken")
            await system_change(session, self.services.audit_keys, environment, "wake")


def register(services: AppServices) -> None:
    """Plug environments into the app's idle handlers; their changes are audited as the system's."""
    services.idle_handlers.register(_OnIdle(services))
    services.idle_handlers.on_wake(_OnWake(services))
