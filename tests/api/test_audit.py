from __future__ import annotations

import asyncio
import os

import pytest
from sqlalchemy import delete, func, select, update

from ctrlplane.audit.models import AuditChain, AuditEntry
from ctrlplane.audit.service import GENESIS, AuditKeys, entry_hash, verify
from ctrlplane.db import Database
from ctrlplane.secrets.crypto import MasterKeyRing
from ctrlplane.settings import Settings
from tests import forkserve
from tests.conftest import Api, bearer


async def _entries(db: Database) -> list[AuditEntry]:
    async with db.read() as session:
        return list((await session.execute(select(AuditEntry).order_by(AuditEntry.chain, AuditEntry.seq))).scalars())


def audit_keys(settings: Settings) -> AuditKeys:
    """The keys the app under test signs with: derived from its secrets master key ring."""
    return AuditKeys(MasterKeyRing.from_settings(settings)[0].keys)


async def _verify(db: Database, settings: Settings, **options: bool) -> str | None:
    async with db.read() as session:
        report = await verify(session, audit_keys(settings), **options)
    return None if report.broken is None else report.broken.reason


async def test_every_mutating_request_writes_one_entry_and_reads_write_none(api: Api, db: Database) -> None:
    tenant = await api.create_tenant("acme")
    await api.client.get("/v1/admin/tenants", headers=api.admin_headers)
    await api.client.post("/v1/admin/tenants", json={"name": "Dup", "slug": "acme"}, headers=api.admin_headers)
    await api.client.post("/v1/keys", json={"name": "x", "roles": ["read"]}, headers=bearer("garbage.token.here"))
    entries = await _entries(db)
    assert [(e.action, e.outcome, e.status_code) for e in sorted(entries, key=lambda e: e.id)] == [
        ("create", "success", 201),
        ("create", "rejected", 409),
        ("create", "denied", 401),
    ]
    created = next(e for e in entries if e.outcome == "success")
    assert created.tenant_id == tenant["id"]
    assert created.resource == "tenant"
    assert created.resource_id == tenant["id"]
    assert created.actor_subject == "root"
    assert created.client_addr == "127.0.0.1"
    assert created.request_id.startswith("req_")
    anonymous = next(e for e in entries if e.status_code == 401)
    assert anonymous.actor_kind == "anonymous"


async def test_entry_carries_the_request_id_of_the_response(api: Api, db: Database) -> None:
    response = await api.client.post(
        "/v1/admin/tenants",
        json={"name": "A", "slug": "a"},
        headers={**api.admin_headers, "X-Request-ID": "deploy-42"},
    )
    assert response.headers["X-Request-ID"] == "deploy-42"
    assert [e.request_id for e in await _entries(db)] == ["deploy-42"]


async def test_no_token_or_key_value_reaches_the_audit_log(api: Api, db: Database) -> None:
    tenant = await api.create_tenant("acme")
    token = api.tokens.tenant(tenant["id"])
    created = await api.create_key(tenant["id"], ["deploy"])
    await api.client.post("/v1/keys", json={"name": "y", "roles": ["read"]}, headers=bearer(created["key"]))
    dump = repr([(e.details, e.actor_subject, e.resource_id) for e in await _entries(db)])
    assert created["key"] not in dump
    assert token not in dump


async def test_chain_of_untouched_log_verifies(api: Api, db: Database, settings: Settings) -> None:
    tenant = await api.create_tenant("acme")
    for i in range(3):
        await api.create_key(tenant["id"], ["read"], name=f"k{i}")
    assert await _verify(db, settings) is None


@pytest.mark.dialects("concurrent writes serialise on the chain head's row lock")
async def test_concurrent_writes_in_one_tenant_keep_the_chain_whole(api: Api, db: Database, settings: Settings) -> None:
    tenant = await api.create_tenant("acme")
    token = bearer(api.tokens.tenant(tenant["id"]))
    responses = await asyncio.gather(
        *(api.client.post("/v1/keys", json={"name": f"k{i}", "roles": ["read"]}, headers=token) for i in range(10))
    )
    assert all(r.status_code == 201 for r in responses)
    seqs = [e.seq for e in await _entries(db) if e.chain == tenant["id"]]
    assert seqs == list(range(1, 12))
    assert await _verify(db, settings) is None


async def test_altered_row_is_detected(api: Api, db: Database, settings: Settings) -> None:
    tenant = await api.create_tenant("acme")
    await api.create_key(tenant["id"], ["read"])
    target = (await _entries(db))[0]
    async with db.write() as session, session.begin():
        await session.execute(update(AuditEntry).where(AuditEntry.id == target.id).values(actor_subject="mallory"))
    reason = await _verify(db, settings)
    assert reason is not None and "altered" in reason


async def test_removed_row_is_detected(api: Api, db: Database, settings: Settings) -> None:
    tenant = await api.create_tenant("acme")
    for i in range(3):
        await api.create_key(tenant["id"], ["read"], name=f"k{i}")
    middle = [e for e in await _entries(db) if e.chain == tenant["id"]][1]
    async with db.write() as session, session.begin():
        await session.execute(delete(AuditEntry).where(AuditEntry.id == middle.id))
    reason = await _verify(db, settings)
    assert reason is not None and "missing" in reason


