"""What a run's pod printed, through the HTTP API, with the emulator playing the Job controller and
the kubelet: the real control plane's node (kwok) runs no kubelet, so it cannot serve ``pods/log``
(``test_runs_kubernetes_real.py`` tests everything else about runs' Jobs there, and that a run's
output then says its logs were unavailable). Here the emulator writes the pod's log, and it comes
back as the run's output and in a failed release phase's step."""

from __future__ import annotations

import asyncio
from typing import Any

from tests.api.test_deployments import finished
from tests.api.test_instances import state, wait_for
from tests.api.test_instances_kubernetes import (  # noqa: F401 - fixtures
    IMAGE_V1,
    IMAGE_V2,
    app_port,
    cluster,
    generations,
    providers,
    settings,
)
from tests.api.test_runs_docker import run_ended
from tests.conftest import Api, bearer
from tests.providers.kube_emulator import JOBS, Cluster


async def kube_instance(live: Api, app_port: int) -> tuple[dict[str, Any], dict[str, str]]:
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    body = {
        "name": "web",
        "image": IMAGE_V1,
        "ports": [{"container_port": app_port}],
        "resources": {"cpu_millis": 200, "memory_mb": 64},
        "provider_name": "kubernetes",
    }
    created = await live.client.post("/v1/instances", json=body, headers=token)
    assert created.status_code == 201, created.text
    return await wait_for(live, created.json()["id"], token, state("running"), timeout=30), token


async def job_pod(cluster: Cluster) -> dict[str, Any]:
    for _ in range(400):
        pods = [p for p in cluster.job_pods() if p.get("status", {}).get("containerStatuses")]
        if pods:
            return pods[0]
        await asyncio.sleep(0.05)
    raise AssertionError("no run pod started")


async def test_a_failed_release_phase_on_kubernetes_shows_what_its_pod_printed(
    live: Api, cluster: Cluster, app_port: int
) -> None:
    instance, token = await kube_instance(live, app_port)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": IMAGE_V2, "release_command": ["bin/migrate"]},
        headers=token,
    )
    assert response.status_code == 201, response.text
    pod = await job_pod(cluster)
    cluster.write_log(pod["metadata"]["name"], "migrating to 0042")
    cluster.crash(pod, 2)
    done = await finished(live, response.json()["id"], token, timeout=60)
    assert done["state"] == "failed", done
    failed_step = next(s for s in done["steps"] if s["name"] == "release phase failed")
    assert "migrating to 0042" in failed_step["message"]
    runs = (await live.client.get(f"/v1/instances/{instance['id']}/runs", headers=token)).json()["items"]
    run = await run_ended(live, runs[0]["id"], token)
    assert run["exit_code"] == 2 and run["output"] == "migrating to 0042"
    assert cluster.objects(JOBS) == {}
    assert generations(cluster, instance["id"]) == [("1", IMAGE_V1, 1)]


async def test_a_one_off_run_on_kubernetes_returns_what_its_pod_printed(
    live: Api, cluster: Cluster, app_port: int
) -> None:
    instance, token = await kube_instance(live, app_port)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/runs", json={"command": "bin/backfill"}, headers=token
    )
    assert response.status_code == 201, response.text
    pod = await job_pod(cluster)
    cluster.write_log(pod["metadata"]["name"], "backfilled 12 rows")
    cluster.crash(pod, 5)
    run = await run_ended(live, response.json()["id"], token)
    assert run["state"] == "failed" and run["exit_code"] == 5 and run["output"] == "backfilled 12 rows"
    assert len(cluster.pods(instance["id"])) == 1  # the serving replica, untouched
