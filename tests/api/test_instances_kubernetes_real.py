"""A tenant's instance on the Kubernetes provider, end to end through the HTTP API, on the real
control plane of ``tests/providers/kube_cluster.py`` (real API server, Deployment and ReplicaSet
controllers, scheduler, garbage collector; kwok's node runs the pods).

The instance carries the label ``ctrlplane-test.pod-ip: 127.0.0.1``, which kwok's stages
(``kwok-stages.yaml``) give its pods as their IP, and its port is a loopback HTTP server of this
test: the deploy engine's health gate (an HTTP request to each new replica's endpoint) gets a real
answer, and no request leaves this machine.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.settings import KubernetesSettings
from kubernetes import client

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.test_instances import state, wait_for
from tests.api.test_instances_kubernetes import app_port, deploy  # noqa: F401
from tests.conftest import Api, bearer
from tests.providers.kube_cluster import ControlPlane, kube_control_plane  # noqa: F401
from tests.waiting import eventually

IMAGE_V1, IMAGE_V2 = "registry.example/web:1", "registry.example/web:2"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, providers=("kubernetes",), canary_observation_seconds=0.5, deploy_health_timeout_seconds=20
    )


@pytest.fixture
def providers(settings: Settings, kube_control_plane: ControlPlane) -> ProviderRegistry:
    kube = KubernetesSettings(rollout_timeout_seconds=30, request_timeout_seconds=10)
    return ProviderRegistry(
        [KubernetesProvider(provider_settings(settings), configuration=kube_control_plane.configuration(), kube=kube)]
    )


def of_instance(plane: ControlPlane, method: str, instance_id: str) -> list[dict[str, Any]]:
    with plane.api() as api:
        owner = client.AppsV1Api(api) if "deployment" in method else client.CoreV1Api(api)
        response = getattr(owner, method)(label_selector=f"ctrlplane.instance={instance_id}", _preload_content=False)
    items = json.loads(response.data)["items"]
    return [i for i in items if not i["metadata"].get("deletionTimestamp")]


def generations(plane: ControlPlane, instance_id: str) -> list[tuple[str, str, int]]:
    return sorted(
        (
            d["metadata"]["labels"]["ctrlplane.generation"],
            d["spec"]["template"]["spec"]["containers"][0]["image"],
            d["spec"]["replicas"],
        )
        for d in of_instance(plane, "list_deployment_for_all_namespaces", instance_id)
    )


def pod_images(plane: ControlPlane, instance_id: str) -> list[str]:
    return sorted(
        p["spec"]["containers"][0]["image"] for p in of_instance(plane, "list_pod_for_all_namespaces", instance_id)
    )


async def only_pods_of(plane: ControlPlane, instance_id: str, images: list[str]) -> None:
    """The instance's pods are ``images``, once the real garbage collector has removed the retired
    generation's pods (its Deployment is deleted with background propagation, so they may still be
    there when the deploy reports success)."""
    seen: list[list[str]] = [[]]

    def settled() -> bool:
        seen[0] = pod_images(plane, instance_id)
        return seen[0] == images

    await eventually(settled, lambda: f"the pods of {instance_id} are {images} (last seen: {seen[0]})", timeout=30)


@pytest.mark.parametrize("strategy", ["rolling", "blue_green", "canary"])
async def test_an_instance_on_a_real_api_server_is_created_deployed_rolled_back_and_deleted(
    live: Api,
    kube_control_plane: ControlPlane,
    app_port: int,
    strategy: str,
) -> None:
    plane = kube_control_plane
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    body = {
        "name": "web",
        "image": IMAGE_V1,
        "replicas": 2,
        "ports": [{"container_port": app_port}],
        "resources": {"cpu_millis": 200, "memory_mb": 64},
        "env": {"GREETING": "hello"},
        "labels": {"ctrlplane-test.pod-ip": "127.0.0.1"},
        "provider_name": "kubernetes",
    }
    created = await live.client.post("/v1/instances", json=body, headers=token)
    assert created.status_code == 201, created.text
    instance = await wait_for(live, created.json()["id"], token, state("running"), timeout=60)
    instance_id = instance["id"]
    assert {e["url"] for e in instance["endpoints"]} == {f"http://127.0.0.1:{app_port}"}
    assert generations(plane, instance_id) == [("1", IMAGE_V1, 2)]
    assert pod_images(plane, instance_id) == [IMAGE_V1, IMAGE_V1]
    (secret,) = of_instance(plane, "list_secret_for_all_namespaces", instance_id)
    namespace = secret["metadata"]["namespace"]
    assert namespace.endswith(tenant["id"].replace("_", "-"))
    # the instance's env and the OTLP variables ctrlplane adds, its token among them, never plain env
    assert {k for k in secret["data"] if not k.startswith("env.OTEL_")} == {"env.GREETING"}
    assert "env.OTEL_EXPORTER_OTLP_HEADERS" in secret["data"]
    (service,) = of_instance(plane, "list_service_for_all_namespaces", instance_id)
    assert service["spec"]["ports"][0]["port"] == app_port
    with plane.api() as api:
        policies = client.NetworkingV1Api(api).list_namespaced_network_policy(namespace).items
    assert [p.metadata.name for p in policies] == ["ctrlplane-tenant-isolation"]
    v1_release = instance["current_release_id"]

    done = await deploy(live, f"/v1/instances/{instance_id}/deploy", token, image=IMAGE_V2, strategy=strategy)
    assert done["state"] == "succeeded", done
    assert generations(plane, instance_id) == [("2", IMAGE_V2, 2)]
    await only_pods_of(plane, instance_id, [IMAGE_V2, IMAGE_V2])
    assert [s["metadata"]["name"] for s in of_instance(plane, "list_secret_for_all_namespaces", instance_id)] == [
        f"{instance_id.replace('_', '-')}-g2"
    ]
    (service,) = of_instance(plane, "list_service_for_all_namespaces", instance_id)
    assert "ctrlplane.slot" not in service["spec"]["selector"]

    back = await deploy(live, f"/v1/instances/{instance_id}/rollback", token, release_id=v1_release, strategy=strategy)
    assert back["state"] == "succeeded", back
    assert generations(plane, instance_id) == [("3", IMAGE_V1, 2)]
    await only_pods_of(plane, instance_id, [IMAGE_V1, IMAGE_V1])

    assert (await live.client.delete(f"/v1/instances/{instance_id}", headers=token)).status_code == 202
    await wait_for(live, instance_id, token, state("destroyed"), timeout=60)
    assert generations(plane, instance_id) == [] and pod_images(plane, instance_id) == []
    with plane.api() as api:
        namespaces = client.CoreV1Api(api).list_namespace().items
    assert all(ns.metadata.name != namespace or ns.metadata.deletion_timestamp is not None for ns in namespaces), (
        "the tenant's namespace goes with its last instance"
    )


async def test_a_failed_gate_on_a_real_api_server_rolls_back_to_the_old_generation(
    live: Api, kube_control_plane: ControlPlane, app_port: int
) -> None:
    """The new image cannot be pulled (kwok's stages: ``ErrImagePull`` under ``missing.invalid/``):
    the gate fails and only generation 1 is left."""
    plane = kube_control_plane
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    created = await live.client.post(
        "/v1/instances",
        json={
            "name": "web",
            "image": IMAGE_V1,
            "ports": [{"container_port": app_port}],
            "labels": {"ctrlplane-test.pod-ip": "127.0.0.1"},
            "provider_name": "kubernetes",
        },
        headers=token,
    )
    assert created.status_code == 201, created.text
    instance = await wait_for(live, created.json()["id"], token, state("running"), timeout=60)
    missing = "missing.invalid/web:2"
    done = await deploy(live, f"/v1/instances/{instance['id']}/deploy", token, image=missing, strategy="rolling")
    assert done["state"] == "rolled_back", done
    assert "could not be pulled" in done["error"]
    assert generations(plane, instance["id"]) == [("1", IMAGE_V1, 1)]
    assert pod_images(plane, instance["id"]) == [IMAGE_V1]
