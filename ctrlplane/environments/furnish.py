"""An environment's instance gets its template's health checks and routes.

They are made through the services the instance APIs use (``HealthService.create``,
``RouteService.create``), so every rule of ``POST /v1/instances/{id}/health/checks`` and
``.../routes`` holds (ports, paths, the tenant's ``max_routes``), in the caller's transaction: a
refused one rolls the environment back with it. Their own audit details are kept off the
environment's entry, which lists what was made instead.
"""

from __future__ import annotations

from typing import Any

import msgspec

from ctrlplane.health.service import HealthService
from ctrlplane.network.service import RouteService
from ctrlplane.templates.render import render_extras
from ctrlplane.templates.schemas import ParameterValue, TemplateSpec
from ctrlplane.web.context import AuditDraft, RequestContext


async def furnish(
    context: RequestContext, instance_id: str, spec: TemplateSpec, values: dict[str, ParameterValue]
) -> dict[str, Any]:
    """Make the spec's health checks and routes on the instance; the ids made, for the audit."""
    checks, routes = render_extras(spec, values)
    if not checks and not routes:
        return {}
    inner = msgspec.structs.replace(context, audit=AuditDraft(resource=context.audit.resource, action="furnish"))
    made_checks = [(await HealthService(inner).create(instance_id, check)).id for check in checks]
    made_routes = [(await RouteService(inner).create(instance_id, route)).id for route in routes]
    return {"health_checks": made_checks, "routes": made_routes}
