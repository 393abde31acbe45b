"""Health checks against a real Docker engine: http through the published port, tcp through it,
commands inside the container, and checks as deploy gates against the new replica."""

from __future__ import annotations

import asyncio
import base64
from pathlib import Path
from typing import Any

import anyio
import httpx
import msgspec
import pytest
from docker import DockerClient

from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import instance_token
from tests.api.test_deployments import finished
from tests.api.test_health import add_check, health_events, health_of, until_health
from tests.api.test_instances import state, wait_for
from tests.api.test_instances_docker import (  # noqa: F401 - fixtures
    _remove_what_the_test_made,
    containers_of,
    providers,
    tenant,
)
from tests.conftest import Api
from tests.providers.docker_engine import (  # noqa: F401 - docker_engine is a fixture
    HEALTH_FILE,
    HEALTH_IMAGE,
    HTTP_PORT,
    IMAGE_MARKER,
    IMAGE_MARKER_BODY,
    SICK_IMAGE,
    docker_engine,
    ensure_health_images,
)

pytestmark = pytest.mark.docker

APP = {
    "name": "web",
    "image": HEALTH_IMAGE,
    "ports": [{"container_port": HTTP_PORT}],
    "resources": {"cpu_millis": 200, "memory_mb": 32},
}
HTTP_CHECK = {"name": "api-health", "type": "http", "target": f"http://localhost:{HTTP_PORT}/healthz"}


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(
        settings, providers=("docker",), health_tick_seconds=0.2, deploy_health_timeout_seconds=8
    )


@pytest.fixture(scope="module")
def health_images(docker_engine: DockerClient) -> None:
    ensure_health_images(docker_engine)


async def running(api: Api, token: dict[str, str], **overrides: Any) -> dict[str, Any]:
    created = await api.client.post("/v1/instances", json={**APP, **overrides}, headers=token)
    assert created.status_code == 201, created.text
    return await wait_for(api, created.json()["id"], token, state("running"), timeout=60)


def container(engine: DockerClient, instance_id: str) -> Any:
    [only] = containers_of(engine, instance_id)
    return only


async def in_container(engine: DockerClient, instance_id: str, *command: str) -> None:
    result = await anyio.to_thread.run_sync(lambda: container(engine, instance_id).exec_run(list(command)))
    assert result.exit_code == 0, result.output


async def run(api: Api, check_id: str, token: dict[str, str]) -> dict[str, Any]:
    response = await api.client.post(f"/v1/health/checks/{check_id}/run", headers=token)
    assert response.status_code == 200, response.text
    return dict(response.json())


async def test_an_http_check_follows_the_apps_health_file(
    live: Api, docker_engine: DockerClient, health_images: None
) -> None:
    token = await tenant(live, "acme")
    other = await tenant(live, "globex")
    instance = await running(live, token)
    check = await add_check(live, instance["id"], token, **HTTP_CHECK, interval="1s", timeout="900ms", retries=2)
    healthy = await until_health(live, instance["id"], token, lambda b: b["status"] == "healthy", timeout=60)
    assert healthy["checks"][0]["latest"]["message"] == "HTTP 200"
    assert healthy["checks"][0]["latency_ms"] > 0

    await in_container(docker_engine, instance["id"], "rm", HEALTH_FILE)
    unhealthy = await until_health(live, instance["id"], token, lambda b: b["status"] == "unhealthy", timeout=60)
    [entry] = unhealthy["checks"]
    assert entry["latest"]["message"] == "HTTP 404"
    assert entry["consecutive_failures"] >= 2
    assert 0 < entry["uptime_percent"] < 100

    await in_container(docker_engine, instance["id"], "sh", "-c", f"echo ok > {HEALTH_FILE}")
    await until_health(live, instance["id"], token, lambda b: b["status"] == "healthy", timeout=60)
    events = await health_events(live, instance["id"], token)
    assert [(e["type"], e["data"]["check_id"]) for e in events] == [
        ("health.check_healthy", check["id"]),
        ("health.check_unhealthy", check["id"]),
        ("health.check_healthy", check["id"]),
    ]
    assert events[1]["data"]["message"] == "HTTP 404"
    for path in (f"/v1/instances/{instance['id']}/health", f"/v1/instances/{instance['id']}/health/checks"):
        assert (await live.client.get(path, headers=other)).status_code == 404
    assert (await live.client.post(f"/v1/health/checks/{check['id']}/run", headers=other)).status_code == 404


