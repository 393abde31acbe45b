from __future__ import annotations

from datetime import datetime
from typing import Annotated

import msgspec

Registry = Annotated[
    str,
    msgspec.Meta(
        min_length=1,
        max_length=261,
        pattern=r"^[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?(?::[0-9]{1,5})?$",
        description="A registry host as image references name it, with its port if any: ghcr.io, "
        "registry.example.com:5000; docker.io for Docker Hub",
    ),
]


class RegistryCredentialSet(msgspec.Struct, forbid_unknown_fields=True):
    """Seed 000's ``credentials`` (username and password) for one registry."""

    registry: Registry
    username: Annotated[str, msgspec.Meta(min_length=1, max_length=255)]
    password: Annotated[str, msgspec.Meta(min_length=1, max_length=4096, description="Never returned")]
    tenant_id: str | None = None
    """Only system admins name it."""


class RegistryCredential(msgspec.Struct):
    """A registry credential's metadata: the password is never returned."""

    id: str
    tenant_id: str
    registry: str
    username: str
    created_at: datetime
    updated_at: datetime
