"""Instances through the HTTP API, with workers and the reconciler running against the fake provider.

The same flows run against a real Docker engine in tests/api/test_instances_docker.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from ctrlplane.db import Database
from ctrlplane.provisioning.contract import WorkloadStatus
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.web.pagination import encode_cursor
from tests.api.test_row_cache import statements
from tests.conftest import Api, bearer
from tests.fakes import FakeProvider, FakeReplica
from tests.waiting import eventually

WEB = {
    "name": "web",
    "image": "ctrlplane-test/busybox:1",
    "resources": {"cpu_millis": 250, "memory_mb": 64},
    "ports": [{"container_port": 8080, "protocol": "tcp"}],
    "env": {"NODE_ENV": "production"},
    "labels": {"team": "platform"},
}


async def wait_for(
    api: Api, instance_id: str, token: dict[str, str], predicate: Callable[[dict[str, Any]], bool], timeout: float = 10
) -> dict[str, Any]:
    seen: list[dict[str, Any]] = [{}]

    async def matched() -> dict[str, Any] | None:
        seen[0] = dict((await api.client.get(f"/v1/instances/{instance_id}", headers=token)).json())
        return seen[0] if predicate(seen[0]) else None

    return await eventually(matched, lambda: f"instance never matched; last seen: {seen[0]}", timeout=timeout)


def state(name: str) -> Callable[[dict[str, Any]], bool]:
    return lambda body: body["state"] == name


async def tenant_token(api: Api, slug: str = "acme", plan: str = "pro") -> tuple[str, dict[str, str]]:
    tenant = await api.create_tenant(slug, plan=plan)
    return tenant["id"], bearer(api.tokens.tenant(tenant["id"]))


async def create(api: Api, token: dict[str, str], **overrides: Any) -> dict[str, Any]:
    response = await api.client.post("/v1/instances", json={**WEB, **overrides}, headers=token)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def test_create_returns_full_instance_then_workers_make_it_run(live: Api) -> None:
    tenant_id, token = await tenant_token(live)
    created = await create(live, token)
    assert created["state"] == "provisioning"
    assert created["desired_state"] == "running"
    assert created["tenant_id"] == tenant_id
    assert created["provider_name"] == "fake"
    assert created["resources"] == {"cpu_millis": 250, "memory_mb": 64}
    running = await wait_for(live, created["id"], token, state("running"))
    [endpoint] = running["endpoints"]
    assert endpoint["container_port"] == 8080
    assert endpoint["host"] == "127.0.0.1"
    assert endpoint["url"] == f"http://127.0.0.1:{endpoint['host_port']}"


async def test_stop_start_restart_walk_the_states(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    path = f"/v1/instances/{instance['id']}"
    await wait_for(live, instance["id"], token, state("running"))
    stopping = await live.client.post(f"{path}/stop", headers=token)
    assert stopping.status_code == 202
    assert stopping.json()["state"] == "stopping"
    assert (await wait_for(live, instance["id"], token, state("stopped")))["desired_state"] == "stopped"
    assert (await live.client.post(f"{path}/start", headers=token)).json()["state"] == "starting"
    await wait_for(live, instance["id"], token, state("running"))
    assert (await live.client.post(f"{path}/restart", headers=token)).status_code == 202
    await wait_for(live, instance["id"], token, state("running"))


async def test_action_the_state_forbids_is_409_naming_the_state(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    response = await api.client.post(f"/v1/instances/{instance['id']}/start", headers=token)
    assert response.status_code == 409
    body = response.json()
    assert body["code"] == "invalid_state"
    assert "provisioning" in body["message"]
    assert body["details"]["state"] == "provisioning"


async def test_delete_is_202_then_destroyed_and_gone_from_the_provider(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    response = await live.client.delete(f"/v1/instances/{instance['id']}", headers=token)
    assert response.status_code == 202
    assert response.json()["state"] == "destroying"
    await wait_for(live, instance["id"], token, state("destroyed"))
    assert [item for item in await fake.inventory() if item.instance_id == instance["id"]] == []
    listed = (await live.client.get("/v1/instances", headers=token)).json()
    assert listed["total"] == 0
    again = await live.client.delete(f"/v1/instances/{instance['id']}", headers=token)
    assert again.status_code == 409


async def test_scale_changes_resources_and_replicas(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    response = await live.client.post(
        f"/v1/instances/{instance['id']}/scale",
        json={"resources": {"cpu_millis": 500, "memory_mb": 128}, "replicas": 2},
        headers=token,
    )
    assert response.status_code == 202, response.text
    assert response.json()["replicas"] == 2
    scaled = await wait_for(live, instance["id"], token, lambda b: len(b["endpoints"]) == 2)
    assert scaled["resources"] == {"cpu_millis": 500, "memory_mb": 128}
    status = await fake.status(instance["id"])
    assert len([r for r in status.replicas if r.state == "running"]) == 2


async def test_empty_scale_is_400(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    response = await api.client.post(f"/v1/instances/{instance['id']}/scale", json={}, headers=token)
    assert response.status_code == 400


async def test_patch_changes_only_present_fields_and_env_rolls_new_containers(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    renamed = await live.client.patch(f"/v1/instances/{instance['id']}", json={"name": "api"}, headers=token)
    assert renamed.status_code == 200
    assert renamed.json()["name"] == "api"
    assert renamed.json()["env"] == WEB["env"]
    assert renamed.json()["labels"] == WEB["labels"]
    changed = await live.client.patch(
        f"/v1/instances/{instance['id']}", json={"env": {"NODE_ENV": "staging"}}, headers=token
    )
    assert changed.json()["env"] == {"NODE_ENV": "staging"}
    events = (await live.client.get(f"/v1/instances/{instance['id']}/events", headers=token)).json()["items"]
    assert any(e["type"] == "instance.updated" and e["data"]["fields"] == ["env"] for e in events)


async def test_unknown_provider_is_400_listing_available(api: Api) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post("/v1/instances", json={**WEB, "provider_name": "nomad"}, headers=token)
    assert response.status_code == 400
    assert response.json()["details"]["available"] == ["fake"]
    assert "fake" in response.json()["message"]


@pytest.mark.parametrize(
    "overrides",
    [
        {"name": "Not_A_DNS_Name"},
        {"image": "UPPER/case:tag"},
        {"image": ""},
        {"env": {"1BAD": "x"}},
        {"labels": {"ctrlplane.instance": "spoof"}},
        {"ports": [{"container_port": 70000}]},
        {"ports": [{"container_port": 80}, {"container_port": 80}]},
        {"resources": {"cpu_millis": 0, "memory_mb": 64}},
        {"replicas": 0},
        {"restart_policy": "sometimes"},
        {"pull_policy": "Maybe"},
    ],
)
async def test_invalid_instance_is_400_and_creates_nothing(api: Api, overrides: dict[str, Any]) -> None:
    _, token = await tenant_token(api)
    response = await api.client.post("/v1/instances", json={**WEB, **overrides}, headers=token)
    assert response.status_code == 400, response.text
    assert (await api.client.get("/v1/instances", headers=token)).json()["total"] == 0


async def test_duplicate_name_is_409(api: Api) -> None:
    _, token = await tenant_token(api)
    await create(api, token)
    response = await api.client.post("/v1/instances", json=WEB, headers=token)
    assert response.status_code == 409


async def test_the_providers_admission_and_the_registry_check_run_at_once_before_any_lock(
    api: Api, app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The provider's admission (an engine call) and the image's registry check (a name lookup) run
    at once, each in a worker thread, before the create's transaction takes a lock; when one
    refuses, the answer is its refusal and nothing is written."""
    from ctrlplane.errors import InvalidInput

    _, token = await tenant_token(api)
    services = app.state.services
    admitting, checking = asyncio.Event(), asyncio.Event()
    admitted_unlocked: list[str] = []

    async def admit(name: str, tenant_id: str) -> None:
        admitting.set()
        await asyncio.wait_for(checking.wait(), 5)  # only if the registry check runs meanwhile
        async with services.db.write() as session, session.begin():  # SQLite: no write lock held yet
            admitted_unlocked.append(tenant_id)

    async def check_registry(image: str, field: str = "image") -> None:
        checking.set()
        await asyncio.wait_for(admitting.wait(), 5)
        if image.startswith("refused/"):
            raise InvalidInput("registry refused", details={"field": field})

    monkeypatch.setattr(services.providers, "admit", admit)
    monkeypatch.setattr(services.registries, "admit", check_registry)
    assert (await create(api, token))["name"] == "web"
    refused = await api.client.post(
        "/v1/instances", json={**WEB, "name": "two", "image": "refused/app:1"}, headers=token
    )
    assert refused.status_code == 400, refused.text
    assert refused.json()["message"] == "registry refused" and refused.json()["request_id"]
    assert len(admitted_unlocked) == 2
    listed = (await api.client.get("/v1/instances", headers=token)).json()["items"]
    assert [item["name"] for item in listed] == ["web"]


