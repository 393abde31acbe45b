"""Secrets through the HTTP API: metadata only out, sealed at rest, injected by workers, pinned by
releases, rotated under a new master key. Workers run against the fake provider here; the real
Docker engine is in test_secrets_docker.py."""

from __future__ import annotations

import asyncio
import os
import secrets as random
import sys
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from sqlalchemy import select, text, update

from ctrlplane.app import create_app
from ctrlplane.cli import main as cli_main
from ctrlplane.db import Database
from ctrlplane.idempotency.service import request_fingerprint
from ctrlplane.models import metadata
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.secrets.crypto import DecryptionFailed, MasterKeyRing, Vault, new_master_key
from ctrlplane.secrets.models import SecretVersion, TenantDataKey
from ctrlplane.secrets.schemas import WorkloadSecrets
from ctrlplane.secrets.service import workload_secrets
from ctrlplane.settings import Settings
from tests.api.test_deployments import finished
from tests.api.test_instances import create, state, tenant_token, wait_for
from tests.conftest import Api
from tests.fakes import FakeProvider
from tests.waiting import eventually


def marker() -> str:
    """A value that appears nowhere unless something leaks it."""
    return "sv-" + random.token_hex(16)


def secrets_path(instance_id: str) -> str:
    return f"/v1/instances/{instance_id}/secrets"


