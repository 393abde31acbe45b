"""Templates: named instance configurations with typed parameters, in versions.

A tenant's templates are its own; system templates (``tenant_id`` NULL) are published by system
admins and visible to every tenant, which may use but not change them (403). Names are unique
among a scope's live templates. Every change writes a new version (``template_versions``), and an
environment pins the version it was made from, so editing a template never changes a running
environment. Deleting one hides it from new environments; existing ones keep their version.
"""

from __future__ import annotations

from typing import Any

import msgspec
from sqlalchemy import Select, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import Conflict, Forbidden, InvalidInput, NotFound
from ctrlplane.ids import new_id
from ctrlplane.templates import schemas
from ctrlplane.templates.models import Template, TemplateVersion
from ctrlplane.templates.render import check_declarations
from ctrlplane.timeutil import parse_duration_input, utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate


def format_seconds(seconds: int | None) -> str | None:
    if seconds is None:
        return None
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def duration_seconds(raw: str, field: str, *, minimum: float = 1.0) -> int:
    seconds = parse_duration_input(field, raw)
    if seconds < minimum or seconds > 10 * 365 * 86400:
        raise InvalidInput(f"{field} must be between {minimum:g}s and 3650d", details={field: raw})
    return int(seconds)


def to_schema(template: Template) -> schemas.Template:
    return schemas.Template(
        id=template.id,
        tenant_id=template.tenant_id,
        system=template.tenant_id is None,
        name=template.name,
        description=template.description,
        version=template.version,
        spec=msgspec.convert(template.spec, schemas.TemplateSpec),
        parameters=[msgspec.convert(p, schemas.Parameter) for p in template.parameters],
        max_ttl=format_seconds(template.max_ttl_seconds),
        max_extends=template.max_extends,
        pool=schemas.Pool(
            min_ready=template.pool_min_ready, max_ready=template.pool_max_ready, cold_start=template.pool_cold_start
        ),
        max_environments_per_owner=template.max_environments_per_owner,
        created_at=template.created_at,
        updated_at=template.updated_at,
    )


def _visible(tenant_id: str | None) -> Select[Any]:
    statement = select(Template).where(Template.deleted_at.is_(None))
    if tenant_id is not None:
        statement = statement.where(or_(Template.tenant_id == tenant_id, Template.tenant_id.is_(None)))
    return statement


async def find(session: AsyncSession, tenant_id: str | None, reference: str, *, for_update: bool = False) -> Template:
    """A live template visible to ``tenant_id`` by id or by name (the tenant's own before a system
    template of that name); 404 otherwise."""
    statement = _visible(tenant_id)
    if reference.startswith("tpl_"):
        statement = statement.where(Template.id == reference)
    else:
        statement = statement.where(Template.name == reference).order_by(Template.tenant_id.is_(None))
    if for_update:
        statement = statement.with_for_update().execution_options(populate_existing=True)
    found: Template | None = (await session.execute(statement.limit(1))).scalars().first()
    if found is None:
        raise NotFound.of("template", reference)
    return found


async def version_of(session: AsyncSession, template_id: str, version: int) -> TemplateVersion:
    found = await session.get(TemplateVersion, (template_id, version))
    if found is None:
        raise NotFound.of("template version", f"{template_id}@{version}")
    return found


def declared(version: TemplateVersion) -> tuple[schemas.TemplateSpec, list[schemas.Parameter]]:
    return (
        msgspec.convert(version.spec, schemas.TemplateSpec),
        [msgspec.convert(p, schemas.Parameter) for p in version.parameters],
    )


