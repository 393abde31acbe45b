"""Telemetry against a real Docker engine: CPU of a busy container, its log lines with their levels,
following them live, per-replica resources, the dashboard, and the OTLP token in the container's env.

The test image ``ctrlplane-test/busybox:telemetry`` (built here from the busybox test rootfs) prints
a JSON, a logfmt, a keyword (stderr) and a plain line, spins one busy loop, then serves httpd.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import msgspec
import pytest
from ctrlplane_docker import DockerProvider
from docker import DockerClient

from ctrlplane.provisioning.registry import ProviderRegistry, provider_settings
from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import instance_token
from tests.api.test_deployments import finished
from tests.api.test_instances import create, state, wait_for
from tests.api.test_telemetry import otlp_body, read_log_events
from tests.conftest import Api, bearer
from tests.providers.docker_engine import HTTP_PORT, docker_engine, import_once, remove_cluster, rootfs_tar  # noqa: F401
from tests.waiting import eventually

pytestmark = pytest.mark.docker

IMAGE = "ctrlplane-test/busybox:telemetry"
IMAGE_VERSION = "1"
SCRIPT = (
    'echo \'{"level":"error","msg":"json failure from the app"}\'; '
    "echo 'level=warn msg=\"logfmt warning from the app\"'; "
    "echo 'ERROR keyword failure from the app' >&2; "
    "echo 'plain hello from the app'; "
    "(while :; do :; done) & "
    f"exec httpd -f -p {HTTP_PORT} -h /www"
)
APP = {
    "image": IMAGE,
    "ports": [{"container_port": HTTP_PORT}],
    "resources": {"cpu_millis": 100, "memory_mb": 32},
}
FOLLOW_BOUND_SECONDS = 2.0


@pytest.fixture(scope="session")
def telemetry_image(docker_engine: DockerClient) -> str:
    import_once(
        docker_engine,
        IMAGE,
        rootfs_tar,
        ["CMD " + json.dumps(["/bin/sh", "-c", SCRIPT]), "ENV PATH=/bin"],
        IMAGE_VERSION,
    )
    return IMAGE


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, providers=("docker",), metrics_sample_seconds=1.0)


@pytest.fixture
def providers(settings: Settings, docker_engine: DockerClient) -> ProviderRegistry:
    return ProviderRegistry([DockerProvider(provider_settings(settings))])


@pytest.fixture(autouse=True)
def _remove_what_the_test_made(settings: Settings, docker_engine: DockerClient) -> Iterator[None]:
    yield
    remove_cluster(docker_engine, settings.cluster_name)


async def running_app(
    live: Api, telemetry_image: str, slug: str = "acme", **overrides: Any
) -> tuple[dict[str, Any], dict[str, str]]:
    tenant = await live.create_tenant(slug, plan="pro")
    token = bearer(live.tokens.tenant(tenant["id"]))
    instance = await create(live, token, name="busy", **{**APP, "image": telemetry_image, **overrides})
    return await wait_for(live, instance["id"], token, state("running"), timeout=60), token


def container_of(engine: DockerClient, instance_id: str) -> Any:
    [container] = engine.containers.list(filters={"label": f"ctrlplane.instance={instance_id}"})
    return container


async def test_busy_container_shows_non_zero_cpu_in_its_metrics(live: Api, telemetry_image: str) -> None:
    instance, token = await running_app(live, telemetry_image)
    path = f"/v1/instances/{instance['id']}/metrics"

    async def busy_points() -> list[dict[str, Any]]:
        body = (await live.client.get(path, params={"name": "cpu_percent"}, headers=token)).json()
        return [p for p in body["series"][0]["points"] if p["value"] > 0]

    points = await eventually(busy_points, timeout=60)
    assert all(0 < p["value"] <= 100 for p in points)
    memory = (await live.client.get(path, params={"name": "memory_limit_bytes"}, headers=token)).json()
    assert memory["series"][0]["points"][-1]["value"] == 32 * 1024 * 1024


async def test_logs_contain_the_containers_lines_with_parsed_levels(live: Api, telemetry_image: str) -> None:
    instance, token = await running_app(live, telemetry_image)
    path = f"/v1/instances/{instance['id']}/logs"

    async def lines() -> list[dict[str, Any]]:
        items = (await live.client.get(path, headers=token)).json()["items"]
        return items if any(e["message"] == "plain hello from the app" for e in items) else []

    items = {e["message"]: e for e in await eventually(lines, timeout=60)}
    assert items["json failure from the app"]["level"] == "error"
    assert items["logfmt warning from the app"]["level"] == "warn"
    keyword = items["ERROR keyword failure from the app"]
    assert (keyword["level"], keyword["stream"], keyword["replica"]) == ("error", "stderr", 0)
    assert items["plain hello from the app"]["level"] == "info"
    errors = (await live.client.get(path, params={"level": "error"}, headers=token)).json()["items"]
    assert {e["message"] for e in errors} == {"json failure from the app", "ERROR keyword failure from the app"}


async def test_follow_delivers_a_new_line_within_two_seconds(
    live: Api,
    telemetry_image: str,
    docker_engine: DockerClient,
) -> None:
    instance, token = await running_app(live, telemetry_image)
    container = container_of(docker_engine, instance["id"])
    path = f"/v1/instances/{instance['id']}/logs"
    async with live.client.stream("GET", path, params={"follow": "true", "limit": 1}, headers=token) as response:
        assert response.status_code == 200
        lines: AsyncIterator[str] = response.aiter_lines()
        await asyncio.wait_for(read_log_events(lines, 1), 30)  # the stream is up: the tail arrived
        reader = asyncio.create_task(_marker(lines, "WARN followed line"))
        # written to the container's stdout (PID 1's) from inside it, as the app would
        await asyncio.to_thread(container.exec_run, ["sh", "-c", "echo 'WARN followed line' > /proc/1/fd/1"])
        printed = time.monotonic()
        entry = await asyncio.wait_for(reader, 30)
        arrived = time.monotonic()
    assert entry["level"] == "warn" and entry["stream"] == "stdout"
    assert arrived - printed < FOLLOW_BOUND_SECONDS, f"the line took {arrived - printed:.2f}s to arrive"


async def _marker(lines: AsyncIterator[str], message: str) -> dict[str, Any]:
    while True:
        [entry] = await read_log_events(lines, 1)
        if entry["message"] == message:
            return entry


async def test_a_containers_lines_echoing_its_env_secret_and_otlp_token_come_out_redacted(
    live: Api, telemetry_image: str, docker_engine: DockerClient, settings: Settings
) -> None:
    """Issue 16, item 6: what the application prints of its secret (exactly and in base64) and of
    its OTLP token is ``[redacted]`` in ``GET .../logs``, read from the real engine."""
    instance, token = await running_app(live, telemetry_image)
    secret = "sv-5e8d3c0a-echoed-by-a-container"
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/secrets",
        json={"key": "DB_PASSWORD", "value": secret},
        params={"restart": "true"},
        headers=token,
    )
    assert response.status_code == 201, response.text
    rolled = await finished(live, response.json()["deployment_id"], token, timeout=90)
    assert rolled["state"] == "succeeded", rolled
    command = (
        'echo "plain=$DB_PASSWORD"; printf %s "$DB_PASSWORD" | base64; '
        'echo "otlp=$OTEL_EXPORTER_OTLP_HEADERS"; echo "echoed-secrets-done"'
    )
    # written to the container's stdout (PID 1's) from inside it, with the container's env, as the app would
    container = container_of(docker_engine, instance["id"])
    await asyncio.to_thread(container.exec_run, ["sh", "-c", f"({command}) > /proc/1/fd/1"])
    path = f"/v1/instances/{instance['id']}/logs"

    async def echoed() -> dict[str, Any] | None:
        answer = await live.client.get(path, params={"limit": 10}, headers=token)
        return answer if any(e["message"] == "echoed-secrets-done" for e in answer.json()["items"]) else None

    answer = await eventually(echoed, timeout=30)
    messages = [e["message"] for e in answer.json()["items"]]
    done = messages.index("echoed-secrets-done")
    assert messages[done - 3 : done] == ["plain=[redacted]", "[redacted]", "otlp=authorization=Bearer%20[redacted]"]
    otlp = instance_token(settings, instance["id"])
    for shown in (secret, base64.b64encode(secret.encode()).decode(), otlp):
        assert shown not in answer.text


async def test_resources_show_each_replicas_usage_against_its_limits(live: Api, telemetry_image: str) -> None:
    instance, token = await running_app(live, telemetry_image, replicas=2)
    body = (await live.client.get(f"/v1/instances/{instance['id']}/resources", headers=token)).json()
    assert body["limits_per_replica"] == {"cpu_millis": 100, "memory_mb": 32, "replicas": 2}
    assert [r["replica"] for r in body["replicas"]] == [0, 1]
    for replica in body["replicas"]:
        assert replica["running"] is True
        assert replica["memory_limit_bytes"] == 32 * 1024 * 1024
        assert 0 < replica["memory_used_bytes"] < replica["memory_limit_bytes"]
        assert replica["cpu_limit_percent"] == 10.0


async def test_dashboard_of_a_real_instance(live: Api, telemetry_image: str) -> None:
    instance, token = await running_app(live, telemetry_image)
    path = f"/v1/instances/{instance['id']}/dashboard"

    async def dashboard() -> dict[str, Any] | None:
        body = dict((await live.client.get(path, headers=token)).json())
        return body if len(body["recent_errors"]) >= 2 else None

    body = await eventually(dashboard, timeout=60)
    assert body["state"] == "running" and body["health"] == "unknown"
    assert body["current_release"]["image"] == IMAGE
    assert body["resources"]["replicas"][0]["running"] is True
    assert {e["message"] for e in body["recent_errors"]} == {
        "json failure from the app",
        "ERROR keyword failure from the app",
    }


async def test_container_env_carries_its_otlp_token_which_posts_spans_for_it_only(
    live: Api,
    telemetry_image: str,
    docker_engine: DockerClient,
    settings: Settings,
) -> None:
    a, token_a = await running_app(live, telemetry_image, slug="alpha")
    b, token_b = await running_app(live, telemetry_image, slug="bravo")
    env = dict(item.split("=", 1) for item in container_of(docker_engine, a["id"]).attrs["Config"]["Env"])
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{settings.host}:{settings.port}/v1/otlp"
    assert env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "http/protobuf"
    header = env["OTEL_EXPORTER_OTLP_HEADERS"].replace("%20", " ")
    name, _, value = header.partition("=")
    assert name == "authorization" and value == f"Bearer {instance_token(settings, a['id'])}"
    attributes = dict(pair.split("=", 1) for pair in env["OTEL_RESOURCE_ATTRIBUTES"].split(","))
    accepted = await live.client.post("/v1/otlp/v1/traces", json=otlp_body(**attributes), headers={name: value})
    assert accepted.status_code == 200, accepted.text
    refused = await live.client.post(
        "/v1/otlp/v1/traces",
        json=otlp_body(**attributes),
        headers={"Authorization": f"Bearer {instance_token(settings, b['id'])}"},
    )
    assert refused.status_code == 403, refused.text
    [span] = (await live.client.get(f"/v1/instances/{a['id']}/traces", headers=token_a)).json()["items"]
    assert span["name"] == "GET /cart"
    assert (await live.client.get(f"/v1/instances/{b['id']}/traces", headers=token_b)).json()["items"] == []
    assert (await live.client.get(f"/v1/instances/{a['id']}/traces", headers=token_b)).status_code == 404
