from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

Url = Annotated[str, msgspec.Meta(min_length=1, max_length=2048, description="The receiver's http(s) URL")]
DrainFormat = Literal["ndjson", "otlp"]
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,64}$")]
HeaderValue = Annotated[str, msgspec.Meta(min_length=1, max_length=4096, pattern=r"^[^\r\n\x00]*$")]
MAX_HEADERS = 10
RESERVED_HEADERS = frozenset(
    {"content-type", "content-encoding", "content-length", "host", "transfer-encoding", "connection"}
)


class LogDrainCreate(msgspec.Struct, forbid_unknown_fields=True):
    url: Url
    format: DrainFormat = "ndjson"
    """``ndjson``: gzip'd JSON lines POSTed to ``url``; ``otlp``: OTLP/HTTP JSON logs (``url`` is
    the full logs endpoint, e.g. https://collector.example.com/v1/logs)."""
    instance_id: str | None = None
    """Only this instance's lines; none: every instance of the tenant."""
    tenant_id: str | None = None
    """Only system admins name it."""
    headers: Annotated[dict[HeaderName, HeaderValue], msgspec.Meta(max_length=MAX_HEADERS)] = msgspec.field(
        default_factory=dict
    )
    """Sent with every delivery (e.g. ``Authorization``); stored encrypted, never returned."""


class LogDrain(msgspec.Struct):
    id: str
    tenant_id: str
    instance_id: str | None
    url: str
    format: DrainFormat
    sent_lines: int
    """Lines the receiver accepted (2xx)."""
    dropped_lines: int
    """Lines dropped: the buffer was full (the receiver is slower than the instance), or a batch
    failed every retry."""
    last_error: str | None
    last_sent_at: datetime | None
    created_at: datetime
    header_names: list[str] = msgspec.field(default_factory=list)
    """The names of the headers sent with every delivery (their values are never returned)."""
