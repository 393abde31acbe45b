"""An environment's lifecycle on the Kubernetes provider, on the real control plane
(``tests/providers/kube_cluster.py``: kwok runs the pods): made from a template (its Deployment
carries the rendered image and replicas), found again by key, extended, claimed from a warm pool,
expired and terminated (every object of its instance gone)."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.settings import KubernetesSettings

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.environments.helpers import ready_members, tenant, up, wait_env
from tests.api.test_instances_kubernetes import app_port  # noqa: F401 - fixture
from tests.api.test_instances_kubernetes_real import generations, of_instance
from tests.conftest import Api
from tests.providers.kube_cluster import ControlPlane, kube_control_plane  # noqa: F401 - fixture
from tests.waiting import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, providers=("kubernetes",), deploy_health_timeout_seconds=20)


@pytest.fixture
def providers(settings: Settings, kube_control_plane: ControlPlane) -> ProviderRegistry:
    kube = KubernetesSettings(rollout_timeout_seconds=30, request_timeout_seconds=5)
    return ProviderRegistry(
        [KubernetesProvider(provider_settings(settings), configuration=kube_control_plane.configuration(), kube=kube)]
    )


def objects(plane: ControlPlane, kind: str, instance_id: str) -> list[dict[str, Any]]:
    return of_instance(plane, f"list_{kind}_for_all_namespaces", instance_id)


def gone(plane: ControlPlane, instance_id: str) -> bool:
    return not any(objects(plane, kind, instance_id) for kind in ("deployment", "pod", "secret", "service"))


def template_body(app_port: int, **overrides: Any) -> dict[str, Any]:
    return {
        "name": "preview",
        "spec": {
            "image": "registry.example/web:{{version}}",
            "replicas": 2,
            "ports": [{"container_port": app_port}],
            "resources": {"cpu_millis": 100, "memory_mb": 64},
            "env": {"PR": "{{pr}}"},
            "labels": {"ctrlplane-test.pod-ip": "127.0.0.1"},
        },
        "parameters": [
            {"name": "version", "type": "string", "default": "1"},
            {"name": "pr", "type": "integer", "default": 0},
        ],
        "max_ttl": "1d",
        "max_extends": 1,
        **overrides,
    }


async def test_environment_lifecycle_on_kubernetes(live: Api, kube_control_plane: ControlPlane, app_port: int) -> None:
    plane = kube_control_plane
    _, token = await tenant(live)
    created = await live.client.post("/v1/templates", json=template_body(app_port), headers=token)
    assert created.status_code == 201, created.text
    environment = await up(live, token, key="pr-4", template="preview", parameters={"version": "2", "pr": 4})
    running = await wait_env(live, environment["id"], token, lambda e: e["instance_state"] == "running", timeout=30)
    instance_id = running["instance_id"]
    assert generations(plane, instance_id) == [("1", "registry.example/web:2", 2)]
    (secret,) = objects(plane, "secret", instance_id)
    assert "env.PR" in secret["data"]
    same = await up(live, token, key="pr-4", template="preview", parameters={"version": "2", "pr": 4}, status=200)
    assert same["id"] == environment["id"]
    assert len(objects(plane, "deployment", instance_id)) == 1

    extended = await live.client.post(f"/v1/environments/{environment['id']}/extend", json={"by": "1h"}, headers=token)
    assert extended.status_code == 200
    spent = await live.client.post(f"/v1/environments/{environment['id']}/extend", json={"by": "1h"}, headers=token)
    assert spent.status_code == 409 and spent.json()["code"] == "extend_limit"

    ended = await live.client.post(
        f"/v1/environments/{environment['id']}/terminate", json={"hard": True}, headers=token
    )
    assert ended.status_code == 202
    await wait_env(live, environment["id"], token, lambda e: e["state"] == "terminated", timeout=30)
    await eventually(lambda: gone(plane, instance_id), "every object of the instance gone", timeout=30)


async def test_expiry_and_a_pool_claim_on_kubernetes(
    live: Api, kube_control_plane: ControlPlane, app_port: int
) -> None:
    plane = kube_control_plane
    _, token = await tenant(live)
    body = template_body(app_port, pool={"min_ready": 1, "max_ready": 1})
    assert (await live.client.post("/v1/templates", json=body, headers=token)).status_code == 201
    [member] = await ready_members(live, token, 1, timeout=30)
    assert generations(plane, member["instance_id"]) == [("1", "registry.example/web:1", 2)]
    claimed = await up(live, token, key="sandbox-1", template="preview", parameters={}, ttl="2s")
    assert claimed["id"] == member["id"]
    assert claimed["instance_state"] == "running"
    expired = await wait_env(live, claimed["id"], token, lambda e: e["state"] == "terminated", timeout=30)
    assert expired["termination_reason"] == "expired"
    await eventually(lambda: gone(plane, claimed["instance_id"]), "the expired instance's objects gone", timeout=30)
    [refilled] = await ready_members(live, token, 1, timeout=30)
    assert refilled["id"] != member["id"]
    assert len(objects(plane, "deployment", refilled["instance_id"])) == 1
