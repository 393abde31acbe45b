"""Routes and domains: the API side.

**Routes** send requests for an instance's hostnames under ``path`` (and everything below it) to
one of its container ports. Rules (400 unless said otherwise): ``path`` starts with ``/`` and is a
plain path (no ``*``, ``?``, ``#``, ``//``; a trailing ``/`` is dropped); ``port`` is one of the
instance's TCP ports; ``weight`` is 0 to 100 and routes of the same path share its traffic in
proportion to their weights (0 gets none); ``protocol`` is ``http`` (the only one supported);
routes of the same path must agree on ``strip_prefix``, since a request is rewritten before a
route is picked. An instance with no route for ``/`` serves ``/`` from its first port.

**Domains** are claimed for an instance with a hostname unique across all tenants (409 if taken;
the hostname of a destroyed instance is free again; hostnames under the router's base domain are
reserved). A domain is ``pending`` until ``verify`` finds the TXT record
``_ctrlplane-challenge.<hostname>`` holding its verification value (409 names what was found
instead); only verified domains route traffic or get certificates. ``request_certificate`` asks
the certificate issuer (``certificates.py``) to obtain one; it answers at once with the
certificate's state.

Quotas ``max_routes`` and ``max_domains`` count the routes and domains of the tenant's live
instances, checked under the tenant row's lock, so concurrent requests cannot overshoot.
"""

from __future__ import annotations

import re
import secrets
from typing import Any

import msgspec

from ctrlplane.errors import Conflict as ConflictError
from ctrlplane.errors import InvalidInput, InvalidState, QuotaExceeded
from ctrlplane.events.service import append as append_event
from ctrlplane.ids import new_id
from ctrlplane.instances.lifecycle import reconfigure
from ctrlplane.instances.models import Instance
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.instances.service import InstanceService
from ctrlplane.network import schemas
from ctrlplane.network.dns import txt_values
from ctrlplane.network.models import Certificate, Domain, InstanceTraffic, Route
from ctrlplane.network.repository import NetworkRepository
from ctrlplane.network.sleep import put_to_sleep, traffic_row
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import parse_duration_input, utc_now
from ctrlplane.web.context import RequestContext
from ctrlplane.web.pagination import Page, paginate
from ctrlplane.web.preconditions import require_version

SUPPORTED_PROTOCOLS = ("http",)
CHALLENGE_LABEL = "_ctrlplane-challenge"
_PATH_SEGMENT = r"[A-Za-z0-9._~!$&'()+,;=:@%-]+"
_PATH = re.compile(rf"^/(?:{_PATH_SEGMENT}(?:/{_PATH_SEGMENT})*)?$")
_ESCAPE = re.compile(r"%([0-9A-Fa-f]{2})")
_BAD_ESCAPE = re.compile(r"%(?![0-9A-Fa-f]{2})")
_FORBIDDEN_ESCAPE = re.compile(r"%(?:2F|5C|00)")
_UNRESERVED = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~")
_LABEL = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
UNUSABLE = ("destroying", "destroyed")


def normalize_path(path: str) -> str:
    """A route path in one canonical form, or 400. Percent-encoded unreserved characters are decoded
    (``%7E`` is ``~``, ``%2e`` is ``.``) and other escapes upper-cased, so one path has one spelling
    when stored and compared; then ``.``/``..`` segments, empty segments (``//``), backslashes and
    encoded ``/``, ``\\`` or NUL are refused: a proxy or an application that normalizes them
    differently would route a request somewhere the route's owner never named."""
    shown = {"path": path[:256]}
    if not path.startswith("/"):
        raise InvalidInput("path must start with /", details=shown)
    if "//" in path or "\\" in path:
        raise InvalidInput("path must be a plain URL path: no empty segments (//) or backslashes", details=shown)
    if "%" in path:
        if _BAD_ESCAPE.search(path):
            raise InvalidInput(
                "path has a malformed percent-encoding (% must be followed by two hex digits)", details=shown
            )
        path = _ESCAPE.sub(_canonical_escape, path)
        if _FORBIDDEN_ESCAPE.search(path):
            raise InvalidInput("path must not contain an encoded /, \\ or NUL (%2F, %5C, %00)", details=shown)
    if len(path) > 1 and path.endswith("/"):
        path = path[:-1]
    if any(segment in (".", "..") for segment in path.split("/")):
        raise InvalidInput("path must not contain . or .. segments (also percent-encoded)", details=shown)
    if "//" in path or not _PATH.match(path):
        raise InvalidInput(
            "path must be a plain URL path such as /api (no *, ?, #, spaces or empty segments)", details=shown
        )
    return path