async def put_secret(
    api: Api, token: dict[str, str], instance_id: str, key: str, value: str, type: str = "env", **params: str
) -> dict[str, Any]:
    response = await api.client.post(
        secrets_path(instance_id), json={"key": key, "value": value, "type": type}, params=params, headers=token
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


async def instance_of(api: Api, slug: str = "acme") -> tuple[str, dict[str, str], dict[str, Any]]:
    tenant_id, token = await tenant_token(api, slug)
    return tenant_id, token, await create(api, token)


async def raw_storage(db: Database) -> bytes:
    """Everything the database holds, as stored: the SQLite files' bytes, or every PostgreSQL row
    as text (bytea columns appear in hex)."""
    if db.dialect == "sqlite":
        database = Path(str(db.engine.url.database))
        return b"".join(path.read_bytes() for path in sorted(database.parent.glob(database.name + "*")))
    dumped: list[str] = []
    async with db.read() as session:
        for table in metadata.sorted_tables:
            rows = await session.execute(text(f'SELECT t::text FROM "{table.name}" t'))
            dumped.extend(row[0] for row in rows)
    return "\n".join(dumped).encode()


def assert_absent(values: list[str], haystack: bytes, where: str) -> None:
    for value in values:
        for form in (value.encode(), value.encode().hex().encode()):
            assert form not in haystack, f"a secret value appears in {where}"


async def test_set_list_and_delete_show_metadata_and_never_the_value(api: Api) -> None:
    _, token, instance = await instance_of(api)
    env_value, file_value, newer = marker(), marker(), marker()
    responses: list[httpx.Response] = []
    first = await api.client.post(
        secrets_path(instance["id"]), json={"key": "DATABASE_URL", "value": env_value, "type": "env"}, headers=token
    )
    responses.append(first)
    assert first.status_code == 201, first.text
    body = first.json()
    assert set(body) == {"key", "type", "version", "instance_id", "created_at", "updated_at"}
    assert (body["key"], body["type"], body["version"], body["instance_id"]) == (
        "DATABASE_URL",
        "env",
        1,
        instance["id"],
    )
    again = await api.client.post(
        secrets_path(instance["id"]), json={"key": "DATABASE_URL", "value": newer}, headers=token
    )
    responses.append(again)
    assert again.json()["version"] == 2
    assert again.json()["created_at"] == body["created_at"]
    assert again.json()["updated_at"] >= body["updated_at"]
    filed = await api.client.post(
        secrets_path(instance["id"]),
        json={"key": "/etc/app/token", "value": file_value, "type": "file"},
        headers=token,
    )
    responses.append(filed)
    assert filed.status_code == 201, filed.text

    listed = await api.client.get(secrets_path(instance["id"]), headers=token)
    responses.append(listed)
    assert listed.status_code == 200
    assert [(s["key"], s["type"], s["version"]) for s in listed.json()["items"]] == [
        ("/etc/app/token", "file", 1),
        ("DATABASE_URL", "env", 2),
    ]
    for path in ("events", "releases", "deployments"):
        responses.append(await api.client.get(f"/v1/instances/{instance['id']}/{path}?limit=100", headers=token))
    responses.append(await api.client.get(f"/v1/instances/{instance['id']}", headers=token))
    responses.append(await api.client.get("/v1/admin/audit?limit=100", headers=api.admin_headers))
    assert any("secret" in r.text for r in responses[-1:]), "the audit log should record the secret changes"

    deleted = await api.client.delete(f"{secrets_path(instance['id'])}/DATABASE_URL", headers=token)
    responses.append(deleted)
    assert deleted.status_code == 200, deleted.text
    assert (deleted.json()["key"], deleted.json()["version"]) == ("DATABASE_URL", 3)
    file_deleted = await api.client.delete(f"{secrets_path(instance['id'])}//etc/app/token", headers=token)
    responses.append(file_deleted)
    assert file_deleted.status_code == 200, file_deleted.text
    assert file_deleted.json()["key"] == "/etc/app/token"
    gone = await api.client.delete(f"{secrets_path(instance['id'])}/DATABASE_URL", headers=token)
    assert gone.status_code == 404
    assert (await api.client.get(secrets_path(instance["id"]), headers=token)).json()["items"] == []
    for response in responses:
        assert_absent([env_value, file_value, newer], response.content, f"{response.request.url}")


@pytest.mark.dialects("reads each dialect's raw storage")
async def test_no_value_in_the_raw_database_audit_idempotency_or_logs(
    api: Api, db: Database, settings: Settings, capfd: pytest.CaptureFixture[str]
) -> None:
    _, token, instance = await instance_of(api)
    values = [marker() for _ in range(3)]
    for index, value in enumerate(values[:2]):
        response = await api.client.post(
            secrets_path(instance["id"]),
            json={"key": f"KEY_{index}", "value": value},
            headers={**token, "Idempotency-Key": f"set-{index}"},
        )
        assert response.status_code == 201, response.text
        replay = await api.client.post(
            secrets_path(instance["id"]),
            json={"key": f"KEY_{index}", "value": value},
            headers={**token, "Idempotency-Key": f"set-{index}"},
        )
        assert replay.headers.get("idempotent-replayed") == "true"
        assert_absent(values, replay.content, "an idempotent replay")
    refused = await api.client.post(
        secrets_path(instance["id"]),
        json={"key": "bad key", "value": values[2]},
        headers={**token, "Idempotency-Key": "bad"},
    )
    assert refused.status_code == 400
    await put_secret(api, token, instance["id"], "/etc/app/cert.pem", values[2], type="file")
    raw = await raw_storage(db)
    assert b"KEY_0" in raw or b"KEY_0".hex().encode() in raw, "the raw dump should hold the secrets' keys"
    assert_absent(values, raw, f"the raw {db.dialect} storage")
    captured = capfd.readouterr()
    logged = captured.out + captured.err
    assert "/v1/instances/{instance_id}/secrets" in logged, "the request log should have been captured"
    assert_absent(values, logged.encode(), "the log output")


async def test_another_tenant_cannot_list_set_or_delete_secrets(api: Api) -> None:
    _, token, instance = await instance_of(api, "alpha")
    _, other = await tenant_token(api, "bravo")
    await put_secret(api, token, instance["id"], "API_TOKEN", marker())
    path = secrets_path(instance["id"])
    attempts = [
        await api.client.get(path, headers=other),
        await api.client.post(path, json={"key": "API_TOKEN", "value": "x"}, headers=other),
        await api.client.post(path, json={"key": "NEW", "value": "x"}, headers=other),
        await api.client.delete(f"{path}/API_TOKEN", headers=other),
    ]
    assert [r.status_code for r in attempts] == [404] * 4
    assert {r.json()["code"] for r in attempts} == {"not_found"}
    [kept] = (await api.client.get(path, headers=token)).json()["items"]
    assert (kept["key"], kept["version"]) == ("API_TOKEN", 1)


async def test_max_secrets_quota_counts_the_tenants_secrets(api: Api, db: Database) -> None:
    tenant_id, token, instance = await instance_of(api)
    quota = (await api.client.get(f"/v1/admin/tenants/{tenant_id}/quota", headers=api.admin_headers)).json()
    limits = {**quota["limits"], "max_secrets": 2}
    response = await api.client.put(f"/v1/admin/tenants/{tenant_id}/quota", json=limits, headers=api.admin_headers)
    assert response.status_code == 200, response.text
    other_instance = await create(api, token, name="worker")
    await put_secret(api, token, instance["id"], "ONE", "1")
    await put_secret(api, token, other_instance["id"], "TWO", "2")
    over = await api.client.post(secrets_path(instance["id"]), json={"key": "THREE", "value": "3"}, headers=token)
    assert over.status_code == 403, over.text
    assert over.json()["code"] == "quota_exceeded"
    assert over.json()["details"] == {"quota": "max_secrets", "used": 2, "limit": 2, "requested": 1}
    assert (await put_secret(api, token, instance["id"], "ONE", "1b"))["version"] == 2, "a new version is no new secret"
    usage = (await api.client.get(f"/v1/admin/tenants/{tenant_id}/quota", headers=api.admin_headers)).json()["usage"]
    assert usage["secrets"] == 2
    assert (await api.client.delete(f"{secrets_path(instance['id'])}/ONE", headers=token)).status_code == 200
    await put_secret(api, token, instance["id"], "THREE", "3")
    over = await api.client.post(secrets_path(instance["id"]), json={"key": "FOUR", "value": "4"}, headers=token)
    assert over.status_code == 403
    async with db.write() as session, session.begin():
        # a destroyed instance's secrets no longer count
        await session.execute(
            text("UPDATE instances SET state = 'destroyed' WHERE id = :id"), {"id": other_instance["id"]}
        )
    await put_secret(api, token, instance["id"], "FOUR", "4")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"key": "1NOPE", "value": "V"}, "key"),
        ({"key": "HAS SPACE", "value": "V"}, "key"),
        ({"key": "/etc/x", "value": "V", "type": "env"}, "key"),
        ({"key": "relative/x", "value": "V", "type": "file"}, "key"),
        ({"key": "/etc/../x", "value": "V", "type": "file"}, "key"),
        ({"key": "/proc/1/x", "value": "V", "type": "file"}, "key"),
        ({"key": "BIG", "value": "V" * (64 * 1024 + 1)}, "value"),
        ({"key": "BIG", "value": "é" * (32 * 1024 + 1)}, "value"),
        ({"key": "K", "value": "V", "type": "volume"}, "type"),
        ({"key": "K"}, "value"),
        ({"key": "K", "value": 5}, "value"),
        ({"key": "", "value": "V"}, "key"),
        ({"key": "K", "value": "V", "extra": 1}, "extra"),
    ],
)
async def test_invalid_secrets_are_400_and_store_nothing(api: Api, body: dict[str, Any], field: str) -> None:
    _, token, instance = await instance_of(api)
    value = marker()
    if body.get("value") == "V":
        body = {**body, "value": value}
    response = await api.client.post(secrets_path(instance["id"]), json=body, headers=token)
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["code"] == "invalid_input"
    assert field in response.text
    assert value not in response.text
    assert (await api.client.get(secrets_path(instance["id"]), headers=token)).json()["items"] == []


