"""ETag and If-Match: two CI jobs cannot silently overwrite each other's change to an instance."""

from __future__ import annotations

from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.conftest import Api


async def _running(api: Api) -> tuple[dict[str, str], dict[str, object], str]:
    _, token = await tenant_token(api)
    instance = await create(api, token)
    await wait_for(api, str(instance["id"]), token, state("running"))
    response = await api.client.get(f"/v1/instances/{instance['id']}", headers=token)
    assert response.status_code == 200
    return token, response.json(), response.headers["etag"]


async def test_get_returns_the_version_as_a_strong_etag(live: Api) -> None:
    _, body, etag = await _running(live)
    assert etag == f'"{body["version"]}"'


async def test_second_of_two_racing_patches_gets_412_and_changes_nothing(live: Api) -> None:
    token, body, etag = await _running(live)
    path = f"/v1/instances/{body['id']}"
    first = await live.client.patch(path, json={"env": {"JOB": "one"}}, headers={**token, "If-Match": etag})
    assert first.status_code == 200, first.text
    assert first.headers["etag"] != etag
    assert first.headers["etag"] == f'"{first.json()["version"]}"'

    second = await live.client.patch(path, json={"env": {"JOB": "two"}}, headers={**token, "If-Match": etag})
    assert second.status_code == 412, second.text
    error = second.json()
    assert error["code"] == "precondition_failed"
    assert error["details"]["etag"] == first.headers["etag"]
    assert error["request_id"]

    after = (await live.client.get(path, headers=token)).json()
    assert after["env"]["JOB"] == "one"
    assert after["version"] == first.json()["version"]
    releases = (await live.client.get(f"{path}/releases", headers=token)).json()
    assert releases["total"] == 2


async def test_lifecycle_action_and_delete_honour_if_match(live: Api) -> None:
    token, body, etag = await _running(live)
    path = f"/v1/instances/{body['id']}"
    stale = f'"{int(body["version"]) - 1}"'
    refused = await live.client.post(f"{path}/stop", headers={**token, "If-Match": stale})
    assert refused.status_code == 412
    assert (await live.client.get(path, headers=token)).json()["desired_state"] == "running"

    stopped = await live.client.post(f"{path}/stop", headers={**token, "If-Match": etag})
    assert stopped.status_code == 202, stopped.text
    assert stopped.json()["desired_state"] == "stopped"

    refused_delete = await live.client.delete(path, headers={**token, "If-Match": etag})
    assert refused_delete.status_code == 412
    assert (await live.client.get(path, headers=token)).json()["state"] != "destroying"
    deleted = await live.client.delete(path, headers={**token, "If-Match": stopped.headers["etag"]})
    assert deleted.status_code == 202, deleted.text


async def test_deploy_with_a_stale_etag_creates_no_deployment(live: Api) -> None:
    token, body, etag = await _running(live)
    path = f"/v1/instances/{body['id']}"
    patched = await live.client.patch(path, json={"labels": {"team": "web"}}, headers=token)
    assert patched.status_code == 200
    refused = await live.client.post(
        f"{path}/deploy", json={"image": "ctrlplane-test/busybox:2"}, headers={**token, "If-Match": etag}
    )
    assert refused.status_code == 412, refused.text
    deployments = (await live.client.get(f"{path}/deployments", headers=token)).json()
    assert deployments["total"] == 0


async def test_star_matches_any_version_and_weak_tags_never_match(live: Api) -> None:
    token, body, etag = await _running(live)
    path = f"/v1/instances/{body['id']}"
    weak = await live.client.patch(path, json={"env": {"A": "1"}}, headers={**token, "If-Match": f"W/{etag}"})
    assert weak.status_code == 412
    listed = await live.client.patch(path, json={"env": {"A": "1"}}, headers={**token, "If-Match": f'"999", {etag}'})
    assert listed.status_code == 200, listed.text
    star = await live.client.patch(path, json={"env": {"A": "2"}}, headers={**token, "If-Match": "*"})
    assert star.status_code == 200, star.text


async def test_malformed_if_match_names_no_version_and_is_412(live: Api) -> None:
    token, body, _ = await _running(live)
    for malformed in ("v1", "", "1", '"1'):
        response = await live.client.patch(
            f"/v1/instances/{body['id']}", json={"env": {"A": "1"}}, headers={**token, "If-Match": malformed}
        )
        assert response.status_code == 412, malformed
        assert response.json()["code"] == "precondition_failed"
    assert (await live.client.get(f"/v1/instances/{body['id']}", headers=token)).json()["env"] == body["env"]


async def test_other_tenant_gets_404_not_412(live: Api) -> None:
    _, body, etag = await _running(live)
    _, other = await tenant_token(live, slug="globex")
    response = await live.client.patch(
        f"/v1/instances/{body['id']}", json={"env": {"A": "1"}}, headers={**other, "If-Match": etag}
    )
    assert response.status_code == 404


async def test_racing_tenant_changes_get_412_and_the_quota_put_takes_the_tenant_etag(api: Api) -> None:
    tenant = await api.create_tenant("initech", plan="free")
    path = f"/v1/admin/tenants/{tenant['id']}"
    read = await api.client.get(path, headers=api.admin_headers)
    etag = read.headers["etag"]
    assert etag == f'"{read.json()["version"]}"'

    renamed = await api.client.patch(path, json={"name": "Initech"}, headers={**api.admin_headers, "If-Match": etag})
    assert renamed.status_code == 200, renamed.text
    assert renamed.headers["etag"] != etag
    stale = await api.client.patch(path, json={"plan": "pro"}, headers={**api.admin_headers, "If-Match": etag})
    assert stale.status_code == 412
    assert (await api.client.get(path, headers=api.admin_headers)).json()["plan"] == "free"

    quota = (await api.client.get(f"{path}/quota", headers=api.admin_headers)).json()["limits"]
    refused = await api.client.put(
        f"{path}/quota", json={**quota, "max_instances": 1}, headers={**api.admin_headers, "If-Match": etag}
    )
    assert refused.status_code == 412
    assert (await api.client.get(f"{path}/quota", headers=api.admin_headers)).json()["limits"] == quota
    accepted = await api.client.put(
        f"{path}/quota",
        json={**quota, "max_instances": 1},
        headers={**api.admin_headers, "If-Match": renamed.headers["etag"]},
    )
    assert accepted.status_code == 200, accepted.text
    after = await api.client.get(path, headers=api.admin_headers)
    assert after.headers["etag"] != renamed.headers["etag"]

    stale_suspend = await api.client.post(
        f"{path}/suspend",
        json={"reason": "billing"},
        headers={**api.admin_headers, "If-Match": renamed.headers["etag"]},
    )
    assert stale_suspend.status_code == 412
    stale_delete = await api.client.delete(path, headers={**api.admin_headers, "If-Match": renamed.headers["etag"]})
    assert stale_delete.status_code == 412
    deleted = await api.client.delete(path, headers={**api.admin_headers, "If-Match": after.headers["etag"]})
    assert deleted.status_code == 204