def _canonical_escape(match: re.Match[str]) -> str:
    character = chr(int(match.group(1), 16))
    return character if character in _UNRESERVED else "%" + match.group(1).upper()


def normalize_hostname(hostname: str, *, reserved_suffix: str) -> str:
    name = hostname.strip().lower().removesuffix(".")
    labels = name.split(".")
    if len(name) > 253 or len(labels) < 2 or not all(_LABEL.match(label) for label in labels):
        raise InvalidInput(
            f"{hostname!r} is not a fully qualified domain name (labels of letters, digits and hyphens, "
            "at least two of them, at most 253 characters)",
            details={"hostname": hostname},
        )
    if labels[-1].isdigit():
        raise InvalidInput(
            f"{hostname!r} is not a domain name (its last label is a number)", details={"hostname": hostname}
        )
    reserved = reserved_suffix.lower().strip(".")
    if name == reserved or name.endswith("." + reserved):
        raise InvalidInput(
            f"hostnames under {reserved} are the router's own (every instance has one there already)",
            details={"hostname": hostname},
        )
    return name


def to_route(route: Route) -> schemas.Route:
    return msgspec.convert(route, schemas.Route, from_attributes=True)


def to_certificate(certificate: Certificate) -> schemas.Certificate:
    return msgspec.convert(certificate, schemas.Certificate, from_attributes=True)


def to_domain(domain: Domain, certificate: Certificate | None) -> schemas.Domain:
    return schemas.Domain(
        id=domain.id,
        tenant_id=domain.tenant_id,
        instance_id=domain.instance_id,
        hostname=domain.hostname,
        status=domain.status,  # type: ignore[arg-type]
        verification=schemas.Verification(
            type="TXT", name=f"{CHALLENGE_LABEL}.{domain.hostname}", value=domain.verification_token
        ),
        verified_at=domain.verified_at,
        certificate=to_certificate(certificate) if certificate is not None else None,
        version=domain.version,
        created_at=domain.created_at,
        updated_at=domain.updated_at,
    )


def _usable(instance: Instance) -> Instance:
    if instance.state in UNUSABLE:
        raise InvalidState(
            f"instance {instance.id} is {instance.state}",
            details={"state": instance.state, "instance_id": instance.id},
        )
    return instance


def check_route(instance_ports: list[dict[str, Any]], *, path: str, port: int, protocol: str) -> str:
    """The route's canonical path, or 400 for a protocol not served or a port not among
    ``instance_ports`` (an instance's, or a template's before any instance exists)."""
    if protocol not in SUPPORTED_PROTOCOLS:
        raise InvalidInput(
            f"protocol {protocol!r} is not supported; supported: {', '.join(SUPPORTED_PROTOCOLS)}",
            details={"protocol": protocol, "supported": list(SUPPORTED_PROTOCOLS)},
        )
    ports = sorted(int(p["container_port"]) for p in instance_ports if p.get("protocol", "tcp") == "tcp")
    if port not in ports:
        raise InvalidInput(
            f"port {port} is not one of the instance's ports {ports}", details={"port": port, "ports": ports}
        )
    return normalize_path(path)


class _NetworkService:
    def __init__(self, context: RequestContext, *, if_match: str | None = None) -> None:
        self.context = context
        self.if_match = if_match
        self.session = context.session
        self.settings = context.services.settings
        self.repo = NetworkRepository(context.session, context.principal.tenant_id)
        self.instances = InstanceRepository(context.session, context.principal.tenant_id)

    def _audit(self, resource_id: str, tenant_id: str, **details: Any) -> None:
        self.context.audit.resource_id = resource_id
        self.context.audit.tenant_id = tenant_id
        self.context.audit.details.update(details)

    async def _usable_instance(self, instance_id: str) -> Instance:
        """The instance, locked after its tenant (quota checks need the tenant row locked)."""
        return _usable(await InstanceService(self.context).locked(instance_id))

    async def _changed(self, instance: Instance) -> None:
        """The instance's traffic changed: runtimes that serve it themselves (Kubernetes' Ingress)
        get the new rules; Caddy reads the database itself."""
        await reconfigure(self.session, self.context.services.providers, [instance])

    async def _within_quota(self, tenant_id: str, quota_name: str, used: int) -> None:
        quota = await TenantRepository(self.session).quota(tenant_id)
        limit = int(getattr(quota, quota_name))
        if used + 1 > limit:
            raise QuotaExceeded(quota_name, used=used, limit=limit, requested=1)


