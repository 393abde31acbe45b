"""The authorization matrix: every /v1 route in the OpenAPI document against every kind of caller
that must be refused, and proof that the refusals changed nothing.

``ROUTES`` names every (method, path) the API serves, with a valid request for it. A route added to
the app without an entry here fails ``test_matrix_covers_every_route_in_the_openapi_document``, and
the generic cases below still walk it straight from the OpenAPI document. Every failure message
names the route and the case that leaked.

This is the deterministic cross-tenant probe of the whole API (issue 16, item 12): tenant B's
credentials at every route naming one of tenant A's objects, in its path
(``test_another_tenants_objects_are_not_found``) or its body
(``test_another_tenants_objects_named_in_a_body_are_not_found``). Schemathesis' two-tenant stateful
run (test_fuzz.py) adds random sequences on top, within its budget.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from sqlalchemy import text

from ctrlplane.db import Database
from ctrlplane.models import metadata
from ctrlplane.nodes.contract import public_key_text
from ctrlplane.provisioning.contract import Resources, WorkloadSpec
from ctrlplane.telemetry.otlp import instance_token
from tests.conftest import Api, Tokens, bearer

MUTATING = frozenset({"POST", "PUT", "PATCH", "DELETE"})
UNSNAPSHOTTED_TABLES = frozenset({"audit_entries", "audit_chains", "idempotency_records"})
VOLATILE_COLUMNS = {"api_keys": frozenset({"last_used_at"})}
"""Columns a refused request may still change: a key that authenticates records its last use."""

NOW = "2026-12-05T10:00:00Z"
MATRIX_NODE_KEY = public_key_text(X25519PrivateKey.generate())

QUOTA = {
    "max_instances": 7,
    "max_cpu_millis": 3000,
    "max_memory_mb": 4096,
    "max_domains": 1,
    "max_routes": 5,
    "max_secrets": 9,
}


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    body: Any = None
    """The JSON body: an object (``"{name}"`` values are filled in), or a list sent as it is."""
    query: dict[str, str] = field(default_factory=dict)
    system_admin: bool = False
    instance_state: str | None = None
    """For the authorized control request: the state instance A must be in for it to be allowed."""
    deployment_state: str | None = None
    """For the authorized control request: the state every deployment of instance A must be in."""
    instance_token: bool = False
    """Authenticated by instance A's OTLP token instead of tenant credentials, which it refuses (401)."""
    domain_state: str | None = None
    """For the authorized control request: the status domain A must have."""
    node_auth: str | None = None
    """``credential``: a node route (node A's credential; tenant and admin credentials get 401, as
    there is no tenant object to hide). ``bootstrap``: authenticated by the bootstrap token in the
    body (the matrix's is never issued; the control sends a fresh one)."""
    path_values: dict[str, str] = field(default_factory=dict)
    """Path parameters named otherwise than the World's defaults (``{key}`` of a node's secret)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.method, self.path)

    @property
    def is_admin(self) -> bool:
        return self.system_admin or self.path.startswith("/v1/admin/") or self.path == "/v1/admin"

    @property
    def mutating(self) -> bool:
        return self.method in MUTATING

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


ROUTES: list[Route] = [
    # In an order an authorized caller can run them one after another (see the last test).
    Route("GET", "/v1/keys/self"),
    Route("GET", "/v1/keys"),
    Route("POST", "/v1/keys", body={"name": "x", "roles": ["read"]}),
    Route("GET", "/v1/keys/{key_id}"),
    Route("DELETE", "/v1/keys/{key_id}"),
    Route("GET", "/v1/instances"),
    Route("POST", "/v1/instances", body={"name": "matrix-new", "image": "ctrlplane-test/busybox:1"}),
    Route("GET", "/v1/instances/{instance_id}"),
    Route("PATCH", "/v1/instances/{instance_id}", body={"name": "renamed", "labels": {"team": "x"}}),
    Route("POST", "/v1/instances/{instance_id}/scale", body={"replicas": 1}),
    Route("POST", "/v1/instances/{instance_id}/stop", instance_state="running"),
    Route("POST", "/v1/instances/{instance_id}/start", instance_state="stopped"),
    Route("POST", "/v1/instances/{instance_id}/restart", instance_state="running"),
    Route("POST", "/v1/instances/{instance_id}/suspend", body={"reason": "r"}, system_admin=True),
    Route("POST", "/v1/instances/{instance_id}/unsuspend", body={"reason": "r"}, system_admin=True),
    Route("GET", "/v1/instances/{instance_id}/events"),
    Route("GET", "/v1/instances/{instance_id}/metrics"),
    Route("GET", "/v1/instances/{instance_id}/logs"),
    Route("GET", "/v1/instances/{instance_id}/traces"),
    Route("GET", "/v1/instances/{instance_id}/resources"),
    Route("GET", "/v1/instances/{instance_id}/dashboard"),
    Route("POST", "/v1/otlp/v1/traces", body={"resourceSpans": []}, instance_token=True),
    Route("POST", "/v1/otlp/v1/metrics", body={"resourceMetrics": []}, instance_token=True),
    Route("GET", "/v1/events"),
    Route("GET", "/v1/instances/{instance_id}/releases"),
    Route("GET", "/v1/releases/{release_id}"),
    Route("POST", "/v1/instances/{instance_id}/secrets", body={"key": "MATRIX_SECRET", "value": "s3cr3t"}),
    Route("GET", "/v1/instances/{instance_id}/secrets"),
    Route("GET", "/v1/instances/{instance_id}/secrets/{key}"),
    Route("DELETE", "/v1/instances/{instance_id}/secrets/{key}"),
    Route("GET", "/v1/instances/{instance_id}/deployments"),
    Route("GET", "/v1/deployments/{deployment_id}"),
    Route("POST", "/v1/deployments/{deployment_id}/cancel", deployment_state="running"),
    Route(
        "POST",
        "/v1/instances/{instance_id}/rollback",
        body={"release_id": "{release_id}"},
        instance_state="running",
        deployment_state="cancelled",
    ),
    Route(
        "POST",
        "/v1/instances/{instance_id}/deploy",
        body={"image": "ctrlplane-test/busybox:2", "strategy": "rolling"},
        instance_state="running",
        deployment_state="cancelled",
    ),
    Route("GET", "/v1/instances/{instance_id}/health"),
    Route("GET", "/v1/instances/{instance_id}/health/checks"),
    Route(
        "POST",
        "/v1/instances/{instance_id}/health/checks",
        body={"name": "matrix-check", "type": "tcp", "target": "localhost:8080", "interval": "30s", "timeout": "5s"},
    ),
    Route("GET", "/v1/health/checks/{check_id}"),
    Route("PATCH", "/v1/health/checks/{check_id}", body={"retries": 4}),
    Route("POST", "/v1/health/checks/{check_id}/run", instance_state="running"),
    Route("DELETE", "/v1/health/checks/{check_id}"),
    Route("GET", "/v1/instances/{instance_id}/routes"),
    Route("POST", "/v1/instances/{instance_id}/routes", body={"path": "/matrix", "port": 8080}),
    Route("GET", "/v1/routes/{route_id}"),
    Route("PATCH", "/v1/routes/{route_id}", body={"weight": 50}),
    Route("DELETE", "/v1/routes/{route_id}"),
    Route("GET", "/v1/instances/{instance_id}/domains"),
    Route("POST", "/v1/instances/{instance_id}/domains", body={"hostname": "matrix-new.example.com"}),
    Route("GET", "/v1/domains/{domain_id}"),
    Route("POST", "/v1/domains/{domain_id}/verify", domain_state="verified"),
    Route("POST", "/v1/domains/{domain_id}/cert", domain_state="verified"),
    Route("DELETE", "/v1/domains/{domain_id}"),
    Route("GET", "/v1/instances/{instance_id}/traffic"),
    Route("PUT", "/v1/instances/{instance_id}/idle-policy", body={"idle_timeout": "15m"}),
    Route("POST", "/v1/instances/{instance_id}/sleep", instance_state="running", deployment_state="cancelled"),
    Route("GET", "/v1/templates"),
    Route("POST", "/v1/templates", body={"name": "matrix-new", "spec": {"image": "ctrlplane-test/busybox:1"}}),
    Route("GET", "/v1/templates/{template_id}"),
    Route("PATCH", "/v1/templates/{template_id}", body={"description": "changed"}),
    Route("GET", "/v1/environments"),
    Route("POST", "/v1/environments", body={"key": "matrix", "template": "{template_id}"}),
    Route("GET", "/v1/environments/{environment_id}"),
    Route("POST", "/v1/environments/{environment_id}/extend", body={"by": "1h"}),
    Route("POST", "/v1/environments/{environment_id}/terminate", body={"hard": False}),
    Route("DELETE", "/v1/environments/{environment_id}"),
    Route("DELETE", "/v1/templates/{template_id}"),
    Route("POST", "/v1/instances/{instance_id}/runs", body={"command": ["echo", "hi"]}, instance_state="running"),
    Route("GET", "/v1/instances/{instance_id}/runs"),
    Route("GET", "/v1/runs/{run_id}"),
    Route("GET", "/v1/runs/{run_id}/logs"),
    Route("POST", "/v1/runs/{run_id}/cancel"),
    Route(
        "POST",
        "/v1/instances/{instance_id}/jobs",
        body={"name": "matrix-job", "schedule": "0 3 * * *", "command": "echo hi"},
    ),
    Route("GET", "/v1/instances/{instance_id}/jobs"),
    Route("GET", "/v1/jobs/{job_id}"),
    Route("PATCH", "/v1/jobs/{job_id}", body={"enabled": False}),
    Route("DELETE", "/v1/jobs/{job_id}"),
    Route("GET", "/v1/webhooks"),
    Route("POST", "/v1/webhooks", body={"url": "https://hooks.example.invalid/new", "event_types": ["deploy.*"]}),
    Route("GET", "/v1/webhooks/{webhook_id}"),
    Route("PATCH", "/v1/webhooks/{webhook_id}", body={"enabled": False}),
    Route("POST", "/v1/webhooks/{webhook_id}/rotate-secret", body={"overlap": "1h"}),
    Route("POST", "/v1/webhooks/{webhook_id}/test"),
    Route("GET", "/v1/webhooks/{webhook_id}/deliveries"),
    Route("GET", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}"),
    Route("POST", "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver"),
    Route("DELETE", "/v1/webhooks/{webhook_id}"),
    Route("GET", "/v1/log-drains"),
    Route("POST", "/v1/log-drains", body={"url": "https://logs.example.invalid/new", "instance_id": "{instance_id}"}),
    Route("GET", "/v1/log-drains/{drain_id}"),
    Route("DELETE", "/v1/log-drains/{drain_id}"),
    Route("GET", "/v1/registry-credentials"),
    Route("POST", "/v1/registry-credentials", body={"registry": "ghcr.io", "username": "u", "password": "p"}),
    Route("GET", "/v1/registry-credentials/{credential_id}"),
    Route("DELETE", "/v1/registry-credentials/{credential_id}"),
    Route("GET", "/v1/admin/nodes"),
    Route("GET", "/v1/admin/nodes/{node_id}"),
    Route("GET", "/v1/admin/nodes/enrollment-tokens"),
    Route("POST", "/v1/admin/nodes/enrollment-tokens", body={"pool": "matrix", "ttl": "1h"}),
    Route("DELETE", "/v1/admin/nodes/enrollment-tokens/{token_id}"),
    Route("POST", "/v1/admin/nodes/signing-keys/rotate"),
    Route("POST", "/v1/admin/nodes/{node_id}/actions", body={"action": "matrix"}),
    Route("GET", "/v1/admin/nodes/{node_id}/executions/{execution_id}"),
    Route("POST", "/v1/admin/nodes/{node_id}/rotate-keys"),
    Route("POST", "/v1/admin/nodes/{node_id}/cordon"),
    Route("POST", "/v1/admin/nodes/{node_id}/drain"),
    Route("POST", "/v1/admin/nodes/{node_id}/uncordon"),
    Route(
        "POST",
        "/v1/register",
        body={"token": "cpx_enroll_matrix-never-issued", "public_key": MATRIX_NODE_KEY, "hostname": "matrix-new"},
        node_auth="bootstrap",
    ),
    Route("GET", "/v1/nodes/{node_id}/state", node_auth="credential"),
    Route("GET", "/v1/nodes/{node_id}/events", node_auth="credential"),
    Route("GET", "/v1/nodes/{node_id}/secrets/{key}", node_auth="credential", path_values={"key": "node_secret_key"}),
    Route(
        "POST", "/v1/nodes/{node_id}/heartbeat", body={"node_id": "{node_id}", "timestamp": NOW}, node_auth="credential"
    ),
    Route("PUT", "/v1/nodes/{node_id}/capabilities", body={"binary": {"version": "1"}}, node_auth="credential"),
    Route("POST", "/v1/nodes/{node_id}/drift", body={"timestamp": NOW, "corrections": []}, node_auth="credential"),
    Route("POST", "/v1/nodes/{node_id}/report", body={"entries": [], "deleted": []}, node_auth="credential"),
    Route(
        "POST",
        "/v1/nodes/{node_id}/executions/{execution_id}/ack",
        body={"execution_id": "{execution_id}", "status": "accepted"},
        node_auth="credential",
    ),
    Route(
        "POST",
        "/v1/nodes/{node_id}/executions/{execution_id}/result",
        body={"execution_id": "{execution_id}", "status": "success", "finished_at": NOW},
        node_auth="credential",
    ),
    Route(
        "POST",
        "/v1/nodes/{node_id}/metrics",
        body=[{"timestamp": NOW, "group": "node_resources", "data": {"cpu_percent": 1.5}}],
        node_auth="credential",
    ),
    Route("POST", "/v1/nodes/{node_id}/logs", body=[{"timestamp": NOW, "message": "m"}], node_auth="credential"),
    Route("POST", "/v1/nodes/{node_id}/audit", body=[{"timestamp": NOW, "action": "open"}], node_auth="credential"),
    Route(
        "POST",
        "/v1/keys/rotate",
        body={"node_id": "{node_id}", "new_public_key": MATRIX_NODE_KEY},
        node_auth="credential",
    ),
    Route("POST", "/v1/nodes/{node_id}/deregister", node_auth="credential"),
    Route("DELETE", "/v1/instances/{instance_id}"),
    Route("GET", "/v1/admin/stats"),
    Route("GET", "/v1/admin/providers"),
    Route("GET", "/v1/admin/audit"),
    Route("GET", "/v1/admin/audit/checkpoints"),
    Route("GET", "/v1/admin/audit/verify"),
    Route("GET", "/v1/admin/tenants"),
    Route("POST", "/v1/admin/tenants", body={"name": "Matrix", "slug": "matrix-new", "plan": "pro"}),
    Route("GET", "/v1/admin/tenants/{tenant_id}"),
    Route("PATCH", "/v1/admin/tenants/{tenant_id}", body={"name": "Renamed", "plan": "enterprise"}),
    Route("GET", "/v1/admin/tenants/{tenant_id}/quota"),
    Route("PUT", "/v1/admin/tenants/{tenant_id}/quota", body=QUOTA),
    Route("POST", "/v1/admin/tenants/{tenant_id}/suspend", body={"reason": "r"}),
    Route("POST", "/v1/admin/tenants/{tenant_id}/unsuspend", body={"reason": "r"}),
    Route("DELETE", "/v1/admin/tenants/{tenant_id}", query={"force": "true"}),
]
ROUTE_TABLE = {route.key: route for route in ROUTES}


@dataclass
class World:
    """Two tenants with keys, and the OpenAPI document of the app serving them."""

    client: httpx.AsyncClient
    tokens: Tokens
    db: Database
    tenant_a: str
    tenant_b: str
    key_a: str
    read_key_a: str
    admin_key_a: str
    admin_key_b: str
    instance_a: str
    release_a: str
    deployment_a: str
    check_a: str
    route_a: str
    domain_a: str
    webhook_a: str
    delivery_a: str
    drain_a: str
    credential_a: str
    openapi: dict[str, Any]
    secret_key_a: str = "MATRIX_SECRET"
    template_a: str = ""
    environment_a: str = ""
    run_a: str = ""
    job_a: str = ""
    node_a: str = ""
    node_credential: str = ""
    execution_a: str = ""
    enroll_token_a: str = ""
    node_secret_key: str = ""

    @property
    def routes(self) -> list[Route]:
        """Every /v1 route in the OpenAPI document, with its request from ROUTES when there is one."""
        found = []
        for path, operations in self.openapi["paths"].items():
            if not path.startswith("/v1/"):
                continue
            for method in operations:
                if method in ("parameters", "summary", "description", "servers"):
                    continue
                key = (method.upper(), path)
                found.append(ROUTE_TABLE.get(key, Route(*key)))
        return found

    def body(self, body: Any) -> Any:
        """A request body with ``"{name}"`` values filled like path parameters."""
        if not isinstance(body, dict):
            return body
        values = self.values
        return {k: values[v[1:-1]] if isinstance(v, str) and v[1:-1] in values else v for k, v in body.items()}

    @property
    def values(self) -> dict[str, str]:
        return {
            "tenant_id": self.tenant_a,
            "key_id": self.key_a,
            "instance_id": self.instance_a,
            "release_id": self.release_a,
            "deployment_id": self.deployment_a,
            "check_id": self.check_a,
            "route_id": self.route_a,
            "domain_id": self.domain_a,
            "template_id": self.template_a,
            "environment_id": self.environment_a,
            "run_id": self.run_a,
            "job_id": self.job_a,
            "webhook_id": self.webhook_a,
            "delivery_id": self.delivery_a,
            "drain_id": self.drain_a,
            "credential_id": self.credential_a,
            "node_id": self.node_a,
            "execution_id": self.execution_a,
        }

    def url(self, route: Route) -> str:
        values = {
            "tenant_id": self.tenant_a,
            "key_id": self.key_a,
            "instance_id": self.instance_a,
            "release_id": self.release_a,
            "deployment_id": self.deployment_a,
            "key": self.secret_key_a,
            "check_id": self.check_a,
            "route_id": self.route_a,
            "domain_id": self.domain_a,
            "template_id": self.template_a,
            "environment_id": self.environment_a,
            "run_id": self.run_a,
            "job_id": self.job_a,
            "webhook_id": self.webhook_a,
            "delivery_id": self.delivery_a,
            "drain_id": self.drain_a,
            "credential_id": self.credential_a,
            "node_id": self.node_a,
            "execution_id": self.execution_a,
            "token_id": self.enroll_token_a,
        }
        values.update({name: getattr(self, attribute) for name, attribute in route.path_values.items()})

        def fill(match: re.Match[str]) -> str:
            name = match.group(1)
            if name not in values:
                raise AssertionError(f"{route}: the matrix cannot fill path parameter {{{name}}}; teach World.url")
            return values[name]

        return re.sub(r"\{([^}:]+)(?::[^}]*)?\}", fill, route.path)

    async def send(
        self,
        route: Route,
        token: str | None,
        *,
        body: dict[str, Any] | None = None,
        query: dict[str, str] | None = None,
        raw_authorization: str | None = None,
    ) -> httpx.Response:
        headers = bearer(token) if token is not None else {}
        if raw_authorization is not None:
            headers = {"Authorization": raw_authorization}
        return await self.client.request(
            route.method,
            self.url(route),
            json=self.body(body if body is not None else route.body),
            params=query if query is not None else route.query,
            headers=headers,
        )

    def operation(self, route: Route) -> dict[str, Any]:
        return dict(self.openapi["paths"][route.path][route.method.lower()])

    def resolve(self, schema: dict[str, Any]) -> dict[str, Any]:
        while "$ref" in schema:
            node: Any = self.openapi
            for part in schema["$ref"].removeprefix("#/").split("/"):
                node = node[part]
            schema = node
        return schema

    def body_properties(self, route: Route) -> set[str]:
        content = self.operation(route).get("requestBody", {}).get("content", {})
        names: set[str] = set()
        for media in content.values():
            schema = self.resolve(media.get("schema", {}))
            for variant in [schema, *schema.get("oneOf", []), *schema.get("anyOf", []), *schema.get("allOf", [])]:
                names |= set(self.resolve(variant).get("properties", {}))
        return names

    def query_parameters(self, route: Route) -> set[str]:
        parameters = [self.resolve(p) for p in self.operation(route).get("parameters", [])]
        return {p["name"] for p in parameters if p.get("in") == "query"}


@pytest.fixture
async def world(api: Api, db: Database, app: Any) -> World:
    tenant_a = (await api.create_tenant("alpha", plan="pro"))["id"]  # room for the environment and run the world makes
    tenant_b = (await api.create_tenant("bravo"))["id"]
    key_a = (await api.create_key(tenant_a, ["deploy"], name="deployer"))["id"]
    read_key_a = (await api.create_key(tenant_a, ["read"], name="reader"))["key"]
    admin_key_a = (await api.create_key(tenant_a, ["admin"], name="administrator"))["key"]
    admin_key_b = (await api.create_key(tenant_b, ["admin"], name="bravo-admin"))["key"]
    created = await api.client.post(
        "/v1/instances",
        json={"name": "web", "image": "ctrlplane-test/busybox:1", "ports": [{"container_port": 8080}]},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert created.status_code == 201, created.text
    secret = await api.client.post(
        f"/v1/instances/{created.json()['id']}/secrets",
        json={"key": "MATRIX_SECRET", "value": "s3cr3t"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert secret.status_code == 201, secret.text
    async with db.write() as session, session.begin():
        await session.execute(
            text("UPDATE instances SET state = 'running' WHERE id = :id"), {"id": created.json()["id"]}
        )
    deployment = await api.client.post(
        f"/v1/instances/{created.json()['id']}/deploy",
        json={"image": "ctrlplane-test/busybox:2"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert deployment.status_code == 201, deployment.text
    async with db.write() as session, session.begin():
        # ended: configuration routes refuse to run beside an unfinished deploy
        await session.execute(
            text("UPDATE deployments SET state = 'cancelled' WHERE id = :id"), {"id": deployment.json()["id"]}
        )
    check = await api.client.post(
        f"/v1/instances/{created.json()['id']}/health/checks",
        json={"name": "web-health", "type": "http", "target": "http://localhost:8080/healthz"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert check.status_code == 201, check.text
    route = await api.client.post(
        f"/v1/instances/{created.json()['id']}/routes",
        json={"path": "/api", "port": 8080},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert route.status_code == 201, route.text
    domain = await api.client.post(
        f"/v1/instances/{created.json()['id']}/domains",
        json={"hostname": "matrix.example.com"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert domain.status_code == 201, domain.text
    template = await api.client.post(
        "/v1/templates",
        json={"name": "matrix", "spec": {"image": "ctrlplane-test/busybox:1"}, "max_ttl": "1d"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert template.status_code == 201, template.text
    environment = await api.client.post(
        "/v1/environments",
        json={"key": "matrix", "template": "matrix"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert environment.status_code == 201, environment.text
    run = await api.client.post(
        f"/v1/instances/{created.json()['id']}/runs",
        json={"command": "echo matrix"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert run.status_code == 201, run.text
    job = await api.client.post(
        f"/v1/instances/{created.json()['id']}/jobs",
        json={"name": "nightly", "schedule": "0 3 * * *", "timezone": "Europe/Paris", "command": ["true"]},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert job.status_code == 201, job.text
    webhook = await api.client.post(
        "/v1/webhooks",
        json={"url": "https://hooks.example.invalid/matrix"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert webhook.status_code == 201, webhook.text
    delivery = await api.client.post(
        f"/v1/webhooks/{webhook.json()['id']}/test", headers=bearer(api.tokens.tenant(tenant_a))
    )
    assert delivery.status_code == 201, delivery.text
    drain = await api.client.post(
        "/v1/log-drains",
        json={"url": "https://logs.example.invalid/matrix"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert drain.status_code == 201, drain.text
    credential = await api.client.post(
        "/v1/registry-credentials",
        json={"registry": "registry.example.com", "username": "robot", "password": "matrix-pull"},
        headers=bearer(api.tokens.tenant(tenant_a)),
    )
    assert credential.status_code == 201, credential.text
    admin = api.admin_headers
    revocable = await api.client.post("/v1/admin/nodes/enrollment-tokens", json={}, headers=admin)
    assert revocable.status_code == 201, revocable.text
    enroll = await api.client.post("/v1/admin/nodes/enrollment-tokens", json={}, headers=admin)
    registered = await api.client.post(
        "/v1/register", json={"token": enroll.json()["token"], "public_key": MATRIX_NODE_KEY, "hostname": "matrix"}
    )
    assert registered.status_code == 201, registered.text
    node_a = registered.json()["node_id"]
    workload = WorkloadSpec(
        instance_id=created.json()["id"],
        tenant_id=tenant_a,
        name="web",
        image="ctrlplane-test/busybox:1",
        resources=Resources(cpu_millis=100, memory_mb=64),
    )
    revision = await app.state.services.nodes.assign(node_a, workload)
    execution = await api.client.post(f"/v1/admin/nodes/{node_a}/actions", json={"action": "x"}, headers=admin)
    assert execution.status_code == 201, execution.text
    document = await api.client.get("/schema/openapi.json")
    assert document.status_code == 200, document.text
    return World(
        node_a=node_a,
        node_credential=registered.json()["credential"],
        execution_a=execution.json()["id"],
        enroll_token_a=revocable.json()["id"],
        node_secret_key=f"{created.json()['id']}.r{revision}",
        run_a=run.json()["id"],
        job_a=job.json()["id"],
        client=api.client,
        tokens=api.tokens,
        db=db,
        tenant_a=tenant_a,
        tenant_b=tenant_b,
        key_a=key_a,
        read_key_a=read_key_a,
        admin_key_a=admin_key_a,
        admin_key_b=admin_key_b,
        instance_a=created.json()["id"],
        release_a=created.json()["current_release_id"],
        deployment_a=deployment.json()["id"],
        check_a=check.json()["id"],
        route_a=route.json()["id"],
        domain_a=domain.json()["id"],
        webhook_a=webhook.json()["id"],
        delivery_a=delivery.json()["id"],
        drain_a=drain.json()["id"],
        credential_a=credential.json()["id"],
        openapi=document.json(),
        template_a=template.json()["id"],
        environment_a=environment.json()["id"],
    )


async def snapshot(db: Database) -> dict[str, list[dict[str, Any]]]:
    tables: dict[str, list[dict[str, Any]]] = {}
    async with db.read() as session:
        for table in metadata.sorted_tables:
            if table.name in UNSNAPSHOTTED_TABLES:
                continue
            rows = (await session.execute(text(f"SELECT * FROM {table.name} ORDER BY 1"))).all()
            volatile = VOLATILE_COLUMNS.get(table.name, frozenset())
            tables[table.name] = [{k: v for k, v in row._mapping.items() if k not in volatile} for row in rows]
    return tables


def assert_unchanged(before: dict[str, list[dict[str, Any]]], after: dict[str, list[dict[str, Any]]]) -> None:
    changed = [name for name in before if before[name] != after.get(name)]
    assert not changed, "refused requests changed tables: " + "; ".join(
        f"{name}: before={before[name]!r} after={after.get(name)!r}" for name in changed
    )


def check(
    leaks: list[str], route: Route, case: str, response: httpx.Response, status: int, code: str | None = None
) -> None:
    """Record a leak unless the response is the expected JSON error."""
    where = f"{route} [{case}]"
    if response.status_code != status:
        leaks.append(f"{where}: expected {status}, got {response.status_code}: {response.text[:300]}")
        return
    try:
        body = response.json()
    except ValueError:
        leaks.append(f"{where}: {status} without a JSON body: {response.text[:300]}")
        return
    if not isinstance(body, dict) or not {"message", "code", "request_id"} <= set(body):
        leaks.append(f"{where}: error body lacks message/code/request_id: {body!r}")
    elif code is not None and body["code"] != code:
        leaks.append(f"{where}: expected code {code!r}, got {body['code']!r}: {body['message']}")
    elif body["request_id"] != response.headers.get("X-Request-ID"):
        leaks.append(f"{where}: request_id {body['request_id']!r} differs from the X-Request-ID header")


def openapi_routes(world: World) -> set[tuple[str, str]]:
    return {route.key for route in world.routes}


async def test_matrix_covers_every_route_in_the_openapi_document(world: World) -> None:
    documented = openapi_routes(world)
    assert documented, "the OpenAPI document lists no /v1 routes"
    missing = sorted(documented - set(ROUTE_TABLE))
    stale = sorted(set(ROUTE_TABLE) - documented)
    assert not missing, f"routes in the OpenAPI document without an entry in ROUTES (add one): {missing}"
    assert not stale, f"ROUTES names routes the OpenAPI document no longer has: {stale}"
    for route in ROUTES:
        has_body = "requestBody" in world.operation(route)
        assert has_body == (route.body is not None), f"{route}: ROUTES body does not match the documented requestBody"


async def test_every_route_refuses_missing_malformed_and_expired_credentials(world: World) -> None:
    expired_tenant = world.tokens.tenant(world.tenant_a, ttl=timedelta(hours=-1))
    expired_admin = world.tokens.admin(ttl=timedelta(hours=-1))
    cases: dict[str, dict[str, Any]] = {
        "no Authorization header": {"token": None},
        "malformed token": {"token": "not-a-token"},
        "empty bearer": {"token": None, "raw_authorization": "Bearer "},
        "wrong scheme": {"token": None, "raw_authorization": f"Basic {expired_tenant}"},
        "expired tenant token": {"token": expired_tenant},
        "expired system-admin token": {"token": expired_admin},
        "unknown API key": {"token": "cpk_this-key-was-never-issued"},
    }
    before = await snapshot(world.db)
    leaks: list[str] = []
    exercised: set[tuple[str, str]] = set()
    for route in world.routes:
        for case, arguments in cases.items():
            response = await world.send(route, **arguments)
            check(leaks, route, case, response, 401, "unauthenticated")
        exercised.add(route.key)
    assert not leaks, "unauthenticated requests leaked:\n" + "\n".join(leaks)
    assert exercised == openapi_routes(world)
    assert_unchanged(before, await snapshot(world.db))


async def test_tenant_credentials_are_forbidden_on_admin_routes(world: World) -> None:
    admin_routes = [route for route in world.routes if route.is_admin]
    assert admin_routes, "no /v1/admin routes found in the OpenAPI document"
    callers = {
        "tenant admin token": world.tokens.tenant(world.tenant_a, roles=["admin"]),
        "tenant admin API key": world.admin_key_a,
        "tenant token with every role": world.tokens.tenant(world.tenant_a, roles=["read", "deploy", "admin"]),
    }
    before = await snapshot(world.db)
    leaks: list[str] = []
    for route in admin_routes:
        for case, token in callers.items():
            check(leaks, route, case, await world.send(route, token), 403, "forbidden")
    assert not leaks, "admin routes leaked to tenant callers:\n" + "\n".join(leaks)
    system_admin_only = {r.key for r in ROUTES if r.system_admin}
    assert {r.key for r in admin_routes} == {
        key for key in openapi_routes(world) if key[1].startswith("/v1/admin") or key in system_admin_only
    }
    assert_unchanged(before, await snapshot(world.db))


async def test_read_role_credentials_are_forbidden_on_every_mutating_route(world: World) -> None:
    mutating = [route for route in world.routes if route.mutating]
    assert mutating, "no mutating routes found in the OpenAPI document"
    callers = {
        "read-role API key": world.read_key_a,
        "read-role tenant token": world.tokens.tenant(world.tenant_a, roles=["read"]),
    }
    before = await snapshot(world.db)
    leaks: list[str] = []
    for route in mutating:
        for case, token in callers.items():
            known = ROUTE_TABLE.get(route.key, route)
            if known.instance_token or known.node_auth:
                check(leaks, route, case, await world.send(route, token), 401, "unauthenticated")
            else:
                check(leaks, route, case, await world.send(route, token), 403, "forbidden")
    assert not leaks, "mutating routes leaked to read-only callers:\n" + "\n".join(leaks)
    assert {r.key for r in mutating} == {key for key in openapi_routes(world) if key[0] in MUTATING}
    assert_unchanged(before, await snapshot(world.db))


async def test_another_tenants_objects_are_not_found(world: World) -> None:
    """A tenant route naming tenant A's object answers tenant B with 404: not 403 (which would
    confirm the object exists) and never 2xx. System-admin routes are refused earlier (403)."""
    object_routes = [route for route in world.routes if "{" in route.path and not route.is_admin]
    assert ("DELETE", "/v1/keys/{key_id}") in {r.key for r in object_routes}
    callers = {
        "tenant B admin token": world.tokens.tenant(world.tenant_b, roles=["admin"]),
        "tenant B admin API key": world.admin_key_b,
    }
    before = await snapshot(world.db)
    leaks: list[str] = []
    for route in object_routes:
        for case, token in callers.items():
            if ROUTE_TABLE.get(route.key, route).node_auth:  # node routes take node credentials only
                check(leaks, route, case, await world.send(route, token), 401, "unauthenticated")
            else:
                check(leaks, route, case, await world.send(route, token), 404, "not_found")
    listed = await world.client.get("/v1/keys", headers=bearer(callers["tenant B admin token"]))
    assert listed.status_code == 200, listed.text
    foreign = [item["id"] for item in listed.json()["items"] if item["tenant_id"] != world.tenant_b]
    if foreign:
        leaks.append(f"GET /v1/keys [tenant B admin token]: lists other tenants' keys {foreign}")
    assert not leaks, "tenant B reached tenant A's objects:\n" + "\n".join(leaks)
    assert_unchanged(before, await snapshot(world.db))


@dataclass(frozen=True)
class BodyReference:
    names: dict[str, str]
    """Body property -> the World value of tenant A's object of that kind."""
    status: int = 404
    code: str = "not_found"