class TemplateService:
    def __init__(self, context: RequestContext) -> None:
        self.context = context
        self.session = context.session
        self.principal = context.principal

    def _audit(self, template: Template, **details: Any) -> None:
        self.context.audit.resource_id = template.id
        self.context.audit.tenant_id = template.tenant_id
        self.context.audit.details.update(details)

    async def _name_taken(self, tenant_id: str | None, name: str, except_id: str | None = None) -> None:
        statement = select(Template.id).where(Template.name == name, Template.deleted_at.is_(None))
        statement = statement.where(
            Template.tenant_id.is_(None) if tenant_id is None else Template.tenant_id == tenant_id
        )
        if except_id is not None:
            statement = statement.where(Template.id != except_id)
        if (await self.session.execute(statement)).first() is not None:
            raise Conflict(f"a template named {name!r} exists", details={"name": name})

    def _snapshot(self, template: Template) -> None:
        self.session.add(
            TemplateVersion(
                template_id=template.id,
                version=template.version,
                spec=template.spec,
                parameters=template.parameters,
                max_ttl_seconds=template.max_ttl_seconds,
                max_extends=template.max_extends,
                created_by=self.principal.subject,
                created_at=template.updated_at,
            )
        )

    async def create(self, data: schemas.TemplateCreate) -> schemas.Template:
        if self.principal.is_system_admin:
            tenant_id: str | None = data.tenant_id
        else:
            tenant_id = self.context.tenant_scope(data.tenant_id)
        check_declarations(data.parameters, data.spec)
        _check_pool(data.pool, data.parameters, tenant_id)
        max_ttl = duration_seconds(data.max_ttl, "max_ttl") if data.max_ttl is not None else None
        await self._name_taken(tenant_id, data.name)
        now = utc_now()
        template = Template(
            id=new_id("tpl"),
            tenant_id=tenant_id,
            name=data.name,
            description=data.description,
            version=1,
            spec=msgspec.to_builtins(data.spec),
            parameters=msgspec.to_builtins(data.parameters),
            max_ttl_seconds=max_ttl,
            max_extends=data.max_extends,
            pool_min_ready=data.pool.min_ready,
            pool_max_ready=data.pool.max_ready,
            pool_cold_start=data.pool.cold_start,
            max_environments_per_owner=data.max_environments_per_owner,
            created_at=now,
            updated_at=now,
        )
        self.session.add(template)
        await self.session.flush()
        self._snapshot(template)
        self._audit(template, name=data.name, version=1, system=tenant_id is None)
        return to_schema(template)

    async def list(self, *, name: str | None, cursor: str | None, limit: int) -> Page[schemas.Template]:
        statement = _visible(self.principal.tenant_id)
        if name is not None:
            statement = statement.where(Template.name == name)
        return await paginate(self.session, statement, Template.id, cursor=cursor, limit=limit, convert=to_schema)

    async def get(self, template_id: str) -> schemas.Template:
        return to_schema(await self._by_id(template_id))

    async def _by_id(self, template_id: str, *, for_update: bool = False) -> Template:
        if not template_id.startswith("tpl_"):
            raise NotFound.of("template", template_id)
        return await find(self.session, self.principal.tenant_id, template_id, for_update=for_update)

    async def _changeable(self, template_id: str) -> Template:
        template = await self._by_id(template_id, for_update=True)
        if template.tenant_id is None and not self.principal.is_system_admin:
            raise Forbidden("system templates are changed by system admins only")
        return template

    async def update(self, template_id: str, data: schemas.TemplateUpdate) -> schemas.Template:
        template = await self._changeable(template_id)
        spec = data.spec if data.spec is not msgspec.UNSET else msgspec.convert(template.spec, schemas.TemplateSpec)
        parameters = (
            data.parameters
            if data.parameters is not msgspec.UNSET
            else [msgspec.convert(p, schemas.Parameter) for p in template.parameters]
        )
        check_declarations(parameters, spec)
        changed: list[str] = []
        if data.name is not msgspec.UNSET and data.name != template.name:
            await self._name_taken(template.tenant_id, data.name, except_id=template.id)
            template.name = data.name
            changed.append("name")
        if data.description is not msgspec.UNSET and data.description != template.description:
            template.description = data.description
            changed.append("description")
        if msgspec.to_builtins(spec) != msgspec.to_builtins(msgspec.convert(template.spec, schemas.TemplateSpec)):
            template.spec = msgspec.to_builtins(spec)
            changed.append("spec")
        if msgspec.to_builtins(parameters) != template.parameters:
            template.parameters = msgspec.to_builtins(parameters)
            changed.append("parameters")
        if data.max_ttl is not msgspec.UNSET:
            max_ttl = duration_seconds(data.max_ttl, "max_ttl") if data.max_ttl is not None else None
            if max_ttl != template.max_ttl_seconds:
                template.max_ttl_seconds = max_ttl
                changed.append("max_ttl")
        if data.max_extends is not msgspec.UNSET and data.max_extends != template.max_extends:
            template.max_extends = data.max_extends
            changed.append("max_extends")
        if data.pool is not msgspec.UNSET and (data.pool.min_ready, data.pool.max_ready, data.pool.cold_start) != (
            template.pool_min_ready,
            template.pool_max_ready,
            template.pool_cold_start,
        ):
            _check_pool(data.pool, parameters, template.tenant_id)
            template.pool_min_ready, template.pool_max_ready = data.pool.min_ready, data.pool.max_ready
            template.pool_cold_start = data.pool.cold_start
            changed.append("pool")
        if (
            data.max_environments_per_owner is not msgspec.UNSET
            and data.max_environments_per_owner != template.max_environments_per_owner
        ):
            template.max_environments_per_owner = data.max_environments_per_owner
            changed.append("max_environments_per_owner")
        if changed:
            template.version += 1
            template.updated_at = utc_now()
            self._snapshot(template)
        self._audit(template, changed=changed, version=template.version)
        return to_schema(template)

    async def delete(self, template_id: str) -> None:
        template = await self._changeable(template_id)
        template.deleted_at = utc_now()
        template.updated_at = template.deleted_at
        self._audit(template, name=template.name)


def _check_pool(pool: schemas.Pool, parameters: list[schemas.Parameter], tenant_id: str | None) -> None:
    if pool.max_ready < pool.min_ready:
        raise InvalidInput(
            "pool.max_ready must be at least pool.min_ready",
            details={"pool": {"min_ready": pool.min_ready, "max_ready": pool.max_ready}},
        )
    if pool.max_ready == 0:
        return
    if tenant_id is None:
        raise InvalidInput("system templates cannot have pools (pools are per tenant)", details={"pool": "system"})
    needed = [p.name for p in parameters if p.required and p.default is None]
    if needed:
        raise InvalidInput(
            "a pooled template needs a default for every parameter: pool members are made with the defaults",
            details={"pool": {name: "required without a default" for name in needed}},
        )
