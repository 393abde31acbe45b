"""Secrets: the API side, and what workers inject into workloads.

A secret belongs to an instance and is ``env`` (its key is an environment variable name) or
``file`` (its key is the absolute path it is mounted at, read-only, mode 0400). Every set or delete
appends a ``SecretVersion`` and numbers it with the instance's next secrets **revision**; nothing
is ever rewritten, so an older revision can always be rebuilt. Values are sealed with the tenant's
data key (``crypto``), bound to tenant, instance, type, key and version; the database holds no
plaintext, and no response, event, audit entry, log line or error message carries a value.

Every release pins the revision it runs (``Release.secrets_revision``): the newest one when it is
cut, or, for a rollback, the one of the release rolled back to. So a change takes effect on the
next deploy (or configuration change that rolls new containers); ``?restart=true`` starts that
deploy at once, a ``rolling`` one with the usual gates and automatic rollback (the instance must be
running or failed, with no deploy in progress). A rollback brings the old values back.

Workers decrypt just before a provider call (``for_release``), outside any transaction, and pass
the plaintext to the provider in the ``WorkloadSpec`` only: env secrets override plain env of the
same name; file secrets become ``WorkloadSpec.files``.

``max_secrets`` counts the tenant's current secrets (over all instances), checked under the lock
on the tenant row.
"""

from __future__ import annotations

import re
import time
from posixpath import normpath

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.deployments.service import DeploymentService
from ctrlplane.errors import InvalidInput, InvalidState, NotFound, QuotaExceeded
from ctrlplane.events.service import append as append_event
from ctrlplane.ids import TenantId, new_id
from ctrlplane.instances.models import Instance
from ctrlplane.instances.observe import TextRedactor
from ctrlplane.instances.repository import InstanceRepository
from ctrlplane.instances.service import InstanceService
from ctrlplane.provisioning.contract import SecretFile
from ctrlplane.redaction import Redactor
from ctrlplane.registry_credentials.service import credential_for as registry_credential_for
from ctrlplane.releases.models import Release
from ctrlplane.secrets import schemas
from ctrlplane.secrets.crypto import DecryptionFailed, Vault
from ctrlplane.secrets.models import Secret, SecretVersion
from ctrlplane.secrets.repository import SecretRepository
from ctrlplane.telemetry.otlp import instance_token
from ctrlplane.tenants.repository import TenantRepository
from ctrlplane.timeutil import utc_now
from ctrlplane.web.context import AppServices, RequestContext
from ctrlplane.web.pagination import Page, paginate
from ctrlplane.web.preconditions import require_existing, require_version

ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
MAX_ENV_KEY = 255
RESERVED_PREFIXES = ("/proc", "/sys", "/dev", "/run/ctrlplane")
FINAL = ("destroying", "destroyed")


def sealing_aad(instance_id: str, type: str, version: int, key: str) -> bytes:
    """What a sealed value is bound to besides its tenant (the key last: it may hold any character)."""
    return f"secret|{instance_id}|{type}|{version}|{key}".encode()


def to_schema(secret: Secret) -> schemas.Secret:
    return schemas.Secret(
        key=secret.key,
        type=secret.type,  # type: ignore[arg-type]
        version=secret.version,
        instance_id=secret.instance_id,
        created_at=secret.created_at,
        updated_at=secret.updated_at,
    )


def validate_key(key: str, type: str) -> None:
    if type == "env":
        if not ENV_KEY.match(key) or len(key) > MAX_ENV_KEY:
            raise InvalidInput(
                "an env secret's key must be an environment variable name ([A-Za-z_][A-Za-z0-9_]*, at most 255)",
                details={"key": "not an environment variable name"},
            )
        return
    if not key.startswith("/") or normpath(key) != key or key == "/" or "//" in key:
        raise InvalidInput(
            "a file secret's key must be a normalised absolute path (no '..', '//' or trailing '/')",
            details={"key": "not a normalised absolute path"},
        )
    if not key.isprintable():
        raise InvalidInput("a file secret's path must be printable", details={"key": "not printable"})
    for prefix in RESERVED_PREFIXES:
        if key == prefix or key.startswith(prefix + "/"):
            raise InvalidInput(f"a file secret cannot be mounted under {prefix}", details={"key": f"under {prefix}"})


