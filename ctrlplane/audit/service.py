"""The audit log: append-only, one hash chain per tenant (and one, ``system``, for tenant-less acts).

Each entry stores ``prev_hash`` and ``hash = HMAC-SHA256(key, prev_hash || canonical JSON of the
entry)``, the key derived (HKDF) from the newest secrets master key (``AuditKeys``): it lives
outside the database, like the master ring, and rotates with it (every version of the ring still
verifies the entries it signed). Someone who can write the database but does not hold the ring can
alter a row and recompute a plain SHA-256 chain, but not this one. Entries written before the chain
was keyed carry ``sha256(prev_hash || JSON)``; ``verify`` accepts them only as a chain's leading
entries and only when asked to (``allow_unkeyed_prefix``), never after a keyed entry.
Appending locks the chain's head row (``audit_chains``), so concurrent writers in one tenant queue
instead of forking the chain. ``verify`` walks every chain and reports the first broken link: an
altered row (its hash no longer matches), a removed row (a gap in ``seq`` or a ``prev_hash`` that
names nothing), or rows cut from the end (the head no longer matches the last row).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.audit import schemas
from ctrlplane.audit.models import AuditChain, AuditEntry
from ctrlplane.audit.repository import audit_query
from ctrlplane.db import locked_row
from ctrlplane.ids import new_id
from ctrlplane.timeutil import as_utc, rfc3339, utc_now
from ctrlplane.web.pagination import Page, paginate

GENESIS = "0" * 64
SYSTEM_CHAIN = "system"


class AuditRecord(msgspec.Struct, kw_only=True):
    tenant_id: str | None
    actor_kind: str
    actor_subject: str
    action: str
    resource: str
    resource_id: str | None
    outcome: str
    status_code: int
    request_id: str
    client_addr: str | None
    details: dict[str, Any]


class BrokenLink(msgspec.Struct):
    chain: str
    seq: int
    entry_id: str | None
    reason: str


class VerifyReport(msgspec.Struct):
    chains: int
    entries: int
    broken: BrokenLink | None


class AuditKeys:
    """HMAC keys of the audit chain, one per master-key version; the newest signs."""

    INFO = b"ctrlplane audit chain"

    def __init__(self, master_keys: Mapping[int, bytes], *, info: bytes = INFO) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.kdf.hkdf import HKDF

        if not master_keys:
            raise ValueError("the audit chain needs at least one key")
        self.keys = {
            version: HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(key)
            for version, key in master_keys.items()
        }
        self.newest = max(self.keys)

    def __repr__(self) -> str:
        return f"AuditKeys(versions={sorted(self.keys)})"

    def sign(self, message: bytes) -> str:
        return hmac.new(self.keys[self.newest], message, hashlib.sha256).hexdigest()

    def signed_by(self, message: bytes, digest: str) -> int | None:
        """The key version that made ``digest``, or None."""
        for version in sorted(self.keys, reverse=True):
            if hmac.compare_digest(hmac.new(self.keys[version], message, hashlib.sha256).hexdigest(), digest):
                return version
        return None


def _message(prev_hash: str, entry: AuditEntry) -> bytes:
    canonical = {
        "id": entry.id,
        "chain": entry.chain,
        "seq": entry.seq,
        "tenant_id": entry.tenant_id,
        "at": rfc3339(entry.at),
        "actor_kind": entry.actor_kind,
        "actor_subject": entry.actor_subject,
        "action": entry.action,
        "resource": entry.resource,
        "resource_id": entry.resource_id,
        "outcome": entry.outcome,
        "status_code": entry.status_code,
        "request_id": entry.request_id,
        "client_addr": entry.client_addr,
        "details": entry.details,
    }
    return prev_hash.encode() + msgspec.json.encode(canonical, order="sorted")


def entry_hash(prev_hash: str, entry: AuditEntry, keys: AuditKeys | None = None) -> str:
    """The entry's link: keyed with ``keys`` (the newest), or the legacy unkeyed SHA-256."""
    message = _message(prev_hash, entry)
    return keys.sign(message) if keys is not None else hashlib.sha256(message).hexdigest()


