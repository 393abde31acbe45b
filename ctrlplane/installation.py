"""Which installation this is: its ID and, unless ``CTRLPLANE_CLUSTER_NAME`` is set, its cluster name.

Providers label everything they create with the cluster name and treat what carries it as theirs
(the reconciler removes such objects that no instance owns). Two installations with one name on
one Docker engine therefore remove each other's containers. The old default, ``ctrlplane`` for
every checkout, made that the case for any two ``make run``s on one machine.

- **Installation ID.** With the default SQLite database (in the data directory), a random ID kept
  in ``<data dir>/installation`` (made on the first ``serve``, stable across restarts). With
  ``CTRLPLANE_DATABASE_URL`` set, the replicas of one installation have a data directory each but
  share the database, so the ID is derived from the database URL: ``db-`` and 12 hex digits of its
  SHA-256.
- **Default cluster name** (``CTRLPLANE_CLUSTER_NAME`` unset). With the default SQLite database:
  ``ctrlplane-`` and the first 8 characters of the ID, kept in the same file; except that a data
  directory that already held a database when the file was first written (an installation from
  before this rule) keeps ``ctrlplane``, so its running containers stay its own. With
  ``CTRLPLANE_DATABASE_URL`` set: ``ctrlplane`` as before (replicas must share one name; set it).
- ``serve`` logs ``cluster_name_shared`` (a warning) at start when the provider finds objects of
  this cluster name labelled with another installation's ID (``SharedEngineProvider``).
"""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Mapping

import msgspec
import structlog

from ctrlplane.provisioning.contract import SharedEngineProvider
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import PREFIX, Settings, SettingsError

log = structlog.get_logger("ctrlplane.installation")

INSTALLATION_FILE = "installation"
SHARED_CHECK_SECONDS = 5.0
"""How long the start waits for ``warn_if_shared`` (an engine that hangs does not hold the server)."""
LEGACY_CLUSTER_NAME = "ctrlplane"


class _Stored(msgspec.Struct, frozen=True):
    id: str
    cluster_name: str


def _stored(settings: Settings) -> _Stored:
    path = settings.data_path / INSTALLATION_FILE
    if path.exists():
        try:
            return msgspec.json.decode(path.read_bytes(), type=_Stored)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SettingsError(f"{path} is damaged ({exc}); remove it to start a new installation ID") from exc
    installation_id = secrets.token_hex(6)
    existing = (settings.data_path / "ctrlplane.db").exists()
    stored = _Stored(
        id=installation_id, cluster_name=LEGACY_CLUSTER_NAME if existing else f"ctrlplane-{installation_id[:8]}"
    )
    settings.data_path.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(msgspec.json.encode(stored))
    os.replace(temporary, path)  # whole or absent, never half-written
    return stored


def resolve(settings: Settings, environ: Mapping[str, str] | None = None) -> Settings:
    """``settings`` with ``installation_id`` set and, unless the environment names one, the default
    cluster name of this installation (see the module docstring)."""
    env = os.environ if environ is None else environ
    named = bool(env.get(PREFIX + "CLUSTER_NAME"))
    if settings.database_url:
        digest = hashlib.sha256(settings.database_url.encode()).hexdigest()[:12]
        return msgspec.structs.replace(settings, installation_id=f"db-{digest}")
    stored = _stored(settings)
    cluster_name = settings.cluster_name if named else stored.cluster_name
    return msgspec.structs.replace(settings, installation_id=stored.id, cluster_name=cluster_name)


async def warn_if_shared(settings: Settings, providers: ProviderRegistry) -> None:
    """Log ``cluster_name_shared`` when a provider sees this cluster name used by another
    installation (once, at start, before the background's first reconcile pass)."""
    for provider in providers:
        name = str(provider.name)
        if not isinstance(provider, SharedEngineProvider):
            continue
        others = await provider.other_installations()
        if others:
            log.warning(
                "cluster_name_shared",
                provider=name,
                cluster_name=settings.cluster_name,
                installation_id=settings.installation_id,
                other_installations=others,
                hint=f"another ctrlplane uses {PREFIX}CLUSTER_NAME={settings.cluster_name} on this engine and each "
                f"removes the other's containers as orphans: give one of them another {PREFIX}CLUSTER_NAME",
            )
