"""The CI commands (`ctrlplane deploy|rollback|status|releases`) against a live server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
from typing import Any

import msgspec
import pytest

from ctrlplane.settings import Settings
from tests import forkserve
from tests.api.test_deployments import APP, running_instance
from tests.api.test_instances import tenant_token
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, canary_observation_seconds=3, deploy_health_timeout_seconds=5)


async def cli(live_server: str, token: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CTRLPLANE_")}
    env["CTRLPLANE_URL"] = live_server
    if token is not None:
        env["CTRLPLANE_TOKEN"] = token
    return await asyncio.to_thread(forkserve.run, "ctrlplane.cli", args, env, timeout=90)


async def setup(live: Api) -> tuple[str, dict[str, Any]]:
    tenant_id, token = await tenant_token(live)
    instance = await running_instance(live, token)
    key = await live.create_key(tenant_id, ["deploy"])
    return key["key"], instance


async def test_deploy_wait_exits_0_on_success_and_shows_progress(live: Api, live_server: str) -> None:
    key, instance = await setup(live)
    result = await cli(live_server, key, "deploy", "web", "--image", "ctrlplane-test/busybox:2", "--wait")
    assert result.returncode == 0, result.stderr
    assert "deploy.started" in result.stdout
    assert "health.passed" in result.stdout
    assert "succeeded" in result.stdout.splitlines()[-1]
    status = await cli(live_server, key, "status", instance["id"])
    assert "ctrlplane-test/busybox:2" in status.stdout


async def test_deploy_wait_exits_3_when_it_rolls_back(live: Api, live_server: str, fake: FakeProvider) -> None:
    key, _ = await setup(live)
    fake.missing_images.add("ghcr.io/nobody/broken:1")
    result = await cli(live_server, key, "deploy", "web", "--image", "ghcr.io/nobody/broken:1", "--wait", "--json")
    assert result.returncode == 3, result.stdout + result.stderr
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert lines[-1]["result"] == "rolled_back"


async def test_deploy_wait_exits_5_on_timeout(live: Api, live_server: str) -> None:
    key, _ = await setup(live)
    result = await cli(
        live_server, key, "deploy", "web", "--image", "a:2", "--strategy", "canary", "--wait", "--timeout", "1s"
    )
    assert result.returncode == 5, result.stdout + result.stderr
    assert "timed out" in result.stdout


async def test_a_retried_deploy_step_does_not_deploy_twice(live: Api, live_server: str) -> None:
    key, instance = await setup(live)
    args = ("deploy", "web", "--image", "ctrlplane-test/busybox:2", "--commit-sha", "abc123")
    first = await cli(live_server, key, *args)
    second = await cli(live_server, key, *args)
    assert first.returncode == second.returncode == 0
    assert "replayed" in second.stdout and "replayed" not in first.stdout
    deployments = (await live.client.get(f"/v1/instances/{instance['id']}/deployments", headers=bearer(key))).json()
    assert deployments["total"] == 1


async def test_rollback_previous_and_releases(live: Api, live_server: str) -> None:
    key, _ = await setup(live)
    assert (
        await cli(live_server, key, "deploy", "web", "--image", "ctrlplane-test/busybox:2", "--wait")
    ).returncode == 0
    back = await cli(live_server, key, "rollback", "web", "--previous", "--wait")
    assert back.returncode == 0, back.stdout + back.stderr
    listed = await cli(live_server, key, "releases", "web")
    lines = listed.stdout.splitlines()
    assert lines[0].startswith("* v3")
    assert "rollback to v1" in listed.stdout
    # aligned: every column starts at the same offset on every line (reasons and images differ in length)
    for column in ("rel_", "ctrlplane-test/busybox"):
        assert len({line.index(column) for line in lines}) == 1, listed.stdout
    assert len({re.search(r"\d{4}-\d\d-\d\dT", line).start() for line in lines}) == 1, listed.stdout  # type: ignore[union-attr]
    status = await cli(live_server, key, "status", "web")
    assert "url http://web.acme.localhost (hostnames web.acme.localhost)" in status.stdout, status.stdout


async def test_credentials_problems_have_their_own_exit_codes(live: Api, live_server: str) -> None:
    missing = await cli(live_server, None, "status", "web")
    assert missing.returncode == 2
    assert "CTRLPLANE_TOKEN" in missing.stderr
    for bad_url in ("127.0.0.1:8080", "ftp://127.0.0.1"):
        misconfigured = await cli(bad_url, "cpk_anything", "status", "web")
        assert misconfigured.returncode == 2, misconfigured.stderr
        assert misconfigured.stderr.startswith("ctrlplane: CTRLPLANE_URL must be"), misconfigured.stderr
    refused = await cli(live_server, "cpk_not-a-key", "status", "web")
    assert refused.returncode == 6
    tenant_id, token = await tenant_token(live, "other")
    read_key = await live.create_key(tenant_id, ["read"])
    await live.client.post("/v1/instances", json=APP, headers=token)
    forbidden = await cli(live_server, read_key["key"], "deploy", "web", "--image", "a:2")
    assert forbidden.returncode == 6
    usage = await cli(live_server, read_key["key"], "deploy", "web")
    assert usage.returncode == 2
