"""Log drains."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import JSON, BigInteger, ForeignKey, LargeBinary, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class LogDrain(Base):
    """A receiver of the log lines of one instance (``instance_id``) or of every instance of the tenant.

    The counters are written by the shipper (``shipper.py``) every few seconds: lines delivered,
    lines dropped (buffer full, or a batch that failed every retry) and the last error."""

    __tablename__ = "log_drains"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    instance_id: Mapped[str | None] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    format: Mapped[str] = mapped_column(String(16))
    sent_lines: Mapped[int] = mapped_column(BigInteger)
    dropped_lines: Mapped[int] = mapped_column(BigInteger)
    last_error: Mapped[str | None] = mapped_column(Text)
    last_sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    header_names: Mapped[list[str] | None] = mapped_column(JSON)
    headers_sealed: Mapped[bytes | None] = mapped_column(LargeBinary)
    """The delivery headers as JSON, sealed with the tenant's data key (``headers_aad``)."""
