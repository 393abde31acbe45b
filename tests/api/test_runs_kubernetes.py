"""The release phase and one-off runs on the Kubernetes provider through the HTTP API, with the
emulator playing the Job controller and the kubelet: a Job per run, whose pod's exit code and log
decide the deploy and come back as the run's."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

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


@pytest.mark.parametrize(("exit_code", "outcome"), [(0, "succeeded"), (2, "failed")])
async def test_a_release_phase_on_kubernetes_is_a_job_whose_exit_code_decides_the_deploy(
    live: Api, cluster: Cluster, app_port: int, exit_code: int, outcome: str
) -> None:
    instance, token = await kube_instance(live, app_port)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": IMAGE_V2, "release_command": ["bin/migrate"]},
        headers=token,
    )
    assert response.status_code == 201, response.text
    pod = await job_pod(cluster)
    [job] = cluster.objects(JOBS).values()
    assert job["spec"]["template"]["spec"]["containers"][0]["image"] == IMAGE_V2
    assert generations(cluster, instance["id"]) == [("1", IMAGE_V1, 1)]  # nothing replaced yet
    cluster.write_log(pod["metadata"]["name"], "migrating to 0042")
    cluster.crash(pod, exit_code)
    done = await finished(live, response.json()["id"], token, timeout=60)
    assert done["state"] == outcome, done
    runs = (await live.client.get(f"/v1/instances/{instance['id']}/runs", headers=token)).json()["items"]
    run = await run_ended(live, runs[0]["id"], token)
    assert run["exit_code"] == exit_code and "migrating to 0042" in run["output"]
    assert cluster.objects(JOBS) == {}
    if outcome == "failed":
        assert generations(cluster, instance["id"]) == [("1", IMAGE_V1, 1)]
    else:
        assert [g[:2] for g in generations(cluster, instance["id"])] == [("2", IMAGE_V2)]


async def test_a_one_off_run_on_kubernetes_returns_its_exit_code(live: Api, cluster: Cluster, app_port: int) -> None:
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
