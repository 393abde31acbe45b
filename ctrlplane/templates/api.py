from __future__ import annotations

from litestar import Controller, delete, get, patch, post
from litestar.params import FromPath, FromQuery, JSONBody

from ctrlplane.templates import schemas
from ctrlplane.templates.service import TemplateService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page


class TemplateController(Controller):
    path = "/v1/templates"
    tags = ["templates"]

    @post(operation_id="createTemplate", responses=errors(mutating=True), opt=route("template", "create"))
    async def create(self, data: JSONBody[schemas.TemplateCreate], request: ApiRequest) -> schemas.Template:
        """Create a template (version 1); system admins without tenant_id publish a system template."""
        context = context_of(request)
        return await TemplateService(context).create(data)

    @get(operation_id="listTemplates", responses=errors(), opt=route("template", "list"))
    async def list_templates(
        self,
        request: ApiRequest,
        cursor: Cursor = None,
        limit: Limit = DEFAULT_PAGE,
        name: FromQuery[str | None] = None,
    ) -> Page[schemas.Template]:
        """List the tenant's templates and the system templates, newest first."""
        context = context_of(request)
        return await TemplateService(context).list(name=name, cursor=cursor, limit=limit)

    @get("/{template_id:str}", operation_id="getTemplate", responses=errors(404), opt=route("template", "get"))
    async def get_template(self, template_id: FromPath[str], request: ApiRequest) -> schemas.Template:
        """Get a template at its current version."""
        context = context_of(request)
        return await TemplateService(context).get(template_id)

    @patch(
        "/{template_id:str}",
        operation_id="updateTemplate",
        responses=errors(404, mutating=True),
        opt=route("template", "update"),
    )
    async def update(
        self, template_id: FromPath[str], data: JSONBody[schemas.TemplateUpdate], request: ApiRequest
    ) -> schemas.Template:
        """Change the fields present; any change makes a new version (environments keep theirs)."""
        context = context_of(request)
        return await TemplateService(context).update(template_id, data)

    @delete(
        "/{template_id:str}",
        operation_id="deleteTemplate",
        responses=errors(404, mutating=True),
        opt=route("template", "delete"),
    )
    async def delete_template(self, template_id: FromPath[str], request: ApiRequest) -> None:
        """Delete a template: no new environments from it; existing ones keep their version."""
        context = context_of(request)
        await TemplateService(context).delete(template_id)
