"""Deploys judged by traffic, through a real Caddy in front of real containers: the test drives
requests through the router while the canary is observed; a canary whose image answers 500 to one
request in ten is rolled back at its first step with the measured ratio in its steps, and a healthy
one passes every step up to 100%. The per-replica counts come from Caddy's own reverse-proxy log
lines, received by ctrlplane's access-log sink."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import msgspec
import pytest
from docker import DockerClient

from ctrlplane.settings import Settings
from tests.api.test_deployments import finished
from tests.api.test_instances_docker import (  # noqa: F401 - fixtures
    _remove_what_the_test_made,
    providers,
    tenant,
)
from tests.conftest import Api
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.network.test_router_docker import running_instance, until_served
from tests.providers.docker_engine import (  # noqa: F401 - docker_engine is a fixture
    HTTP_PORT,
    INDEX_BODY,
    V2_BODY,
    V2_IMAGE,
    docker_engine,
    ensure_variant_images,
    import_once,
    rootfs_tar,
)

pytestmark = pytest.mark.docker

HOST = "web.acme.localhost"
FLAKY_IMAGE = "ctrlplane-test/busybox:flaky"
FLAKY_PATH = "/cgi-bin/app"
# every tenth request this replica serves is a 500 (busybox httpd passes a CGI's own status line on)
FLAKY_CGI = b"""#!/bin/sh
n=$(( $(cat /tmp/count 2>/dev/null || echo 0) + 1 ))
echo $n > /tmp/count
if [ $((n % 10)) -eq 0 ]; then
  printf 'HTTP/1.1 500 Internal Server Error\\r\\nContent-Type: text/plain\\r\\n\\r\\nfailed\\n'
else
  printf 'Content-Type: text/plain\\r\\n\\r\\nok\\n'
fi
"""


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
        router_drain_seconds=0.2,
        router_report_flush_seconds=0.3,
    )


@pytest.fixture(scope="module")
def analysis_images(docker_engine: DockerClient) -> Iterator[None]:
    ensure_variant_images(docker_engine)
    import_once(
        docker_engine,
        FLAKY_IMAGE,
        lambda: rootfs_tar({"www/cgi-bin/app": FLAKY_CGI}, extra_applets=("chmod", "printf", "[")),
        [
            f'CMD ["/bin/sh", "-c", "chmod 755 /www/cgi-bin/app && exec httpd -f -p {HTTP_PORT} -h /www"]',
            "ENV PATH=/bin",
        ],
    )
    yield


@dataclass
class Driver:
    """Requests ``path`` through Caddy every 10 ms until stopped, counting the answers."""

    caddy: Caddy
    path: str
    statuses: Counter[int] = field(default_factory=Counter)
    bodies: Counter[bytes] = field(default_factory=Counter)
    stopped: bool = False

    async def run(self) -> None:
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=self.caddy.http_url, timeout=10, limits=limits) as client:
            while not self.stopped:
                try:
                    response = await client.get(self.path, headers={"Host": HOST})
                    self.statuses[response.status_code] += 1
                    self.bodies[response.content] += 1
                except httpx.TransportError:
                    self.statuses[0] += 1
                await asyncio.sleep(0.01)


async def deploy_under_traffic(
    live: Api, caddy: Caddy, token: dict[str, str], path: str, body: dict[str, Any]
) -> tuple[dict[str, Any], Driver]:
    instance = await running_instance(live, token)
    await until_served(caddy, HOST, INDEX_BODY)
    driver = Driver(caddy, path)
    task = asyncio.create_task(driver.run())
    try:
        response = await live.client.post(f"/v1/instances/{instance['id']}/deploy", json=body, headers=token)
        assert response.status_code == 201, response.text
        done = await finished(live, response.json()["id"], token, timeout=150)
    finally:
        driver.stopped = True
        await task
    return done, driver


def judged(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return [step["analysis"] for step in deployment["steps"] if step.get("analysis")]


async def test_a_canary_answering_500_to_a_tenth_of_requests_is_rolled_back_at_the_first_step(
    live: Api, caddy: Caddy, docker_engine: DockerClient, analysis_images: None
) -> None:
    token = await tenant(live, "acme")
    analysis = {"max_error_ratio": 0.05, "min_requests": 10, "window": "3s"}
    done, driver = await deploy_under_traffic(
        live,
        caddy,
        token,
        FLAKY_PATH,
        {"image": FLAKY_IMAGE, "strategy": "canary", "steps": [10, 50, 100], "analysis": analysis},
    )
    assert done["state"] == "rolled_back", done
    results = judged(done)
    assert len(results) == 1 and results[0]["outcome"] == "failed" and results[0]["weight"] == 10, results
    measured = results[0]["measured"]
    assert measured["requests"] >= 10 and 0.05 < measured["error_ratio"] <= 0.1, measured
    assert "exceeded max_error_ratio" in done["error"]
    assert driver.statuses[500] >= 1, driver.statuses  # the canary's failures did reach clients
    events = (await live.client.get("/v1/events", headers=token)).json()["items"]
    failed = [e for e in events if e["type"] == "deploy.analysis_failed"]
    assert failed and failed[0]["data"]["analysis"]["measured"] == measured
    await until_served(caddy, HOST, INDEX_BODY)


# Slow by design: three canary steps, each analysed over its 2 s window of real traffic through Caddy.
async def test_a_healthy_canary_passes_each_step_and_reaches_100_percent(
    live: Api, caddy: Caddy, docker_engine: DockerClient, analysis_images: None
) -> None:
    token = await tenant(live, "acme")
    analysis = {"max_error_ratio": 0.05, "max_p99_ms": 1000, "min_requests": 5, "window": "2s"}
    done, driver = await deploy_under_traffic(
        live, caddy, token, "/", {"image": V2_IMAGE, "strategy": "canary", "steps": [10, 50, 100], "analysis": analysis}
    )
    assert done["state"] == "succeeded", done
    results = judged(done)
    assert [(r["outcome"], r["weight"]) for r in results] == [("passed", 10), ("passed", 50), ("passed", 100)]
    assert all(r["measured"]["error_ratio"] == 0 and r["measured"]["requests"] >= 5 for r in results), results
    assert driver.bodies[V2_BODY] > 0
    await until_served(caddy, HOST, V2_BODY)
