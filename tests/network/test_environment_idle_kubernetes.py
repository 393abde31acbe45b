"""Idle environments on the Kubernetes provider, against the real control plane
(``tests/providers/kube_cluster.py``: kwok runs the pods) behind a real Caddy: ``on_idle:
scale_to_zero`` scales the instance's Deployment to 0 (stopped mark, wanted count kept), and the
next request through the router scales it back and gets the app's answer.

The template labels the pods ``ctrlplane-test.pod-ip: 127.0.0.1`` (kwok's stages give them that IP)
and names the port of a loopback HTTP server of this test, so Caddy reaches "the pod" without a
container, and no request leaves this machine."""

from __future__ import annotations

from typing import Any

import anyio.to_thread
import msgspec
import pytest
from ctrlplane_kubernetes import KubernetesProvider
from ctrlplane_kubernetes.settings import KubernetesSettings

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.environments.helpers import tenant, up
from tests.api.test_instances import wait_for
from tests.api.test_instances_kubernetes import app_port  # noqa: F401 - fixture
from tests.api.test_instances_kubernetes_real import of_instance
from tests.conftest import Api
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.network.test_router_docker import through_router, until_served
from tests.network.test_router_traffic_docker import event_types
from tests.providers.kube_cluster import ControlPlane, kube_control_plane  # noqa: F401 - fixture
from tests.waiting import eventually


@pytest.fixture
def settings(settings: Settings, caddy: Caddy) -> Settings:
    return msgspec.structs.replace(
        settings,
        providers=("kubernetes",),
        router="caddy",
        router_admin_address=caddy.admin_address,
        router_http_listen=f"127.0.0.1:{caddy.http_port}",
        router_https_listen=f"127.0.0.1:{caddy.https_port}",
        router_sync_interval_seconds=1.0,
        router_drain_seconds=0.2,
        router_report_flush_seconds=0.3,
        idle_check_seconds=0.3,
        reconcile_interval_seconds=0.5,
    )


@pytest.fixture
def providers(settings: Settings, kube_control_plane: ControlPlane) -> ProviderRegistry:
    kube = KubernetesSettings(rollout_timeout_seconds=30, request_timeout_seconds=5)
    return ProviderRegistry(
        [KubernetesProvider(provider_settings(settings), configuration=kube_control_plane.configuration(), kube=kube)]
    )


def deployment_of(plane: ControlPlane, instance_id: str) -> dict[str, Any]:
    (deployment,) = of_instance(plane, "list_deployment_for_all_namespaces", instance_id)
    return deployment


# Slow by design: 10 s is the shortest idle timeout the API accepts (MIN_IDLE_TIMEOUT_SECONDS).
async def test_an_idle_environment_scales_its_deployment_to_zero_and_wakes_on_the_next_request(
    live: Api, caddy: Caddy, kube_control_plane: ControlPlane, app_port: int
) -> None:
    plane = kube_control_plane
    _, token = await tenant(live)
    template = {
        "name": "preview",
        "spec": {
            "image": "registry.example/web:1",
            "ports": [{"container_port": app_port}],
            "resources": {"cpu_millis": 100, "memory_mb": 64},
            "labels": {"ctrlplane-test.pod-ip": "127.0.0.1"},
        },
        "parameters": [{"name": "pr", "type": "integer", "required": True}],
    }
    created = await live.client.post("/v1/templates", json=template, headers=token)
    assert created.status_code == 201, created.text
    environment = await up(live, token, key="pr-1", parameters={"pr": 1}, idle_timeout="10s", on_idle="scale_to_zero")
    await until_served(caddy, environment["hostname"], b"ok")
    instance_id = environment["instance_id"]

    await wait_for(live, instance_id, token, lambda b: b["state"] == "sleeping", 60)

    def scaled_to_zero() -> bool:
        deployment = deployment_of(plane, instance_id)
        pods = of_instance(plane, "list_pod_for_all_namespaces", instance_id)
        return deployment["spec"]["replicas"] == 0 and not pods

    await eventually(lambda: anyio.to_thread.run_sync(scaled_to_zero), "the Deployment scaled to 0", timeout=30)
    annotations = deployment_of(plane, instance_id)["metadata"]["annotations"]
    assert annotations["ctrlplane.io/replicas"] == "1" and "ctrlplane.io/stopped" in annotations
    assert "environment.idle" in await event_types(live, token, instance_id)
    still = (await live.client.get(f"/v1/environments/{environment['id']}", headers=token)).json()
    assert still["state"] == "active" and still["hostname"] == environment["hostname"]

    woken = await through_router(caddy, environment["hostname"], timeout=40)
    assert woken.status_code == 200 and woken.content == b"ok"
    types = await event_types(live, token, instance_id)
    assert "environment.woken" in types and "instance.woken" in types
    deployment = deployment_of(plane, instance_id)
    assert deployment["spec"]["replicas"] == 1
    assert "ctrlplane.io/stopped" not in (deployment["metadata"].get("annotations") or {})
