from __future__ import annotations

from litestar import Controller, Response, delete, get, patch, post
from litestar.params import FromPath, JSONBody

from ctrlplane.http import DEFAULT_PAGE, Context, Cursor, Limit, errors, route
from ctrlplane.network import schemas
from ctrlplane.network.service import DomainService, RouteService
from ctrlplane.pagination import Page


class RouteController(Controller):
    tags = ["network"]

    @post(
        "/v1/instances/{instance_id:str}/routes",
        operation_id="createRoute",
        responses=errors(404, mutating=True),
        opt=route("route", "create"),
    )
    async def create(
        self, instance_id: FromPath[str], data: JSONBody[schemas.RouteCreate], context: Context
    ) -> schemas.Route:
        """Route a path of the instance's hostnames to one of its ports."""
        return await RouteService(context).create(instance_id, data)

    @get(
        "/v1/instances/{instance_id:str}/routes",
        operation_id="listRoutes",
        responses=errors(404),
        opt=route("route", "list"),
    )
    async def list_routes(
        self, instance_id: FromPath[str], context: Context, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Route]:
        """An instance's routes, newest first."""
        return await RouteService(context).list(instance_id, cursor=cursor, limit=limit)

    @patch(
        "/v1/routes/{route_id:str}",
        operation_id="updateRoute",
        responses=errors(404, mutating=True),
        opt=route("route", "update"),
    )
    async def update(
        self, route_id: FromPath[str], data: JSONBody[schemas.RouteUpdate], context: Context
    ) -> schemas.Route:
        """Change only the fields present."""
        return await RouteService(context).update(route_id, data)

    @delete(
        "/v1/routes/{route_id:str}",
        operation_id="deleteRoute",
        responses=errors(404, mutating=True),
        opt=route("route", "delete"),
    )
    async def delete_route(self, route_id: FromPath[str], context: Context) -> None:
        """Delete a route; its traffic stops at the next router push."""
        await RouteService(context).delete(route_id)


class DomainController(Controller):
    tags = ["network"]

    @post(
        "/v1/instances/{instance_id:str}/domains",
        operation_id="createDomain",
        responses=errors(404, mutating=True),
        opt=route("domain", "create"),
    )
    async def create(
        self, instance_id: FromPath[str], data: JSONBody[schemas.DomainCreate], context: Context
    ) -> schemas.Domain:
        """Claim a hostname for the instance; it routes once its TXT record is verified."""
        return await DomainService(context).create(instance_id, data)

    @get(
        "/v1/instances/{instance_id:str}/domains",
        operation_id="listDomains",
        responses=errors(404),
        opt=route("domain", "list"),
    )
    async def list_domains(
        self, instance_id: FromPath[str], context: Context, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Domain]:
        """An instance's domains with their certificates, newest first."""
        return await DomainService(context).list(instance_id, cursor=cursor, limit=limit)

    @get("/v1/domains/{domain_id:str}", operation_id="getDomain", responses=errors(404), opt=route("domain", "get"))
    async def get_domain(self, domain_id: FromPath[str], context: Context) -> schemas.Domain:
        """A domain with its verification record and certificate."""
        return await DomainService(context).get(domain_id)

    @post(
        "/v1/domains/{domain_id:str}/verify",
        status_code=200,
        operation_id="verifyDomain",
        responses=errors(404, mutating=True),
        opt=route("domain", "verify"),
    )
    async def verify(self, domain_id: FromPath[str], context: Context) -> schemas.Domain:
        """Look the domain's TXT record up: verified, or 409 naming what was found."""
        return await DomainService(context).verify(domain_id)

    @post(
        "/v1/domains/{domain_id:str}/cert",
        status_code=202,
        operation_id="requestCertificate",
        responses=errors(404, mutating=True),
        opt=route("certificate", "request"),
    )
    async def request_certificate(self, domain_id: FromPath[str], context: Context) -> Response[schemas.Certificate]:
        """Obtain (or renew now) the domain's certificate from the ACME CA; 202, issued in the background."""
        return Response(await DomainService(context).request_certificate(domain_id), status_code=202)

    @delete(
        "/v1/domains/{domain_id:str}",
        operation_id="deleteDomain",
        responses=errors(404, mutating=True),
        opt=route("domain", "delete"),
    )
    async def delete_domain(self, domain_id: FromPath[str], context: Context) -> None:
        """Release the hostname; its traffic and certificate stop at the next router push."""
        await DomainService(context).delete(domain_id)
