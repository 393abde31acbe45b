"""Routes through a real Caddy in front of real containers: strip_prefix, same-path weights over
200 requests, and a deleted route's traffic stopping."""

from __future__ import annotations

from collections import Counter

import msgspec
import pytest
from docker import DockerClient

from ctrlplane.settings import Settings
from tests.api.test_instances import tenant_token
from tests.api.test_instances_docker import _remove_what_the_test_made, providers  # noqa: F401 - fixtures
from tests.conftest import Api
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.network.test_router_docker import through_router, until_served
from tests.providers.docker_engine import INDEX_BODY, docker_engine, import_once, rootfs_tar  # noqa: F401 - fixture
from tests.waiting import eventually

pytestmark = pytest.mark.docker


@pytest.fixture
def settings(settings: Settings, caddy: Caddy) -> Settings:
    return msgspec.structs.replace(
        settings,
        providers=("docker",),
        router="caddy",
        router_admin_address=caddy.admin_address,
        router_http_listen=f"127.0.0.1:{caddy.http_port}",
        router_https_listen=f"127.0.0.1:{caddy.https_port}",
        router_sync_interval_seconds=1.0,
    )


TWO_PORTS = "ctrlplane-test/busybox:two-ports"


def ensure_two_port_image(engine: DockerClient) -> None:
    """The test image serving "port 8080" on 8080 and "port 8081" on 8081 (and /www on 8082)."""
    script = (
        "mkdir -p /tmp/a /tmp/b && echo port 8080 > /tmp/a/index.html && echo port 8081 > /tmp/b/index.html && "
        "httpd -p 8081 -h /tmp/b && httpd -p 8082 -h /www && exec httpd -f -p 8080 -h /tmp/a"
    )
    import_once(engine, TWO_PORTS, rootfs_tar, [f'CMD ["/bin/sh", "-c", "{script}"]', "ENV PATH=/bin"])


async def test_strip_prefix_weights_and_deletion_with_real_requests(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    ensure_two_port_image(docker_engine)
    _, token = await tenant_token(live)
    body = {
        "name": "web",
        "image": TWO_PORTS,
        "ports": [{"container_port": 8080}, {"container_port": 8081}, {"container_port": 8082}],
        "resources": {"cpu_millis": 200, "memory_mb": 32},
    }
    created = await live.client.post("/v1/instances", json=body, headers=token)
    assert created.status_code == 201, created.text
    url = f"/v1/instances/{created.json()['id']}/routes"
    host = "web.acme.localhost"
    await until_served(caddy, host, b"port 8080\n")

    stripped = await live.client.post(url, json={"path": "/files", "port": 8082, "strip_prefix": True}, headers=token)
    kept = await live.client.post(url, json={"path": "/raw", "port": 8082, "strip_prefix": False}, headers=token)
    assert stripped.status_code == kept.status_code == 201
    await until_served(caddy, host, INDEX_BODY, path="/files/index.html")
    assert (await through_router(caddy, host, "/files")).content == INDEX_BODY
    unstripped = await through_router(caddy, host, "/raw/index.html")
    assert unstripped.status_code == 404, "without strip_prefix busybox httpd looks for /www/raw/index.html"

    a = await live.client.post(
        url, json={"path": "/split", "port": 8080, "weight": 25, "strip_prefix": True}, headers=token
    )
    b = await live.client.post(
        url, json={"path": "/split", "port": 8081, "weight": 75, "strip_prefix": True}, headers=token
    )
    assert a.status_code == b.status_code == 201
    await until_served(caddy, host, b"port 8081\n", path="/split/index.html")
    await until_served(caddy, host, b"port 8080\n", path="/split/index.html")  # both weights pushed
    seen: Counter[bytes] = Counter()
    for _ in range(200):
        response = await through_router(caddy, host, "/split/index.html")
        assert response.status_code == 200
        seen[response.content] += 1
    assert 150 - 25 <= seen[b"port 8081\n"] <= 150 + 25, seen
    assert seen[b"port 8080\n"] + seen[b"port 8081\n"] == 200

    assert (await live.client.delete(f"/v1/routes/{stripped.json()['id']}", headers=token)).status_code == 204

    async def withdrawn() -> bool:
        return (await through_router(caddy, host, "/files/index.html")).content != INDEX_BODY

    await eventually(withdrawn, "the deleted route's withdrawal", timeout=10)
    gone = await through_router(caddy, host, "/files/index.html")
    assert gone.status_code == 404, "the deleted route still carries traffic (/ serves /tmp/a, which has no /files)"