BODY_REFERENCES: dict[tuple[str, str], BodyReference] = {
    ("POST", "/v1/log-drains"): BodyReference({"instance_id": "instance_id"}),
    ("POST", "/v1/environments"): BodyReference({"template": "template_id"}),
    # documented as 400 (docs/api.md, errors): "a rollback release_id that is not a release of the instance"
    ("POST", "/v1/instances/{instance_id}/rollback"): BodyReference({"release_id": "release_id"}, 400, "invalid_input"),
}
"""Tenant routes whose body names one of the tenant's objects. Every ``*_id`` body property of a
tenant route but ``tenant_id`` must be listed (the test below checks it against the document)."""


async def test_another_tenants_objects_named_in_a_body_are_not_found(world: World) -> None:
    """Tenant B naming tenant A's object in a request body (a drain for A's instance, an
    environment from A's template, a rollback of B's own instance to A's release) gets the answer
    an id that was never issued gets (404, or the documented 400 for a rollback), so the answer
    tells nothing of A's objects, and nothing changes."""
    tenant_routes = [r for r in world.routes if not r.is_admin and not ROUTE_TABLE.get(r.key, r).node_auth]
    documented = {
        (route.key, name)
        for route in tenant_routes
        for name in world.body_properties(route)
        if name.endswith("_id") and name != "tenant_id"
    }
    listed = {(key, name) for key, reference in BODY_REFERENCES.items() for name in reference.names}
    assert documented <= listed, f"body properties naming an object, not in BODY_REFERENCES: {documented - listed}"
    owner_b = bearer(world.tokens.tenant(world.tenant_b, roles=["admin"]))
    created = await world.client.post(
        "/v1/instances", json={"name": "bravo-web", "image": "ctrlplane-test/busybox:1"}, headers=owner_b
    )
    assert created.status_code == 201, created.text
    instance_b = created.json()["id"]
    async with world.db.write() as session, session.begin():  # so that B may roll back: only A's release is wrong
        await session.execute(text("UPDATE instances SET state = 'running' WHERE id = :id"), {"id": instance_b})
        await session.execute(
            text("UPDATE deployments SET state = 'cancelled' WHERE instance_id = :id"), {"id": instance_b}
        )
    callers = {
        "tenant B admin token": world.tokens.tenant(world.tenant_b, roles=["admin"]),
        "tenant B admin API key": world.admin_key_b,
    }
    before = await snapshot(world.db)
    leaks: list[str] = []
    for key, reference in BODY_REFERENCES.items():
        route = ROUTE_TABLE[key]
        url = world.url(route).replace(world.instance_a, instance_b)
        for owner, values in (
            ("tenant A's", {name: world.values[value] for name, value in reference.names.items()}),
            (
                "a never-issued",
                {name: f"{world.values[value][:4]}never-issued" for name, value in reference.names.items()},
            ),
        ):
            body = {**(route.body or {}), **values}
            for case, token in callers.items():
                response = await world.client.request(route.method, url, json=body, headers=bearer(token))
                where = f"{case}, {owner} {', '.join(reference.names)} in the body"
                check(leaks, route, where, response, reference.status, reference.code)
    assert not leaks, "tenant B reached tenant A's objects through a body:\n" + "\n".join(leaks)
    assert_unchanged(before, await snapshot(world.db))


