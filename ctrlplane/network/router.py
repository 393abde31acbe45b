"""The router: the database's view of traffic, pushed to Caddy.

``load_state`` reads every live instance with its hostnames (the default one,
``<instance>.<tenant-slug>.<CTRLPLANE_ROUTER_BASE_DOMAIN>``, and its verified domains), routes,
upstreams in rotation, pending ACME challenges and issued certificates. ``Router.sync`` builds the
Caddy configuration from it (``caddy.caddy_config``) and loads it when it changed, or when
``CTRLPLANE_ROUTER_SYNC_INTERVAL_SECONDS`` passed since the last push, so a Caddy that restarted
empty is whole again within one interval. Pushes are serialised and always read the database afresh,
so a slow push can never overwrite a newer one. With ``CTRLPLANE_ROUTER=none`` nothing is pushed.
Each read also refreshes ``hosts`` (hostname → instance), which the access-log sink attributes
requests with.

``config_loads_reset_connections`` says whether this host's kernel lets a configuration load reset
new client connections (``net.ipv4.tcp_migrate_req``, see its docstring); the router logs it once
when it starts.
"""

from __future__ import annotations

import asyncio
import ipaddress
import secrets
import sys
import time
from collections import defaultdict
from collections.abc import Collection, Sequence
from pathlib import Path

import httpx
import msgspec
import structlog
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane import httpclients
from ctrlplane.db import Database
from ctrlplane.instances.models import Instance
from ctrlplane.network.access import Destination, HostTable
from ctrlplane.network.caddy import (
    CaddyAdmin,
    Challenge,
    LoadedCertificate,
    RouterOptions,
    RouterState,
    RouteRule,
    RouterUnavailable,
    Site,
    UpstreamTarget,
    caddy_config,
    encode,
)
from ctrlplane.network.keys import open_private_key
from ctrlplane.network.models import Certificate, Domain, InstanceTraffic, Route, Upstream
from ctrlplane.provisioning.contract import HttpRoute
from ctrlplane.settings import Settings
from ctrlplane.tenants.models import Tenant

log = structlog.get_logger("ctrlplane.router")

PROBE_TIMEOUT_SECONDS = 2.0
DRAIN_POLL_SECONDS = 0.02
TCP_MIGRATE_REQ = Path("/proc/sys/net/ipv4/tcp_migrate_req")
SERVED_STATES = ("provisioning", "starting", "running", "stopping", "stopped", "failed", "sleeping")


def default_hostname(settings: Settings, instance_name: str, tenant_slug: str) -> str:
    return f"{instance_name}.{tenant_slug}.{settings.router_base_domain}".lower()


def router_url(settings: Settings, hostname: str) -> str:
    """The URL a client reaches ``hostname`` at through the router (its HTTP listener's port)."""
    _, _, raw = settings.router_http_listen.rpartition(":")
    port = int(raw) if raw.isdigit() else 80
    return f"http://{hostname}" + ("" if port == 80 else f":{port}")


def http_routes(default_host: str, verified_hosts: Sequence[str], routes: Sequence[Route]) -> tuple[HttpRoute, ...]:
    """The instance's traffic as host/path rules for a runtime that serves it itself (Kubernetes'
    Ingress): every path of its routes (for ``/``, its first port when no route names it) on its
    default hostname and on each *verified* domain, the rule Caddy follows here too. A rule names
    one port, so of the routes sharing a path the heaviest wins (ties: the oldest) and one of weight
    0 serves nothing; ``strip_prefix`` is the router's own. TLS is asked for on verified domains
    only, the ones ctrlplane obtains certificates for."""
    best: dict[str, Route] = {}
    for route in sorted(routes, key=lambda r: r.id):
        if route.weight > 0 and (route.path not in best or route.weight > best[route.path].weight):
            best[route.path] = route
    paths: list[tuple[str, int | None]] = [(path, route.port) for path, route in sorted(best.items())]
    if not any(route.path == "/" for route in routes):
        paths.insert(0, ("/", None))
    hosts = [(default_host, False), *((host, True) for host in sorted(set(verified_hosts)))]
    return tuple(
        HttpRoute(host=host, path=path, container_port=port, tls=tls) for host, tls in hosts for path, port in paths
    )