async def append(
    session: AsyncSession, record: AuditRecord, *, keys: AuditKeys | None, at: datetime | None = None
) -> AuditEntry:
    chain = record.tenant_id or SYSTEM_CHAIN
    head = await locked_row(session, AuditChain, "chain", chain, seq=0, last_hash=GENESIS)
    entry = AuditEntry(
        id=new_id("aud"),
        chain=chain,
        seq=head.seq + 1,
        at=at or utc_now(),
        prev_hash=head.last_hash,
        **msgspec.structs.asdict(record),
    )
    entry.hash = entry_hash(head.last_hash, entry, keys)
    head.seq, head.last_hash = entry.seq, entry.hash
    session.add(entry)
    await session.flush()
    return entry


async def verify(session: AsyncSession, keys: AuditKeys | None, *, allow_unkeyed_prefix: bool = False) -> VerifyReport:
    """Walk every chain; the first broken link, if any. With ``keys`` every entry must be signed by
    one of them (or, with ``allow_unkeyed_prefix``, be a legacy unkeyed entry before the chain's
    first signed one). Without ``keys`` only legacy unkeyed entries can be checked."""
    heads = {head.chain: head for head in (await session.execute(select(AuditChain))).scalars()}
    chains = set(heads) | set((await session.execute(select(AuditEntry.chain).distinct())).scalars())
    total = 0
    for chain in sorted(chains):
        expected_seq, expected_prev = 1, GENESIS
        last: AuditEntry | None = None
        keyed_seen = False
        rows = await session.stream_scalars(
            select(AuditEntry)
            .where(AuditEntry.chain == chain)
            .order_by(AuditEntry.seq)
            .execution_options(yield_per=500)
        )
        async for entry in rows:
            total += 1
            if entry.seq != expected_seq:
                return VerifyReport(
                    len(chains),
                    total,
                    BrokenLink(
                        chain, expected_seq, None, f"entry {expected_seq} is missing (next present is {entry.seq})"
                    ),
                )
            if entry.prev_hash != expected_prev:
                return VerifyReport(
                    len(chains),
                    total,
                    BrokenLink(chain, entry.seq, entry.id, "prev_hash does not match the previous entry"),
                )
            problem, signed = _link_problem(entry, keys, keyed_seen=keyed_seen, allow_unkeyed=allow_unkeyed_prefix)
            if problem is not None:
                return VerifyReport(len(chains), total, BrokenLink(chain, entry.seq, entry.id, problem))
            keyed_seen = keyed_seen or signed
            expected_seq, expected_prev, last = entry.seq + 1, entry.hash, entry
        head = heads.get(chain)
        last_seq = last.seq if last else 0
        last_hash = last.hash if last else GENESIS
        if head is None or head.seq != last_seq or head.last_hash != last_hash:
            head_seq = head.seq if head else 0
            return VerifyReport(
                len(chains),
                total,
                BrokenLink(
                    chain, last_seq + 1, None, f"entries after {last_seq} were removed (chain head is at {head_seq})"
                ),
            )
    return VerifyReport(len(chains), total, None)


def _link_problem(
    entry: AuditEntry, keys: AuditKeys | None, *, keyed_seen: bool, allow_unkeyed: bool
) -> tuple[str | None, bool]:
    """Why the entry's own hash is wrong (None when it is right), and whether the audit key signed it."""
    message = _message(entry.prev_hash, entry)
    if keys is not None and keys.signed_by(message, entry.hash) is not None:
        return None, True
    if hmac.compare_digest(hashlib.sha256(message).hexdigest(), entry.hash):
        if keys is None:
            return None, False
        if keyed_seen:
            return "entry is not signed with the audit key after signed ones: rewritten by a database writer", False
        if not allow_unkeyed:
            return "entry is not signed with the audit key (written before the chain was keyed, or rewritten)", False
        return None, False
    if keys is None:
        return "entry was altered, or is signed with the audit key (verify with the secrets master key ring)", False
    return "entry was altered: its hash does not match its content under any audit key", False


async def query(
    session: AsyncSession,
    *,
    cursor: str | None,
    limit: int,
    tenant_id: str | None,
    resource: str | None,
    action: str | None,
    actor: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Page[schemas.AuditEntry]:
    since = as_utc(since, "since") if since is not None else None
    until = as_utc(until, "until") if until is not None else None
    statement = audit_query(
        tenant_id=tenant_id, resource=resource, action=action, actor=actor, since=since, until=until
    )
    return await paginate(
        session,
        statement,
        AuditEntry.id,
        cursor=cursor,
        limit=limit,
        convert=lambda row: msgspec.convert(row, schemas.AuditEntry, from_attributes=True),
    )
