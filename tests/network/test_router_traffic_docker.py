"""Router request reporting, sleep and wake, against a real Caddy in front of real containers.

Requests sent through Caddy reach ctrlplane's access-log sink and show up as request metrics and
``last_request_at``; an idle instance goes to sleep (containers stopped, hostname kept) and the next
request through the router is answered by the app itself, however many arrive at once, with one
start; past the wake budget the router answers 503 with ``Retry-After``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator
from functools import partial
from typing import Any

import httpx
import msgspec
import pytest
from docker import DockerClient

from ctrlplane.network.caddy import WAKE_TOKEN_HEADER
from ctrlplane.settings import Settings
from tests import waiting
from tests.api.test_cli_pipeline import cli
from tests.api.test_instances import wait_for
from tests.api.test_instances_docker import (  # noqa: F401 - fixtures
    _remove_what_the_test_made,
    containers_of,
    providers,
    tenant,
)
from tests.conftest import Api
from tests.network.processes import Caddy, caddy  # noqa: F401 - fixture
from tests.network.test_router_docker import running_instance, through_router, until_served
from tests.providers.docker_engine import INDEX_BODY, docker_engine  # noqa: F401 - fixture

pytestmark = pytest.mark.docker

HOST = "web.acme.localhost"


@pytest.fixture
def settings(settings: Settings, caddy: Caddy, request: pytest.FixtureRequest) -> Settings:
    """Parametrize indirectly with a dict of overrides (``"taken"``: a port another socket holds)."""
    overrides = dict(getattr(request, "param", {}))
    if overrides.get("router_access_log_listen") == "taken":
        overrides["router_access_log_listen"] = f"127.0.0.1:{request.getfixturevalue('taken_port')}"
    configured = msgspec.structs.replace(
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
        wake_timeout_seconds=30.0,
        wake_retry_after_seconds=7,
    )
    return msgspec.structs.replace(configured, **overrides)


# The suite's one polling helper, with this module's longer wait (real engines, real HTTP).
eventually = partial(waiting.eventually, timeout=30)


async def metric(live: Api, token: dict[str, str], instance_id: str, name: str, **query: str) -> list[dict[str, Any]]:
    response = await live.client.get(
        f"/v1/instances/{instance_id}/metrics", params={"name": name, **query}, headers=token
    )
    assert response.status_code == 200, response.text
    return list(response.json()["series"])


def total(series: list[dict[str, Any]], **labels: str) -> float:
    return sum(
        point["value"]
        for s in series
        if all(s["labels"].get(k) == v for k, v in labels.items())
        for point in s["points"]
    )


async def event_types(live: Api, token: dict[str, str], instance_id: str) -> list[str]:
    response = await live.client.get(f"/v1/instances/{instance_id}/events", params={"limit": "100"}, headers=token)
    assert response.status_code == 200, response.text
    return [e["type"] for e in response.json()["items"]]


async def asleep(live: Api, token: dict[str, str], instance_id: str, timeout: float = 60) -> dict[str, Any]:
    return await wait_for(live, instance_id, token, lambda b: b["state"] == "sleeping", timeout)


async def wake_route_pushed(caddy: Caddy) -> None:
    """Wait until the router has pushed the sleeping instance's wake route (the only site here)."""

    async def pushed() -> bool:
        async with httpx.AsyncClient(timeout=5) as admin:
            return WAKE_TOKEN_HEADER in (await admin.get(f"http://{caddy.admin_address}/config/")).text

    await eventually(pushed, "the router's push of the wake route")