async def test_rows_cut_from_the_end_are_detected(api: Api, db: Database, settings: Settings) -> None:
    tenant = await api.create_tenant("acme")
    await api.create_key(tenant["id"], ["read"])
    async with db.write() as session, session.begin():
        last = (
            await session.execute(select(func.max(AuditEntry.seq)).where(AuditEntry.chain == tenant["id"]))
        ).scalar()
        await session.execute(delete(AuditEntry).where(AuditEntry.chain == tenant["id"], AuditEntry.seq == last))
    reason = await _verify(db, settings)
    assert reason is not None and "removed" in reason


async def test_audit_verify_command_reports_first_broken_link(
    api: Api, db: Database, database_url: str, settings: Settings
) -> None:
    tenant = await api.create_tenant("acme")
    await api.create_key(tenant["id"], ["read"])
    env = {**os.environ, "CTRLPLANE_DATABASE_URL": database_url, "CTRLPLANE_DATA_DIR": settings.data_dir}
    intact = forkserve.run("ctrlplane.cli", ["audit", "verify"], env, timeout=60)
    assert intact.returncode == 0, intact.stderr
    assert "intact" in intact.stdout
    victim = [e for e in await _entries(db) if e.chain == tenant["id"]][1]
    async with db.write() as session, session.begin():
        await session.execute(update(AuditEntry).where(AuditEntry.id == victim.id).values(details={"forged": True}))
    broken = forkserve.run("ctrlplane.cli", ["audit", "verify"], env, timeout=60)
    assert broken.returncode == 1
    assert victim.id in broken.stdout
    assert "altered" in broken.stdout


async def test_audit_query_filters(api: Api) -> None:
    a = await api.create_tenant("a")
    await api.create_tenant("b")
    await api.create_key(a["id"], ["read"])
    by_tenant = (
        await api.client.get("/v1/admin/audit", params={"tenant_id": a["id"]}, headers=api.admin_headers)
    ).json()
    assert {e["resource"] for e in by_tenant["items"]} == {"tenant", "key"}
    by_resource = (
        await api.client.get("/v1/admin/audit", params={"resource": "key", "actor": "alice"}, headers=api.admin_headers)
    ).json()
    assert by_resource["total"] == 1
    assert by_resource["items"][0]["actor_subject"] == "alice"
    future = (
        await api.client.get("/v1/admin/audit", params={"since": "2999-01-01T00:00:00Z"}, headers=api.admin_headers)
    ).json()
    assert future["total"] == 0
    naive = await api.client.get("/v1/admin/audit", params={"since": "2024-01-01T00:00:00"}, headers=api.admin_headers)
    assert naive.status_code == 400


async def test_a_database_writer_who_recomputes_the_chain_without_the_key_is_detected(
    api: Api, db: Database, settings: Settings
) -> None:
    tenant = await api.create_tenant("acme")
    for i in range(3):
        await api.create_key(tenant["id"], ["read"], name=f"k{i}")
    async with db.write() as session, session.begin():
        rows = list(
            (
                await session.execute(
                    select(AuditEntry).where(AuditEntry.chain == tenant["id"]).order_by(AuditEntry.seq)
                )
            ).scalars()
        )
        rows[1].actor_subject = "mallory"
        previous = GENESIS
        for row in rows:  # the whole chain re-linked with plain SHA-256, the head too
            row.prev_hash = previous
            row.hash = previous = entry_hash(previous, row)
        head = await session.get(AuditChain, tenant["id"])
        assert head is not None
        head.last_hash = previous
    reason = await _verify(db, settings)
    assert reason is not None and "not signed with the audit key" in reason
    assert await _verify(db, settings, allow_unkeyed_prefix=True) is None, "a legacy prefix is accepted on request"
    async with db.read() as session:
        unkeyed = await verify(session, None)
    assert unkeyed.broken is None, "such a chain is internally consistent: only the key tells the rewrite"


async def test_entries_signed_by_an_older_master_key_verify_after_rotation(
    api: Api, db: Database, settings: Settings
) -> None:
    tenant = await api.create_tenant("acme")
    await api.create_key(tenant["id"], ["read"])
    old = audit_keys(settings)
    newer = AuditKeys({**MasterKeyRing.from_settings(settings)[0].keys, old.newest + 1: os.urandom(32)})
    async with db.read() as session:
        assert (await verify(session, newer)).broken is None
        assert (await verify(session, AuditKeys({old.newest + 1: os.urandom(32)}))).broken is not None


async def test_verify_route_reports_intact_chains_then_the_altered_entry(api: Api, db: Database) -> None:
    tenant = await api.create_tenant("acme")
    await api.create_key(tenant["id"], ["read"])
    intact = await api.client.get("/v1/admin/audit/verify", headers=api.admin_headers)
    assert intact.status_code == 200, intact.text
    assert intact.json()["intact"] is True and intact.json()["entries"] >= 2 and intact.json()["broken"] is None
    async with db.write() as session, session.begin():
        entries = await session.execute(select(AuditEntry).where(AuditEntry.tenant_id == tenant["id"]))
        victim = entries.scalars().first()
        assert victim is not None
        await session.execute(update(AuditEntry).where(AuditEntry.id == victim.id).values(actor_subject="mallory"))
    broken = (await api.client.get("/v1/admin/audit/verify", headers=api.admin_headers)).json()
    assert broken["intact"] is False
    assert broken["broken"]["entry_id"] == victim.id and "altered" in broken["broken"]["reason"]
    refused = await api.client.get("/v1/admin/audit/verify", headers=bearer(api.tokens.tenant(tenant["id"])))
    assert refused.status_code == 403
