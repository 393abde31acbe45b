"""A deploy's traffic analysis through the API, against the fake provider: bad analyses and steps
are refused with nothing written, and the engine judges what the router stored for the new
replicas (inserted here as the sink would) at each canary step; a failed judgement rolls back with
the measured ratio in the steps, a ``deploy.analysis_failed`` event and the CLI's exit code 8.
The same through a real Caddy is in tests/network/test_deploy_analysis_docker.py."""

from __future__ import annotations

import asyncio
from typing import Any

import msgspec
import pytest
from litestar import Litestar

from ctrlplane.deployments.models import Deployment
from ctrlplane.network.access import DURATION_BUCKETS
from ctrlplane.network.models import UpstreamRequestSample
from ctrlplane.settings import Settings
from ctrlplane.timeutil import utc_now
from tests.api.test_cli_pipeline import cli
from tests.api.test_deployments import APP, finished, running_instance
from tests.api.test_instances import tenant_token
from tests.conftest import Api
from tests.fakes import FakeProvider
from tests.waiting import eventually


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, canary_observation_seconds=1, deploy_health_timeout_seconds=5, router_report_flush_seconds=0.2
    )


@pytest.mark.parametrize(
    "body",
    [
        {"strategy": "canary", "steps": [50, 10, 100]},
        {"strategy": "canary", "steps": [10, 120]},
        {"strategy": "canary", "steps": [10, 50]},
        {"strategy": "rolling", "steps": [10, 100]},
        {"analysis": {"min_requests": 5}},
        {"analysis": {"max_error_ratio": 1.5}},
        {"analysis": {"max_error_ratio": 0.1, "window": "forever"}},
        {"analysis": {"max_p99_ms": 100, "surprise": 1}},
    ],
)
async def test_a_bad_analysis_or_steps_is_400_and_writes_nothing(api: Api, body: dict[str, Any]) -> None:
    _, token = await tenant_token(api)
    instance = (await api.client.post("/v1/instances", json=APP, headers=token)).json()
    response = await api.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": "a:2", **body}, headers=token
    )
    assert response.status_code == 400, response.text
    assert {"message", "code", "request_id"} <= set(response.json())
    listed = await api.client.get(f"/v1/instances/{instance['id']}/deployments", headers=token)
    assert listed.json()["total"] == 0


async def store_round_trips(app: Litestar, deployment_id: str, requests: int, errors: int) -> None:
    """What the access-log sink stores for the canary (replica 0 of the new generation) per flush."""
    async with app.state.services.db.write() as session, session.begin():
        deployment = await session.get(Deployment, deployment_id)
        assert deployment is not None
        buckets = [0] * (len(DURATION_BUCKETS) + 1)
        buckets[0] = requests
        session.add(
            UpstreamRequestSample(
                instance_id=deployment.instance_id,
                generation=deployment.generation,
                replica=0,
                taken_at=utc_now(),
                tenant_id=deployment.tenant_id,
                requests=requests,
                errors=errors,
                duration_buckets=buckets,
            )
        )


async def feed_until_finished(live: Api, app: Litestar, token: dict[str, str], errors: int) -> dict[str, Any]:
    """Find the instance's deployment, then keep storing round trips for it until it ends."""
    instance_id = (await live.client.get("/v1/instances", headers=token)).json()["items"][0]["id"]

    async def first_deployment() -> dict[str, Any] | None:
        items = (await live.client.get(f"/v1/instances/{instance_id}/deployments", headers=token)).json()["items"]
        return dict(items[0]) if items else None

    deployment = await eventually(first_deployment, "the instance's deployment")
    while True:
        current = (await live.client.get(f"/v1/deployments/{deployment['id']}", headers=token)).json()
        if current["state"] in ("succeeded", "failed", "rolled_back", "cancelled"):
            return dict(current)
        await store_round_trips(app, deployment["id"], requests=20, errors=errors)
        await asyncio.sleep(0.1)


