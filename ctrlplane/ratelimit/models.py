from __future__ import annotations

from sqlalchemy import Boolean, Float, String
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base


class RateBucket(Base):
    """One token bucket (a tenant's, or one credential's), shared by every replica.

    ``refilled_at`` is seconds since the epoch, so the refill is plain arithmetic in SQL on every
    database; ``allowed`` says whether the last request it counted was let through."""

    __tablename__ = "rate_buckets"

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    refilled_at: Mapped[float] = mapped_column(Float)
    allowed: Mapped[bool] = mapped_column(Boolean)