async def http_routes_of(
    session: AsyncSession, settings: Settings, *, instance_id: str, instance_name: str, tenant_slug: str
) -> tuple[HttpRoute, ...]:
    """``http_routes`` of the instance on its default hostname and verified domains, read now (for
    its workload spec: ``operations/spec.py``)."""
    routes = (await session.execute(select(Route).where(Route.instance_id == instance_id))).scalars()
    verified = (
        await session.execute(
            select(Domain.hostname).where(Domain.instance_id == instance_id, Domain.status == "verified")
        )
    ).scalars()
    host = default_hostname(settings, instance_name, tenant_slug)
    return http_routes(host, list(verified), list(routes))


async def load_state(session: AsyncSession, settings: Settings) -> RouterState:
    rows = (
        await session.execute(
            select(
                Instance.id,
                Instance.tenant_id,
                Instance.name,
                Instance.ports,
                Instance.state,
                Tenant.slug,
                InstanceTraffic.slept_at,
                InstanceTraffic.idle_timeout_seconds,
            )
            .join(Tenant, Tenant.id == Instance.tenant_id)
            .outerjoin(InstanceTraffic, InstanceTraffic.instance_id == Instance.id)
            .where(Instance.state.in_(SERVED_STATES))
            .order_by(Instance.id)
        )
    ).all()
    live = {row.id for row in rows}
    upstreams: dict[str, list[UpstreamTarget]] = defaultdict(list)
    for upstream in (await session.execute(select(Upstream).order_by(Upstream.generation, Upstream.replica))).scalars():
        if upstream.instance_id in live:
            upstreams[upstream.instance_id].append(
                UpstreamTarget(
                    container_port=upstream.container_port,
                    dial=f"{upstream.host}:{upstream.host_port}",
                    weight=upstream.weight,
                    generation=upstream.generation,
                    replica=upstream.replica,
                )
            )
    routes: dict[str, list[RouteRule]] = defaultdict(list)
    for route in (await session.execute(select(Route).order_by(Route.id))).scalars():
        routes[route.instance_id].append(
            RouteRule(path=route.path, port=route.port, weight=route.weight, strip_prefix=route.strip_prefix)
        )
    domains: dict[str, list[str]] = defaultdict(list)
    for domain in (
        await session.execute(select(Domain).where(Domain.status == "verified").order_by(Domain.hostname))
    ).scalars():
        if domain.instance_id in live:
            domains[domain.instance_id].append(domain.hostname)
    certificates: list[LoadedCertificate] = []
    challenges: list[Challenge] = []
    with_tls: set[str] = set()
    for certificate, hostname, instance_id in (
        await session.execute(
            select(Certificate, Domain.hostname, Domain.instance_id)
            .join(Domain, Domain.id == Certificate.domain_id)
            .where(Domain.status == "verified")
        )
    ).all():
        if instance_id not in live:
            continue
        if certificate.challenge_token and certificate.challenge_validation:
            challenges.append(
                Challenge(
                    hostname=hostname, token=certificate.challenge_token, validation=certificate.challenge_validation
                )
            )
        if certificate.chain_pem and certificate.key_sealed:
            key = open_private_key(settings, certificate.key_sealed).decode()
            certificates.append(LoadedCertificate(hostname=hostname, chain_pem=certificate.chain_pem, key_pem=key))
            with_tls.add(hostname)
    sites = tuple(
        Site(
            instance_id=row.id,
            hostnames=(default_hostname(settings, row.name, row.slug), *domains[row.id]),
            https_hostnames=tuple(h for h in domains[row.id] if h in with_tls),
            ports=tuple(int(p["container_port"]) for p in row.ports if p.get("protocol", "tcp") == "tcp"),
            routes=tuple(routes[row.id]),
            upstreams=tuple(upstreams[row.id]),
            tenant_id=row.tenant_id,
            wake=row.state == "sleeping" or row.slept_at is not None or row.idle_timeout_seconds is not None,
        )
        for row in rows
    )
    return RouterState(sites=sites, challenges=tuple(challenges), certificates=tuple(certificates))