async def test_a_value_of_exactly_64_kib_is_accepted(api: Api) -> None:
    _, token, instance = await instance_of(api)
    assert (await put_secret(api, token, instance["id"], "MAX", "x" * 64 * 1024))["version"] == 1


async def _first_two_versions(db: Database) -> list[SecretVersion]:
    async with db.read() as session:
        return list((await session.execute(select(SecretVersion).order_by(SecretVersion.revision))).scalars())


async def _open_all(app: Any, tenant_id: str, instance_id: str, vault: Vault | None = None) -> WorkloadSecrets:
    services = app.state.services
    async with services.db.read() as session:
        return await workload_secrets(
            session, vault or services.vault, tenant_id=tenant_id, instance_id=instance_id, revision=10**6
        )


async def test_tampered_or_moved_ciphertext_is_rejected(api: Api, app: Any, db: Database) -> None:
    tenant_id, token, instance = await instance_of(api, "alpha")
    other_tenant, other_token, other_instance = await instance_of(api, "bravo")
    await put_secret(api, token, instance["id"], "A", "alpha-a")
    await put_secret(api, token, instance["id"], "B", "alpha-b")
    await put_secret(api, other_token, other_instance["id"], "A", "bravo-a")
    opened = await _open_all(app, tenant_id, instance["id"])
    assert opened.env == {"A": "alpha-a", "B": "alpha-b"}
    rows = await _first_two_versions(db)
    a, b, foreign = rows[0], rows[1], rows[2]
    assert a.sealed_value is not None and b.sealed_value is not None and foreign.sealed_value is not None

    async def write(row_id: str, sealed: bytes) -> None:
        async with db.write() as session, session.begin():
            await session.execute(update(SecretVersion).where(SecretVersion.id == row_id).values(sealed_value=sealed))

    tampered = a.sealed_value[:-1] + bytes([a.sealed_value[-1] ^ 1])
    for sealed, case in [
        (tampered, "a flipped bit"),
        (b.sealed_value, "the ciphertext of another key of the same instance"),
        (foreign.sealed_value, "the ciphertext of another tenant's secret"),
    ]:
        await write(a.id, sealed)
        with pytest.raises(DecryptionFailed) as caught:
            await _open_all(app, tenant_id, instance["id"])
        assert "A (v1)" in caught.value.message, case
        assert "alpha" not in caught.value.message
    await write(a.id, a.sealed_value)
    assert (await _open_all(app, tenant_id, instance["id"])).env["A"] == "alpha-a"
    async with db.write() as session, session.begin():
        mine = await session.get(TenantDataKey, tenant_id)
        theirs = await session.get(TenantDataKey, other_tenant)
        assert mine is not None and theirs is not None
        mine.wrapped_key = theirs.wrapped_key
    with pytest.raises(DecryptionFailed, match="does not unwrap"):
        await _open_all(app, tenant_id, instance["id"])