class SecretService:
    """``if_match`` names a secret's ETag: its ``version``, which every set and delete moves and
    which never repeats for a key (a deleted and re-created key goes on counting)."""

    def __init__(self, context: RequestContext, *, if_match: str | None = None) -> None:
        self.context = context
        self.if_match = if_match
        self.session = context.session
        self.vault = context.services.vault

    async def _instance(self, instance_id: str) -> Instance:
        instance = await InstanceService(self.context).locked(instance_id)
        if instance.state in FINAL:
            raise InvalidState(
                f"cannot change secrets of an instance that is {instance.state}", details={"state": instance.state}
            )
        return instance

    async def _restart(self, instance: Instance, note: str) -> str:
        deployment = await DeploymentService(self.context).redeploy(instance.id, notes=note)
        return deployment.id

    def _audit(self, instance: Instance, **details: object) -> None:
        audit = self.context.audit
        audit.resource_id, audit.tenant_id = instance.id, instance.tenant_id
        audit.details.update(details)

    async def _append(self, instance: Instance, key: str, type: str, value: str | None) -> SecretVersion:
        repo = SecretRepository(self.session, TenantId(instance.tenant_id))
        version = await repo.latest_version(instance.id, key) + 1
        sealed = None
        if value is not None:
            sealed = await self.vault.seal(
                self.session,
                instance.tenant_id,
                value.encode(),
                aad=sealing_aad(instance.id, type, version, key),
            )
        row = SecretVersion(
            id=new_id("sec"),
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            key=key,
            type=type,
            version=version,
            revision=await repo.latest_revision(instance.id) + 1,
            sealed_value=sealed,
            created_by=self.context.principal.subject,
            created_at=utc_now(),
        )
        self.session.add(row)
        await self.session.flush()
        return row

    async def set(self, instance_id: str, data: schemas.SecretSet, *, restart: bool) -> schemas.Secret:
        instance = await self._instance(instance_id)
        validate_key(data.key, data.type)
        if len(data.value.encode()) > schemas.MAX_VALUE_BYTES:
            raise InvalidInput(
                f"a secret's value may be at most {schemas.MAX_VALUE_BYTES} bytes (UTF-8)",
                details={"value": "too long"},
            )
        repo = SecretRepository(self.session, TenantId(instance.tenant_id))
        current = await repo.current(instance.id, data.key)
        self._require(current, data.key)
        if current is None:
            limit = (await TenantRepository(self.session).quota(instance.tenant_id)).max_secrets
            used = await repo.count_for_tenant()
            if used + 1 > limit:
                raise QuotaExceeded("max_secrets", used=used, limit=limit, requested=1)
        row = await self._append(instance, data.key, data.type, data.value)
        if current is None:
            current = Secret(
                id=new_id("sec"),
                tenant_id=instance.tenant_id,
                instance_id=instance.id,
                key=data.key,
                type=data.type,
                created_at=row.created_at,
            )
            self.session.add(current)
        current.version, current.updated_at = row.version, row.created_at
        await self.session.flush()
        await append_event(
            self.session,
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            type="secret.set",
            data={"key": data.key, "type": data.type, "version": row.version, "restart": restart},
        )
        result = to_schema(current)
        if restart:
            result.deployment_id = await self._restart(instance, f"secret {data.key} set (v{row.version})")
        self._audit(instance, key=data.key, type=data.type, version=row.version, restart=restart)
        return result

    async def list(self, instance_id: str, *, cursor: str | None, limit: int) -> Page[schemas.Secret]:
        instance = await InstanceRepository(self.session, self.context.principal.tenant_id).get(instance_id)
        statement = SecretRepository(self.session, TenantId(instance.tenant_id)).listing(instance.id)
        return await paginate(self.session, statement, Secret.id, cursor=cursor, limit=limit, convert=to_schema)

    def _require(self, current: Secret | None, key: str) -> None:
        if current is None:
            require_existing(self.if_match, resource="secret", resource_id=key)
        else:
            require_version(self.if_match, resource="secret", resource_id=current.key, version=current.version)

    async def _named(self, instance: Instance, key: str, type: str | None) -> Secret:
        repo = SecretRepository(self.session, TenantId(instance.tenant_id))
        # The route's {key:path} always starts with "/": "/DATABASE_URL" is the env key
        # DATABASE_URL unless ?type=file says it is the file /DATABASE_URL.
        bare = key[1:] if key.startswith("/") else key
        candidates = {"env": [bare], "file": ["/" + bare]}.get(type or "", [bare, "/" + bare])
        for candidate in candidates:
            if (current := await repo.current(instance.id, candidate)) is not None:
                return current
        raise NotFound(f"secret {candidates[-1]} not found", details={"resource": "secret", "key": candidates[-1]})

    async def get(self, instance_id: str, key: str, *, type: str | None) -> schemas.Secret:
        instance = await InstanceRepository(self.session, self.context.principal.tenant_id).get(instance_id)
        return to_schema(await self._named(instance, key, type))

    async def delete(self, instance_id: str, key: str, *, type: str | None, restart: bool) -> schemas.SecretDeleted:
        instance = await self._instance(instance_id)
        current = await self._named(instance, key, type)
        self._require(current, current.key)
        row = await self._append(instance, current.key, current.type, None)
        await self.session.delete(current)
        await self.session.flush()
        await append_event(
            self.session,
            tenant_id=instance.tenant_id,
            instance_id=instance.id,
            type="secret.deleted",
            data={"key": current.key, "type": current.type, "version": row.version, "restart": restart},
        )
        result = schemas.SecretDeleted(
            key=current.key,
            type=current.type,  # type: ignore[arg-type]
            version=row.version,
            instance_id=instance.id,
            deleted_at=row.created_at,
        )
        if restart:
            result.deployment_id = await self._restart(instance, f"secret {current.key} deleted")
        self._audit(instance, key=current.key, type=current.type, version=row.version, restart=restart)
        return result