async def _answers(client: httpx.AsyncClient, dial: str) -> bool:
    try:
        await client.get(f"http://{dial}/")
    except httpx.HTTPError:
        return False
    return True


def _on_this_host(admin_address: str) -> bool:
    if admin_address.startswith("unix/"):
        return True
    host = httpx.URL(admin_address if "://" in admin_address else f"http://{admin_address}").host
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def config_loads_reset_connections(admin_address: str, sysctl: Path = TCP_MIGRATE_REQ) -> str | None:
    """Why a configuration load can reset new client connections on this host, or None.

    Caddy (2.6 and later, on Linux) binds a new listening socket with ``SO_REUSEPORT`` for every
    configuration it loads, then closes the old one. A connection whose handshake the kernel
    completed on the old socket, and that Caddy had not accepted yet, is reset when it closes: the
    client sent its request and gets no answer. ``net.ipv4.tcp_migrate_req=1`` (Linux 5.14) makes
    the kernel hand those connections to the new socket instead. Every change of the rotation is a
    load, so without it a deploy can cost a request under load. Checked only when Caddy's admin
    endpoint is on loopback or a unix socket (Caddy in this network namespace, presumably)."""
    if sys.platform != "linux" or not _on_this_host(admin_address):
        return None
    try:
        value = sysctl.read_text().strip()
    except OSError:
        return (
            "this kernel has no net.ipv4.tcp_migrate_req (Linux 5.14 and later have it): "
            "each Caddy configuration load can reset client connections not yet accepted"
        )
    if value != "1":
        return (
            f"net.ipv4.tcp_migrate_req is {value}: each Caddy configuration load can reset client "
            "connections not yet accepted; set it to 1 where Caddy runs (docs/network.md)"
        )
    return None


