"""A tenant's instance on the Kubernetes provider, end to end through the HTTP API: created, deployed
and rolled back, with kmock's Kubernetes emulator holding the objects (see
``tests/providers/kube_emulator.py``), checked after each step.

The pods the emulator's controller stand-in "runs" report 127.0.0.1 as their IP, and the
instance's port is a loopback HTTP server of this test, so the deploy engine's health gate (an
HTTP request to each new replica's endpoint) gets a real answer.
"""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import msgspec
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.settings import KubernetesSettings

from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from tests.api.test_deployments import finished
from tests.api.test_instances import state, wait_for
from tests.conftest import Api, bearer
from tests.providers.kube_emulator import NAMESPACES, Cluster, closed_port, configuration, start_cluster

IMAGE_V1, IMAGE_V2 = "registry.example/web:1", "registry.example/web:2"


class Answer(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def app_port() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with start_cluster(pod_ip="127.0.0.1") as running:
        yield running


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, providers=("kubernetes",), canary_observation_seconds=0.5, deploy_health_timeout_seconds=20
    )


@pytest.fixture
def providers(settings: Settings, cluster: Cluster, request: pytest.FixtureRequest) -> ProviderRegistry:
    """The provider on the emulator; with the ``api_down`` mark, on a loopback port nothing serves."""
    kube = KubernetesSettings(rollout_timeout_seconds=15, request_timeout_seconds=5)
    url = f"http://127.0.0.1:{closed_port()}" if request.node.get_closest_marker("api_down") else cluster.url
    return ProviderRegistry([KubernetesProvider(settings, configuration=configuration(url), kube=kube)])


def objects(
    cluster: Cluster, plural: str, instance_id: str, group: str = "", version: str = "v1"
) -> list[dict[str, Any]]:
    found = cluster.kinds(plural, group, version).values()
    return [o for o in found if o["metadata"].get("labels", {}).get("ctrlplane.instance") == instance_id]


def generations(cluster: Cluster, instance_id: str) -> list[tuple[str, str, int]]:
    """(generation, image, replicas) of each Deployment of the instance."""
    return sorted(
        (
            d["metadata"]["labels"]["ctrlplane.generation"],
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            d["spec"]["replicas"],
        )
        for d in cluster.deployments(instance_id)
    )


def pod_images(cluster: Cluster, instance_id: str) -> list[str]:
    return sorted(p["spec"]["containers"][0]["image"] for p in cluster.pods(instance_id))


