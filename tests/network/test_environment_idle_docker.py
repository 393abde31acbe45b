"""Idle environments against a real Docker engine behind a real Caddy: ``on_idle: scale_to_zero``
sleeps the environment's instance and the next request through the router gets the app's answer
(``environment.idle``, then ``environment.woken``); ``on_idle: destroy`` terminates it."""

from __future__ import annotations

import msgspec
import pytest
from docker import DockerClient

from ctrlplane.settings import Settings
from tests.api.environments.helpers import tenant, up, wait_env
from tests.api.environments.test_environments_docker import preview_template
from tests.api.test_instances import wait_for
from tests.api.test_instances_docker import (  # noqa: F401 - fixtures
    _remove_what_the_test_made,
    containers_of,
    providers,
)
from tests.conftest import Api
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.network.test_router_docker import through_router, until_served
from tests.network.test_router_traffic_docker import event_types, eventually
from tests.providers.docker_engine import INDEX_BODY, docker_engine  # noqa: F401 - fixture

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
        router_drain_seconds=0.2,
        router_report_flush_seconds=0.3,
        idle_check_seconds=0.3,
        reconcile_interval_seconds=0.5,
    )


# Slow by design: 10 s is the shortest idle timeout the API accepts (MIN_IDLE_TIMEOUT_SECONDS).
async def test_an_idle_environment_scaled_to_zero_wakes_on_the_next_request(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    _, token = await tenant(live)
    await preview_template(live, token)
    environment = await up(live, token, key="pr-1", parameters={"pr": 1}, idle_timeout="10s", on_idle="scale_to_zero")
    await until_served(caddy, environment["hostname"], INDEX_BODY)
    instance_id = environment["instance_id"]
    await wait_for(live, instance_id, token, lambda b: b["state"] == "sleeping", 60)

    async def stopped() -> bool:
        found = containers_of(docker_engine, instance_id)
        return len(found) == 1 and all(c.status == "exited" for c in found)

    await eventually(stopped, "the environment's container stopping")
    assert "environment.idle" in await event_types(live, token, instance_id)
    still = (await live.client.get(f"/v1/environments/{environment['id']}", headers=token)).json()
    assert still["state"] == "active" and still["hostname"] == environment["hostname"]

    woken = await through_router(caddy, environment["hostname"], timeout=40)
    assert woken.status_code == 200 and woken.content == INDEX_BODY
    types = await event_types(live, token, instance_id)
    assert "environment.woken" in types and "instance.woken" in types
    assert len(containers_of(docker_engine, instance_id)) == 1
    assert {"idle", "wake"} <= await system_actions(live, environment["id"])


# Slow by design: 10 s is the shortest idle timeout the API accepts (MIN_IDLE_TIMEOUT_SECONDS).
async def test_an_idle_environment_with_on_idle_destroy_is_terminated(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    _, token = await tenant(live)
    await preview_template(live, token)
    environment = await up(live, token, key="pr-2", parameters={"pr": 2}, idle_timeout="10s", on_idle="destroy")
    await until_served(caddy, environment["hostname"], INDEX_BODY)
    ended = await wait_env(live, environment["id"], token, lambda e: e["state"] == "terminated", timeout=90)
    assert ended["termination_reason"] == "idle"
    assert containers_of(docker_engine, environment["instance_id"]) == []
    assert "environment.idle" in await event_types(live, token, environment["instance_id"])
    gone = await through_router(caddy, environment["hostname"])
    assert gone.status_code == 404
    assert {"idle", "settle"} <= await system_actions(live, environment["id"])


async def system_actions(api: Api, environment_id: str) -> set[str]:
    """The audit actions the system (not a caller) recorded on the environment."""
    entries = (
        await api.client.get(
            "/v1/admin/audit", params={"resource": "environment", "limit": 100}, headers=api.admin_headers
        )
    ).json()["items"]
    return {e["action"] for e in entries if e["resource_id"] == environment_id and e["actor_kind"] == "system"}