class Router:
    def __init__(self, settings: Settings, db: Database) -> None:
        self.settings = settings
        self.db = db
        self.admin = CaddyAdmin(settings.router_admin_address)
        self.options = RouterOptions(
            admin_address=settings.router_admin_address,
            http_listen=settings.router_http_listen,
            https_listen=settings.router_https_listen,
            try_duration_seconds=settings.router_try_duration_seconds,
            fail_seconds=settings.router_fail_seconds,
        )
        self.hosts = HostTable()
        self.wake_secret = secrets.token_urlsafe(32)
        self._lock = asyncio.Lock()
        self._failing = False
        self._answered: set[tuple[str, str]] = set()
        self._last: bytes | None = None
        self._pushed_at = 0.0
        self._draining: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.settings.router == "caddy"

    def listening(self, *, access_log_address: str | None, wake_address: str | None) -> None:
        """Where this process's access-log sink and wake listener took their ports."""
        self.options = msgspec.structs.replace(
            self.options,
            access_log_address=access_log_address,
            wake_address=wake_address,
            wake_secret=self.wake_secret,
        )

    async def desired(self) -> bytes:
        async with self.db.read() as session:
            state = await load_state(session, self.settings)
        now = time.monotonic()
        self._draining = {dial: until for dial, until in self._draining.items() if until > now}
        state = msgspec.structs.replace(state, draining=tuple(sorted(self._draining)))
        self.hosts.replace(
            {
                host: Destination(
                    instance_id=site.instance_id,
                    tenant_id=site.tenant_id,
                    routes=tuple(sorted({rule.path for rule in site.routes})),
                    upstreams={u.dial: (u.generation, u.replica) for u in site.upstreams},
                )
                for site in state.sites
                for host in site.hostnames
            }
        )
        return encode(caddy_config(await self._answering(state), self.options))

    async def _answering(self, state: RouterState) -> RouterState:
        """``state`` with only the upstreams that have answered HTTP at least once.

        A replica enters the rotation when the provider reports it running, which can be before
        its process listens; sending it requests then fails them (and a request that fails while
        Caddy reloads is not retried). So an upstream the router has not seen answer yet is probed
        (any HTTP answer counts) and left out until it answers; the next pass tries again."""
        wanted = {(site.instance_id, u.dial) for site in state.sites for u in site.upstreams}
        self._answered &= wanted
        unknown = sorted(wanted - self._answered)
        if unknown:
            async with httpclients.client(timeout=PROBE_TIMEOUT_SECONDS) as client:
                answers = await asyncio.gather(*(_answers(client, dial) for _, dial in unknown))
            self._answered |= {key for key, answered in zip(unknown, answers, strict=True) if answered}
        return msgspec.structs.replace(
            state,
            sites=tuple(
                msgspec.structs.replace(
                    site,
                    upstreams=tuple(u for u in site.upstreams if (site.instance_id, u.dial) in self._answered),
                )
                for site in state.sites
            ),
        )

    def hold(self, dials: Collection[str]) -> None:
        """Keep ``dials`` in Caddy's configuration (out of rotation) for at most
        ``CTRLPLANE_ROUTER_DRAIN_SECONDS``, so that ``drained`` can see their requests in flight.
        Called before their rows leave the rotation, so that no push in between forgets them."""
        if self.enabled:
            until = time.monotonic() + self.settings.router_drain_seconds
            self._draining.update({dial: max(until, self._draining.get(dial, 0.0)) for dial in dials})

    async def drained(self, dials: Collection[str]) -> None:
        """Wait until Caddy counts no request in flight to any of ``dials`` (held by ``hold`` and
        pushed since), or until their hold ends; then stop holding them. A dial Caddy does not
        list (its admin API is down, or a push from elsewhere dropped it) cannot be observed, so
        it is waited for until the hold ends: never shorter than the bound when in doubt."""
        if not self.enabled or not dials:
            return
        until = max(self._draining.get(dial, 0.0) for dial in dials)
        try:
            while True:
                try:
                    counts = await self.admin.in_flight()
                except RouterUnavailable:
                    counts = {}
                if all(counts.get(dial) == 0 for dial in dials):
                    return
                left = until - time.monotonic()
                if left <= 0:
                    log.info("router_drain_bound_reached", upstreams=sorted(dials), in_flight=counts)
                    return
                await asyncio.sleep(min(DRAIN_POLL_SECONDS, left))
        finally:
            for dial in dials:
                self._draining.pop(dial, None)

    async def sync(self, *, force: bool = False) -> bool:
        """Push the configuration if it changed (or always, with ``force``); True if pushed.
        Raises ``RouterUnavailable`` when Caddy does not answer or refuses it."""
        if not self.enabled:
            return False
        async with self._lock:
            body = await self.desired()
            due = time.monotonic() - self._pushed_at >= self.settings.router_sync_interval_seconds
            if body == self._last and not force and not due:
                return False
            self._last = None
            await self.admin.load(body)
            self._last, self._pushed_at = body, time.monotonic()
            return True

    async def sync_quietly(self) -> None:
        """Push now; a router that does not answer is logged, and the loop pushes again later."""
        try:
            await self.sync()
        except Exception as exc:  # noqa: BLE001 - whatever failed, the loop pushes again later
            if not self._failing:
                log.warning("router_sync_failed", error=str(exc))
            self._failing = True
        else:
            if self._failing:
                log.info("router_sync_recovered")
            self._failing = False
