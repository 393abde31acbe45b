"""ETag and If-Match beyond instances and tenants: API keys, secrets, health checks, deployments and
the tenant quota. For each, GET carries the version as ETag, a stale If-Match is 412 and changes
nothing, a matching one applies, and no If-Match still applies (last writer wins)."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from tests.api.test_instances import create, tenant_token
from tests.conftest import Api

STALE = '"999"'


async def _tagged(api: Api, path: str, token: dict[str, str]) -> tuple[dict[str, Any], str]:
    response = await api.client.get(path, headers=token)
    assert response.status_code == 200, response.text
    body = dict(response.json())
    assert response.headers["etag"] == f'"{body["version"]}"'
    return body, response.headers["etag"]


def _refused(response: httpx.Response, current: str) -> None:
    assert response.status_code == 412, response.text
    assert response.json()["code"] == "precondition_failed"
    assert response.json()["details"]["etag"] == current


async def _force_running(api: Api, instance_id: str) -> None:
    app = api.client._transport.app  # type: ignore[attr-defined]
    async with app.state.services.db.write() as session, session.begin():
        await session.execute(text("UPDATE instances SET state = 'running' WHERE id = :id"), {"id": instance_id})


async def test_revoking_a_key_honours_if_match(api: Api) -> None:
    tenant_id, token = await tenant_token(api)
    created = await api.create_key(tenant_id, ["read"])
    path = f"/v1/keys/{created['id']}"
    key, etag = await _tagged(api, path, token)
    assert key["version"] == 1 and "key" not in key

    _refused(await api.client.delete(path, headers={**token, "If-Match": STALE}), etag)
    assert (
        await api.client.get("/v1/keys/self", headers={"Authorization": f"Bearer {created['key']}"})
    ).status_code == 200

    revoked = await api.client.delete(path, headers={**token, "If-Match": etag})
    assert revoked.status_code == 204, revoked.text
    after, after_etag = await _tagged(api, path, token)
    assert after["revoked_at"] is not None and after_etag != etag
    assert (
        await api.client.get("/v1/keys/self", headers={"Authorization": f"Bearer {created['key']}"})
    ).status_code == 401
    _refused(await api.client.delete(path, headers={**token, "If-Match": etag}), after_etag)
    again = await api.client.delete(path, headers=token)
    assert again.status_code == 204
    assert (await _tagged(api, path, token))[1] == after_etag


async def test_other_tenant_gets_404_for_a_key_whatever_if_match_says(api: Api) -> None:
    tenant_id, _ = await tenant_token(api)
    key = await api.create_key(tenant_id, ["read"])
    _, other = await tenant_token(api, slug="globex")
    assert (await api.client.get(f"/v1/keys/{key['id']}", headers=other)).status_code == 404
    assert (await api.client.delete(f"/v1/keys/{key['id']}", headers={**other, "If-Match": "*"})).status_code == 404


async def test_setting_and_deleting_a_secret_honour_if_match(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    secrets = f"/v1/instances/{instance['id']}/secrets"
    never = await api.client.post(secrets, json={"key": "TOKEN", "value": "a"}, headers={**token, "If-Match": "*"})
    assert never.status_code == 412, never.text
    assert (await api.client.get(f"{secrets}/TOKEN", headers=token)).status_code == 404

    first = await api.client.post(secrets, json={"key": "TOKEN", "value": "a"}, headers=token)
    assert first.status_code == 201, first.text
    assert first.headers["etag"] == '"1"'
    secret, etag = await _tagged(api, f"{secrets}/TOKEN", token)
    assert secret["version"] == 1 and "value" not in secret

    second = await api.client.post(secrets, json={"key": "TOKEN", "value": "b"}, headers={**token, "If-Match": etag})
    assert second.status_code == 201, second.text
    assert second.headers["etag"] == '"2"'
    raced = await api.client.post(secrets, json={"key": "TOKEN", "value": "c"}, headers={**token, "If-Match": etag})
    _refused(raced, '"2"')
    _refused(await api.client.delete(f"{secrets}/TOKEN", headers={**token, "If-Match": etag}), '"2"')
    assert (await _tagged(api, f"{secrets}/TOKEN", token))[0]["version"] == 2

    deleted = await api.client.delete(f"{secrets}/TOKEN", headers={**token, "If-Match": '"2"'})
    assert deleted.status_code == 200, deleted.text
    assert (await api.client.get(f"{secrets}/TOKEN", headers=token)).status_code == 404
    again = await api.client.post(secrets, json={"key": "TOKEN", "value": "d"}, headers=token)
    assert again.headers["etag"] == '"4"', "a re-created key goes on counting, so an old ETag never matches it"


async def test_file_secrets_are_read_by_their_path(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    secrets = f"/v1/instances/{instance['id']}/secrets"
    body = {"key": "/etc/app/token", "value": "x", "type": "file"}
    assert (await api.client.post(secrets, json=body, headers=token)).status_code == 201
    secret, etag = await _tagged(api, f"{secrets}//etc/app/token", token)
    assert secret["key"] == "/etc/app/token" and secret["type"] == "file" and etag == '"1"'


async def test_health_check_patch_delete_and_run_honour_if_match(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    created = await api.client.post(
        f"/v1/instances/{instance['id']}/health/checks",
        json={"name": "ready", "type": "tcp", "target": "localhost:8080"},
        headers=token,
    )
    assert created.status_code == 201, created.text
    path = f"/v1/health/checks/{created.json()['id']}"
    check, etag = await _tagged(api, path, token)
    assert check["version"] == 1

    patched = await api.client.patch(path, json={"retries": 5, "interval": "10s"}, headers={**token, "If-Match": etag})
    assert patched.status_code == 200, patched.text
    assert patched.json()["retries"] == 5 and patched.json()["interval"] == "10s"
    assert patched.headers["etag"] == '"2"'
    _refused(await api.client.patch(path, json={"retries": 9}, headers={**token, "If-Match": etag}), '"2"')
    _refused(await api.client.post(f"{path}/run", headers={**token, "If-Match": etag}), '"2"')
    _refused(await api.client.delete(path, headers={**token, "If-Match": etag}), '"2"')
    assert (await _tagged(api, path, token))[0]["retries"] == 5

    unchanged = await api.client.patch(path, json={"retries": 5}, headers=token)
    assert unchanged.status_code == 200 and unchanged.headers["etag"] == '"2"', "a no-op PATCH is no new version"
    bad = await api.client.patch(path, json={"timeout": "20s"}, headers=token)
    assert bad.status_code == 400, "timeout must stay shorter than the interval"

    await _force_running(api, instance["id"])
    ran = await api.client.post(f"{path}/run", headers={**token, "If-Match": '"2"'})
    assert ran.status_code == 200, ran.text
    assert ran.headers["etag"] == '"2"', "a run observes; it is no change of the check"
    deleted = await api.client.delete(path, headers={**token, "If-Match": '"2"'})
    assert deleted.status_code == 204
    assert (await api.client.get(path, headers=token)).status_code == 404


async def test_a_new_target_makes_a_check_unknown_and_a_taken_name_is_409(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token, ports=[{"container_port": 8080}, {"container_port": 9090}])
    checks = f"/v1/instances/{instance['id']}/health/checks"
    one = (await api.client.post(checks, json={"name": "one", "type": "tcp", "target": "8080"}, headers=token)).json()
    await api.client.post(checks, json={"name": "two", "type": "tcp", "target": "8080"}, headers=token)
    taken = await api.client.patch(f"/v1/health/checks/{one['id']}", json={"name": "two"}, headers=token)
    assert taken.status_code == 409, taken.text
    moved = await api.client.patch(f"/v1/health/checks/{one['id']}", json={"target": "9090"}, headers=token)
    assert moved.status_code == 200, moved.text
    assert moved.json()["target"] == "9090" and moved.json()["status"] == "unknown"
    elsewhere = await api.client.patch(f"/v1/health/checks/{one['id']}", json={"target": "7000"}, headers=token)
    assert elsewhere.status_code == 400, "the target must name one of the instance's ports"


async def test_cancelling_a_deployment_honours_its_own_etag(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    await _force_running(api, instance["id"])
    deployed = await api.client.post(f"/v1/instances/{instance['id']}/deploy", json={"image": "a:2"}, headers=token)
    assert deployed.status_code == 201, deployed.text
    path = f"/v1/deployments/{deployed.json()['id']}"
    deployment, etag = await _tagged(api, path, token)
    assert deployment["version"] == 1

    _refused(await api.client.post(f"{path}/cancel", headers={**token, "If-Match": STALE}), etag)
    assert (await _tagged(api, path, token))[0]["cancel_requested"] is False
    cancelled = await api.client.post(f"{path}/cancel", headers={**token, "If-Match": etag})
    assert cancelled.status_code == 202, cancelled.text
    assert cancelled.json()["cancel_requested"] is True and cancelled.headers["etag"] == '"2"'
    again = await api.client.post(f"{path}/cancel", headers=token)
    assert again.status_code == 202 and again.headers["etag"] == '"2"'


async def test_the_quota_carries_the_tenant_etag(api: Api) -> None:
    tenant = await api.create_tenant("initech", plan="free")
    path = f"/v1/admin/tenants/{tenant['id']}"
    _, etag = await _tagged(api, path, api.admin_headers)
    quota = await api.client.get(f"{path}/quota", headers=api.admin_headers)
    assert quota.headers["etag"] == etag and quota.json()["version"] == tenant["version"]
    limits = {**quota.json()["limits"], "max_routes": 3}
    put = await api.client.put(f"{path}/quota", json=limits, headers={**api.admin_headers, "If-Match": etag})
    assert put.status_code == 200, put.text
    assert put.headers["etag"] != etag
    assert put.headers["etag"] == (await api.client.get(path, headers=api.admin_headers)).headers["etag"]
    unconditional = await api.client.put(f"{path}/quota", json={**limits, "max_routes": 4}, headers=api.admin_headers)
    assert unconditional.status_code == 200 and unconditional.json()["limits"]["max_routes"] == 4


async def test_a_replayed_action_carries_the_etag_it_first_answered(api: Api) -> None:
    tenant = await api.create_tenant("initech", plan="free")
    path = f"/v1/admin/tenants/{tenant['id']}/suspend"
    headers = {**api.admin_headers, "Idempotency-Key": "suspend-once"}
    first = await api.client.post(path, json={"reason": "billing"}, headers=headers)
    assert first.status_code == 200, first.text
    replayed = await api.client.post(path, json={"reason": "billing"}, headers=headers)
    assert replayed.headers["idempotent-replayed"] == "true"
    assert replayed.headers["etag"] == first.headers["etag"] == f'"{first.json()["version"]}"'


@pytest.mark.dialects("concurrent If-Match writes serialise on the row lock")
async def test_of_concurrent_changes_with_one_etag_exactly_one_applies(api: Api) -> None:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    secrets = f"/v1/instances/{instance['id']}/secrets"
    assert (await api.client.post(secrets, json={"key": "TOKEN", "value": "0"}, headers=token)).status_code == 201
    _, etag = await _tagged(api, f"{secrets}/TOKEN", token)
    responses = await asyncio.gather(
        *(
            api.client.post(secrets, json={"key": "TOKEN", "value": str(n)}, headers={**token, "If-Match": etag})
            for n in range(1, 6)
        )
    )
    assert sorted(r.status_code for r in responses) == [201, 412, 412, 412, 412]
    assert (await _tagged(api, f"{secrets}/TOKEN", token))[1] == '"2"'
