"""Signed audit checkpoints (issue 16, item 8): every chain's head signed with a key derived from
the secrets master ring, exported, and checked by ``audit verify``. A holder of the ring can
rewrite a chain so that it verifies again; an exported checkpoint still tells."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import anyio
import msgspec
from sqlalchemy import delete, select

from ctrlplane.audit import checkpoints
from ctrlplane.audit.models import AuditChain, AuditEntry
from ctrlplane.audit.service import entry_hash, verify
from ctrlplane.background import Background
from ctrlplane.db import Database
from ctrlplane.secrets.crypto import MasterKeyRing
from ctrlplane.settings import Settings
from ctrlplane.web.context import AppServices
from tests import forkserve
from tests.api.test_audit import audit_keys
from tests.conftest import Api, bearer
from tests.waiting import eventually


def checkpoint_keys(settings: Settings) -> checkpoints.AuditKeys:
    return checkpoints.checkpoint_keys(MasterKeyRing.from_settings(settings)[0].keys)


async def take(db: Database, settings: Settings, *, only_if_moved: bool = False) -> checkpoints.Checkpoint | None:
    async with db.write() as session, session.begin():
        return await checkpoints.take(session, checkpoint_keys(settings), only_if_moved=only_if_moved)


async def problem(db: Database, settings: Settings, held: list[checkpoints.Checkpoint]) -> str | None:
    async with db.read() as session:
        return await checkpoints.check(session, checkpoint_keys(settings), held)


async def rewrite_with_the_ring(db: Database, settings: Settings, chain: str, *, drop_from: int | None = None) -> None:
    """What a holder of the ring can do: change (or cut) a chain and sign every link again."""
    keys = audit_keys(settings)
    async with db.write() as session, session.begin():
        if drop_from is not None:
            await session.execute(delete(AuditEntry).where(AuditEntry.chain == chain, AuditEntry.seq >= drop_from))
        rows = list(
            (await session.execute(select(AuditEntry).where(AuditEntry.chain == chain).order_by(AuditEntry.seq)))
            .scalars()
            .all()
        )
        if drop_from is None:
            rows[0].details = {**rows[0].details, "forged": True}
        previous = "0" * 64
        for row in rows:
            row.prev_hash = previous
            row.hash = previous = entry_hash(previous, row, keys)
        head = await session.get(AuditChain, chain)
        assert head is not None
        head.seq, head.last_hash = rows[-1].seq, previous


async def test_a_checkpoint_signs_every_chain_head_and_matches_until_the_ring_holder_rewrites(
    api: Api, db: Database, settings: Settings
) -> None:
    tenant = await api.create_tenant("acme")
    for name in ("one", "two"):
        await api.create_key(tenant["id"], ["read"], name=name)
    taken = await take(db, settings)
    assert taken is not None and taken.heads[tenant["id"]].seq == 3  # the tenant's creation and two keys
    assert taken.key_version == checkpoint_keys(settings).newest
    assert await problem(db, settings, [taken]) is None
    assert await take(db, settings, only_if_moved=True) is None, "nothing moved: no new checkpoint"
    await rewrite_with_the_ring(db, settings, tenant["id"])
    async with db.read() as session:
        assert (await verify(session, audit_keys(settings))).broken is None, "the re-signed chain verifies alone"
    reason = await problem(db, settings, [taken])
    assert reason is not None and "has another hash" in reason and tenant["id"] in reason


async def test_a_chain_cut_after_a_checkpoint_is_found(api: Api, db: Database, settings: Settings) -> None:
    tenant = await api.create_tenant("acme")
    for name in ("one", "two", "three"):
        await api.create_key(tenant["id"], ["read"], name=name)
    taken = await take(db, settings)
    assert taken is not None
    await rewrite_with_the_ring(db, settings, tenant["id"], drop_from=taken.heads[tenant["id"]].seq)
    reason = await problem(db, settings, [taken])
    assert reason is not None and "is gone" in reason


async def test_a_forged_or_altered_checkpoint_is_refused(api: Api, db: Database, settings: Settings) -> None:
    tenant = await api.create_tenant("acme")
    taken = await take(db, settings)
    assert taken is not None
    altered = checkpoints.Checkpoint(
        id=taken.id,
        at=taken.at,
        heads={**taken.heads, tenant["id"]: checkpoints.ChainHead(seq=1, hash="f" * 64)},
        key_version=taken.key_version,
        signature=taken.signature,
    )
    reason = await problem(db, settings, [altered])
    assert reason is not None and "not signed" in reason


async def test_admins_list_checkpoints_and_tenants_may_not(api: Api, db: Database, settings: Settings) -> None:
    tenant = await api.create_tenant("acme")
    taken = await take(db, settings)
    assert taken is not None
    listed = await api.client.get("/v1/admin/audit/checkpoints", headers=api.admin_headers)
    assert listed.status_code == 200, listed.text
    (shown,) = listed.json()["items"]
    assert shown["id"] == taken.id and shown["signature"] == taken.signature
    assert shown["heads"][tenant["id"]] == {
        "seq": taken.heads[tenant["id"]].seq,
        "hash": taken.heads[tenant["id"]].hash,
    }
    refused = await api.client.get("/v1/admin/audit/checkpoints", headers=bearer(api.tokens.tenant(tenant["id"])))
    assert refused.status_code == 403


async def test_the_cli_signs_exports_and_verifies_against_exported_checkpoints(
    api: Api, db: Database, database_url: str, settings: Settings, tmp_path: Path
) -> None:
    tenant = await api.create_tenant("acme")
    await api.create_key(tenant["id"], ["read"])
    env = {**os.environ, "CTRLPLANE_DATABASE_URL": database_url, "CTRLPLANE_DATA_DIR": settings.data_dir}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return forkserve.run("ctrlplane.cli", ["audit", *args], env, timeout=60)

    signed = cli("checkpoint")
    assert signed.returncode == 0, signed.stderr
    line = json.loads(signed.stdout)
    assert line["heads"][tenant["id"]]["seq"] >= 1 and len(line["signature"]) == 64
    exported = tmp_path / "checkpoints.jsonl"
    assert cli("export", "--output", str(exported)).returncode == 0
    assert [json.loads(x)["id"] for x in exported.read_text().splitlines()] == [line["id"]]
    intact = cli("verify", "--checkpoints", str(exported))
    assert intact.returncode == 0 and "2 checkpoints match" in intact.stdout, intact.stdout
    await rewrite_with_the_ring(db, settings, tenant["id"])
    async with db.write() as session, session.begin():  # the rewriter removes the stored checkpoints too
        await session.execute(delete(checkpoints.AuditCheckpoint))
    assert cli("verify").returncode == 0, "without checkpoints the re-signed chain looks intact"
    caught = cli("verify", "--checkpoints", str(exported))
    assert caught.returncode == 1 and "has another hash" in caught.stdout, caught.stdout


async def test_the_leader_loop_signs_a_checkpoint_once_a_chain_moved(
    api: Api, app: Any, db: Database, settings: Settings
) -> None:
    services: AppServices = app.state.services
    services.settings = msgspec.structs.replace(settings, audit_checkpoint_seconds=1.0)
    tenant = await api.create_tenant("acme")

    async def stored() -> list[checkpoints.Checkpoint]:
        async with db.read() as session:
            return await checkpoints.stored(session)

    async with anyio.create_task_group() as group:
        group.start_soon(Background(services).audit_checkpoint_loop)
        (first,) = await eventually(stored, "a checkpoint from the loop")
        assert first.heads[tenant["id"]].seq == 1
        group.cancel_scope.cancel()
    assert await problem(db, settings, [first]) is None
