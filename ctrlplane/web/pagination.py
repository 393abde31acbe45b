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
from sqlalchemy import Integer, Select, bindparam, func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.orm import InstrumentedAttribute
from sqlalchemy.sql.elements import KeyedColumnElement

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


MAX_CURSOR_CHARS = 128
"""Longer than any cursor this server issues (an ID, base64'd); a longer one is refused before it
is decoded or used as a key of the row cache's list pages."""


def decode_cursor(cursor: str) -> str:
    if len(cursor) > MAX_CURSOR_CHARS:
        raise InvalidInput("cursor is not one this server issued", details={"cursor": "too long"})
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidInput("cursor is not one this server issued", details={"cursor": "malformed"}) from exc
    version, _, last_id = raw.partition(":")
    if version != "v1" or not last_id:
        raise InvalidInput("cursor is not one this server issued", details={"cursor": "malformed"})
    return last_id


def _check_limit(limit: int) -> None:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIMIT}", details={"limit": limit})


async def paginate(
    session: AsyncSession,
    statement: Select[Any],
    id_column: InstrumentedAttribute[str],
    *,
    cursor: str | None,
    limit: int,
    convert: Callable[[Any], T],
) -> Page[T]:
    _check_limit(limit)
    total = (await session.execute(select(func.count()).select_from(statement.subquery()))).scalar_one()
    query = statement.order_by(id_column.desc()).limit(limit + 1)
    if cursor:
        query = query.where(id_column < decode_cursor(cursor))
    rows = list((await session.execute(query)).scalars())
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(getattr(rows[-1], id_column.key)) if more and rows else None
    return Page(items=[convert(row) for row in rows], next_cursor=next_cursor, total=total)


class Listing:
    """A Core listing, paged keyset-wise with its total (``paginate_rows``): built once per shape of
    query, its values bound per request (``bindparam``), so a request builds no SQL expression."""

    def __init__(self, statement: Select[Any], count: Select[Any], id_column: KeyedColumnElement[Any]) -> None:
        """``statement`` selects the columns a page needs, ``count`` is the same listing's
        ``count(*)``; ``id_column`` orders the pages, newest first."""
        first = statement.add_columns(count.scalar_subquery().label("page_total"))
        first = first.order_by(id_column.desc()).limit(bindparam("page_limit", type_=Integer))
        self.first = first
        self.after = first.where(id_column < bindparam("page_after", type_=id_column.type))
        self.count = count
        self.id_key = id_column.key


async def paginate_rows(
    connection: AsyncConnection,
    listing: Listing,
    params: dict[str, Any],
    *,
    cursor: str | None,
    limit: int,
    convert: Callable[[Any], T],
) -> Page[T]:
    """``paginate`` for a Core listing (``params`` bind its values), on the Core connection: the page
    and its total in one statement (the total as a scalar subquery, so both come from one
    snapshot), rows converted as they arrive, no ORM objects. A second statement (the count alone)
    only for a page past the end of a cursor's listing."""
    _check_limit(limit)
    if cursor:
        query, params = listing.after, {**params, "page_limit": limit + 1, "page_after": decode_cursor(cursor)}
    else:
        query, params = listing.first, {**params, "page_limit": limit + 1}
    rows = (await connection.execute(query, params)).all()
    if rows:
        total = int(rows[0].page_total)
    elif cursor:
        total = int((await connection.execute(listing.count, params)).scalar_one())
    else:
        total = 0
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(getattr(rows[-1], listing.id_key)) if more and rows else None
    return Page(items=[convert(row) for row in rows], next_cursor=next_cursor, total=total)
