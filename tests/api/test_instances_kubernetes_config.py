"""What an instance on Kubernetes gets beyond its release, through the HTTP API against the real
control plane (``tests/providers/kube_cluster.py``): the tenant's quota as a ResourceQuota and
LimitRange, its health checks as readiness and liveness probes, its routes and verified domains as
Ingress rules, all accepted by the real API server's validation and admission; and each of them
following a change made after the instance runs (a ``configure`` operation re-applies them).

The instance's pods carry ``ctrlplane-test.pod-ip: 127.0.0.1`` (kwok gives them that IP) and its
port is a loopback HTTP server of this test, so the deploy gate's HTTP check gets a real answer.
The API server writes quantities in canonical form (``6`` for ``6000m``) and fills probe defaults,
so quantities are compared as quantities and probes by the fields ctrlplane sets.
"""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import msgspec
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.settings import KubernetesSettings
from kubernetes import client
from kubernetes.utils import parse_quantity

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.test_instances import state, wait_for
from tests.api.test_instances_kubernetes import IMAGE_V1, IMAGE_V2, app_port, deploy  # noqa: F401 - fixtures
from tests.api.test_instances_kubernetes_real import of_instance
from tests.conftest import Api, bearer
from tests.network.processes import ChallTestSrv, challtestsrv  # noqa: F401 - fixture
from tests.providers.kube_cluster import ControlPlane, kube_control_plane  # noqa: F401 - fixture
from tests.waiting import eventually

QUOTA = {
    "max_instances": 7,
    "max_cpu_millis": 3000,
    "max_memory_mb": 4096,
    "max_domains": 5,
    "max_routes": 5,
    "max_secrets": 9,
}
POD_IP_LABEL = {"ctrlplane-test.pod-ip": "127.0.0.1"}


@pytest.fixture
def settings(settings: Settings, challtestsrv: ChallTestSrv) -> Settings:
    return msgspec.structs.replace(
        settings,
        providers=("kubernetes",),
        deploy_health_timeout_seconds=20,
        dns_resolver=challtestsrv.dns_address,
        dns_timeout_seconds=3,
    )


@pytest.fixture
def providers(settings: Settings, kube_control_plane: ControlPlane) -> ProviderRegistry:
    kube = KubernetesSettings(rollout_timeout_seconds=30, request_timeout_seconds=5)
    return ProviderRegistry(
        [KubernetesProvider(provider_settings(settings), configuration=kube_control_plane.configuration(), kube=kube)]
    )


