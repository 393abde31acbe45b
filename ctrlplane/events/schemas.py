from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class Event(msgspec.Struct):
    id: int
    event_id: str
    tenant_id: str
    instance_id: str | None
    type: str
    data: dict[str, Any]
    created_at: datetime


class EventPage(msgspec.Struct):
    items: list[Event]
    next_cursor: str | None
    total: int