async def test_requests_through_caddy_show_up_as_request_metrics_by_status_class_and_latency(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    instance = await running_instance(live, token, replicas=1)
    await until_served(caddy, HOST, INDEX_BODY)
    async with httpx.AsyncClient(base_url=caddy.http_url, timeout=10) as client:
        for _ in range(6):
            assert (await client.get("/", headers={"Host": HOST})).status_code == 200
        for _ in range(3):
            assert (await client.get("/missing", headers={"Host": HOST})).status_code == 404
        posted = await client.post("/", headers={"Host": HOST}, content=b"x" * 100)
        assert posted.status_code >= 400

    async def counted() -> list[dict[str, Any]] | None:
        series = await metric(live, token, instance["id"], "http_requests_total", step="60s")
        complete = total(series, status_class="4xx", method="GET") >= 3 and total(series, method="POST") >= 1
        return series if complete else None

    series = await eventually(counted, "the router's report of the requests")
    # until_served's own GETs count too (503s too, before the replica entered the rotation)
    assert total(series, status_class="2xx", method="GET") >= 6
    assert total(series, status_class="4xx", method="GET") == 3
    assert total(series, method="POST") == 1
    assert {s["labels"]["status_class"] for s in series} <= {"2xx", "4xx", "5xx"}

    latency = await metric(live, token, instance["id"], "http_request_duration_seconds", step="60s")
    assert {s["labels"]["quantile"] for s in latency} == {"0.5", "0.9", "0.99"}
    p50 = next(s for s in latency if s["labels"]["quantile"] == "0.5")
    assert p50["points"] and all(0 < p["value"] < 5 for p in p50["points"])
    received = await metric(live, token, instance["id"], "http_request_bytes", step="60s")
    assert total(received) >= 100
    sent = await metric(live, token, instance["id"], "http_response_bytes", step="60s")
    assert total(sent) >= 6 * len(INDEX_BODY)

    traffic = (await live.client.get(f"/v1/instances/{instance['id']}/traffic", headers=token)).json()
    assert traffic["last_request_at"] is not None and traffic["state"] == "running"

    dashboard = (await live.client.get(f"/v1/instances/{instance['id']}/dashboard", headers=token)).json()
    assert dashboard["traffic"]["requests"] >= 10, dashboard["traffic"]
    assert dashboard["traffic"]["p50_seconds"] is not None and dashboard["traffic"]["last_request_at"] is not None

    scrape = await live.client.get("/metrics")
    assert scrape.status_code == 200, scrape.text
    assert f'instance="{instance["id"]}"' in scrape.text
    assert "ctrlplane_instance_http_requests_total{" in scrape.text


@pytest.mark.parametrize("caddy", ["built"], indirect=True)
async def test_a_chunked_request_counts_the_body_bytes_caddy_read(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    """No Content-Length: only Caddy's ``bytes_read`` (2.7 and later: the Caddy 2.11 that
    tools/caddy/build.sh builds) knows the size; Debian's 2.6.2 logs none, so there it reads 0."""
    token = await tenant(live, "acme")
    instance = await running_instance(live, token, replicas=1)
    await until_served(caddy, HOST, INDEX_BODY)
    # Caddy's bytes_read counts the body it read before the app answered, and Go's proxy sends the
    # headers upstream before it reads the body of a request of unknown length: busybox httpd answers
    # a plain POST without reading the body, so under load the answer won that race (CI: 1,800 and
    # then 0 of 2,000 bytes counted). The test image's /cgi-bin/slow answers after a second.
    chunks = [b"a" * 2000]

    async def body() -> AsyncIterator[bytes]:
        for chunk in chunks:
            yield chunk

    async with httpx.AsyncClient(base_url=caddy.http_url, timeout=10) as client:
        posted = await client.post("/cgi-bin/slow", headers={"Host": HOST}, content=body())
    assert posted.status_code == 200, posted.text
    assert "content-length" not in posted.request.headers
    assert posted.request.headers["transfer-encoding"] == "chunked"

    async def counted() -> list[dict[str, Any]] | None:
        series = await metric(live, token, instance["id"], "http_requests_total", step="60s")
        return series if total(series, method="POST") >= 1 else None

    await eventually(counted, "the router's report of the chunked POST")
    # the series has no labels: the GETs before it read no body, so the POST's bytes are all there is
    received = await metric(live, token, instance["id"], "http_request_bytes", step="60s")
    assert total(received) == sum(map(len, chunks)), received


# Slow by design: 10 s is the shortest idle timeout the API accepts (MIN_IDLE_TIMEOUT_SECONDS).
async def test_an_idle_instance_sleeps_and_the_next_request_gets_the_apps_own_answer(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    instance = await running_instance(live, token, replicas=1)
    await until_served(caddy, HOST, INDEX_BODY)
    policy = await live.client.put(
        f"/v1/instances/{instance['id']}/idle-policy", json={"idle_timeout": "10s"}, headers=token
    )
    assert policy.status_code == 200, policy.text
    assert policy.json()["idle_timeout_seconds"] == 10
    slept = await asleep(live, token, instance["id"], timeout=60)
    assert slept["desired_state"] == "sleeping"

    async def stopped() -> bool:
        found = containers_of(docker_engine, instance["id"])
        return len(found) == 1 and all(c.status == "exited" for c in found)

    await eventually(stopped, "the container stopping", timeout=30)
    await wake_route_pushed(caddy)

    started = time.monotonic()
    woken = await through_router(caddy, HOST, timeout=40)
    elapsed = time.monotonic() - started
    assert woken.status_code == 200, woken.text
    assert woken.content == INDEX_BODY
    assert elapsed < 30
    assert len(containers_of(docker_engine, instance["id"])) == 1
    running = await wait_for(live, instance["id"], token, lambda b: b["state"] == "running", 30)
    assert running["desired_state"] == "running"
    traffic = (await live.client.get(f"/v1/instances/{instance['id']}/traffic", headers=token)).json()
    assert traffic["slept_at"] is not None and traffic["woken_at"] is not None
    types = await event_types(live, token, instance["id"])
    assert "instance.idle" in types and "instance.woken" in types


@pytest.mark.dialects
async def test_ten_concurrent_first_requests_start_the_sleeping_instance_once(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    instance = await running_instance(live, token, replicas=1)
    await until_served(caddy, HOST, INDEX_BODY)
    [before] = containers_of(docker_engine, instance["id"])
    slept = await live.client.post(f"/v1/instances/{instance['id']}/sleep", headers=token)
    assert slept.status_code == 202, slept.text
    await asleep(live, token, instance["id"])
    await wake_route_pushed(caddy)

    async with httpx.AsyncClient(base_url=caddy.http_url, timeout=40) as client:
        answers = await asyncio.gather(*(client.get("/", headers={"Host": HOST}) for _ in range(10)))
    assert [a.status_code for a in answers] == [200] * 10, [a.text[:80] for a in answers]
    assert all(a.content == INDEX_BODY for a in answers)
    [after] = containers_of(docker_engine, instance["id"])
    assert after.id == before.id  # started again, not re-created
    assert (await event_types(live, token, instance["id"])).count("instance.woken") == 1


@pytest.mark.parametrize("settings", [{"wake_timeout_seconds": 0.05}], indirect=True)
async def test_past_the_wake_timeout_the_router_answers_503_with_retry_after(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    instance = await running_instance(live, token, replicas=1)
    await until_served(caddy, HOST, INDEX_BODY)
    assert (await live.client.post(f"/v1/instances/{instance['id']}/sleep", headers=token)).status_code == 202
    await asleep(live, token, instance["id"])
    await wake_route_pushed(caddy)
    # the sleep's stop runs after its drain (2 s): a request before it would cancel the stop and find
    # the container still running, a wake that needs no start and may well beat any timeout
    await waiting.eventually(
        lambda: all(c.status == "exited" for c in containers_of(docker_engine, instance["id"])),
        "the sleeping instance's container stopped",
        timeout=30,
    )
    late = await through_router(caddy, HOST, timeout=20)
    assert late.status_code == 503, late.text
    assert late.headers["retry-after"] == "7"
    # the wake it started goes on: a retry is served by the app
    await until_served(caddy, HOST, INDEX_BODY, timeout=60)


async def test_the_metrics_command_prints_requests_by_status_class(
    live: Api, live_server: str, caddy: Caddy, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    await running_instance(live, token, replicas=1)
    await until_served(caddy, HOST, INDEX_BODY)
    async with httpx.AsyncClient(base_url=caddy.http_url, timeout=10) as client:
        for _ in range(2):
            await client.get("/missing", headers={"Host": HOST})
    tenant_id = (await live.client.get("/v1/instances", headers=token)).json()["items"][0]["tenant_id"]
    key = (await live.create_key(tenant_id, ["read"]))["key"]

    async def printed() -> str | None:
        done = await cli(live_server, key, "metrics", "web", "--name", "http_requests_total", "--step", "1h")
        assert done.returncode == 0, done.stderr
        return done.stdout if "status_class=4xx" in done.stdout else None

    output = await eventually(printed, "the 404s in the metrics command")
    assert "http_requests_total{method=GET,status_class=4xx}" in output and " 2 count" in output


async def test_a_request_right_after_sleep_is_answered_by_the_app(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    """The stop waits for the router to withdraw the replicas; a wake meanwhile cancels it."""
    token = await tenant(live, "acme")
    instance = await running_instance(live, token, replicas=1)
    await until_served(caddy, HOST, INDEX_BODY)
    assert (await live.client.post(f"/v1/instances/{instance['id']}/sleep", headers=token)).status_code == 202
    for delay in (0.0, 0.5, 0.5):
        await asyncio.sleep(delay)
        answer = await through_router(caddy, HOST, timeout=40)
        assert answer.status_code == 200 and answer.content == INDEX_BODY, answer.text
    await wait_for(live, instance["id"], token, lambda b: b["state"] == "running", 30)


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.mark.parametrize("settings", [{"router_access_log_listen": "taken"}], indirect=True)
async def test_a_sink_that_cannot_listen_leaves_the_router_serving(
    live: Api, caddy: Caddy, docker_engine: DockerClient
) -> None:
    token = await tenant(live, "acme")
    await running_instance(live, token, replicas=1)
    await until_served(caddy, HOST, INDEX_BODY)
    async with httpx.AsyncClient(timeout=5) as client:
        config = (await client.get(f"http://{caddy.admin_address}/config/")).json()
    assert "logging" not in config
