"""Between an instance row and its provider: recording what was seen (the spec it should run is
``operations/spec.py``'s)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.events.service import append as append_event
from ctrlplane.instances.models import Instance
from ctrlplane.network.traffic import follow_status
from ctrlplane.provisioning.contract import (
    WorkloadStatus,
)
from ctrlplane.timeutil import utc_now


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
