"""The release phase, one-off runs and a scheduled job's firings on the Kubernetes provider through
the HTTP API, on the real control plane of ``tests/providers/kube_cluster.py``: the real API server
validates each run's Job, the real Job controller makes its pod (and finalizes it), the scheduler
places it on kwok's node, and the garbage collector removes what the provider's deletion leaves.

kwok plays the kubelet (``kwok-stages.yaml``): a Job's pod labelled ``ctrlplane-test.exit-code: "N"``
runs, then ends with exit code N (phase Succeeded for 0, else Failed); without the label it runs
until deleted. The label reaches the pod the way any label does: it is the instance's own label,
which the provider puts on its runs' Jobs and pods as on its replicas. Its replicas carry
``ctrlplane-test.pod-ip: 127.0.0.1`` as in ``test_instances_kubernetes_real.py``, so the deploy
gate's HTTP check reaches this test's loopback server.

kwok runs no kubelet, so the API server cannot serve ``pods/log``: here a run's output says its
logs were unavailable. What a run printed is tested against the emulator
(``test_runs_kubernetes.py``), which serves a log.
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from kubernetes import client

from ctrlplane.settings import Settings
from tests.api.test_deployments import finished
from tests.api.test_instances import state, wait_for
from tests.api.test_instances_kubernetes import IMAGE_V1, IMAGE_V2, app_port  # noqa: F401 - fixture
from tests.api.test_instances_kubernetes_real import generations, providers  # noqa: F401 - fixture
from tests.api.test_runs_docker import events, run_ended
from tests.conftest import Api, bearer
from tests.providers.kube_cluster import ControlPlane, kube_control_plane  # noqa: F401 - fixture
from tests.waiting import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """``test_instances_kubernetes_real``'s, and a job may fire every two seconds."""
    return msgspec.structs.replace(
        settings,
        providers=("kubernetes",),
        canary_observation_seconds=0.5,
        deploy_health_timeout_seconds=20,
        job_allow_seconds=True,
        job_tick_seconds=0.3,
    )


def logs_unavailable(run: dict[str, Any]) -> bool:
    """The executor's note that it could not read the output (the API server's pods/log failed)."""
    output = str(run["output"])
    return output.startswith("(output unavailable: ") and f"the output of run {run['id']}" in output


async def kube_instance(
    live: Api, app_port: int, exit_code: int | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    tenant = await live.create_tenant("acme", plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    labels = {"ctrlplane-test.pod-ip": "127.0.0.1"}
    if exit_code is not None:
        labels["ctrlplane-test.exit-code"] = str(exit_code)
    body = {
        "name": "web",
        "image": IMAGE_V1,
        "ports": [{"container_port": app_port}],
        "resources": {"cpu_millis": 200, "memory_mb": 64},
        "labels": labels,
        "provider_name": "kubernetes",
    }
    created = await live.client.post("/v1/instances", json=body, headers=token)
    assert created.status_code == 201, created.text
    return await wait_for(live, created.json()["id"], token, state("running"), timeout=60), token


def of_run(plane: ControlPlane, kind: str, run_id: str) -> list[dict[str, Any]]:
    """Every Job, pod or Secret of the run, terminating ones too."""
    with plane.api() as api:
        lister = {
            "jobs": client.BatchV1Api(api).list_job_for_all_namespaces,
            "pods": client.CoreV1Api(api).list_pod_for_all_namespaces,
            "secrets": client.CoreV1Api(api).list_secret_for_all_namespaces,
        }[kind]
        response = lister(label_selector=f"ctrlplane.run={run_id}", _preload_content=False)
    return list(json.loads(response.data)["items"])


async def all_gone(plane: ControlPlane, run_id: str) -> None:
    """The run's Job, pod and Secret are deleted, not only marked for deletion: the Job controller
    lifts its tracking finalizer from the pod, and kwok removes the pod."""

    def gone() -> bool:
        return not any(of_run(plane, kind, run_id) for kind in ("jobs", "pods", "secrets"))

    await eventually(gone, f"run {run_id}'s Job, pod and Secret are gone", timeout=30)


async def release_run_id(live: Api, instance_id: str, token: dict[str, str]) -> str:
    started = [e for e in await events(live, instance_id, token) if e["type"] == "deploy.release_started"]
    assert len(started) == 1, started
    return str(started[0]["data"]["run_id"])


@pytest.mark.parametrize(("exit_code", "outcome"), [(0, "succeeded"), (3, "failed")])
async def test_a_release_phase_job_on_a_real_api_server_decides_the_deploy_by_its_exit_code(
    live: Api, kube_control_plane: ControlPlane, app_port: int, exit_code: int, outcome: str
) -> None:
    plane = kube_control_plane
    instance, token = await kube_instance(live, app_port, exit_code)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": IMAGE_V2, "release_command": ["bin/migrate"], "release_timeout": 60},
        headers=token,
    )
    assert response.status_code == 201, response.text
    done = await finished(live, response.json()["id"], token, timeout=90)
    assert done["state"] == outcome, done
    run = await run_ended(live, await release_run_id(live, instance["id"], token), token)
    assert (run["kind"], run["state"], run["exit_code"]) == ("release", outcome, exit_code)
    assert logs_unavailable(run), run["output"]
    if outcome == "failed":
        assert f"exited with code {exit_code}" in done["error"]
        assert generations(plane, instance["id"]) == [("1", IMAGE_V1, 1)]
        after = await wait_for(live, instance["id"], token, state("running"), timeout=10)
        assert after["image"] == IMAGE_V1 and after["current_release_id"] == instance["current_release_id"]
    else:
        names = [s["name"] for s in done["steps"]]
        assert names.index("release phase succeeded") < names.index("start replicas up to 1")
        assert generations(plane, instance["id"]) == [("2", IMAGE_V2, 1)]
    await all_gone(plane, run["id"])


async def test_a_one_off_run_on_a_real_api_server_returns_its_pods_exit_code(
    live: Api, kube_control_plane: ControlPlane, app_port: int
) -> None:
    plane = kube_control_plane
    instance, token = await kube_instance(live, app_port, exit_code=5)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/runs", json={"command": ["bin/backfill"], "timeout": 60}, headers=token
    )
    assert response.status_code == 201, response.text
    run = await run_ended(live, response.json()["id"], token, timeout=90)
    assert (run["state"], run["exit_code"], run["error"]) == ("failed", 5, "exited with code 5"), run
    assert logs_unavailable(run), run["output"]
    await all_gone(plane, run["id"])
    assert generations(plane, instance["id"]) == [("1", IMAGE_V1, 1)]  # the serving replica, untouched