class RouteService(_NetworkService):
    def _check(self, instance: Instance, *, path: str, port: int, protocol: str) -> str:
        return check_route(instance.ports, path=path, port=port, protocol=protocol)

    async def _agrees_on_strip_prefix(self, instance_id: str, path: str, strip_prefix: bool, route_id: str) -> None:
        others = [r for r in await self.repo.routes_on_path(instance_id, path) if r.id != route_id]
        if others and any(r.strip_prefix != strip_prefix for r in others):
            raise InvalidInput(
                f"routes to path {path} must agree on strip_prefix: the others have "
                f"strip_prefix={str(others[0].strip_prefix).lower()}",
                details={"strip_prefix": strip_prefix, "path": path},
            )

    async def create(self, instance_id: str, data: schemas.RouteCreate) -> schemas.Route:
        instance = await self._usable_instance(instance_id)
        path = self._check(instance, path=data.path, port=data.port, protocol=data.protocol)
        route_id = new_id("rte")
        await self._agrees_on_strip_prefix(instance.id, path, data.strip_prefix, route_id)
        await self._within_quota(instance.tenant_id, "max_routes", await self.repo.route_count(instance.tenant_id))
        now = utc_now()
        route = Route(
            id=route_id,
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            path=path,
            port=data.port,
            protocol=data.protocol,
            weight=data.weight,
            strip_prefix=data.strip_prefix,
            version=1,
            created_at=now,
            updated_at=now,
        )
        self.session.add(route)
        await self.session.flush()
        await self._changed(instance)
        self._audit(route.id, route.tenant_id, instance_id=instance.id, path=path, port=data.port)
        return to_route(route)

    async def list(self, instance_id: str, *, cursor: str | None, limit: int) -> Page[schemas.Route]:
        instance = await self.instances.get(instance_id)
        return await paginate(
            self.session, self.repo.routes_of(instance.id), Route.id, cursor=cursor, limit=limit, convert=to_route
        )

    async def _locked(self, route_id: str) -> tuple[Route, Instance]:
        """The route locked after its instance (locked after its tenant), checked against If-Match."""
        route = await self.repo.route(route_id)
        instance = await InstanceService(self.context).locked(route.instance_id)
        route = await self.repo.route(route_id, for_update=True)
        require_version(self.if_match, resource="route", resource_id=route.id, version=route.version)
        return route, instance

    async def get(self, route_id: str) -> schemas.Route:
        return to_route(await self.repo.route(route_id))

    async def update(self, route_id: str, data: schemas.RouteUpdate) -> schemas.Route:
        route, instance = await self._locked(route_id)
        _usable(instance)
        changes = {k: v for k, v in msgspec.structs.asdict(data).items() if v is not msgspec.UNSET}
        current = {k: getattr(route, k) for k in ("path", "port", "protocol", "weight", "strip_prefix")}
        merged = {**current, **changes}
        path = self._check(instance, path=merged["path"], port=merged["port"], protocol=merged["protocol"])
        await self._agrees_on_strip_prefix(instance.id, path, merged["strip_prefix"], route.id)
        route.path, route.port, route.protocol = path, merged["port"], merged["protocol"]
        route.weight, route.strip_prefix = merged["weight"], merged["strip_prefix"]
        if {**merged, "path": path} != current:
            route.version += 1
        route.updated_at = utc_now()
        await self._changed(instance)
        self._audit(route.id, route.tenant_id, changes=sorted(changes))
        return to_route(route)

    async def delete(self, route_id: str) -> None:
        route, instance = await self._locked(route_id)
        self._audit(route.id, route.tenant_id, instance_id=route.instance_id, path=route.path)
        await self.session.delete(route)
        await self._changed(instance)