async def workload_secrets(
    session: AsyncSession, vault: Vault, *, tenant_id: str, instance_id: str, revision: int
) -> schemas.WorkloadSecrets:
    """The decrypted secrets of an instance as of ``revision``: for a worker, never stored."""
    if revision <= 0:
        return schemas.WorkloadSecrets()
    env: dict[str, str] = {}
    files: list[SecretFile] = []
    for row in await SecretRepository(session, TenantId(tenant_id)).as_of(instance_id, revision):
        assert row.sealed_value is not None
        try:
            plaintext = await vault.open(
                session, tenant_id, row.sealed_value, aad=sealing_aad(instance_id, row.type, row.version, row.key)
            )
        except DecryptionFailed as exc:
            raise DecryptionFailed(f"secret {row.key} (v{row.version}): {exc.message}") from None
        if row.type == "env":
            env[row.key] = plaintext.decode()
        else:
            files.append(SecretFile(path=row.key, content=plaintext))
    return schemas.WorkloadSecrets(env=env, files=tuple(files))


async def _live_revisions(session: AsyncSession, *, tenant_id: str, instance_id: str) -> tuple[int, int]:
    """The instance's newest secrets revision, and the one its current release pinned (what its
    containers run with: a secret set without a restart is not in them yet)."""
    latest = await SecretRepository(session, TenantId(tenant_id)).latest_revision(instance_id)
    pinned = await session.scalar(
        select(Release.secrets_revision)
        .join(Instance, Instance.current_release_id == Release.id)
        .where(Instance.id == instance_id, Instance.tenant_id == tenant_id)
    )
    return latest, int(pinned or 0)


def _spellings(current: schemas.WorkloadSecrets) -> list[str]:
    values: list[str] = []
    texts = [*current.env.values(), *(f.content.decode("utf-8", "replace") for f in current.files)]
    for text in texts:
        # line-oriented output (a log) splits a value that is printed (a file, or a PEM key in an
        # env variable): each of its lines too
        values.extend((text, text.strip(), *(line.strip() for line in text.splitlines())))
    return values


async def values_of(session: AsyncSession, vault: Vault, *, tenant_id: str, instance_id: str) -> list[str]:
    """Every secret value of an instance as text (env values, file contents, each line of a file),
    decrypted in memory: those of its newest revision and of the revision its current release runs
    with; what must never come back out of its containers (``redaction.py``)."""
    values: list[str] = []
    for revision in sorted(set(await _live_revisions(session, tenant_id=tenant_id, instance_id=instance_id))):
        current = await workload_secrets(
            session, vault, tenant_id=tenant_id, instance_id=instance_id, revision=revision
        )
        values.extend(_spellings(current))
    return values