class Objects:
    """What the API server holds for one instance and its namespace, read with the admin client."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane

    def deployments(self, instance_id: str) -> list[dict[str, Any]]:
        return of_instance(self.plane, "list_deployment_for_all_namespaces", instance_id)

    def one(self, plural: str, namespace: str) -> dict[str, Any] | None:
        with self.plane.api() as api:
            owner: Any = client.NetworkingV1Api(api) if plural == "ingress" else client.CoreV1Api(api)
            response = getattr(owner, f"list_namespaced_{plural}")(namespace, _preload_content=False)
        found = [i for i in json.loads(response.data)["items"] if not i["metadata"].get("deletionTimestamp")]
        assert len(found) <= 1, found
        return found[0] if found else None


@pytest.fixture
def cluster(kube_control_plane: ControlPlane) -> Objects:
    return Objects(kube_control_plane)


def quantities(values: dict[str, str]) -> dict[str, Decimal]:
    return {key: parse_quantity(value) for key, value in values.items()}


def q(value: str) -> Decimal:
    return Decimal(parse_quantity(value))


def probe(found: dict[str, Any]) -> dict[str, Any]:
    """A probe without the fields the API server fills by default (and with the zero it omits)."""
    found = {"initialDelaySeconds": 0, **found}
    handler = {k: v for k, v in found.items() if k in ("httpGet", "tcpSocket", "exec")}
    for action in handler.values():
        action.pop("scheme", None)
    timing = ("initialDelaySeconds", "periodSeconds", "timeoutSeconds", "failureThreshold")
    return {**handler, **{k: found[k] for k in timing if k in found}}


def container(cluster: Objects, instance_id: str) -> dict[str, Any]:
    (deployment,) = cluster.deployments(instance_id)
    return dict(deployment["spec"]["template"]["spec"]["containers"][0])


def ingress_rules(cluster: Objects, namespace: str) -> set[tuple[str, str, int]] | None:
    ingress = cluster.one("ingress", namespace)
    if ingress is None:
        return None
    return {
        (rule["host"], path["path"], path["backend"]["service"]["port"]["number"])
        for rule in ingress["spec"]["rules"]
        for path in rule["http"]["paths"]
    }


def quota_numbers(cluster: Objects, namespace: str) -> tuple[dict[str, Decimal], dict[str, Decimal]] | None:
    quota, limits = cluster.one("resource_quota", namespace), cluster.one("limit_range", namespace)
    if quota is None or limits is None:
        return None
    return quantities(quota["spec"]["hard"]), quantities(limits["spec"]["limits"][0]["max"])


async def test_quota_checks_routes_and_domains_reach_kubernetes_and_follow_changes(
    live: Api,
    cluster: Objects,
    app_port: int,
    challtestsrv: ChallTestSrv,
    settings: Settings,
) -> None:
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    tenant_path = f"/v1/admin/tenants/{tenant['id']}/quota"
    assert (await live.client.put(tenant_path, json=QUOTA, headers=live.admin_headers)).status_code == 200

    # Created: the namespace carries the tenant's quota (twice the CPU and memory: see
    # manifests.QUOTA_HEADROOM) and a LimitRange capping one container at the whole quota.
    created = await live.client.post(
        "/v1/instances",
        json={
            "name": "web",
            "image": IMAGE_V1,
            "ports": [{"container_port": app_port}],
            "labels": POD_IP_LABEL,
            "provider_name": "kubernetes",
        },
        headers=token,
    )
    assert created.status_code == 201, created.text
    instance = await wait_for(live, created.json()["id"], token, state("running"), timeout=30)
    instance_id = instance["id"]
    (deployment,) = cluster.deployments(instance_id)
    namespace = deployment["metadata"]["namespace"]
    hard, per_container = await eventually(lambda: quota_numbers(cluster, namespace), "the quota objects", timeout=30)
    assert hard["requests.cpu"] == hard["limits.cpu"] == q("6000m")
    assert hard["requests.memory"] == hard["limits.memory"] == q("8192Mi")
    assert hard["count/services"] == 7 and hard["count/deployments.apps"] == 14
    assert per_container == {"cpu": q("3000m"), "memory": q("4096Mi")}
    # no check yet: readiness is a TCP connect to the first port, and there is no liveness probe
    assert container(cluster, instance_id)["readinessProbe"]["tcpSocket"] == {"port": app_port}
    assert "livenessProbe" not in container(cluster, instance_id)
    # no route yet: the default hostname serves / from the first port, without TLS
    default_host = f"web.acme.{settings.router_base_domain}"
    assert await eventually(lambda: ingress_rules(cluster, namespace), "the ingress", timeout=30) == {
        (default_host, "/", app_port)
    }

    # Health checks: http becomes readiness, tcp liveness, with the checks' timing.
    checks = f"/v1/instances/{instance_id}/health/checks"
    http_check = await live.client.post(
        checks,
        json={
            "name": "ready",
            "type": "http",
            "target": f"http://localhost:{app_port}/healthz",
            "interval": "5s",
            "timeout": "2s",
            "retries": 4,
        },
        headers=token,
    )
    assert http_check.status_code == 201, http_check.text
    tcp_check = await live.client.post(
        checks,
        json={"name": "alive", "type": "tcp", "target": f"localhost:{app_port}", "interval": "20s"},
        headers=token,
    )
    assert tcp_check.status_code == 201, tcp_check.text

    def probed() -> dict[str, Any] | None:
        found = container(cluster, instance_id)
        # both checks applied: the http one alone would be readiness and liveness at once
        ready = "httpGet" in found["readinessProbe"] and "tcpSocket" in found.get("livenessProbe", {})
        return found if ready else None

    probes = await eventually(probed, "the probes", timeout=30)
    assert probe(probes["readinessProbe"]) == {
        "httpGet": {"path": "/healthz", "port": app_port},
        "initialDelaySeconds": 0,
        "periodSeconds": 5,
        "timeoutSeconds": 2,
        "failureThreshold": 4,
    }
    assert probes["livenessProbe"]["tcpSocket"] == {"port": app_port}
    assert probes["livenessProbe"]["periodSeconds"] == 20
    await wait_for(live, instance_id, token, state("running"), timeout=30)

    # Routes and domains: a route's path on the default host and on the verified domain only.
    route = await live.client.post(
        f"/v1/instances/{instance_id}/routes", json={"path": "/api", "port": app_port}, headers=token
    )
    assert route.status_code == 201, route.text
    domains = f"/v1/instances/{instance_id}/domains"
    shop = (await live.client.post(domains, json={"hostname": "shop.example.com"}, headers=token)).json()
    pending = await live.client.post(domains, json={"hostname": "pending.example.com"}, headers=token)
    assert pending.status_code == 201, pending.text
    challtestsrv.set_txt(shop["verification"]["name"], shop["verification"]["value"])
    verified = await live.client.post(f"/v1/domains/{shop['id']}/verify", headers=token)
    assert verified.status_code == 200, verified.text
    wanted = {
        (default_host, "/", app_port),
        (default_host, "/api", app_port),
        ("shop.example.com", "/", app_port),
        ("shop.example.com", "/api", app_port),
    }
    assert await eventually(
        lambda: ingress_rules(cluster, namespace) == wanted, "the routes and verified domain", timeout=30
    )
    assert all(host != "pending.example.com" for host, _, _ in ingress_rules(cluster, namespace) or ())

    # A deploy carries all of it into the new generation.
    done = await deploy(live, f"/v1/instances/{instance_id}/deploy", token, image=IMAGE_V2, strategy="rolling")
    assert done["state"] == "succeeded", done
    deployed = container(cluster, instance_id)
    assert deployed["image"] == IMAGE_V2
    assert deployed["readinessProbe"]["httpGet"]["path"] == "/healthz"
    assert ingress_rules(cluster, namespace) == wanted

    # Changed: a new quota, a check and a route removed, the domain removed.
    changed = {**QUOTA, "max_cpu_millis": 1500, "max_memory_mb": 2048, "max_instances": 3}
    assert (await live.client.put(tenant_path, json=changed, headers=live.admin_headers)).status_code == 200
    assert (await live.client.delete(f"/v1/health/checks/{tcp_check.json()['id']}", headers=token)).status_code == 204
    assert (await live.client.delete(f"/v1/routes/{route.json()['id']}", headers=token)).status_code == 204
    assert (await live.client.delete(f"/v1/domains/{shop['id']}", headers=token)).status_code == 204

    first = (hard, per_container)

    def requoted() -> tuple[dict[str, Decimal], dict[str, Decimal]] | None:
        # the ResourceQuota and the LimitRange are two objects, written one after the other: both
        # must have changed before either is checked
        numbers = quota_numbers(cluster, namespace)
        return numbers if numbers and numbers[0] != first[0] and numbers[1] != first[1] else None

    hard, per_container = await eventually(requoted, "the new quota", timeout=30)
    assert hard["requests.cpu"] == q("3000m") and hard["limits.memory"] == q("4096Mi")
    assert hard["count/services"] == 3
    assert per_container == {"cpu": q("1500m"), "memory": q("2048Mi")}
    # the http check is the only one left: readiness and liveness both
    live_probe = await eventually(
        lambda: probe(container(cluster, instance_id).get("livenessProbe", {})).get("httpGet"),
        "the remaining check",
        timeout=30,
    )
    assert live_probe == {"path": "/healthz", "port": app_port}
    assert await eventually(
        lambda: ingress_rules(cluster, namespace) == {(default_host, "/", app_port)}, "the ingress", timeout=30
    )

    # A check changed: its probe follows (PATCH with the check's ETag).
    check_path = f"/v1/health/checks/{http_check.json()['id']}"
    etag = (await live.client.get(check_path, headers=token)).headers["etag"]
    patched = await live.client.patch(check_path, json={"interval": "30s"}, headers={**token, "If-Match": etag})
    assert patched.status_code == 200, patched.text
    assert await eventually(
        lambda: container(cluster, instance_id)["readinessProbe"]["periodSeconds"] == 30,
        "the changed check",
        timeout=30,
    )

    # The last check removed: back to the TCP readiness default, no liveness probe.
    assert (await live.client.delete(f"/v1/health/checks/{http_check.json()['id']}", headers=token)).status_code == 204
    assert await eventually(
        lambda: "livenessProbe" not in container(cluster, instance_id), "no liveness probe", timeout=30
    )
    assert container(cluster, instance_id)["readinessProbe"]["tcpSocket"] == {"port": app_port}
    await wait_for(live, instance_id, token, state("running"), timeout=30)