@pytest.mark.dialects("a label filter is a JSON path, compiled differently per database")
async def test_list_filters_by_state_label_name_and_provider(api: Api) -> None:
    _, token = await tenant_token(api)
    await create(api, token, name="a", labels={"team": "platform"})
    await create(api, token, name="b", labels={"team": "data"})
    b_only = await api.client.get("/v1/instances", params={"label": "team=data"}, headers=token)
    assert [i["name"] for i in b_only.json()["items"]] == ["b"]
    assert (await api.client.get("/v1/instances", params={"name": "a"}, headers=token)).json()["total"] == 1
    by_state = await api.client.get("/v1/instances", params={"state": "provisioning"}, headers=token)
    assert by_state.json()["total"] == 2
    none = await api.client.get("/v1/instances", params={"provider": "docker"}, headers=token)
    assert none.json()["total"] == 0
    bad = await api.client.get("/v1/instances", params={"label": "no-equals"}, headers=token)
    assert bad.status_code == 400


@pytest.mark.dialects("the page, its tenants' slugs and its total are one SQL statement")
async def test_a_list_page_is_one_statement_and_shows_what_a_get_shows(api: Api, db: Database) -> None:
    acme_id, acme = await tenant_token(api)
    _, globex = await tenant_token(api, slug="globex")
    oldest = await create(api, acme, name="a", release_command="./migrate", env={"A": "1"}, labels={"x": "y"})
    for name in ("b", "c"):
        await create(api, acme, name=name)
    await create(api, globex, name="g")

    with statements(db) as sent:
        first = await api.client.get("/v1/instances", params={"limit": 2}, headers=acme)
    assert first.status_code == 200, first.text
    assert [s for s in sent if "instances" in s] == [sent[-1]]  # not a count, a page and a slug each
    page = first.json()
    assert [i["name"] for i in page["items"]] == ["c", "b"]
    assert page["total"] == 3
    with statements(db) as sent:
        second = (await api.client.get("/v1/instances", params={"cursor": page["next_cursor"]}, headers=acme)).json()
    assert len([s for s in sent if "instances" in s]) == 1
    assert (second["total"], second["next_cursor"]) == (3, None)
    listed = second["items"][0]
    assert listed == (await api.client.get(f"/v1/instances/{oldest['id']}", headers=acme)).json()
    assert listed["hostnames"] == ["a.acme.localhost"] and listed["release_command"] == ["/bin/sh", "-c", "./migrate"]

    past_the_end = await api.client.get("/v1/instances", params={"cursor": encode_cursor(oldest["id"])}, headers=acme)
    assert (past_the_end.json()["items"], past_the_end.json()["total"]) == ([], 3)

    with statements(db) as sent:  # a system admin's page spans tenants: still one statement
        everyone = (await api.client.get("/v1/instances", headers=api.admin_headers)).json()
    assert len([s for s in sent if "instances" in s]) == 1
    assert {i["name"]: i["hostnames"] for i in everyone["items"]} == {
        "a": ["a.acme.localhost"], "b": ["b.acme.localhost"], "c": ["c.acme.localhost"], "g": ["g.globex.localhost"]
    }  # fmt: skip
    mine = await api.client.get("/v1/instances", params={"tenant_id": acme_id}, headers=api.admin_headers)
    assert mine.json()["total"] == 3


