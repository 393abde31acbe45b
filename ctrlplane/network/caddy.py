"""The router's whole configuration as a pure function of what the database says, and the client
that hands it to Caddy's admin API.

``caddy_config(state, options)`` turns a ``RouterState`` (every site: its hostnames, routes and the
upstreams in rotation; pending ACME challenges; loaded certificates) into the JSON document Caddy
loads with ``POST /load``. Nothing else is ever configured by hand, so a Caddy restarted empty is
whole again after the next push.

Design points:

* **Automatic HTTPS is off** on both servers: ctrlplane obtains certificates itself (ACME HTTP-01,
  see ``acme.py``) and loads them as PEM (``tls.certificates.load_pem``); Caddy never talks to a CA,
  and its local CA never installs a root into the system's trust store.
* **Weights by repetition.** Caddy 2.6 has no weighted policy, so an upstream appears in the
  ``round_robin`` list as many times as its share needs (smallest exact integer ratio, at most 100
  entries), interleaved smoothly.
* **Failures do not reach clients.** ``try_duration`` keeps retrying other upstreams while one
  refuses connections, ``retry_match`` lets GET and HEAD be retried even after the request was sent,
  and passive health checks take a failing upstream out for ``fail_seconds``. That last one
  matters beyond saving a retry: a request still in flight in the old configuration while Caddy
  reloads is not retried at all (the old handler's context is cancelled), so an upstream that died
  must already be marked down when the reload that drops it comes.
* **Request reporting.** With an access-log sink (``RouterOptions.access_log_address``), both
  servers log every request as JSON to it through Caddy's ``net`` log writer (``access.py``), and
  Caddy's default log leaves those lines out. A second logger sends the reverse proxy's DEBUG
  lines there too (its ``upstream roundtrip`` line names the upstream, which the access log does
  not), so each replica's own answers are counted; Caddy's default log stays at INFO for them.
* **Wake on request.** A site marked ``wake`` (a sleeping instance, or one that slept before) with
  no replica in rotation sends every request to ctrlplane's wake listener instead of answering 503:
  the instance's id, an HMAC of it under the router's wake secret and the original URI travel in
  ``X-Ctrlplane-Wake-*`` request headers (set by Caddy, so a client cannot forge them), and the
  listener starts the instance and answers with the app's own response (``wake.py``).
* The admin endpoint stays where it is (``admin.listen``) and the config is not persisted to
  Caddy's disk (``admin.config.persist: false``), so certificate keys live only in memory there.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Sequence
from fractions import Fraction
from functools import reduce
from math import gcd
from typing import Any

import httpx
import msgspec

from ctrlplane import httpclients
from ctrlplane.errors import Unavailable

MAX_ENTRIES = 100
ACME_CHALLENGE_PREFIX = "/.well-known/acme-challenge/"


class RouteRule(msgspec.Struct, frozen=True):
    path: str
    port: int
    weight: int
    strip_prefix: bool


class UpstreamTarget(msgspec.Struct, frozen=True):
    container_port: int
    dial: str
    weight: int = 1
    generation: int = 0
    replica: int = 0


class Site(msgspec.Struct, frozen=True):
    """One instance as the router sees it."""

    instance_id: str
    hostnames: tuple[str, ...]
    https_hostnames: tuple[str, ...]
    ports: tuple[int, ...]
    routes: tuple[RouteRule, ...]
    upstreams: tuple[UpstreamTarget, ...]
    tenant_id: str = ""
    wake: bool = False
    """With no replica in rotation, send requests to the wake listener (the instance sleeps)."""


class Challenge(msgspec.Struct, frozen=True):
    hostname: str
    token: str
    validation: str


class LoadedCertificate(msgspec.Struct, frozen=True):
    hostname: str
    chain_pem: str
    key_pem: str


class RouterState(msgspec.Struct, frozen=True):
    sites: tuple[Site, ...] = ()
    challenges: tuple[Challenge, ...] = ()
    certificates: tuple[LoadedCertificate, ...] = ()
    draining: tuple[str, ...] = ()
    """Upstream addresses (``host:port``) out of rotation whose requests in flight are being
    waited for: listed in a route no request reaches, so that Caddy keeps counting them."""


class RouterOptions(msgspec.Struct, frozen=True):
    admin_address: str
    http_listen: str
    https_listen: str
    try_duration_seconds: float = 5.0
    fail_seconds: float = 5.0
    access_log_address: str | None = None
    wake_address: str | None = None
    wake_secret: str = ""


WAKE_INSTANCE_HEADER = "X-Ctrlplane-Wake-Instance"
WAKE_TOKEN_HEADER = "X-Ctrlplane-Wake-Token"
WAKE_URI_HEADER = "X-Ctrlplane-Wake-Uri"
ACCESS_LOGGER = "ctrlplane_access"
UPSTREAM_LOGGER = "ctrlplane_upstreams"
PROXY_LOGGER = "http.handlers.reverse_proxy"


def wake_token(secret: str, instance_id: str) -> str:
    return hmac.new(secret.encode(), instance_id.encode(), hashlib.sha256).hexdigest()


def _wake(site: Site, options: RouterOptions) -> dict[str, Any]:
    assert options.wake_address is not None
    return {
        "handle": [
            {
                "handler": "headers",
                "request": {
                    "set": {
                        WAKE_INSTANCE_HEADER: [site.instance_id],
                        WAKE_TOKEN_HEADER: [wake_token(options.wake_secret, site.instance_id)],
                        WAKE_URI_HEADER: ["{http.request.uri}"],
                    }
                },
            },
            {"handler": "reverse_proxy", "upstreams": [{"dial": options.wake_address}]},
        ],
        "terminal": True,
    }


def weighted_sequence(shares: Sequence[tuple[str, Fraction]]) -> list[str]:
    """Dial addresses repeated in proportion to their shares (zero shares dropped), interleaved by
    smooth weighted round robin so that consecutive requests spread out."""
    positive = [(dial, share) for dial, share in shares if share > 0]
    if not positive:
        return []
    denominator = reduce(lambda a, b: a * b // gcd(a, b), (s.denominator for _, s in positive), 1)
    counts = [int(share * denominator) for _, share in positive]
    divisor = reduce(gcd, counts)
    counts = [c // divisor for c in counts]
    if sum(counts) > MAX_ENTRIES:
        total = sum(share for _, share in positive)
        counts = [max(1, round(share / total * MAX_ENTRIES)) for _, share in positive]
        divisor = reduce(gcd, counts)
        counts = [c // divisor for c in counts]
    current = [0] * len(counts)
    total_count = sum(counts)
    sequence = []
    for _ in range(total_count):
        for i, count in enumerate(counts):
            current[i] += count
        best = max(range(len(counts)), key=lambda i: (current[i], -i))
        current[best] -= total_count
        sequence.append(positive[best][0])
    return sequence


def _path_matcher(path: str) -> list[str]:
    return [path, path.rstrip("/") + "/*"]


def _proxy(dials: list[str], options: RouterOptions) -> dict[str, Any]:
    return {
        "handler": "reverse_proxy",
        "upstreams": [{"dial": dial} for dial in dials],
        "load_balancing": {
            "selection_policy": {"policy": "round_robin"},
            "try_duration": f"{options.try_duration_seconds:g}s",
            "try_interval": "50ms",
            "retry_match": [{"method": ["GET", "HEAD", "OPTIONS"]}],
        },
        "health_checks": {"passive": {"fail_duration": f"{options.fail_seconds:g}s", "max_fails": 1}},
    }


def _unavailable(message: str) -> dict[str, Any]:
    return {
        "handler": "static_response",
        "status_code": 503,
        "headers": {"Content-Type": ["text/plain; charset=utf-8"], "Retry-After": ["5"]},
        "body": message + "\n",
    }


def _site_routes(site: Site, options: RouterOptions) -> list[dict[str, Any]]:
    if site.wake and options.wake_address and not any(u.weight > 0 for u in site.upstreams):
        return [_wake(site, options)]
    by_port: dict[int, list[UpstreamTarget]] = {}
    for upstream in site.upstreams:
        by_port.setdefault(upstream.container_port, []).append(upstream)
    groups: dict[str, list[RouteRule]] = {}
    for rule in site.routes:
        groups.setdefault(rule.path, []).append(rule)
    if "/" not in groups and site.ports:
        groups["/"] = [RouteRule(path="/", port=site.ports[0], weight=100, strip_prefix=False)]
    routes: list[dict[str, Any]] = []
    for path in sorted(groups, key=lambda p: (-len(p), p)):
        rules = [r for r in groups[path] if r.weight > 0 and any(u.weight > 0 for u in by_port.get(r.port, []))]
        total = sum(r.weight for r in rules)
        shares: list[tuple[str, Fraction]] = []
        for rule in rules:
            targets = [u for u in by_port[rule.port] if u.weight > 0]
            target_total = sum(u.weight for u in targets)
            shares += [(u.dial, Fraction(rule.weight, total) * Fraction(u.weight, target_total)) for u in targets]
        handle: list[dict[str, Any]] = []
        if groups[path][0].strip_prefix and path != "/":
            handle.append({"handler": "rewrite", "strip_path_prefix": path})
        dials = weighted_sequence(shares)
        handle.append(_proxy(dials, options) if dials else _unavailable("no replica of this instance is serving"))
        route: dict[str, Any] = {"handle": handle, "terminal": True}
        if path != "/":
            route["match"] = [{"path": _path_matcher(path)}]
        routes.append(route)
    if not routes:
        routes.append({"handle": [_unavailable("this instance exposes no port")], "terminal": True})
    return routes


DRAINING_HOST = "draining.ctrlplane.invalid"


def _draining(dials: Sequence[str]) -> dict[str, Any]:
    """A route after the catch-all (so no request reaches it, and its host matcher could match none
    anyway) that keeps ``dials`` in Caddy's upstream pool. Caddy forgets an upstream as soon as no
    loaded route names it, requests still in flight to it included; kept here, its ``num_requests``
    in ``/reverse_proxy/upstreams`` goes on counting them down (``CaddyAdmin.in_flight``)."""
    return {
        "match": [{"host": [DRAINING_HOST]}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": dial} for dial in sorted(dials)]}],
    }


def _not_found() -> dict[str, Any]:
    return {
        "handle": [
            {
                "handler": "static_response",
                "status_code": 404,
                "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                "body": "no instance serves this hostname\n",
            }
        ]
    }


def _host_route(hostnames: Sequence[str], routes: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "match": [{"host": list(hostnames)}],
        "handle": [{"handler": "subroute", "routes": routes}],
        "terminal": True,
    }


def caddy_config(state: RouterState, options: RouterOptions) -> dict[str, Any]:
    """The complete Caddy configuration for ``state``."""
    http_routes: list[dict[str, Any]] = []
    for challenge in sorted(state.challenges, key=lambda c: (c.hostname, c.token)):
        http_routes.append(
            {
                "match": [{"host": [challenge.hostname], "path": [ACME_CHALLENGE_PREFIX + challenge.token]}],
                "handle": [
                    {
                        "handler": "static_response",
                        "status_code": 200,
                        "headers": {"Content-Type": ["application/octet-stream"]},
                        "body": challenge.validation,
                    }
                ],
                "terminal": True,
            }
        )
    https_routes: list[dict[str, Any]] = []
    for site in sorted(state.sites, key=lambda s: s.instance_id):
        routes = _site_routes(site, options)
        if site.hostnames:
            http_routes.append(_host_route(site.hostnames, routes))
        if site.https_hostnames:
            https_routes.append(_host_route(site.https_hostnames, routes))
    http_routes.append(_not_found())
    if state.draining:
        http_routes.append(_draining(state.draining))
    logs = {"logs": {"default_logger_name": ACCESS_LOGGER}} if options.access_log_address else {}
    servers: dict[str, Any] = {
        "ctrlplane_http": {
            "listen": [options.http_listen],
            "automatic_https": {"disable": True},
            "protocols": ["h1", "h2"],
            "routes": http_routes,
            **logs,
        }
    }
    apps: dict[str, Any] = {
        "pki": {"certificate_authorities": {"local": {"install_trust": False}}},
        "http": {"servers": servers},
    }
    if state.certificates:
        https_routes.append(_not_found())
        servers["ctrlplane_https"] = {
            "listen": [options.https_listen],
            "automatic_https": {"disable": True},
            "protocols": ["h1", "h2"],
            "tls_connection_policies": [{}],
            "routes": https_routes,
            **logs,
        }
        apps["tls"] = {
            "certificates": {
                "load_pem": [
                    {"certificate": cert.chain_pem, "key": cert.key_pem, "tags": [cert.hostname]}
                    for cert in sorted(state.certificates, key=lambda c: c.hostname)
                ]
            }
        }
    config: dict[str, Any] = {"admin": {"listen": options.admin_address, "config": {"persist": False}}, "apps": apps}
    if options.access_log_address:
        access = f"http.log.access.{ACCESS_LOGGER}"
        writer = {"output": "net", "address": f"tcp/{options.access_log_address}", "dial_timeout": "2s"}
        config["logging"] = {
            "logs": {
                ACCESS_LOGGER: {"writer": writer, "encoder": {"format": "json"}, "include": [access]},
                UPSTREAM_LOGGER: {
                    "writer": writer,
                    "encoder": {"format": "json"},
                    "level": "DEBUG",
                    "include": [PROXY_LOGGER],
                },
                "default": {"exclude": [access]},
            }
        }
    return config


def encode(config: dict[str, Any]) -> bytes:
    return json.dumps(config, sort_keys=True, separators=(",", ":")).encode()


class RouterUnavailable(Unavailable):
    code = "router_unavailable"


class _UpstreamCount(msgspec.Struct):
    address: str
    num_requests: int


class CaddyAdmin:
    """Caddy's admin API: ``POST /load`` replaces the whole configuration (Caddy keeps serving with
    the old one if the new one is refused, and skips the reload when nothing changed)."""

    def __init__(self, address: str, *, timeout: float = 10.0) -> None:
        self.base_url = address if "://" in address else f"http://{address}"
        self.timeout = timeout

    async def load(self, body: bytes) -> None:
        try:
            async with httpclients.client(local=False, base_url=self.base_url, timeout=self.timeout) as client:
                response = await client.post("/load", content=body, headers={"Content-Type": "application/json"})
        except httpx.HTTPError as exc:
            raise RouterUnavailable(f"Caddy's admin API at {self.base_url} does not answer: {exc}") from exc
        if response.status_code >= 400:
            raise RouterUnavailable(f"Caddy refused the configuration ({response.status_code}): {response.text[:500]}")

    async def in_flight(self) -> dict[str, int]:
        """Requests in flight per upstream address Caddy's loaded configuration names."""
        try:
            async with httpclients.client(local=False, base_url=self.base_url, timeout=self.timeout) as client:
                response = await client.get("/reverse_proxy/upstreams")
            response.raise_for_status()
            listed = msgspec.json.decode(response.content, type=list[_UpstreamCount])
        except (httpx.HTTPError, msgspec.DecodeError) as exc:
            raise RouterUnavailable(f"Caddy's admin API at {self.base_url} did not list its upstreams: {exc}") from exc
        return {upstream.address: upstream.num_requests for upstream in listed}

    async def config(self) -> Any:
        try:
            async with httpclients.client(local=False, base_url=self.base_url, timeout=self.timeout) as client:
                response = await client.get("/config/")
        except httpx.HTTPError as exc:
            raise RouterUnavailable(f"Caddy's admin API at {self.base_url} does not answer: {exc}") from exc
        return response.json()