WITHHELD = "(withheld: the instance's secrets could not be read to redact it)"
REFRESH_SECONDS = 5.0
"""How stale an ``InstanceRedactor``'s values may be: a secret set while a log is followed is
redacted from the lines written at most this long after it was set."""


def container_text_redactor(services: AppServices) -> TextRedactor:
    """A ``TextRedactor`` for text a runtime reported about an instance (status messages, replica
    errors: they may echo what a container printed): its current secret values and its OTLP token,
    exactly and in base64, become ``[redacted]`` (``redaction.py``)."""

    async def redact_text(session: AsyncSession, instance: Instance, text: str) -> str:
        redactor = await redactor_now(session, services, tenant_id=instance.tenant_id, instance_id=instance.id)
        return WITHHELD if redactor is None else redactor(text)

    return redact_text


async def redactor_now(
    session: AsyncSession, services: AppServices, *, tenant_id: str, instance_id: str
) -> Redactor | None:
    """A ``Redactor`` of the instance's secret values (``values_of``) and its OTLP token, read in
    the caller's ``session``; None when its secrets cannot be decrypted (show ``WITHHELD``)."""
    try:
        values = await values_of(session, services.vault, tenant_id=tenant_id, instance_id=instance_id)
    except DecryptionFailed:
        return None
    return Redactor([*values, instance_token(services.settings, instance_id)])


class InstanceRedactor:
    """The lines an instance's containers write (its logs, for the API and the log drains),
    redacted of its secret values (``values_of``) and its OTLP token, exactly and in base64
    (``redaction.Redactor``). Made once per request or followed stream (``load``), not per line;
    ``refresh`` looks again, at most every ``REFRESH_SECONDS`` and only while lines come, and
    decrypts again only when the instance's secrets revision or release changed. Secrets that
    cannot be decrypted withhold every line (``WITHHELD``) rather than show it unredacted."""

    def __init__(self, services: AppServices, *, tenant_id: str, instance_id: str) -> None:
        self.services = services
        self.tenant_id = tenant_id
        self.instance_id = instance_id
        self.redactor = Redactor(())
        self.withheld = False
        self.revisions: tuple[int, int] | None = None
        self.checked_at = 0.0

    @classmethod
    async def load(cls, services: AppServices, *, tenant_id: str, instance_id: str) -> InstanceRedactor:
        made = cls(services, tenant_id=tenant_id, instance_id=instance_id)
        await made.refresh(force=True)
        return made

    async def refresh(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.checked_at < REFRESH_SECONDS:
            return
        self.checked_at = now
        async with self.services.db.read() as session:
            revisions = await _live_revisions(session, tenant_id=self.tenant_id, instance_id=self.instance_id)
            if revisions == self.revisions:
                return
            redactor = await redactor_now(
                session, self.services, tenant_id=self.tenant_id, instance_id=self.instance_id
            )
        if redactor is None:
            self.withheld, self.revisions = True, None
            return
        self.redactor, self.withheld, self.revisions = redactor, False, revisions

    def __call__(self, text: str) -> str:
        return WITHHELD if self.withheld else self.redactor(text)


async def for_release(
    services: AppServices, release_id: str | None, session: AsyncSession | None = None
) -> schemas.WorkloadSecrets:
    """The secrets a release pinned, decrypted (none for no release), with the tenant's credential
    for the registry of the release's image, if it has one. Read in ``session`` when given (a
    worker reads the rest of a spec in the same one), else in a read session of its own."""
    if release_id is None:
        return schemas.WorkloadSecrets()
    if session is None:
        async with services.db.read() as own:
            return await for_release(services, release_id, own)
    release = await session.get(Release, release_id)
    if release is None:
        return schemas.WorkloadSecrets()
    pinned = await workload_secrets(
        session,
        services.vault,
        tenant_id=release.tenant_id,
        instance_id=release.instance_id,
        revision=release.secrets_revision,
    )
    try:
        auth = await registry_credential_for(session, services.vault, tenant_id=release.tenant_id, image=release.image)
    except DecryptionFailed as exc:
        raise DecryptionFailed(f"registry credential: {exc.message}") from None
    return msgspec.structs.replace(pinned, registry_auth=auth)