async def test_a_run_whose_pod_never_ends_is_killed_at_its_timeout_and_removed(
    live: Api, kube_control_plane: ControlPlane, app_port: int
) -> None:
    plane = kube_control_plane
    instance, token = await kube_instance(live, app_port)  # no exit code: kwok keeps the pod running
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/runs", json={"command": ["sleep", "infinity"], "timeout": 6}, headers=token
    )
    assert response.status_code == 201, response.text
    run_id = response.json()["id"]

    def running_pod_of_the_job() -> dict[str, Any] | None:
        pods = [
            p
            for p in of_run(plane, "pods", run_id)
            if p.get("status", {}).get("phase") == "Running"
            and [o["kind"] for o in p["metadata"].get("ownerReferences", [])] == ["Job"]
        ]
        return pods[0] if pods else None

    pod = await eventually(running_pod_of_the_job, "the Job controller's pod runs", timeout=30)
    assert pod["spec"]["containers"][0]["command"] == ["sleep", "infinity"]
    assert pod["spec"]["restartPolicy"] == "Never"
    run = await run_ended(live, run_id, token, timeout=60)
    assert (run["state"], run["exit_code"]) == ("failed", 137), run
    assert run["error"] == "timed out after 6s and was killed"
    assert logs_unavailable(run), run["output"]
    await all_gone(plane, run_id)


async def test_a_scheduled_jobs_firings_run_as_jobs_on_a_real_api_server(
    live: Api, kube_control_plane: ControlPlane, app_port: int
) -> None:
    plane = kube_control_plane
    instance, token = await kube_instance(live, app_port, exit_code=0)
    created = await live.client.post(
        f"/v1/instances/{instance['id']}/jobs",
        json={"name": "tick", "schedule": "*/2 * * * * *", "command": ["bin/tick"], "timeout": 60},
        headers=token,
    )
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]

    async def two_ended() -> list[dict[str, Any]] | None:
        job = (await live.client.get(f"/v1/jobs/{job_id}", headers=token)).json()
        ended = [r for r in job["recent_runs"] if r["state"] not in ("pending", "running", "missed")]
        return ended if len(ended) >= 2 else None

    await eventually(two_ended, "two firings of the job ended", timeout=60)
    disabled = await live.client.patch(f"/v1/jobs/{job_id}", json={"enabled": False}, headers=token)
    assert disabled.status_code == 200, disabled.text

    async def all_ended() -> list[dict[str, Any]] | None:
        runs = (await live.client.get(f"/v1/jobs/{job_id}", headers=token)).json()["recent_runs"]
        return runs if all(r["state"] not in ("pending", "running") for r in runs) else None

    # a firing while the previous one runs is "missed" (concurrency "forbid"): it made no Job
    runs = [r for r in await eventually(all_ended, "the job's last firing ended", timeout=60) if r["state"] != "missed"]
    assert len(runs) >= 2 and {(r["kind"], r["state"], r["exit_code"]) for r in runs} == {("job", "succeeded", 0)}, runs
    assert all(logs_unavailable(r) for r in runs), [r["output"] for r in runs]
    for run in runs:
        await all_gone(plane, run["id"])
