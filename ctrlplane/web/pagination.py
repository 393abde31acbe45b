"""Keyset pagination: ``?cursor=&limit=`` in, ``{items, next_cursor, total}`` out, newest first.

IDs are UUIDv7 TypeIDs, so ``id`` order is creation order; the cursor is the last ID of the page,
made opaque. Rows inserted while a client pages appear before its cursor and never shift a page.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import msgspec
from sqlalchemy import Select, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from ctrlplane.errors import InvalidInput

T = TypeVar("T")

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class Page(msgspec.Struct, Generic[T]):
    items: list[T]
    next_cursor: str | None
    total: int


def encode_cursor(last_id: str) -> str:
    return base64.urlsafe_b64encode(f"v1:{last_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> str:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("cursor is not one this server issued", details={"cursor": "malformed"}) from exc
    version, _, last_id = raw.partition(":")
    if version != "v1" or not last_id:
        raise InvalidInput("cursor is not one this server issued", details={"cursor": "malformed"})
    return last_id


async def paginate(
    session: AsyncSession,
    statement: Select[Any],
    id_column: InstrumentedAttribute[str],
    *,
    cursor: str | None,
    limit: int,
    convert: Callable[[Any], T],
) -> Page[T]:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", details={"limit": limit})
    total = (await session.execute(select(func.count()).select_from(statement.subquery()))).scalar_one()
    query = statement.order_by(id_column.desc()).limit(limit + 1)
    if cursor:
        query = query.where(id_column < decode_cursor(cursor))
    rows = list((await session.execute(query)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(getattr(rows[-1], id_column.key)) if more and rows else None
    return Page(items=[convert(row) for row in rows], next_cursor=next_cursor, total=total)