def ring_of(**keys: str) -> str:
    return ",".join(f"{version.removeprefix('v')}:{key}" for version, key in keys.items())


def app_with(settings: Settings, db: Database, ring: str) -> Any:
    configured = msgspec.structs.replace(settings, secrets_master_keys=ring, background=False)
    return create_app(configured, providers=ProviderRegistry([FakeProvider()]), db=db)


@pytest.mark.dialects("rotation locks data keys (FOR UPDATE) while servers write")
async def test_master_key_rotation_keeps_every_secret_and_the_old_key_is_no_longer_needed(
    api: Api, app: Any, db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    k1, k2 = new_master_key(), new_master_key()
    first_server = app_with(settings, db, ring_of(v1=k1))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=first_server), base_url="http://cp") as http:
        old = Api(http, api.tokens)
        tenants = [await instance_of(old, slug) for slug in ("alpha", "bravo", "charlie")]
        for index, (_, token, instance) in enumerate(tenants):
            await put_secret(old, token, instance["id"], "VALUE", f"before-{index}")
            await put_secret(old, token, instance["id"], "/etc/v", f"file-{index}", type="file")

    # The new key is added to every server's ring first; the rotation runs while they serve.
    serving = app_with(settings, db, ring_of(v1=k1, v2=k2))
    monkeypatch.setenv("CTRLPLANE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("CTRLPLANE_DATA_DIR", settings.data_dir)
    monkeypatch.setenv("CTRLPLANE_SECRETS_MASTER_KEYS", ring_of(v1=k1, v2=k2))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=serving), base_url="http://cp") as http:
        live = Api(http, api.tokens)

        async def keep_serving() -> int:
            served = 0
            for round in range(15):
                for index, (_, token, instance) in enumerate(tenants):
                    await put_secret(live, token, instance["id"], "DURING", f"during-{index}-{round}")
                    served += 1
                await asyncio.sleep(0)
            return served

        writer = asyncio.create_task(keep_serving())
        rotation = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "ctrlplane.cli",
            "secrets",
            "rotate-master",
            env={**os.environ},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(rotation.communicate(), timeout=120)
        assert rotation.returncode == 0, err.decode()
        assert "under master key version 2" in out.decode()
        assert await writer == 45
        fourth = await instance_of(live, "delta")
        await put_secret(live, fourth[1], fourth[2]["id"], "VALUE", "after-3")

    async with db.read() as session:
        versions = {
            row.tenant_id: row.master_key_version for row in (await session.execute(select(TenantDataKey))).scalars()
        }
    assert sorted(versions.values()) == [2, 2, 2, 2]
    only_new = Vault(MasterKeyRing.parse(ring_of(v2=k2), source="test"))
    for index, (tenant_id, _, instance) in enumerate(tenants):
        opened = await _open_all(app, tenant_id, instance["id"], vault=only_new)
        assert opened.env == {"VALUE": f"before-{index}", "DURING": f"during-{index}-14"}
        assert [(f.path, f.content) for f in opened.files] == [("/etc/v", f"file-{index}".encode())]
    assert (await _open_all(app, fourth[0], fourth[2]["id"], vault=only_new)).env == {"VALUE": "after-3"}
    only_old = Vault(MasterKeyRing.parse(ring_of(v1=k1), source="test"))
    with pytest.raises(DecryptionFailed, match="version 2"):
        await _open_all(app, tenants[0][0], tenants[0][2]["id"], vault=only_old)


