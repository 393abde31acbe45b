"""Signed audit checkpoints: what every chain's head was at a moment, signed with a key that lives
outside the database, to be exported and kept elsewhere.

The keyed chain (``service.py``) stops a database writer without the secrets master ring from
rewriting entries. It cannot stop the ring's holder, or a restore of an older database, from
rewriting or cutting a chain's *end* and signing it again. A checkpoint records, for every chain,
its head (``seq`` and ``hash``) and is signed (HMAC-SHA256 under a key derived from the master
ring with its own HKDF label, the version named beside it). The leader writes one every
``CTRLPLANE_AUDIT_CHECKPOINT_SECONDS`` (default 1 h) when a chain moved; ``ctrlplane audit
export`` (or ``GET /v1/admin/audit/checkpoints``) hands them to the operator, who keeps them
where the database's writers cannot reach (object storage with retention, a ticket, a printout).

``ctrlplane audit verify`` checks the stored checkpoints against the chains, and ``--checkpoints
FILE`` the exported ones: each must be signed by the ring, and every entry a checkpoint names
must still be there with the hash it recorded. So an exported checkpoint proves the chains up to
it were not changed afterwards, by anyone (a changed entry changes every later hash). What it does
not prove: anything about entries written after the newest exported checkpoint, and, against a
holder of the ring, checkpoints that were never exported (they could be rewritten with the chain).
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from datetime import datetime

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.audit.models import AuditChain, AuditCheckpoint, AuditEntry
from ctrlplane.audit.service import AuditKeys
from ctrlplane.ids import new_id
from ctrlplane.timeutil import rfc3339, utc_now
from ctrlplane.web.pagination import Page, paginate

CHECKPOINT_INFO = b"ctrlplane audit checkpoint"


class ChainHead(msgspec.Struct, frozen=True):
    seq: int
    hash: str


class Checkpoint(msgspec.Struct, kw_only=True):
    """A signed checkpoint, as exported (one JSON line each) and as the admin route shows it."""

    id: str
    at: datetime
    heads: dict[str, ChainHead]
    """Every chain's head then: its last entry's ``seq`` and ``hash``."""
    key_version: int
    """The secrets master ring version whose derived key signed it."""
    signature: str


def checkpoint_keys(master_keys: Mapping[int, bytes]) -> AuditKeys:
    return AuditKeys(master_keys, info=CHECKPOINT_INFO)


def _message(checkpoint_id: str, at: datetime, heads: Mapping[str, ChainHead]) -> bytes:
    canonical = {"id": checkpoint_id, "at": rfc3339(at), "heads": {k: msgspec.to_builtins(v) for k, v in heads.items()}}
    return msgspec.json.encode(canonical, order="sorted")


def to_schema(row: AuditCheckpoint) -> Checkpoint:
    return Checkpoint(
        id=row.id,
        at=row.at,
        heads={chain: msgspec.convert(head, ChainHead) for chain, head in row.heads.items()},
        key_version=row.key_version,
        signature=row.signature,
    )


async def take(session: AsyncSession, keys: AuditKeys, *, only_if_moved: bool = False) -> Checkpoint | None:
    """Record a signed checkpoint of every chain's head now (in the caller's transaction). With
    ``only_if_moved``, none when no chain moved since the newest checkpoint."""
    heads = {
        head.chain: ChainHead(seq=head.seq, hash=head.last_hash)
        for head in (await session.execute(select(AuditChain).order_by(AuditChain.chain))).scalars()
    }
    if only_if_moved:
        newest = (
            await session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id.desc()).limit(1))
        ).scalar_one_or_none()
        if newest is not None and to_schema(newest).heads == heads:
            return None
    checkpoint_id, at = new_id("ckp"), utc_now()
    row = AuditCheckpoint(
        id=checkpoint_id,
        at=at,
        heads={chain: msgspec.to_builtins(head) for chain, head in heads.items()},
        key_version=keys.newest,
        signature=keys.sign(_message(checkpoint_id, at, heads)),
    )
    session.add(row)
    await session.flush()
    return to_schema(row)


async def stored(session: AsyncSession) -> list[Checkpoint]:
    rows = (await session.execute(select(AuditCheckpoint).order_by(AuditCheckpoint.id))).scalars()
    return [to_schema(row) for row in rows]


async def page(session: AsyncSession, *, cursor: str | None, limit: int) -> Page[Checkpoint]:
    return await paginate(
        session, select(AuditCheckpoint), AuditCheckpoint.id, cursor=cursor, limit=limit, convert=to_schema
    )


def parse_export(lines: Iterable[str]) -> list[Checkpoint]:
    """Checkpoints from ``ctrlplane audit export``'s output (JSON lines; blank lines skipped)."""
    return [msgspec.json.decode(line, type=Checkpoint) for line in lines if line.strip()]


async def check(session: AsyncSession, keys: AuditKeys, checkpoints: Iterable[Checkpoint]) -> str | None:
    """Why the chains do not match a checkpoint (None when they match every one): a checkpoint
    that the ring did not sign, or an entry it names that is gone or has another hash now."""
    for checkpoint in checkpoints:
        message = _message(checkpoint.id, checkpoint.at, checkpoint.heads)
        version = keys.signed_by(message, checkpoint.signature)
        if version is None or version != checkpoint.key_version:
            return f"checkpoint {checkpoint.id} is not signed by the audit checkpoint key (forged or altered)"
        for chain, head in sorted(checkpoint.heads.items()):
            if head.seq == 0:
                continue
            found = (
                await session.execute(
                    select(AuditEntry.hash).where(AuditEntry.chain == chain, AuditEntry.seq == head.seq)
                )
            ).scalar_one_or_none()
            if found is None:
                return (
                    f"checkpoint {checkpoint.id} ({rfc3339(checkpoint.at)}): entry {head.seq} of chain {chain!r} "
                    "is gone (the chain was cut or replaced after the checkpoint)"
                )
            if not hmac.compare_digest(found, head.hash):
                return (
                    f"checkpoint {checkpoint.id} ({rfc3339(checkpoint.at)}): entry {head.seq} of chain {chain!r} "
                    "has another hash (the chain was rewritten after the checkpoint)"
                )
    return None


def export_line(checkpoint: Checkpoint) -> str:
    return msgspec.json.encode(checkpoint).decode()


__all__ = [
    "AuditCheckpoint",
    "AuditKeys",
    "ChainHead",
    "Checkpoint",
    "check",
    "checkpoint_keys",
    "export_line",
    "page",
    "parse_export",
    "stored",
    "take",
]