async def test_quota_refuses_create_and_scale_with_limit_and_usage(api: Api) -> None:
    tenant_id, token = await tenant_token(api, plan="free")
    quota = {
        "max_instances": 2,
        "max_cpu_millis": 1000,
        "max_memory_mb": 256,
        "max_domains": 1,
        "max_routes": 1,
        "max_secrets": 1,
    }
    await api.client.put(f"/v1/admin/tenants/{tenant_id}/quota", json=quota, headers=api.admin_headers)
    first = await create(api, token, name="a", resources={"cpu_millis": 500, "memory_mb": 128})
    too_big = await api.client.post(
        "/v1/instances", json={**WEB, "name": "b", "resources": {"cpu_millis": 600, "memory_mb": 64}}, headers=token
    )
    assert too_big.status_code == 403
    body = too_big.json()
    assert body["code"] == "quota_exceeded"
    assert body["details"] == {"quota": "max_cpu_millis", "used": 500, "limit": 1000, "requested": 600}
    scale = await api.client.post(f"/v1/instances/{first['id']}/scale", json={"replicas": 3}, headers=token)
    assert scale.status_code == 403
    assert scale.json()["details"]["quota"] == "max_cpu_millis"
    await create(api, token, name="b", resources={"cpu_millis": 100, "memory_mb": 64})
    third = await api.client.post(
        "/v1/instances", json={**WEB, "name": "c", "resources": {"cpu_millis": 10, "memory_mb": 6}}, headers=token
    )
    assert third.json()["details"]["quota"] == "max_instances"
    usage = (await api.client.get(f"/v1/admin/tenants/{tenant_id}/quota", headers=api.admin_headers)).json()
    assert usage["usage"]["instances"] == 2
    assert usage["usage"]["cpu_millis"] == 600