async def test_tenant_id_of_another_tenant_is_forbidden(world: World) -> None:
    """A tenant route given tenant B's id in its body or query, with tenant A's credentials, is 403."""
    callers = {
        "tenant A admin token": world.tokens.tenant(world.tenant_a, roles=["admin"]),
        "tenant A admin API key": world.admin_key_a,
    }
    before = await snapshot(world.db)
    leaks: list[str] = []
    exercised: set[tuple[str, str, str]] = set()
    for route in world.routes:
        if route.is_admin:
            continue
        variants: dict[str, dict[str, Any]] = {}
        if "tenant_id" in world.body_properties(route):
            variants["body tenant_id of tenant B"] = {"body": {**(route.body or {}), "tenant_id": world.tenant_b}}
        if "tenant_id" in world.query_parameters(route):
            variants["query tenant_id of tenant B"] = {"query": {**route.query, "tenant_id": world.tenant_b}}
        for variant, arguments in variants.items():
            for case, token in callers.items():
                check(leaks, route, f"{variant}, {case}", await world.send(route, token, **arguments), 403, "forbidden")
            exercised.add((*route.key, variant))
    assert ("POST", "/v1/keys", "body tenant_id of tenant B") in exercised
    assert ("GET", "/v1/keys", "query tenant_id of tenant B") in exercised
    assert not leaks, "tenant A acted in tenant B:\n" + "\n".join(leaks)
    assert_unchanged(before, await snapshot(world.db))


