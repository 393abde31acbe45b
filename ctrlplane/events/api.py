"""Event streams: Server-Sent Events with replay and ``Last-Event-ID`` resume, or a JSON page.

With ``Accept: text/event-stream`` the stream sends every event after ``Last-Event-ID`` (or
``?since=``, default 0: the whole history), then live ones, each with ``id:`` set to its number,
plus a comment heartbeat every 15 s. Without it, a JSON page of events after ``since``, oldest
first; ``next_cursor`` is the ``since`` of the next page.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from litestar import Controller, Request, Response, get
from litestar.params import FromPath, FromQuery, HeaderParameter
from litestar.response import ServerSentEvent, ServerSentEventMessage

from ctrlplane.errors import InvalidInput
from ctrlplane.events import schemas
from ctrlplane.events.service import encode, page
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.web.context import RequestContext
from ctrlplane.web.http import DEFAULT_PAGE, Limit, context_of, errors, route
from ctrlplane.web.openapi import EVENT_STREAM

MAX_EVENT_ID = 2**63 - 1
LastEventId = Annotated[str | None, HeaderParameter(name="Last-Event-ID", required=False, pattern=r"^[0-9]{1,19}$")]


def _after(last_event_id: str | None, since: int | None) -> int:
    if last_event_id is not None:
        try:
            value = int(last_event_id)
        except ValueError:
            raise InvalidInput("Last-Event-ID must be an event id", details={"Last-Event-ID": last_event_id}) from None
    else:
        value = since or 0
    if not 0 <= value <= MAX_EVENT_ID:
        raise InvalidInput(f"event ids are between 0 and {MAX_EVENT_ID}", details={"since": value})
    return value


async def _respond(
    request: Request[Any, Any, Any],
    context: RequestContext,
    *,
    tenant_id: str,
    instance_id: str | None,
    after: int,
    limit: int,
) -> Response[Any]:
    if "text/event-stream" not in request.headers.get("accept", ""):
        return Response(
            await page(context.session, tenant_id=tenant_id, instance_id=instance_id, after=after, limit=limit)
        )
    await context.session.close()
    services = context.services

    async def messages() -> AsyncIterator[ServerSentEventMessage]:
        async for event in services.feeds.stream(tenant_id=tenant_id, instance_id=instance_id, after=after):
            if event is None:
                yield ServerSentEventMessage(comment="heartbeat")
            else:
                yield ServerSentEventMessage(data=encode(event), event=event.type, id=event.id)

    return ServerSentEvent(messages(), headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


class EventController(Controller):
    tags = ["events"]

    @get(
        "/v1/instances/{instance_id:str}/events",
        operation_id="instanceEvents",
        responses=errors(404),
        opt={**route("event", "list"), EVENT_STREAM: True},
    )
    async def instance_events(
        self,
        request: Request[Any, Any, Any],
        instance_id: FromPath[str],
        last_event_id: LastEventId = None,
        since: FromQuery[int | None] = None,
        limit: Limit = DEFAULT_PAGE,
    ) -> Response[schemas.EventPage]:
        """An instance's events: JSON page, or Server-Sent Events with Accept: text/event-stream."""
        context = context_of(request)
        instance = await InstanceRepository(context.session, context.principal.tenant_id).get(instance_id)
        return await _respond(
            request,
            context,
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            after=_after(last_event_id, since),
            limit=limit,
        )

    @get(
        "/v1/events",
        operation_id="tenantEvents",
        responses=errors(),
        opt={**route("event", "list"), EVENT_STREAM: True},
    )
    async def tenant_events(
        self,
        request: Request[Any, Any, Any],
        last_event_id: LastEventId = None,
        since: FromQuery[int | None] = None,
        limit: Limit = DEFAULT_PAGE,
        tenant_id: FromQuery[str | None] = None,
    ) -> Response[schemas.EventPage]:
        """The whole tenant's events: JSON page, or Server-Sent Events with Accept: text/event-stream."""
        context = context_of(request)
        return await _respond(
            request,
            context,
            tenant_id=context.tenant_scope(tenant_id),
            instance_id=None,
            after=_after(last_event_id, since),
            limit=limit,
        )