@pytest.mark.dialects("concurrent creates serialise on the tenant row lock")
async def test_concurrent_creates_never_exceed_the_quota(api: Api) -> None:
    tenant_id, token = await tenant_token(api, plan="enterprise")
    quota = {
        "max_instances": 5,
        "max_cpu_millis": 100000,
        "max_memory_mb": 100000,
        "max_domains": 1,
        "max_routes": 1,
        "max_secrets": 1,
    }
    await api.client.put(f"/v1/admin/tenants/{tenant_id}/quota", json=quota, headers=api.admin_headers)
    responses = await asyncio.gather(
        *(api.client.post("/v1/instances", json={**WEB, "name": f"w{i}"}, headers=token) for i in range(20))
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses.count(201) == 5, statuses
    assert statuses.count(403) == 15, statuses
    assert (await api.client.get("/v1/instances", headers=token)).json()["total"] == 5


async def test_suspended_instance_stops_refuses_start_and_resumes(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    path = f"/v1/instances/{instance['id']}"
    await wait_for(live, instance["id"], token, state("running"))
    tenant_try = await live.client.post(f"{path}/suspend", json={"reason": "abuse"}, headers=token)
    assert tenant_try.status_code == 403
    suspended = await live.client.post(f"{path}/suspend", json={"reason": "abuse"}, headers=live.admin_headers)
    assert suspended.status_code == 202
    assert suspended.json()["suspension_reason"] == "abuse"
    await wait_for(live, instance["id"], token, state("stopped"))
    refused = await live.client.post(f"{path}/start", headers=token)
    assert refused.status_code == 409
    assert "suspended" in refused.json()["message"]
    await live.client.post(f"{path}/unsuspend", json={"reason": "ok"}, headers=live.admin_headers)
    resumed = await wait_for(live, instance["id"], token, state("running"))
    assert resumed["suspended_at"] is None


async def test_suspending_the_tenant_stops_its_instances_and_unsuspending_starts_them(live: Api) -> None:
    tenant_id, token = await tenant_token(live)
    running = await create(live, token, name="running")
    stopped = await create(live, token, name="stopped")
    await wait_for(live, running["id"], token, state("running"))
    await wait_for(live, stopped["id"], token, state("running"))
    await live.client.post(f"/v1/instances/{stopped['id']}/stop", headers=token)
    await wait_for(live, stopped["id"], token, state("stopped"))
    tenant_path = f"/v1/admin/tenants/{tenant_id}"
    await live.client.post(f"{tenant_path}/suspend", json={"reason": "overdue"}, headers=live.admin_headers)
    await wait_for(live, running["id"], token, state("stopped"))
    await live.client.post(f"{tenant_path}/unsuspend", json={"reason": "paid"}, headers=live.admin_headers)
    await wait_for(live, running["id"], token, state("running"))
    await asyncio.sleep(0.5)
    assert (await live.client.get(f"/v1/instances/{stopped['id']}", headers=token)).json()["state"] == "stopped"


async def test_force_deleting_a_tenant_tears_its_instances_down(live: Api, fake: FakeProvider) -> None:
    tenant_id, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    refused = await live.client.delete(f"/v1/admin/tenants/{tenant_id}", headers=live.admin_headers)
    assert refused.status_code == 409
    assert refused.json()["details"]["live"] == {"instances": 1}
    fake.set_available(False)  # the teardown waits, so the tenant stays `deleting` for a while
    accepted = await live.client.delete(
        f"/v1/admin/tenants/{tenant_id}", params={"force": "true"}, headers=live.admin_headers
    )
    assert accepted.status_code == 202
    # A key made now would vanish with the tenant right after it was shown: refused instead.
    key = {"name": "late", "roles": ["read"], "tenant_id": tenant_id}
    late = await live.client.post("/v1/keys", json=key, headers=live.admin_headers)
    assert late.status_code == 409, late.text
    assert late.json()["details"] == {"state": "deleting"}
    fake.set_available(True)

    async def gone() -> bool:
        return (await live.client.get(f"/v1/admin/tenants/{tenant_id}", headers=live.admin_headers)).status_code == 404

    await eventually(gone, "the tenant is deleted")
    assert [i for i in await fake.inventory() if i.tenant_id == tenant_id] == []


async def test_crashed_replica_is_restarted_and_the_stream_shows_it(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    fake.crash(instance["id"], replica=0, exit_code=137)
    restarted = await wait_for(live, instance["id"], token, lambda b: b["restart_count"] == 1)
    assert restarted["state"] == "running"
    events = (await live.client.get(f"/v1/instances/{instance['id']}/events", headers=token)).json()["items"]
    [event] = [e for e in events if e["type"] == "instance.restarted"]
    assert event["data"]["exit_code"] == 137


async def test_crash_loop_marks_the_instance_failed_with_the_reason(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    path = f"/v1/instances/{instance['id']}"
    for _ in range(10):
        # Each crash is counted and its replica running again before the next one (however slow the
        # machine is), so every crash counts toward the loop instead of landing on an exited replica.
        before = (await live.client.get(path, headers=token)).json()
        if before["state"] == "failed":
            break
        fake.crash(instance["id"], replica=0, exit_code=3)

        async def restarted(count: int = before["restart_count"]) -> dict[str, Any] | None:
            body: dict[str, Any] = (await live.client.get(path, headers=token)).json()
            if body["state"] == "failed":
                return body
            running = [r.state for r in (await fake.status(instance["id"])).replicas] == ["running"]
            return body if body["restart_count"] > count and running else None

        await eventually(restarted, "the crash seen and the replica restarted")
    failed = await wait_for(live, instance["id"], token, state("failed"))
    assert "crash loop" in failed["status_message"]
    assert "exit code 3" in failed["status_message"]


async def test_restart_policy_never_leaves_an_exited_instance_failed(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token, restart_policy="never")
    await wait_for(live, instance["id"], token, state("running"))
    fake.crash(instance["id"], replica=0, exit_code=2)
    failed = await wait_for(live, instance["id"], token, state("failed"))
    assert failed["restart_count"] == 0
    assert "2" in failed["status_message"]


async def test_missing_containers_are_recreated(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    fake.remove_container(instance["id"], replica=0)
    events_path = f"/v1/instances/{instance['id']}/events"

    async def repairing() -> bool:
        events = (await live.client.get(events_path, headers=token)).json()["items"]
        return any(e["type"] == "instance.repairing" for e in events)

    await eventually(repairing, "an instance.repairing event")

    async def recreated() -> WorkloadStatus | None:
        status = await fake.status(instance["id"])
        return status if [r.state for r in status.replicas] == ["running"] else None

    status = await eventually(recreated, "the replica runs again")
    new_port = status.endpoints[0].host_port
    fresh = await wait_for(
        live, instance["id"], token, lambda b: [e["host_port"] for e in b["endpoints"]] == [new_port]
    )
    assert fresh["state"] == "running"


async def test_orphaned_containers_are_removed(live: Api, fake: FakeProvider) -> None:
    from ctrlplane.provisioning.contract import Resources, WorkloadSpec

    await fake.provision(
        WorkloadSpec(
            instance_id="inst_01h455vb4pex5vsknk084sn02q",
            tenant_id="ten_01h455vb4pex5vsknk084sn02q",
            name="orphan",
            image="ctrlplane-test/busybox:1",
            resources=Resources(cpu_millis=100, memory_mb=64),
        )
    )

    async def removed() -> bool:
        return await fake.inventory() == []

    await eventually(removed, "the orphan is removed")


async def test_unreachable_provider_is_503_for_callers_and_nothing_is_written(
    api: Api, fake: FakeProvider, providers: ProviderRegistry
) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token, name="before")
    fake.set_available(False)
    await providers.refresh()
    refused = await api.client.post("/v1/instances", json=WEB, headers=token)
    assert refused.status_code == 503
    assert refused.json()["code"] == "provider_unavailable"
    assert "fake provider is down" in refused.json()["message"]
    stop = await api.client.post(f"/v1/instances/{instance['id']}/stop", headers=token)
    assert stop.status_code == 503
    listed = (await api.client.get("/v1/instances", headers=token)).json()
    assert [(i["name"], i["state"]) for i in listed["items"]] == [("before", "provisioning")]


async def test_provider_outage_after_acceptance_leaves_the_instance_waiting_then_it_converges(
    live: Api, fake: FakeProvider
) -> None:
    from ctrlplane.provisioning.errors import ProviderUnavailable

    _, token = await tenant_token(live)
    for _ in range(3):
        fake.fail_next("provision", ProviderUnavailable("engine restarting"))
    instance = await create(live, token)
    waiting = await wait_for(live, instance["id"], token, lambda b: "waiting for the provider" in b["status_message"])
    assert waiting["state"] == "provisioning"
    assert "engine restarting" in waiting["status_message"]
    await wait_for(live, instance["id"], token, state("running"), timeout=15)


async def test_missing_image_fails_the_instance_with_a_clear_reason(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    fake.missing_images.add("ghcr.io/nobody/missing:1")
    instance = await create(live, token, image="ghcr.io/nobody/missing:1", pull_policy="Never")
    failed = await wait_for(live, instance["id"], token, state("failed"))
    assert "ghcr.io/nobody/missing:1" in failed["status_message"]


async def test_admin_stats_count_instances_by_state(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    await wait_for(live, instance["id"], token, state("running"))
    stats = (await live.client.get("/v1/admin/stats", headers=live.admin_headers)).json()
    assert stats["instances"] == {"running": 1}


async def test_changes_made_while_stopped_take_effect_on_start(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    path = f"/v1/instances/{instance['id']}"
    await wait_for(live, instance["id"], token, state("running"))
    await live.client.post(f"{path}/stop", headers=token)
    await wait_for(live, instance["id"], token, state("stopped"))
    await live.client.patch(path, json={"env": {"A": "2"}}, headers=token)
    await live.client.post(f"{path}/scale", json={"replicas": 2}, headers=token)
    await live.client.post(f"{path}/start", headers=token)
    await wait_for(live, instance["id"], token, lambda b: b["state"] == "running" and len(b["endpoints"]) == 2)
    replicas = fake.replicas(instance["id"])
    assert len(replicas) == 2
    assert {r.generation for r in replicas} == {3}
    assert all(r.app_env == {"A": "2"} for r in replicas)


@pytest.mark.dialects("two workers claim one instance's operations (SKIP LOCKED, per-instance order)")
async def test_quick_successive_changes_each_get_their_own_generation(live: Api, fake: FakeProvider) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    path = f"/v1/instances/{instance['id']}"
    await wait_for(live, instance["id"], token, state("running"))
    await live.client.patch(path, json={"env": {"A": "2"}}, headers=token)
    await live.client.patch(path, json={"env": {"A": "3"}}, headers=token)

    def of_generation_3() -> list[FakeReplica] | None:
        replicas = fake.replicas(instance["id"])
        return replicas if [r.generation for r in replicas] == [3] else None

    replicas = await eventually(of_generation_3, lambda: f"generation 3 only: {fake.replicas(instance['id'])}")
    assert replicas[0].app_env == {"A": "3"}


async def test_a_destroyed_instance_cannot_be_unsuspended(live: Api) -> None:
    _, token = await tenant_token(live)
    instance = await create(live, token)
    path = f"/v1/instances/{instance['id']}"
    await live.client.post(f"{path}/suspend", json={"reason": "r"}, headers=live.admin_headers)
    await live.client.delete(path, headers=token)
    await wait_for(live, instance["id"], token, state("destroyed"))
    response = await live.client.post(f"{path}/unsuspend", json={"reason": "r"}, headers=live.admin_headers)
    assert response.status_code == 409


async def test_no_instance_can_be_created_in_a_suspended_tenant_even_by_an_admin(api: Api) -> None:
    tenant_id, _ = await tenant_token(api)
    await api.client.post(f"/v1/admin/tenants/{tenant_id}/suspend", json={"reason": "r"}, headers=api.admin_headers)
    response = await api.client.post("/v1/instances", json={**WEB, "tenant_id": tenant_id}, headers=api.admin_headers)
    assert response.status_code == 409
    assert response.json()["details"]["state"] == "suspended"


@pytest.mark.dialects("the queue's claim order (SKIP LOCKED, blocked operations)")
async def test_delete_queued_behind_a_suspension_ends_destroyed_without_retries(api: Api, app: Any) -> None:
    """Create, suspend and delete before any worker ran: the skipped provision leaves nothing, so
    the queued stop must not fail on missing containers and hold the deprovision up."""
    from ctrlplane.operations.worker import OperationWorker

    _, token = await tenant_token(api)
    instance = await create(api, token)
    path = f"/v1/instances/{instance['id']}"
    assert (
        await api.client.post(f"{path}/suspend", json={"reason": "r"}, headers=api.admin_headers)
    ).status_code == 202
    assert (await api.client.delete(path, headers=token)).status_code == 202
    worker = OperationWorker(app.state.services)
    claimed: list[None] = []
    while await worker.run_once(claimed=lambda: claimed.append(None)):
        pass
    body = (await api.client.get(path, headers=token)).json()
    assert body["state"] == "destroyed", body
    assert len(claimed) == 3  # provision, stop and deprovision, each once


async def test_every_answer_that_returns_an_instance_carries_its_router_hostname_and_url(live: Api) -> None:
    _, token = await tenant_token(live)
    created = await create(live, token)
    path = f"/v1/instances/{created['id']}"
    answers: dict[str, Any] = {"create": created}

    async def call(action: str, method: str, url: str, settles_in: str | None = None, **kwargs: Any) -> None:
        response = await live.client.request(method, url, **{"headers": token, **kwargs})
        assert response.status_code < 300, (action, response.text)
        answers[action] = response.json()
        if settles_in is not None:
            await wait_for(live, created["id"], token, state(settles_in))

    await wait_for(live, created["id"], token, state("running"))
    await call("get", "GET", path)
    await call("list", "GET", "/v1/instances")
    answers["list"] = answers["list"]["items"][0]
    await call("scale", "POST", f"{path}/scale", "running", json={"replicas": 2})
    await call("stop", "POST", f"{path}/stop", "stopped")
    await call("start", "POST", f"{path}/start", "running")
    await call("restart", "POST", f"{path}/restart", "running")
    await call("suspend", "POST", f"{path}/suspend", "stopped", json={"reason": "x"}, headers=live.admin_headers)
    await call("unsuspend", "POST", f"{path}/unsuspend", "running", json={"reason": "y"}, headers=live.admin_headers)
    for action, body in answers.items():
        assert (body.get("hostnames"), body.get("url")) == (["web.acme.localhost"], "http://web.acme.localhost"), action
    await call("update", "PATCH", path, json={"name": "api"})
    await call("delete", "DELETE", path)
    for action in ("update", "delete"):
        body = answers[action]
        assert (body.get("hostnames"), body.get("url")) == (["api.acme.localhost"], "http://api.acme.localhost"), action
