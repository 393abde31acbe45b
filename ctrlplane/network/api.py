from __future__ import annotations

from litestar import Controller, Response, delete, get, patch, post, put
from litestar.params import FromPath, JSONBody

from ctrlplane.network import schemas
from ctrlplane.network.service import DomainService, RouteService, SleepService
from ctrlplane.web.http import DEFAULT_PAGE, ApiRequest, Cursor, Limit, context_of, errors, route
from ctrlplane.web.pagination import Page
from ctrlplane.web.preconditions import ETAG, IfMatch, tagged


class RouteController(Controller):
    tags = ["network"]

    @post(
        "/v1/instances/{instance_id:str}/routes",
        operation_id="createRoute",
        responses=errors(404, mutating=True),
        opt=route("route", "create"),
    )
    async def create(
        self, instance_id: FromPath[str], data: JSONBody[schemas.RouteCreate], request: ApiRequest
    ) -> schemas.Route:
        """Route a path of the instance's hostnames to one of its ports."""
        context = context_of(request)
        return await RouteService(context).create(instance_id, data)

    @get(
        "/v1/instances/{instance_id:str}/routes",
        operation_id="listRoutes",
        responses=errors(404),
        opt=route("route", "list"),
    )
    async def list_routes(
        self, instance_id: FromPath[str], request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Route]:
        """An instance's routes, newest first."""
        context = context_of(request)
        return await RouteService(context).list(instance_id, cursor=cursor, limit=limit)

    @get(
        "/v1/routes/{route_id:str}",
        operation_id="getRoute",
        responses=errors(404),
        opt=route("route", "get"),
        response_headers=[ETAG],
    )
    async def get_route(self, route_id: FromPath[str], request: ApiRequest) -> Response[schemas.Route]:
        """A route; its ETag is the version If-Match names."""
        context = context_of(request)
        found = await RouteService(context).get(route_id)
        return tagged(found, found.version)

    @patch(
        "/v1/routes/{route_id:str}",
        operation_id="updateRoute",
        responses=errors(404, 412, mutating=True),
        opt=route("route", "update"),
        response_headers=[ETAG],
    )
    async def update(
        self,
        route_id: FromPath[str],
        data: JSONBody[schemas.RouteUpdate],
        request: ApiRequest,
        if_match: IfMatch = None,
    ) -> Response[schemas.Route]:
        """Change only the fields present."""
        context = context_of(request)
        updated = await RouteService(context, if_match=if_match).update(route_id, data)
        return tagged(updated, updated.version)

    @delete(
        "/v1/routes/{route_id:str}",
        operation_id="deleteRoute",
        responses=errors(404, 412, mutating=True),
        opt=route("route", "delete"),
    )
    async def delete_route(self, route_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None) -> None:
        """Delete a route; its traffic stops at the next router push."""
        context = context_of(request)
        await RouteService(context, if_match=if_match).delete(route_id)


class DomainController(Controller):
    tags = ["network"]

    @post(
        "/v1/instances/{instance_id:str}/domains",
        operation_id="createDomain",
        responses=errors(404, mutating=True),
        opt=route("domain", "create"),
    )
    async def create(
        self, instance_id: FromPath[str], data: JSONBody[schemas.DomainCreate], request: ApiRequest
    ) -> schemas.Domain:
        """Claim a hostname for the instance; it routes once its TXT record is verified."""
        context = context_of(request)
        return await DomainService(context).create(instance_id, data)

    @get(
        "/v1/instances/{instance_id:str}/domains",
        operation_id="listDomains",
        responses=errors(404),
        opt=route("domain", "list"),
    )
    async def list_domains(
        self, instance_id: FromPath[str], request: ApiRequest, cursor: Cursor = None, limit: Limit = DEFAULT_PAGE
    ) -> Page[schemas.Domain]:
        """An instance's domains with their certificates, newest first."""
        context = context_of(request)
        return await DomainService(context).list(instance_id, cursor=cursor, limit=limit)

    @get(
        "/v1/domains/{domain_id:str}",
        operation_id="getDomain",
        responses=errors(404),
        opt=route("domain", "get"),
        response_headers=[ETAG],
    )
    async def get_domain(self, domain_id: FromPath[str], request: ApiRequest) -> Response[schemas.Domain]:
        """A domain with its verification record and certificate; its ETag is the version If-Match names."""
        context = context_of(request)
        found = await DomainService(context).get(domain_id)
        return tagged(found, found.version)

    @post(
        "/v1/domains/{domain_id:str}/verify",
        status_code=200,
        operation_id="verifyDomain",
        responses=errors(404, 412, mutating=True),
        opt=route("domain", "verify"),
        response_headers=[ETAG],
    )
    async def verify(
        self, domain_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None
    ) -> Response[schemas.Domain]:
        """Look the domain's TXT record up: verified, or 409 naming what was found."""
        context = context_of(request)
        verified = await DomainService(context, if_match=if_match).verify(domain_id)
        return tagged(verified, verified.version)

    @post(
        "/v1/domains/{domain_id:str}/cert",
        status_code=202,
        operation_id="requestCertificate",
        responses=errors(404, 412, mutating=True),
        opt=route("certificate", "request"),
        response_headers=[ETAG],
    )
    async def request_certificate(
        self, domain_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None
    ) -> Response[schemas.Certificate]:
        """Obtain (or renew now) the domain's certificate from the ACME CA; 202, issued in the background.
        If-Match and the ETag answered are the domain's."""
        context = context_of(request)
        certificate, version = await DomainService(context, if_match=if_match).request_certificate(domain_id)
        return tagged(certificate, version, 202)

    @delete(
        "/v1/domains/{domain_id:str}",
        operation_id="deleteDomain",
        responses=errors(404, 412, mutating=True),
        opt=route("domain", "delete"),
    )
    async def delete_domain(self, domain_id: FromPath[str], request: ApiRequest, if_match: IfMatch = None) -> None:
        """Release the hostname; its traffic and certificate stop at the next router push."""
        context = context_of(request)
        await DomainService(context, if_match=if_match).delete(domain_id)


class SleepController(Controller):
    path = "/v1/instances/{instance_id:str}"
    tags = ["network"]

    @get("/traffic", operation_id="instanceTraffic", responses=errors(404), opt=route("traffic", "get"))
    async def traffic(self, instance_id: FromPath[str], request: ApiRequest) -> schemas.InstanceTraffic:
        """The instance's last request through the router, its idle policy and its sleep and wake times."""
        context = context_of(request)
        return await SleepService(context).traffic(instance_id)

    @put(
        "/idle-policy",
        operation_id="setIdlePolicy",
        responses=errors(404, mutating=True),
        opt=route("idle_policy", "update"),
    )
    async def set_idle_policy(
        self, instance_id: FromPath[str], data: JSONBody[schemas.IdlePolicy], request: ApiRequest
    ) -> schemas.InstanceTraffic:
        """Put the instance to sleep after idle_timeout without a request (null: never); a request wakes it."""
        context = context_of(request)
        return await SleepService(context).set_idle_policy(instance_id, data)

    @post(
        "/sleep",
        status_code=202,
        operation_id="sleepInstance",
        responses=errors(404, mutating=True),
        opt=route("instance", "sleep"),
    )
    async def sleep(self, instance_id: FromPath[str], request: ApiRequest) -> schemas.InstanceTraffic:
        """Scale the running instance to zero, keeping its hostnames; the next request through the router wakes it."""
        context = context_of(request)
        return await SleepService(context).sleep(instance_id)
