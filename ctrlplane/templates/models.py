from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class Template(Base):
    """A named instance configuration with typed parameters. ``tenant_id`` is NULL for a system
    template (published by system admins to every tenant). The row holds the current version;
    ``template_versions`` keeps every version, which environments pin."""

    __tablename__ = "templates"
    __table_args__ = (
        Index(
            "uq_templates_tenant_name_live",
            "tenant_id",
            "name",
            unique=True,
            sqlite_where=text("deleted_at IS NULL"),
            postgresql_where=text("deleted_at IS NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str | None] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(63))
    description: Mapped[str] = mapped_column(Text, default="")
    version: Mapped[int] = mapped_column(Integer, default=1)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    parameters: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    max_ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    max_extends: Mapped[int | None] = mapped_column(Integer)
    pool_min_ready: Mapped[int] = mapped_column(Integer, default=0)
    pool_max_ready: Mapped[int] = mapped_column(Integer, default=0)
    pool_cold_start: Mapped[bool] = mapped_column(default=True)
    max_environments_per_owner: Mapped[int | None] = mapped_column(Integer)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class TemplateVersion(Base):
    """One version of a template as it was written; never changed afterwards."""

    __tablename__ = "template_versions"

    template_id: Mapped[str] = mapped_column(ForeignKey("templates.id", ondelete="CASCADE"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    spec: Mapped[dict[str, Any]] = mapped_column(JSON)
    parameters: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    max_ttl_seconds: Mapped[int | None] = mapped_column(Integer)
    max_extends: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