async def test_matrix_requests_succeed_for_an_authorized_caller(world: World) -> None:
    """The control: each request the matrix sends is valid, so its refusals above come from
    authorization and not from validation. Tenant routes run as tenant A's admin, admin routes as a
    system admin, in ROUTES order (suspend before unsuspend, delete last)."""
    system_admin = world.tokens.admin()
    tenant_admin = world.tokens.tenant(world.tenant_a, roles=["admin"])
    failures = []
    for route in ROUTES:
        if route.deployment_state is not None:
            async with world.db.write() as session, session.begin():
                await session.execute(
                    text("UPDATE deployments SET state = :state WHERE instance_id = :id"),
                    {"state": route.deployment_state, "id": world.instance_a},
                )
        if route.domain_state is not None:
            async with world.db.write() as session, session.begin():
                await session.execute(
                    text("UPDATE domains SET status = :state WHERE id = :id"),
                    {"state": route.domain_state, "id": world.domain_a},
                )
        if route.instance_state is not None:
            async with world.db.write() as session, session.begin():
                await session.execute(
                    text("UPDATE instances SET state = :state WHERE id = :id"),
                    {"state": route.instance_state, "id": world.instance_a},
                )
        if route.instance_token:
            response = await world.send(route, instance_token(world.tokens.settings, world.instance_a))
        elif route.node_auth == "bootstrap":
            fresh = await world.client.post("/v1/admin/nodes/enrollment-tokens", json={}, headers=bearer(system_admin))
            response = await world.send(route, None, body={**(route.body or {}), "token": fresh.json()["token"]})
        elif route.node_auth == "credential":
            response = await world.send(route, world.node_credential)
            if route.key == ("POST", "/v1/keys/rotate") and response.status_code == 200:
                world.node_credential = response.json()["credential"]  # the old one stopped working
        else:
            response = await world.send(route, system_admin if route.is_admin else tenant_admin)
        if not 200 <= response.status_code < 300:
            failures.append(f"{route}: authorized caller got {response.status_code}: {response.text[:300]}")
    assert not failures, "the matrix's requests are not valid:\n" + "\n".join(failures)