class DomainService(_NetworkService):
    async def _view(self, domain: Domain) -> schemas.Domain:
        return to_domain(domain, await self.repo.certificate(domain.id))

    async def create(self, instance_id: str, data: schemas.DomainCreate) -> schemas.Domain:
        hostname = normalize_hostname(data.hostname, reserved_suffix=self.settings.router_base_domain)
        instance = await self._usable_instance(instance_id)
        await self._within_quota(instance.tenant_id, "max_domains", await self.repo.domain_count(instance.tenant_id))
        holder = await self.repo.hostname_holder(hostname)
        if holder is not None:
            domain, instance_state = holder
            if instance_state != "destroyed":
                raise ConflictError(
                    f"hostname {hostname} is already verified by a claim", details={"hostname": hostname}
                )
            await self.session.delete(domain)
            await self.session.flush()
        own = await self.repo.own_claim(instance.tenant_id, hostname)
        if own is not None:
            if own.status == "pending" and not self._expired(own):
                raise ConflictError(
                    f"your tenant already claims {hostname} (domain {own.id})",
                    details={"hostname": hostname, "domain_id": own.id},
                )
            await self.session.delete(own)  # an expired or superseded claim is replaced by a new one
            await self.session.flush()
        now = utc_now()
        domain = Domain(
            id=new_id("dom"),
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            hostname=hostname,
            status="pending",
            verification_token=f"ctrlplane-verify={secrets.token_urlsafe(24)}",
            verified_at=None,
            version=1,
            created_at=now,
            updated_at=now,
        )
        self.session.add(domain)
        await self.session.flush()
        self._audit(domain.id, domain.tenant_id, instance_id=instance.id, hostname=hostname)
        return to_domain(domain, None)

    async def list(self, instance_id: str, *, cursor: str | None, limit: int) -> Page[schemas.Domain]:
        instance = await self.instances.get(instance_id)
        page = await paginate(
            self.session, self.repo.domains_of(instance.id), Domain.id, cursor=cursor, limit=limit, convert=lambda d: d
        )
        certificates = await self.repo.certificates([d.id for d in page.items])
        return Page(
            items=[to_domain(d, certificates.get(d.id)) for d in page.items],
            next_cursor=page.next_cursor,
            total=page.total,
        )

    async def get(self, domain_id: str) -> schemas.Domain:
        return await self._view(await self.repo.domain(domain_id))

    def _require_version(self, domain: Domain) -> None:
        require_version(self.if_match, resource="domain", resource_id=domain.id, version=domain.version)

    def _expired(self, domain: Domain) -> bool:
        age = utc_now() - domain.created_at
        return domain.status == "pending" and age.total_seconds() > self.settings.domain_claim_ttl_seconds

    def _claim_usable(self, domain: Domain) -> None:
        if domain.status == "superseded":
            raise ConflictError(
                f"another claim of {domain.hostname} was verified first; this claim can no longer be verified",
                details={"hostname": domain.hostname, "status": domain.status},
            )
        if self._expired(domain):
            raise ConflictError(
                f"this claim of {domain.hostname} expired (pending claims last "
                f"{self.settings.domain_claim_ttl_seconds / 86400:g} days); delete it and claim the hostname again",
                details={"hostname": domain.hostname, "status": "expired"},
            )

    async def verify(self, domain_id: str) -> schemas.Domain:
        """Look the TXT record up (outside any lock: DNS may be slow) and mark the domain verified.
        If-Match is checked before the lookup and again on the locked row. Several tenants may
        hold pending claims of one hostname: the first to verify wins (a partial unique index
        holds even against a race), and the others' claims become ``superseded``."""
        domain = await self.repo.domain(domain_id)
        self._require_version(domain)
        self._audit(domain.id, domain.tenant_id, hostname=domain.hostname)
        if domain.status == "verified":
            return await self._view(domain)
        self._claim_usable(domain)
        record = f"{CHALLENGE_LABEL}.{domain.hostname}"
        found = await txt_values(self.settings, record)
        if domain.verification_token not in found:
            raise ConflictError(
                f"TXT record {record} does not hold the verification value; found "
                + (", ".join(repr(v) for v in found) if found else "no TXT record"),
                details={"record": record, "expected": domain.verification_token, "found": found},
            )
        domain = await self.repo.domain(domain_id, for_update=True)
        self._require_version(domain)
        if domain.status == "verified":
            return await self._view(domain)
        self._claim_usable(domain)
        winner = await self.repo.hostname_holder(domain.hostname)
        if winner is not None and winner[1] != "destroyed":
            domain.status = "superseded"
            self._claim_usable(domain)
        elif winner is not None:  # verified once for an instance since destroyed: it holds nothing
            await self.session.delete(winner[0])
            await self.session.flush()
        domain.status, domain.verified_at = "verified", utc_now()
        domain.updated_at = utc_now()
        domain.version += 1
        await self.session.flush()  # the partial unique index refuses a second verified claim: 409
        await self.repo.supersede_claims(domain.hostname, domain.id)
        await append_event(
            self.session,
            tenant_id=domain.tenant_id,
            instance_id=domain.instance_id,
            type="domain.verified",
            data={"domain_id": domain.id, "hostname": domain.hostname},
        )
        await self._changed(await self.instances.get(domain.instance_id))
        return await self._view(domain)

    async def request_certificate(self, domain_id: str) -> tuple[schemas.Certificate, int]:
        """Ask for a certificate (or a renewal now): the certificate, and the domain's version,
        which moves when the request changes what the issuer does."""
        domain = await self.repo.domain(domain_id, for_update=True)
        self._require_version(domain)
        self._audit(domain.id, domain.tenant_id, hostname=domain.hostname)
        if domain.status != "verified":
            raise InvalidState(
                f"domain {domain.hostname} is {domain.status}: verify it before asking for a certificate",
                details={"state": domain.status},
            )
        now = utc_now()
        certificate = await self.repo.certificate(domain.id, for_update=True)
        if certificate is None:
            certificate = Certificate(
                id=new_id("cert"),
                tenant_id=domain.tenant_id,
                domain_id=domain.id,
                status="pending",
                attempts=0,
                next_attempt_at=now,
                created_at=now,
                updated_at=now,
            )
            self.session.add(certificate)
            await self.session.flush()
            domain.version += 1
        elif certificate.status not in ("pending", "renewing"):
            certificate.status = "renewing" if certificate.chain_pem else "pending"
            certificate.attempts, certificate.error = 0, None
            certificate.next_attempt_at = certificate.updated_at = now
            domain.version += 1
        return to_certificate(certificate), domain.version

    async def delete(self, domain_id: str) -> None:
        domain = await self.repo.domain(domain_id)
        instance = await InstanceService(self.context).locked(domain.instance_id)
        domain = await self.repo.domain(domain_id, for_update=True)
        self._require_version(domain)
        self._audit(domain.id, domain.tenant_id, hostname=domain.hostname)
        certificate = await self.repo.certificate(domain.id)
        if certificate is not None:
            await self.session.delete(certificate)
        if domain.status == "verified":
            await self._changed(instance)
        await self.session.delete(domain)


