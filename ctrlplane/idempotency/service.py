"""Idempotency-Key for every POST.

A key is scoped to the caller (tenant and subject) and lives ``CTRLPLANE_IDEMPOTENCY_TTL``
(24 h). ``claim`` runs in its own committed transaction before the handler:

* no record: one is inserted as ``in_progress`` with a lease, and the request runs;
* a record with another request hash: ``IdempotencyMismatch`` (422);
* a completed record: its stored status and body are replayed;
* an ``in_progress`` record whose lease holds: ``Conflict`` (409), the first request still runs;
* an ``in_progress`` record whose lease ran out (its server died before committing): the claim is
  taken over. Nothing of the dead request survived, because ``complete`` is written in the same
  transaction as the request's own change.

Server errors (5xx) ``release`` the claim so the client may retry with the same key.
"""

from __future__ import annotations

import hashlib
from datetime import timedelta

import msgspec
from sqlalchemy import delete, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import Database
from ctrlplane.errors import Conflict, IdempotencyMismatch, InvalidInput
from ctrlplane.idempotency.models import IdempotencyRecord
from ctrlplane.ids import new_id
from ctrlplane.timeutil import utc_now

MAX_KEY_LENGTH = 255


class StoredResponse(msgspec.Struct, frozen=True):
    status: int
    body: bytes
    content_type: str | None
    etag: str | None = None
    """The ETag the response carried: the version it showed, replayed as it was."""


class Claim(msgspec.Struct, frozen=True):
    record_id: str
    replay: StoredResponse | None = None


def request_fingerprint(method: str, path: str, query: bytes, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), path.encode(), query, body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def validate_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters",
            details={"Idempotency-Key": "invalid"},
        )
    return key


async def claim(db: Database, *, scope: str, key: str, fingerprint: str, ttl: timedelta, lease: timedelta) -> Claim:
    for _ in range(3):
        now = utc_now()
        try:
            async with db.write() as session, session.begin():
                record = (
                    await session.execute(
                        select(IdempotencyRecord)
                        .where(IdempotencyRecord.scope == scope, IdempotencyRecord.key == key)
                        .with_for_update()
                    )
                ).scalar_one_or_none()
                if record is not None and record.expires_at <= now:
                    await session.delete(record)
                    await session.flush()
                    record = None
                if record is None:
                    record = IdempotencyRecord(
                        id=new_id("idem"),
                        scope=scope,
                        key=key,
                        request_hash=fingerprint,
                        state="in_progress",
                        locked_until=now + lease,
                        created_at=now,
                        expires_at=now + ttl,
                    )
                    session.add(record)
                    await session.flush()
                    return Claim(record_id=record.id)
                if record.request_hash != fingerprint:
                    raise IdempotencyMismatch("this Idempotency-Key was used with a different request; use a new key")
                if record.state == "completed":
                    assert record.response_status is not None and record.response_body is not None
                    headers = record.response_headers or {}
                    return Claim(
                        record_id=record.id,
                        replay=StoredResponse(
                            status=record.response_status,
                            body=record.response_body,
                            content_type=headers.get("content-type"),
                            etag=headers.get("etag"),
                        ),
                    )
                if record.locked_until > now:
                    raise Conflict("a request with this Idempotency-Key is still in progress; retry later")
                record.locked_until = now + lease
                return Claim(record_id=record.id)
        except IntegrityError:
            continue
    raise Conflict("a request with this Idempotency-Key is still in progress; retry later")


async def complete(session: AsyncSession, record_id: str, response: StoredResponse) -> None:
    await session.execute(
        update(IdempotencyRecord)
        .where(IdempotencyRecord.id == record_id)
        .values(
            state="completed",
            response_status=response.status,
            response_body=response.body,
            response_headers={
                name: value
                for name, value in (("content-type", response.content_type), ("etag", response.etag))
                if value is not None
            },
        )
    )


async def release(db: Database, record_id: str) -> None:
    async with db.write() as session, session.begin():
        await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.id == record_id))


async def purge_expired(db: Database) -> int:
    async with db.read() as session:  # most calls find none, and take no write lock for it
        expired = select(IdempotencyRecord.id).where(IdempotencyRecord.expires_at <= utc_now()).limit(1)
        if (await session.execute(expired)).first() is None:
            return 0
    async with db.write() as session, session.begin():
        result = await session.execute(delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utc_now()))
        return int(result.rowcount or 0)  # type: ignore[attr-defined]
