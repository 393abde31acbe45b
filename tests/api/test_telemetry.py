"""Telemetry through the API on the fake provider (SQLite and PostgreSQL): metrics from the sampler,
logs with levels and follow, OTLP spans with instance tokens, resources, the dashboard, retention,
tenant isolation and the Prometheus endpoint. The same against a real engine: test_telemetry_docker.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest

from ctrlplane.db import Database
from ctrlplane.provisioning.contract import Usage
from ctrlplane.settings import Settings
from ctrlplane.telemetry.otlp import instance_token
from ctrlplane.telemetry.repository import FIVE_MINUTES, MINUTE, RAW, MetricsRepository, SpanRepository
from tests.api.test_deployments import finished
from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider
from tests.waiting import eventually

TRACE_ID = "5b8efff798038103d269b633813fc60c"


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return msgspec.structs.replace(settings, metrics_sample_seconds=0.2)


def otlp_body(name: str = "GET /cart", span_id: str = "eee19b7ec3c1b174", **resource: str) -> dict[str, Any]:
    now = time.time_ns()
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [
                        {"key": k, "value": {"stringValue": v}} for k, v in {"service.name": "shop", **resource}.items()
                    ]
                },
                "scopeSpans": [
                    {
                        "scope": {"name": "test"},
                        "spans": [
                            {
                                "traceId": TRACE_ID,
                                "spanId": span_id,
                                "name": name,
                                "kind": 2,
                                "startTimeUnixNano": str(now - 42_000_000),
                                "endTimeUnixNano": str(now),
                                "status": {"code": 1},
                                "attributes": [{"key": "http.route", "value": {"stringValue": "/cart"}}],
                            }
                        ],
                    }
                ],
            }
        ]
    }


def otlp_headers(settings: Settings, instance_id: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {instance_token(settings, instance_id)}"}


async def running(api: Api, token: dict[str, str], **overrides: Any) -> dict[str, Any]:
    instance = await create(api, token, **overrides)
    return await wait_for(api, instance["id"], token, state("running"))


@pytest.mark.dialects("samples are written with the dialect's INSERT ... ON CONFLICT")
async def test_sampler_stores_usage_and_metrics_returns_time_series(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await running(live, token, replicas=2)
    path = f"/v1/instances/{instance['id']}/metrics"

    async def three_samples() -> dict[str, Any] | None:
        body = dict((await live.client.get(path, headers=token)).json())
        cpu = next(s for s in body["series"] if s["name"] == "cpu_percent")
        return body if len(cpu["points"]) >= 3 else None

    body = await eventually(three_samples, "three CPU samples", timeout=30)
    cpu = next(s for s in body["series"] if s["name"] == "cpu_percent")
    assert {s["name"] for s in body["series"]} == {
        "cpu_percent", "memory_used_bytes", "memory_limit_bytes", "network_rx_bytes", "network_tx_bytes", "restarts",
        "health_check_latency_ms",
    }  # fmt: skip
    latency = next(s for s in body["series"] if s["name"] == "health_check_latency_ms")
    assert latency["points"] == [], "no health checks are wired: no latency samples"
    assert all(p["value"] == 2.0 for p in cpu["points"])  # the fake: 1 % per running replica
    memory = next(s for s in body["series"] if s["name"] == "memory_limit_bytes")
    assert memory["unit"] == "bytes" and memory["points"][0]["value"] == 2 * 64 * 1024 * 1024
    only = (await live.client.get(path, params={"name": "network_rx_bytes", "step": "1h"}, headers=token)).json()
    [rx] = only["series"]
    assert only["step_seconds"] == 3600 and rx["name"] == "network_rx_bytes"
    assert 1 <= len(rx["points"]) <= 2 and rx["points"][-1]["value"] == 2000.0
    recent = (datetime.now(UTC) - timedelta(seconds=1)).isoformat()
    window = (await live.client.get(path, params={"name": "cpu_percent", "since": recent}, headers=token)).json()
    assert len(window["series"][0]["points"]) < len(cpu["points"]) + 20
    assert all(p["timestamp"] >= window["since"] for p in window["series"][0]["points"])


@pytest.mark.parametrize(
    "query",
    [
        {"name": "bogus"},
        {"step": "soon"},
        {"step": "500ms"},
        {"since": "2025-01-02T00:00:00Z", "until": "2025-01-01T00:00:00Z"},
        {"since": "2025-01-01T00:00:00Z", "until": "2025-01-02T00:00:00Z", "step": "1s"},
        {"since": "2025-01-01T00:00:00"},
    ],
)
async def test_bad_metrics_queries_are_400(api: Api, query: dict[str, str]) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    response = await api.client.get(f"/v1/instances/{instance['id']}/metrics", params=query, headers=token)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_input"


@pytest.mark.dialects("roll-ups are written with the dialect's INSERT ... ON CONFLICT")
async def test_retention_rolls_raw_samples_up_and_prunes_the_oldest(api: Api, db: Database, settings: Settings) -> None:
    tenant_id, token = await tenant_token(api)
    instance = await create(api, token)
    now = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    usage = Usage(
        cpu_percent=10.0,
        memory_used_bytes=100,
        memory_limit_bytes=1000,
        network_rx_bytes=5,
        network_tx_bytes=7,
        restarts=0,
    )
    ages = {
        "fresh": timedelta(minutes=5),
        "hours old": timedelta(hours=7),
        "days old": timedelta(days=3),
        "expired": timedelta(days=40),
    }
    async with db.write() as session, session.begin():
        metrics = MetricsRepository(session)
        for index, age in enumerate(ages.values()):
            for offset, cpu in ((10, 10.0), (25, 30.0)):
                taken = now - age + timedelta(seconds=offset)
                await metrics.add(
                    tenant_id,
                    instance["id"],
                    taken,
                    msgspec.structs.replace(usage, cpu_percent=cpu, network_rx_bytes=index * 10 + offset),
                )
    async with db.write() as session, session.begin():
        compaction = await MetricsRepository(session).compact(settings, now=now)
    assert (compaction.rolled_to_minute, compaction.expired) >= (6, 1)
    async with db.read() as session:
        rows = await MetricsRepository(session).between(
            tenant_id=tenant_id, instance_id=instance["id"], since=now - timedelta(days=400), until=now
        )
    by_step: dict[int, list[Any]] = {}
    for row in rows:
        by_step.setdefault(row.step_seconds, []).append(row)
    assert len(by_step[RAW]) == 2, "samples younger than the raw retention stay raw"
    [minute] = by_step[MINUTE]
    assert minute.samples == 2 and minute.cpu_percent == 20.0 and minute.network_rx_bytes == 35
    [five] = by_step[FIVE_MINUTES]
    assert five.samples == 2 and five.taken_at.minute % 5 == 0 and five.taken_at.second == 0
    assert all(row.taken_at > now - timedelta(days=30) for row in rows), "older than the retention is deleted"
    # running compaction again changes nothing
    async with db.write() as session, session.begin():
        again = await MetricsRepository(session).compact(settings, now=now)
    assert (again.rolled_to_minute, again.rolled_to_five_minutes, again.expired) == (0, 0, 0)
    response = await api.client.get(
        f"/v1/instances/{instance['id']}/metrics",
        params={"name": "cpu_percent", "since": (now - timedelta(days=31)).isoformat(), "until": now.isoformat()},
        headers=token,
    )
    assert [p["value"] for p in response.json()["series"][0]["points"]] == [20.0, 20.0, 10.0, 30.0]


@pytest.mark.dialects("spans are written with the dialect's INSERT ... ON CONFLICT")
async def test_span_retention_drops_old_spans_and_caps_each_instance(
    api: Api, db: Database, settings: Settings
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    for index in range(4):
        response = await api.client.post(
            "/v1/otlp/v1/traces",
            json=otlp_body(name=f"op{index}", span_id=f"{index + 1:016x}"),
            headers=otlp_headers(settings, instance["id"]),
        )
        assert response.status_code == 200, response.text
    capped = msgspec.structs.replace(settings, trace_max_spans_per_instance=3)
    async with db.write() as session, session.begin():
        assert await SpanRepository(session).prune(capped) == 1
    names = [
        s["name"]
        for s in (await api.client.get(f"/v1/instances/{instance['id']}/traces", headers=token)).json()["items"]
    ]
    assert sorted(names) == ["op1", "op2", "op3"]
    async with db.write() as session, session.begin():
        assert await SpanRepository(session).prune(settings, now=datetime.now(UTC) + timedelta(days=8)) == 3
    assert (await api.client.get(f"/v1/instances/{instance['id']}/traces", headers=token)).json()["items"] == []


async def test_logs_carry_parsed_levels_and_filter_by_minimum_level(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await running(live, token)
    fake.emit_log(instance["id"], '{"level":"error","msg":"payment failed"}', stream="stderr")
    fake.emit_log(instance["id"], 'level=warn msg="slow query" ms=900')
    fake.emit_log(instance["id"], "GET / 200")
    path = f"/v1/instances/{instance['id']}/logs"
    body = (await live.client.get(path, headers=token)).json()
    assert [(e["level"], e["message"], e["stream"], e["replica"]) for e in body["items"]] == [
        ("error", "payment failed", "stderr", 0),
        ("warn", "slow query", "stdout", 0),
        ("info", "GET / 200", "stdout", 0),
    ]
    warn = (await live.client.get(path, params={"level": "warn"}, headers=token)).json()["items"]
    assert [e["message"] for e in warn] == ["payment failed", "slow query"]
    last = (await live.client.get(path, params={"limit": 1}, headers=token)).json()["items"]
    assert [e["message"] for e in last] == ["GET / 200"]
    assert (await live.client.get(path, params={"level": "loud"}, headers=token)).status_code == 400
    assert (await live.client.get(path, params={"limit": 0}, headers=token)).status_code == 400


async def test_logs_of_an_instance_without_containers_are_empty(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    response = await api.client.get(f"/v1/instances/{instance['id']}/logs", headers=token)
    assert response.status_code == 200, response.text
    assert response.json()["items"] == []


async def read_log_events(lines: AsyncIterator[str], count: int) -> list[dict[str, Any]]:
    """The next ``count`` log events of an SSE stream's lines."""
    found: list[dict[str, Any]] = []
    async for line in lines:
        if line.startswith("data:"):
            found.append(msgspec.json.decode(line[5:].strip()))
            if len(found) == count:
                break
    return found