MIN_IDLE_TIMEOUT_SECONDS = 10
MAX_IDLE_TIMEOUT_SECONDS = 30 * 86400


def to_traffic(instance: Instance, traffic: InstanceTraffic | None) -> schemas.InstanceTraffic:
    return schemas.InstanceTraffic(
        instance_id=instance.id,
        state=instance.state,
        last_request_at=traffic.last_request_at if traffic else None,
        idle_timeout_seconds=traffic.idle_timeout_seconds if traffic else None,
        slept_at=traffic.slept_at if traffic else None,
        woken_at=traffic.woken_at if traffic else None,
    )


class SleepService(_NetworkService):
    """An instance's traffic as the router reports it, its idle policy, and putting it to sleep
    (``network.sleep``); a request through the router wakes it."""

    async def traffic(self, instance_id: str) -> schemas.InstanceTraffic:
        instance = await self.instances.get(instance_id)
        return to_traffic(instance, await self.session.get(InstanceTraffic, instance.id))

    async def set_idle_policy(self, instance_id: str, data: schemas.IdlePolicy) -> schemas.InstanceTraffic:
        instance = await InstanceService(self.context).locked(instance_id)
        seconds: int | None = None
        if data.idle_timeout is not None:
            parsed = parse_duration_input("idle_timeout", data.idle_timeout)
            if not MIN_IDLE_TIMEOUT_SECONDS <= parsed <= MAX_IDLE_TIMEOUT_SECONDS:
                raise InvalidInput(
                    f"idle_timeout must be from {MIN_IDLE_TIMEOUT_SECONDS}s to 30d",
                    details={"idle_timeout": data.idle_timeout},
                )
            seconds = int(parsed)
        if instance.state in ("destroying", "destroyed"):
            raise InvalidState(
                f"cannot set the idle policy of an instance that is {instance.state}",
                details={"state": instance.state},
            )
        traffic = await traffic_row(self.session, instance, for_update=True)
        traffic.idle_timeout_seconds = seconds
        traffic.policy_set_at = utc_now()
        self._audit(instance.id, instance.tenant_id, idle_timeout_seconds=seconds)
        return to_traffic(instance, traffic)

    async def sleep(self, instance_id: str) -> schemas.InstanceTraffic:
        instance = await InstanceService(self.context).locked(instance_id)
        await put_to_sleep(self.session, instance, reason="asked through the API")
        self._audit(instance.id, instance.tenant_id)
        return to_traffic(instance, await traffic_row(self.session, instance))