async def test_a_canary_over_its_error_ratio_is_rolled_back_at_the_first_step_and_the_cli_exits_8(
    live: Api, live_server: str, app: Litestar, fake: FakeProvider
) -> None:
    tenant_id, token = await tenant_token(live)
    await running_instance(live, token)
    key = (await live.create_key(tenant_id, ["deploy"]))["key"]
    args = ("--strategy", "canary", "--steps", "10,50,100", "--max-error-ratio", "0.05", "--min-requests", "10")
    command = asyncio.create_task(
        cli(live_server, key, "deploy", "web", "--image", "a:2", "--analysis-window", "1s", "--wait", *args)
    )
    done = await feed_until_finished(live, app, token, errors=2)
    result = await command
    assert result.returncode == 8, result.stdout + result.stderr
    assert "deploy.analysis_failed" in result.stdout
    assert done["state"] == "rolled_back" and "error ratio 0.1 (max 0.05)" in done["error"]
    assert done["canary_steps"] == [10, 50, 100] and done["analysis"]["max_error_ratio"] == 0.05
    judged = [step["analysis"] for step in done["steps"] if step.get("analysis")]
    assert len(judged) == 1, done["steps"]
    assert judged[0]["outcome"] == "failed" and judged[0]["weight"] == 10
    assert judged[0]["measured"]["error_ratio"] == 0.1 and judged[0]["exceeded"] == ["max_error_ratio"]
    events = (await live.client.get("/v1/events", headers=token)).json()
    failed = [e for e in events["items"] if e["type"] == "deploy.analysis_failed"]
    assert failed and failed[0]["data"]["analysis"]["measured"]["error_ratio"] == 0.1
    instance = (await live.client.get("/v1/instances", headers=token)).json()["items"][0]
    assert instance["image"] == APP["image"]


async def test_a_healthy_canary_passes_every_step_and_reaches_100(live: Api, app: Litestar, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await running_instance(live, token)
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={
            "image": "a:2",
            "strategy": "canary",
            "steps": [25, 100],
            "analysis": {"max_error_ratio": 0.05, "max_p99_ms": 500, "min_requests": 10, "window": "1s"},
        },
        headers=token,
    )
    assert response.status_code == 201, response.text
    done = await feed_until_finished(live, app, token, errors=0)
    assert done["state"] == "succeeded", done
    judged = [step["analysis"] for step in done["steps"] if step.get("analysis")]
    assert [(j["outcome"], j.get("weight")) for j in judged] == [("passed", 25), ("passed", 100)]
    assert all(j["measured"]["error_ratio"] == 0 for j in judged)
    assert (await finished(live, done["id"], token))["state"] == "succeeded"


@pytest.mark.parametrize(("strategy", "errors", "judgements"), [("rolling", 0, 2), ("blue_green", 5, 1)])
async def test_rolling_and_blue_green_deploys_are_judged_too(
    live: Api, app: Litestar, fake: FakeProvider, strategy: str, errors: int, judgements: int
) -> None:
    """Rolling: after each new replica joins; blue-green: after the switch, before the old set goes."""
    _, token = await tenant_token(live)
    instance = await running_instance(live, token)
    analysis = {"max_error_ratio": 0.1, "min_requests": 10, "window": "1s"}
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy",
        json={"image": "a:2", "strategy": strategy, "analysis": analysis},
        headers=token,
    )
    assert response.status_code == 201, response.text
    done = await feed_until_finished(live, app, token, errors=errors)
    results = judged(done)
    assert len(results) == judgements and all("weight" not in r for r in results), done["steps"]
    if errors:
        assert done["state"] == "rolled_back" and results[-1]["measured"]["error_ratio"] == 0.25
        assert (await live.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()["image"] == APP["image"]
    else:
        assert done["state"] == "succeeded" and all(r["outcome"] == "passed" for r in results)


def judged(deployment: dict[str, Any]) -> list[dict[str, Any]]:
    return [step["analysis"] for step in deployment["steps"] if step.get("analysis")]
