"""The Kubernetes provider through the HTTP API with kmock's emulator (``tests/providers/
kube_emulator.py``), and the helpers the other Kubernetes API tests share (``app_port``: a loopback
HTTP server the pods' endpoints point at; ``deploy``).

The created/deployed/rolled back flow and the failed gate run against the real control plane
(``test_instances_kubernetes_real.py``); what is left here is an API server that cannot be
reached at all (a closed port).
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

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from tests.api.test_deployments import finished
from tests.conftest import Api, bearer
from tests.providers.kube_emulator import Cluster, closed_port, configuration, start_cluster

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
    return ProviderRegistry(
        [KubernetesProvider(provider_settings(settings), configuration=configuration(url), kube=kube)]
    )


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


async def deploy(api: Api, path: str, token: dict[str, str], **body: Any) -> dict[str, Any]:
    response = await api.client.post(path, json=body, headers=token)
    assert response.status_code == 201, response.text
    return await finished(api, response.json()["id"], token, timeout=60)


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