async def test_a_command_check_runs_inside_the_container_and_run_returns_a_fresh_result(
    live: Api, docker_engine: DockerClient, health_images: None
) -> None:
    assert not Path(IMAGE_MARKER).exists(), "the marker must exist only inside the test image"
    token = await tenant(live, "acme")
    instance = await running(live, token)
    marker = await add_check(
        live, instance["id"], token, name="marker", type="command", target=f"cat {IMAGE_MARKER}", enabled=False
    )
    where = await add_check(live, instance["id"], token, name="where", type="command", target="hostname", enabled=False)
    first = await run(live, marker["id"], token)
    assert first["result"]["status"] == "pass", first
    assert first["result"]["message"] == "exit 0: " + IMAGE_MARKER_BODY.decode().strip()
    hostname = (await anyio.to_thread.run_sync(lambda: container(docker_engine, instance["id"]).attrs))["Config"][
        "Hostname"
    ]
    assert (await run(live, where["id"], token))["result"]["message"] == f"exit 0: {hostname}"

    await in_container(docker_engine, instance["id"], "rm", IMAGE_MARKER)
    second = await run(live, marker["id"], token)
    assert second["result"]["status"] == "fail"
    assert second["result"]["message"].startswith("exit 1: ")
    assert second["result"]["id"] != first["result"]["id"]
    assert second["result"]["checked_at"] > first["result"]["checked_at"]
    assert second["check"]["consecutive_failures"] == 1


async def test_a_tcp_check_tells_a_listening_port_from_one_nobody_listens_on(
    live: Api, docker_engine: DockerClient, health_images: None
) -> None:
    token = await tenant(live, "acme")
    instance = await running(live, token, ports=[{"container_port": HTTP_PORT}, {"container_port": 9090}])
    listening = await add_check(
        live, instance["id"], token, name="http-port", type="tcp", target=f"localhost:{HTTP_PORT}", enabled=False
    )
    silent = await add_check(
        live, instance["id"], token, name="silent-port", type="tcp", target="tcp://localhost:9090", enabled=False
    )
    assert (await run(live, listening["id"], token))["result"]["status"] == "pass"
    result = (await run(live, silent["id"], token))["result"]
    assert result["status"] == "fail", result


# Slow by design: the failing gate waits out deploy_health_timeout_seconds (8 s, enough for a healthy start under load).
@pytest.mark.parametrize(
    "check",
    [
        HTTP_CHECK,
        {"name": "health-file", "type": "command", "target": f"test -f {HEALTH_FILE}"},
    ],
    ids=["http", "command"],
)
async def test_a_deploy_whose_new_release_fails_its_health_check_gate_rolls_back(
    live: Api, docker_engine: DockerClient, health_images: None, check: dict[str, Any]
) -> None:
    token = await tenant(live, "acme")
    instance = await running(live, token)
    await add_check(live, instance["id"], token, **check, interval="1m")
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": SICK_IMAGE, "strategy": "rolling"}, headers=token
    )
    assert response.status_code == 201, response.text
    done = await finished(live, response.json()["id"], token, timeout=90)
    assert done["state"] == "rolled_back", done
    assert f"check {check['name']}" in done["error"]
    after = await wait_for(
        live, instance["id"], token, lambda b: b["state"] == "running" and b["endpoints"], timeout=60
    )
    assert after["image"] == HEALTH_IMAGE
    assert [c.labels["ctrlplane.generation"] for c in containers_of(docker_engine, instance["id"])] == ["1"]
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(100):
            try:
                if (await client.get(after["endpoints"][0]["url"] + "/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
        assert (await client.get(after["endpoints"][0]["url"] + "/healthz")).status_code == 200

    good = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": HEALTH_IMAGE, "env": {"V": "2"}}, headers=token
    )
    passed = await finished(live, good.json()["id"], token, timeout=90)
    assert passed["state"] == "succeeded", passed
    assert (await health_of(live, instance["id"], token))["instance_state"] == "running"


async def test_command_output_is_redacted_of_secrets_and_the_otlp_token_and_shown_to_deploy_only(
    live: Api, docker_engine: DockerClient, health_images: None, settings: Settings
) -> None:
    token = await tenant(live, "acme")
    instance = await running(live, token)
    value = "hunter2-s3cret-value"
    stored = await live.client.post(
        f"/v1/instances/{instance['id']}/secrets", json={"key": "DB_PASSWORD", "value": value}, headers=token
    )
    assert stored.status_code == 201, stored.text
    encoded = base64.b64encode(value.encode()).decode()
    otlp = instance_token(settings, instance["id"])
    check = await add_check(
        live,
        instance["id"],
        token,
        name="leaky",
        type="command",
        target=f"sh -c 'echo plain={value} b64={encoded}; env; exit 1'",
        enabled=False,
    )
    result = (await run(live, check["id"], token))["result"]
    assert result["status"] == "fail"
    message = result["message"]
    assert value not in message and encoded not in message and encoded.rstrip("=") not in message
    assert otlp not in message and "OTEL_EXPORTER_OTLP_HEADERS" in message, message
    assert "plain=[redacted] b64=[redacted]" in message
    reader = await live.create_key(instance["tenant_id"], ["read"])
    as_reader = {"Authorization": f"Bearer {reader['key']}"}
    health = (await live.client.get(f"/v1/instances/{instance['id']}/health", headers=as_reader)).json()
    latest = next(c for c in health["checks"] if c["check_id"] == check["id"])["latest"]
    assert latest["message"] == "(shown to the deploy role only)"
    events = (await live.client.get("/v1/events", params={"limit": 100}, headers=as_reader)).json()
    assert value not in str(events) and otlp not in str(events)