async def test_rotation_stops_and_says_so_when_a_data_key_is_under_a_key_the_ring_lacks(
    api: Api,
    app: Any,
    db: Database,
    settings: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    _, token, instance = await instance_of(api)
    await put_secret(api, token, instance["id"], "VALUE", "x")
    monkeypatch.setenv("CTRLPLANE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("CTRLPLANE_SECRETS_MASTER_KEYS", ring_of(v7=new_master_key()))
    assert await asyncio.to_thread(cli_main, ["secrets", "rotate-master"]) == 1
    assert "version 1" in capsys.readouterr().err
    monkeypatch.setenv("CTRLPLANE_SECRETS_MASTER_KEYS", str(Path(settings.data_dir) / "secrets-master-keys"))
    assert await asyncio.to_thread(cli_main, ["secrets", "rotate-master"]) == 0
    assert "0 data keys" in capsys.readouterr().out
    assert await asyncio.to_thread(cli_main, ["secrets", "new-master-key"]) == 0
    entry = capsys.readouterr().out.strip()
    assert MasterKeyRing.parse(entry, source="printed").newest == 2


# -- injection, pinning and rollback, with workers running ----------------------------------------


async def running(live: Api, slug: str = "acme", **overrides: Any) -> tuple[dict[str, str], dict[str, Any]]:
    _, token = await tenant_token(live, slug)
    instance = await create(live, token, ports=[], **overrides)
    return token, await wait_for(live, instance["id"], token, state("running"))


def app_env(spec: Any) -> dict[str, str]:
    """The env a spec gives its containers, without the OTEL_* variables ctrlplane adds."""
    return {k: v for k, v in spec.env.items() if not k.startswith("OTEL_")}


def current_spec(fake: FakeProvider, instance_id: str) -> Any:
    replicas = fake.replicas(instance_id)
    newest = max(r.generation for r in replicas)
    return next(r.spec for r in replicas if r.generation == newest)


async def test_restart_rolls_the_secrets_out_env_over_plain_env_and_files(live: Api, fake: FakeProvider) -> None:
    token, instance = await running(live, env={"NODE_ENV": "production", "PLAIN": "1"})
    await put_secret(live, token, instance["id"], "NODE_ENV", "from-secret")
    assert app_env(current_spec(fake, instance["id"])) == {"NODE_ENV": "production", "PLAIN": "1"}
    body = await put_secret(live, token, instance["id"], "/etc/app/token", "tok-1", type="file", restart="true")
    assert body["deployment_id"].startswith("dep_")
    done = await finished(live, body["deployment_id"], token)
    assert done["state"] == "succeeded", done
    spec = current_spec(fake, instance["id"])
    assert app_env(spec) == {"NODE_ENV": "from-secret", "PLAIN": "1"}
    assert [(f.path, f.content) for f in spec.files] == [("/etc/app/token", b"tok-1")]
    release = (await live.client.get(f"/v1/releases/{done['release_id']}", headers=token)).json()
    assert release["secrets_revision"] == 2
    assert "tok-1" not in str(release) and "from-secret" not in str(release)


async def test_a_change_waits_for_the_next_deploy_and_repairs_keep_the_pinned_version(
    live: Api, fake: FakeProvider
) -> None:
    token, instance = await running(live)
    body = await put_secret(live, token, instance["id"], "API_KEY", "v1", restart="true")
    assert (await finished(live, body["deployment_id"], token))["state"] == "succeeded"
    await put_secret(live, token, instance["id"], "API_KEY", "v2")
    generation = max(r.generation for r in fake.replicas(instance["id"]))
    fake.remove_container(instance["id"], 0, generation=generation)
    await eventually(lambda: [r for r in fake.replicas(instance["id"]) if r.state == "running"], "a repaired replica")
    assert current_spec(fake, instance["id"]).env["API_KEY"] == "v1", "a repair must run the pinned version"
    deployed = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": "ctrlplane-test/busybox:2"}, headers=token
    )
    assert (await finished(live, deployed.json()["id"], token))["state"] == "succeeded"
    assert current_spec(fake, instance["id"]).env["API_KEY"] == "v2"
    deleted = await live.client.delete(f"{secrets_path(instance['id'])}/API_KEY?restart=true", headers=token)
    assert deleted.status_code == 200, deleted.text
    assert (await finished(live, deleted.json()["deployment_id"], token))["state"] == "succeeded"
    assert "API_KEY" not in current_spec(fake, instance["id"]).env


async def test_rollback_brings_back_the_secret_values_the_release_ran_with(live: Api, fake: FakeProvider) -> None:
    token, instance = await running(live)
    first = await put_secret(live, token, instance["id"], "DB_PASSWORD", "old-password", restart="true")
    first_release = (await finished(live, first["deployment_id"], token))["release_id"]
    await put_secret(live, token, instance["id"], "/etc/app/key", "file-only-in-v2", type="file")
    second = await put_secret(live, token, instance["id"], "DB_PASSWORD", "new-password", restart="true")
    assert (await finished(live, second["deployment_id"], token))["state"] == "succeeded"
    spec = current_spec(fake, instance["id"])
    assert spec.env["DB_PASSWORD"] == "new-password"
    assert [f.path for f in spec.files] == ["/etc/app/key"]

    rollback = await live.client.post(
        f"/v1/instances/{instance['id']}/rollback", json={"release_id": first_release}, headers=token
    )
    assert rollback.status_code == 201, rollback.text
    assert (await finished(live, rollback.json()["id"], token))["state"] == "succeeded"
    spec = current_spec(fake, instance["id"])
    assert spec.env["DB_PASSWORD"] == "old-password"
    assert spec.files == ()
    listed = (await live.client.get(secrets_path(instance["id"]), headers=token)).json()["items"]
    assert {(s["key"], s["version"]) for s in listed} == {("DB_PASSWORD", 2), ("/etc/app/key", 1)}


async def test_a_failed_deploy_goes_back_to_the_previous_secrets(live: Api, fake: FakeProvider) -> None:
    token, instance = await running(live)
    first = await put_secret(live, token, instance["id"], "MODE", "good", restart="true")
    assert (await finished(live, first["deployment_id"], token))["state"] == "succeeded"
    await put_secret(live, token, instance["id"], "MODE", "bad")
    fake.missing_images.add("ghcr.io/nobody/broken:1")
    deployed = await live.client.post(
        f"/v1/instances/{instance['id']}/deploy", json={"image": "ghcr.io/nobody/broken:1"}, headers=token
    )
    assert (await finished(live, deployed.json()["id"], token))["state"] == "rolled_back"
    assert current_spec(fake, instance["id"]).env["MODE"] == "good"


async def test_restart_needs_a_running_instance_and_refuses_without_changing_anything(live: Api) -> None:
    token, instance = await running(live)
    await live.client.post(f"/v1/instances/{instance['id']}/stop", headers=token)
    await wait_for(live, instance["id"], token, state("stopped"))
    refused = await live.client.post(
        secrets_path(instance["id"]), params={"restart": "true"}, json={"key": "K", "value": "v"}, headers=token
    )
    assert refused.status_code == 409, refused.text
    assert (await live.client.get(secrets_path(instance["id"]), headers=token)).json()["items"] == []
    assert (await put_secret(live, token, instance["id"], "K", "v"))["version"] == 1


async def test_an_idempotency_key_reused_with_another_value_is_refused_and_its_hash_is_keyed(
    api: Api, db: Database
) -> None:
    _, token, instance = await instance_of(api)
    path = secrets_path(instance["id"])
    headers = {**token, "Idempotency-Key": "same-key", "Content-Type": "application/json"}
    raw = b'{"key":"PIN","value":"1234"}'
    assert (await api.client.post(path, content=raw, headers=headers)).status_code == 201
    replayed = await api.client.post(path, content=raw, headers=headers)
    assert replayed.headers.get("idempotent-replayed") == "true"
    reused = await api.client.post(path, content=raw.replace(b"1234", b"4321"), headers=headers)
    assert reused.status_code == 422, reused.text
    assert "4321" not in reused.text and "1234" not in reused.text
    async with db.read() as session:
        [stored] = (await session.execute(text("SELECT request_hash FROM idempotency_records"))).scalars().all()
    assert stored != request_fingerprint("POST", path, b"", raw), "a plain hash would let a copy test guesses"


async def test_deleting_a_tenant_removes_its_data_key_and_secrets(live: Api, db: Database) -> None:
    tenant_id, token = await tenant_token(live, "doomed")
    instance = await create(live, token)
    await put_secret(live, token, instance["id"], "GONE", "with-the-tenant")
    _, keep_token = await tenant_token(live, "kept")
    kept = await create(live, keep_token)
    await put_secret(live, keep_token, kept["id"], "STAYS", "here")
    await wait_for(live, instance["id"], token, state("running"))
    accepted = await live.client.delete(
        f"/v1/admin/tenants/{tenant_id}", params={"force": "true"}, headers=live.admin_headers
    )
    assert accepted.status_code == 202, accepted.text

    async def gone() -> bool:
        return (await live.client.get(f"/v1/admin/tenants/{tenant_id}", headers=live.admin_headers)).status_code == 404

    await eventually(gone, "the tenant is deleted", timeout=20)
    async with db.read() as session:
        for table in ("tenant_data_keys", "secrets", "secret_versions"):
            tenants = (await session.execute(text(f"SELECT tenant_id FROM {table}"))).scalars().all()
            assert tenant_id not in tenants, table
            assert len(tenants) == 1, table


@pytest.mark.parametrize(
    "raw",
    [
        b'{"key": "K", "value": "MARKER"',
        b'{"key": "K", "value": "MARKER", "key": 7}',
        b'{"key": "K", "value": "MARKER\\u0000"}',
        b'["K", "MARKER"]',
    ],
    ids=["truncated", "wrong-type-after-value", "nul", "array"],
)
async def test_malformed_bodies_are_400_without_echoing_the_value(api: Api, raw: bytes) -> None:
    _, token, instance = await instance_of(api)
    value = marker()
    response = await api.client.post(
        secrets_path(instance["id"]),
        content=raw.replace(b"MARKER", value.encode()),
        headers={**token, "Content-Type": "application/json"},
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "invalid_input"
    assert value not in response.text


@pytest.mark.dialects("concurrent sets serialise on the tenant row lock")
async def test_concurrent_sets_cannot_overshoot_max_secrets(api: Api) -> None:
    tenant_id, token, instance = await instance_of(api)
    quota = (await api.client.get(f"/v1/admin/tenants/{tenant_id}/quota", headers=api.admin_headers)).json()
    limits = {**quota["limits"], "max_secrets": 5}
    assert (
        await api.client.put(f"/v1/admin/tenants/{tenant_id}/quota", json=limits, headers=api.admin_headers)
    ).status_code == 200
    responses = await asyncio.gather(
        *(
            api.client.post(secrets_path(instance["id"]), json={"key": f"K{index}", "value": "v"}, headers=token)
            for index in range(12)
        )
    )
    assert sorted(r.status_code for r in responses) == [201] * 5 + [403] * 7
    listed = (await api.client.get(secrets_path(instance["id"]), headers=token)).json()
    assert listed["total"] == 5
