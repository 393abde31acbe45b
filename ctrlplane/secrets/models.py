from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class TenantDataKey(Base):
    """A tenant's data key, only ever stored wrapped by a master key (see ``crypto``)."""

    __tablename__ = "tenant_data_keys"

    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True)
    master_key_version: Mapped[int] = mapped_column(Integer)
    wrapped_key: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    rotated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Secret(Base):
    """A secret an instance has now: its key, type and newest version (values live in versions)."""

    __tablename__ = "secrets"
    __table_args__ = (UniqueConstraint("instance_id", "key"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(1024))
    type: Mapped[str] = mapped_column(String(8))
    version: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SecretVersion(Base):
    """One change of one secret, never rewritten: a sealed value, or a deletion (no value).

    ``revision`` numbers an instance's secret changes (1, 2, ...); a release pins one, and what
    it runs is, per key, the newest version at or below that revision that is not a deletion.
    """

    __tablename__ = "secret_versions"
    __table_args__ = (UniqueConstraint("instance_id", "revision"), UniqueConstraint("instance_id", "key", "version"))

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(String(64), index=True)
    instance_id: Mapped[str] = mapped_column(ForeignKey("instances.id", ondelete="CASCADE"), index=True)
    key: Mapped[str] = mapped_column(String(1024))
    type: Mapped[str] = mapped_column(String(8))
    version: Mapped[int] = mapped_column(Integer)
    revision: Mapped[int] = mapped_column(Integer)
    sealed_value: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