async def test_follow_streams_new_lines_as_server_sent_events(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await running(live, token)
    fake.emit_log(instance["id"], "before")
    path = f"/v1/instances/{instance['id']}/logs"
    async with live.client.stream("GET", path, params={"follow": "true", "limit": 5}, headers=token) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        [first] = await asyncio.wait_for(read_log_events(lines, 1), 10)
        assert first["message"] == "before"
        fake.emit_log(instance["id"], "ERROR after following began")
        [second] = await asyncio.wait_for(read_log_events(lines, 1), 10)
    assert (second["message"], second["level"]) == ("ERROR after following began", "error")


@pytest.mark.dialects("spans are written with the dialect's INSERT ... ON CONFLICT")
async def test_otlp_span_with_the_instances_token_is_listed(api: Api, settings: Settings) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    response = await api.client.post(
        "/v1/otlp/v1/traces",
        json=otlp_body(**{"ctrlplane.instance.id": instance["id"]}),
        headers=otlp_headers(settings, instance["id"]),
    )
    assert response.status_code == 200, response.text
    assert response.json() == {}
    again = await api.client.post(
        "/v1/otlp/v1/traces", json=otlp_body(), headers=otlp_headers(settings, instance["id"])
    )
    assert again.status_code == 200, "a span sent twice is accepted and kept once"
    [span] = (await api.client.get(f"/v1/instances/{instance['id']}/traces", headers=token)).json()["items"]
    assert (span["trace_id"], span["span_id"], span["name"]) == (TRACE_ID, "eee19b7ec3c1b174", "GET /cart")
    assert span["status"] == "ok" and span["kind"] == "server" and span["service_name"] == "shop"
    assert 41.9 < span["duration_ms"] < 42.1
    assert span["attributes"] == {"http.route": "/cart"}


async def test_otlp_span_for_another_instance_or_without_a_valid_token_is_refused(api: Api, settings: Settings) -> None:
    _, token_a = await tenant_token(api, "alpha")
    _, token_b = await tenant_token(api, "bravo")
    a = await create(api, token_a)
    b = await create(api, token_b)
    refused = await api.client.post(
        "/v1/otlp/v1/traces",
        json=otlp_body(**{"ctrlplane.instance.id": a["id"]}),
        headers=otlp_headers(settings, b["id"]),
    )
    assert refused.status_code == 403, refused.text
    for headers in (
        {},
        bearer(api.tokens.tenant(a["tenant_id"])),
        {"Authorization": "Bearer " + instance_token(settings, a["id"])[:-2] + "xx"},
        {"Authorization": f"Bearer cpt_{a['id']}.{'A' * 43}"},
    ):
        response = await api.client.post("/v1/otlp/v1/traces", json=otlp_body(), headers=headers)
        assert response.status_code == 401, response.text
        assert response.json()["code"] == "unauthenticated"
    for instance, token in ((a, token_a), (b, token_b)):
        listed = (await api.client.get(f"/v1/instances/{instance['id']}/traces", headers=token)).json()
        assert listed["items"] == [], "nothing refused was stored"
    as_user = await api.client.get(f"/v1/instances/{a['id']}/traces", headers=otlp_headers(settings, a["id"]))
    assert as_user.status_code == 401, "an instance token is no tenant credential"


async def test_otlp_token_of_a_destroyed_instance_is_refused(live: Api, settings: Settings) -> None:
    _, token = await tenant_token(live)
    instance = await running(live, token)
    assert (await live.client.delete(f"/v1/instances/{instance['id']}", headers=token)).status_code == 202
    await wait_for(live, instance["id"], token, state("destroyed"))
    response = await live.client.post(
        "/v1/otlp/v1/traces", json=otlp_body(), headers=otlp_headers(settings, instance["id"])
    )
    assert response.status_code == 401


async def test_malformed_otlp_body_is_400(api: Api, settings: Settings) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    headers = otlp_headers(settings, instance["id"])
    bad = otlp_body()
    bad["resourceSpans"][0]["scopeSpans"][0]["spans"][0]["traceId"] = "not-hex"
    for body in ({"resourceSpans": "nope"}, bad):
        response = await api.client.post("/v1/otlp/v1/traces", json=body, headers=headers)
        assert response.status_code == 400, response.text
    assert (await api.client.get(f"/v1/instances/{instance['id']}/traces", headers=token)).json()["items"] == []


async def test_instances_get_the_otlp_endpoint_and_their_token_in_their_env(
    live: Api, fake: FakeProvider, settings: Settings
) -> None:
    _, token = await tenant_token(live)
    instance = await running(live, token, env={"OTEL_SERVICE_NAME": "my-own-name"})
    [replica] = fake.replicas(instance["id"])
    env = replica.spec.env
    assert env["OTEL_EXPORTER_OTLP_HEADERS"] == f"authorization=Bearer%20{instance_token(settings, instance['id'])}"
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == f"http://{settings.host}:{settings.port}/v1/otlp"
    assert env["OTEL_SERVICE_NAME"] == "my-own-name", "the instance's own env wins"
    shown = (await live.client.get(f"/v1/instances/{instance['id']}", headers=token)).json()
    assert "OTEL_EXPORTER_OTLP_HEADERS" not in shown["env"], "the token is not part of the instance's config"


async def test_resources_show_each_replica_against_its_limits(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await running(live, token, replicas=2)
    body = (await live.client.get(f"/v1/instances/{instance['id']}/resources", headers=token)).json()
    assert body["limits_per_replica"] == {"cpu_millis": 250, "memory_mb": 64, "replicas": 2}
    assert [r["replica"] for r in body["replicas"]] == [0, 1]
    for replica in body["replicas"]:
        assert replica["running"] and replica["cpu_percent"] == 1.0 and replica["cpu_limit_percent"] == 25.0
        assert replica["cpu_used_of_limit_percent"] == 4.0
        assert replica["memory_limit_bytes"] == 64 * 1024 * 1024 and replica["memory_used_of_limit_percent"] == 12.5
    assert body["total_cpu_percent"] == 2.0 and body["available"] is True


async def test_dashboard_gathers_state_health_release_deploys_resources_and_errors(
    live: Api, fake: FakeProvider
) -> None:
    _, token = await tenant_token(live)
    instance = await running(live, token, ports=[])  # no port: the fake's deploy gate passes once replicas run
    fake.emit_log(instance["id"], "ERROR disk full", stream="stderr")
    fake.emit_log(instance["id"], "all good")
    deploy = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": "ctrlplane-test/busybox:2"}, headers=token
    )
    assert deploy.status_code == 201, deploy.text
    assert (await finished(live, deploy.json()["id"], token, timeout=60))["state"] == "succeeded"
    fake.emit_log(instance["id"], "ERROR again after the deploy")
    body = (await live.client.get(f"/v1/instances/{instance['id']}/dashboard", headers=token)).json()
    assert body["state"] == "running" and body["health"] == "unknown"
    assert body["current_release"]["version"] == 2
    assert body["current_release"]["image"] == "ctrlplane-test/busybox:2"
    assert [d["id"] for d in body["recent_deployments"]] == [deploy.json()["id"]]
    assert body["recent_deployments"][0]["state"] == "succeeded"
    assert body["resources"]["replicas"][0]["running"] is True
    assert [e["message"] for e in body["recent_errors"]] == ["ERROR disk full", "ERROR again after the deploy"]


ROUTES = ("metrics", "logs", "traces", "resources", "dashboard")


@pytest.mark.parametrize("route", ROUTES)
async def test_another_tenant_cannot_read_an_instances_telemetry(live: Api, route: str) -> None:
    _, token_a = await tenant_token(live, "alpha")
    _, token_b = await tenant_token(live, "bravo")
    instance = await running(live, token_a)
    mine = await live.client.get(f"/v1/instances/{instance['id']}/{route}", headers=token_a)
    assert mine.status_code == 200, mine.text
    theirs = await live.client.get(f"/v1/instances/{instance['id']}/{route}", headers=token_b)
    assert theirs.status_code == 404, theirs.text
    assert theirs.json()["code"] == "not_found"
    followed = await live.client.get(f"/v1/instances/{instance['id']}/logs", params={"follow": "true"}, headers=token_b)
    assert followed.status_code == 404


async def test_prometheus_endpoint_exposes_the_control_planes_metrics(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await running(live, token, ports=[])
    await live.client.get("/v1/instances", headers=token)
    await live.client.get("/v1/instances/inst_doesnotexist", headers=token)
    await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": "ctrlplane-test/busybox:2"}, headers=token
    )

    async def scraped() -> httpx.Response | None:
        response = await live.client.get("/metrics")
        assert response.status_code == 200
        text = response.text
        deployed = 'ctrlplane_deploys_total{outcome="succeeded"} 1.0' in text
        return response if deployed and "ctrlplane_reconciler_lag_seconds " in text else None

    response = await eventually(scraped, "the deploy and the reconciler lag in /metrics", timeout=30)
    text = response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert 'ctrlplane_http_requests_total{method="GET",route="/v1/instances",status="200"} 1.0' in text
    assert 'route="/v1/instances/{instance_id}",status="404"' in text
    assert 'ctrlplane_http_request_duration_seconds_bucket{le="0.005",method="GET",route="/v1/instances"}' in text
    for state_name in ("queued", "running", "failed"):
        assert f'ctrlplane_operations{{state="{state_name}"}}' in text
    assert 'ctrlplane_instances{state="running"} 1.0' in text
    assert "# TYPE ctrlplane_health_results gauge" in text


async def test_health_results_come_through_the_seam(live: Api, app: Any) -> None:
    class Checks:
        async def instance_health(self, session: Any, instance_id: str) -> str:
            return "degraded"

        async def result_counts(self, session: Any) -> dict[str, int]:
            return {"healthy": 7, "unhealthy": 2}

        async def latency(
            self, session: Any, instance_id: str, *, since: datetime, until: datetime
        ) -> list[tuple[datetime, float]]:
            start = until.replace(second=0, microsecond=0) - timedelta(minutes=2)
            return [(start + timedelta(seconds=10), 12.0), (start + timedelta(seconds=40), 18.0)]

    app.state.services.telemetry.health = Checks()
    _, token = await tenant_token(live)
    instance = await running(live, token)
    text = (await live.client.get("/metrics")).text
    assert 'ctrlplane_health_results{status="healthy"} 7.0' in text
    assert 'ctrlplane_health_results{status="unhealthy"} 2.0' in text
    dashboard = (await live.client.get(f"/v1/instances/{instance['id']}/dashboard", headers=token)).json()
    assert dashboard["health"] == "degraded"
    metrics = f"/v1/instances/{instance['id']}/metrics"
    raw = (await live.client.get(metrics, params={"name": "health_check_latency_ms"}, headers=token)).json()
    [latency] = raw["series"]
    assert latency["unit"] == "milliseconds" and [p["value"] for p in latency["points"]] == [12.0, 18.0]
    stepped = await live.client.get(metrics, params={"name": "health_check_latency_ms", "step": "1m"}, headers=token)
    assert [p["value"] for p in stepped.json()["series"][0]["points"]] == [15.0]


class TestMetricsToken:
    @pytest.fixture
    def settings(self, settings: Settings) -> Settings:
        return msgspec.structs.replace(settings, metrics_token="scrape-me-0123456789")

    async def test_metrics_need_the_configured_token(self, api: Api) -> None:
        assert (await api.client.get("/metrics")).status_code == 401
        wrong = await api.client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401 and wrong.json()["code"] == "unauthenticated"
        system_admin = await api.client.get("/metrics", headers=bearer(api.tokens.admin()))
        assert system_admin.status_code == 401, "the metrics token is its own, not a user token"
        right = await api.client.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123456789"})
        assert right.status_code == 200 and "ctrlplane_operations" in right.text
