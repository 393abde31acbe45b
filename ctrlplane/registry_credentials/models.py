from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, LargeBinary, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from ctrlplane.db import Base, UTCDateTime


class RegistryCredential(Base):
    """A tenant's login to one image registry; the password is only ever stored sealed."""

    __tablename__ = "registry_credentials"
    __table_args__ = (UniqueConstraint("tenant_id", "host"),)

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    tenant_id: Mapped[str] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    host: Mapped[str] = mapped_column(String(261))
    """The registry: ``host`` or ``host:port`` as image references name it (``docker.io`` for Docker Hub)."""
    username: Mapped[str] = mapped_column(String(255))
    sealed_password: Mapped[bytes] = mapped_column(LargeBinary)
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