async def deploy(api: Api, path: str, token: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.client.post(path, json=body, headers=token)
    assert response.status_code == 201, response.text
    return await finished(api, response.json()["id"], token, timeout=60)


@pytest.mark.parametrize("strategy", ["rolling", "blue_green"])
async def test_an_instance_on_kubernetes_is_created_deployed_and_rolled_back(
    live: Api, cluster: Cluster, app_port: int, strategy: str
) -> None:
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    body = {
        "name": "web",
        "image": IMAGE_V1,
        "replicas": 2,
        "ports": [{"container_port": app_port}],
        "resources": {"cpu_millis": 200, "memory_mb": 64},
        "env": {"GREETING": "hello"},
        "provider_name": "kubernetes",
    }
    created = await live.client.post("/v1/instances", json=body, headers=token)
    assert created.status_code == 201, created.text
    instance = await wait_for(live, created.json()["id"], token, state("running"), timeout=30)
    instance_id = instance["id"]
    assert instance["provider_name"] == "kubernetes"
    assert {e["url"] for e in instance["endpoints"]} == {f"http://127.0.0.1:{app_port}"}

    # Created: the tenant's namespace and policy, the instance's Deployment, Secret and Service.
    (namespace,) = [
        ns
        for ns in cluster.objects(NAMESPACES).values()
        if ns["metadata"]["labels"]["ctrlplane.tenant"] == tenant["id"]
    ]
    ns_name = namespace["metadata"]["name"]
    assert ns_name.endswith(tenant["id"].replace("_", "-"))
    assert [p["metadata"]["name"] for p in cluster.kinds("networkpolicies", "networking.k8s.io").values()] == [
        "ctrlplane-tenant-isolation"
    ]
    assert generations(cluster, instance_id) == [("1", IMAGE_V1, 2)]
    (secret,) = objects(cluster, "secrets", instance_id)
    # the instance's env and the OTLP variables ctrlplane adds, its token among them, never plain env
    assert {k for k in secret["data"] if not k.startswith("env.OTEL_")} == {"env.GREETING"}
    assert "env.OTEL_EXPORTER_OTLP_HEADERS" in secret["data"]
    (service,) = objects(cluster, "services", instance_id)
    assert service["spec"]["ports"][0]["port"] == app_port
    assert pod_images(cluster, instance_id) == [IMAGE_V1, IMAGE_V1]
    v1_release = instance["current_release_id"]

    # Deployed: only generation 2 is left, with the new image, its own Secret and the same Service.
    done = await deploy(live, f"/v1/instances/{instance_id}/deploy", token, image=IMAGE_V2, strategy=strategy)
    assert done["state"] == "succeeded", done
    assert generations(cluster, instance_id) == [("2", IMAGE_V2, 2)]
    assert pod_images(cluster, instance_id) == [IMAGE_V2, IMAGE_V2]
    assert [s["metadata"]["name"] for s in objects(cluster, "secrets", instance_id)] == [
        f"{instance_id.replace('_', '-')}-g2"
    ]
    (service,) = objects(cluster, "services", instance_id)
    assert "ctrlplane.slot" not in service["spec"]["selector"]
    deployed = await wait_for(live, instance_id, token, lambda b: b["image"] == IMAGE_V2 and b["state"] == "running")
    assert deployed["current_release_id"] != v1_release

    # Rolled back: generation 3 runs the first release's image again.
    back = await deploy(live, f"/v1/instances/{instance_id}/rollback", token, release_id=v1_release, strategy=strategy)
    assert back["state"] == "succeeded", back
    assert generations(cluster, instance_id) == [("3", IMAGE_V1, 2)]
    assert pod_images(cluster, instance_id) == [IMAGE_V1, IMAGE_V1]
    await wait_for(live, instance_id, token, lambda b: b["image"] == IMAGE_V1 and b["state"] == "running")

    # Deleted: every object of the instance goes, and the tenant's namespace with its last instance.
    assert (await live.client.delete(f"/v1/instances/{instance_id}", headers=token)).status_code == 202
    await wait_for(live, instance_id, token, state("destroyed"), timeout=30)
    assert cluster.deployments(instance_id) == [] and cluster.pods(instance_id) == []
    assert objects(cluster, "secrets", instance_id) == objects(cluster, "services", instance_id) == []
    assert ns_name not in {ns["metadata"]["name"] for ns in cluster.objects(NAMESPACES).values()}


async def test_a_failed_gate_on_kubernetes_rolls_back_to_the_old_generation(
    live: Api, cluster: Cluster, app_port: int
) -> None:
    """The new image cannot be pulled: the gate fails and only generation 1 is left."""
    cluster.missing_images.add(IMAGE_V2)
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    created = await live.client.post(
        "/v1/instances",
        json={"name": "web", "image": IMAGE_V1, "ports": [{"container_port": app_port}], "provider_name": "kubernetes"},
        headers=token,
    )
    instance = await wait_for(live, created.json()["id"], token, state("running"), timeout=30)
    done = await deploy(live, f"/v1/instances/{instance['id']}/deploy", token, image=IMAGE_V2, strategy="rolling")
    assert done["state"] == "rolled_back", done
    assert "could not be pulled" in done["error"]
    assert generations(cluster, instance["id"]) == [("1", IMAGE_V1, 1)]
    assert pod_images(cluster, instance["id"]) == [IMAGE_V1]


@pytest.mark.api_down
async def test_an_unreachable_kubernetes_api_answers_503_and_changes_nothing(api: Api) -> None:
    tenant = await api.create_tenant("acme", plan="pro")
    token = bearer(api.tokens.tenant(tenant["id"]))
    response = await api.client.post(
        "/v1/instances",
        json={"name": "web", "image": IMAGE_V1, "provider_name": "kubernetes"},
        headers=token,
    )
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["code"] == "provider_unavailable"
    assert "Kubernetes API unreachable" in body["message"] and body["request_id"]
    listed = await api.client.get("/v1/instances", headers=token)
    assert listed.json()["items"] == []
