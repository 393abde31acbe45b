from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

import msgspec

from ctrlplane.provisioning.contract import RegistryAuth, SecretFile

SecretType = Literal["env", "file"]
MAX_VALUE_BYTES = 64 * 1024
MAX_KEY_LENGTH = 1024


class SecretSet(msgspec.Struct, forbid_unknown_fields=True):
    key: Annotated[
        str,
        msgspec.Meta(
            min_length=1,
            max_length=MAX_KEY_LENGTH,
            description="env: an environment variable name; file: the absolute path the file is mounted at",
        ),
    ]
    value: Annotated[
        str, msgspec.Meta(max_length=MAX_VALUE_BYTES, description="At most 64 KiB (UTF-8); never returned")
    ]
    type: SecretType = "env"


class Secret(msgspec.Struct, omit_defaults=True):
    """A secret's metadata; its value is never returned."""

    key: str
    type: SecretType
    version: int
    instance_id: str
    created_at: datetime
    updated_at: datetime
    deployment_id: str | None = None
    """With ``?restart=true`` on a running instance: the deployment rolling the change out."""


class SecretDeleted(msgspec.Struct, omit_defaults=True):
    key: str
    type: SecretType
    version: int
    """The version that records the deletion (a release pinned before it keeps the old value)."""
    instance_id: str
    deleted_at: datetime
    deployment_id: str | None = None


class WorkloadSecrets(msgspec.Struct, frozen=True):
    """Decrypted secrets for one workload spec, held in memory by a worker only."""

    env: dict[str, str] = msgspec.field(default_factory=dict)
    files: tuple[SecretFile, ...] = ()
    registry_auth: RegistryAuth | None = None
    """The tenant's credential for the registry of the release's image (``registry_credentials``)."""

    def __repr__(self) -> str:
        files = [f.path for f in self.files]
        return f"WorkloadSecrets(env={sorted(self.env)}, files={files}, registry_auth={self.registry_auth!r})"
