"""Envelope encryption for values kept at rest: secrets, and anything else stored "encrypted like a
secret" (an ACME account's or certificate's private key, say).

Three layers, all AES-256-GCM (the ``cryptography`` package):

* **The master key ring**: versioned 256-bit keys, from ``CTRLPLANE_SECRETS_MASTER_KEYS`` (the ring
  itself, ``1:<base64>,2:<base64>``, or the path of a file holding it) or, when that is unset, the
  file ``{data_dir}/secrets-master-keys``, generated (mode 0600) on the first start. The newest
  version wraps new data keys; every version in the ring unwraps. Master keys never reach the
  database.
* **A data key per tenant**: 32 random bytes, stored in ``tenant_data_keys`` only wrapped by a master
  key (the row names the master version), the tenant's ID bound as associated data, so a wrapped key
  copied to another tenant's row does not unwrap. It goes with its tenant (``ON DELETE CASCADE``),
  which makes everything sealed for that tenant unreadable.
* **Sealed values**: the plaintext under the tenant's data key, with a random 96-bit nonce and, as
  associated data, the tenant's ID together with the caller's ``aad``. A sealed blob is
  ``0x01 || nonce || ciphertext+tag``.

The API other rooms use (one ``Vault`` lives on ``AppServices.vault``)::

    sealed: bytes = await vault.seal(session, tenant_id, plaintext, aad=b"acme-account|rte_123")
    plaintext: bytes = await vault.open(session, tenant_id, sealed, aad=b"acme-account|rte_123")

``aad`` names what the value belongs to, so that a blob moved to another row fails to open: use a
fixed prefix of your own (``b"secret|"`` belongs to secrets) followed by the owning row's identity.
``seal`` creates the tenant's data key on first use, in the caller's transaction (so it commits, or
rolls back, with the sealed value). ``open`` raises ``DecryptionFailed`` when the blob was
tampered with, was moved to another row or tenant, or was sealed under a master key the ring no
longer holds; its message never carries key material or plaintext.

``rotate_master(db, ring)`` re-wraps every tenant's data key under the ring's newest master key,
one row per short transaction, so servers keep serving meanwhile (``ctrlplane secrets
rotate-master``). The data keys themselves, and so every sealed value, stay as they are.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import hmac
import os
import re
import secrets as random
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import Database, locked_row
from ctrlplane.errors import CtrlplaneError
from ctrlplane.secrets.models import TenantDataKey
from ctrlplane.settings import PREFIX, Settings, SettingsError
from ctrlplane.timeutil import utc_now

log = structlog.get_logger("ctrlplane.secrets")

KEY_BYTES = 32
NONCE_BYTES = 12
FORMAT = b"\x01"
RING_FILE = "secrets-master-keys"
_ENTRY = re.compile(r"^(\d{1,9}):([A-Za-z0-9+/=_-]+)$")


class DecryptionFailed(CtrlplaneError):
    """A sealed value or a wrapped data key does not open: tampered, moved, or its key is gone."""

    status, code = 500, "decryption_failed"


def _aead(purpose: bytes, tenant_id: str, aad: bytes) -> bytes:
    parts = (purpose, tenant_id.encode(), aad)
    return b"".join(len(part).to_bytes(4, "big") + part for part in parts)


def _encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    return FORMAT + nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def _decrypt(key: bytes, blob: bytes, associated: bytes) -> bytes:
    if len(blob) < 1 + NONCE_BYTES + 16 or blob[:1] != FORMAT:
        raise InvalidTag
    return AESGCM(key).decrypt(blob[1 : 1 + NONCE_BYTES], blob[1 + NONCE_BYTES :], associated)


def new_master_key() -> str:
    """A fresh master key, base64 (what a ring entry ``N:<base64>`` holds)."""
    return base64.b64encode(random.token_bytes(KEY_BYTES)).decode()


@dataclass(frozen=True)
class MasterKeyRing:
    """Versioned master keys: the newest wraps, every one unwraps."""

    keys: dict[int, bytes]
    source: str
    """Where the ring came from (the setting, or a file's path): for messages, never the keys."""

    def __post_init__(self) -> None:
        if not self.keys:
            raise SettingsError(f"the secrets master key ring from {self.source} holds no key")

    def __repr__(self) -> str:
        return f"MasterKeyRing(versions={sorted(self.keys)}, source={self.source!r})"

    @property
    def newest(self) -> int:
        return max(self.keys)

    def wrap(self, tenant_id: str, data_key: bytes) -> tuple[int, bytes]:
        version = self.newest
        return version, _encrypt(self.keys[version], data_key, _aead(b"data-key", tenant_id, str(version).encode()))

    def unwrap(self, tenant_id: str, version: int, wrapped: bytes) -> bytes:
        key = self.keys.get(version)
        if key is None:
            raise DecryptionFailed(
                f"the data key of tenant {tenant_id} is wrapped by master key version {version}, "
                "which this key ring does not hold",
                details={"master_key_version": version},
            )
        try:
            return _decrypt(key, wrapped, _aead(b"data-key", tenant_id, str(version).encode()))
        except InvalidTag:
            raise DecryptionFailed(f"the data key of tenant {tenant_id} does not unwrap (tampered or moved)") from None

    @classmethod
    def parse(cls, text: str, *, source: str) -> MasterKeyRing:
        """``1:<base64>,2:<base64>`` (commas, spaces or newlines between entries; ``#`` comments)."""
        keys: dict[int, bytes] = {}
        lines = [line.split("#", 1)[0] for line in text.splitlines()]
        for position, entry in enumerate(e for e in re.split(r"[\s,]+", " ".join(lines)) if e):
            match = _ENTRY.match(entry)
            if match is None:
                raise SettingsError(f"{source}: entry {position + 1} is not VERSION:BASE64KEY")
            version = int(match.group(1))
            try:
                key = base64.b64decode(match.group(2).replace("-", "+").replace("_", "/"), validate=True)
            except (binascii.Error, ValueError):
                raise SettingsError(f"{source}: master key version {version} is not base64") from None
            if len(key) != KEY_BYTES:
                raise SettingsError(f"{source}: master key version {version} is not {KEY_BYTES} bytes")
            if version < 1 or version in keys:
                raise SettingsError(f"{source}: master key version {version} is not positive or given twice")
            keys[version] = key
        return cls(keys=keys, source=source)

    @classmethod
    def from_settings(cls, settings: Settings) -> tuple[MasterKeyRing, bool]:
        """The configured ring, or the data directory's, generated now if missing.

        Returns the ring and whether it was generated just now (the caller warns: back it up).
        """
        configured = settings.secrets_master_keys
        if configured is not None:
            if _ENTRY.match(re.split(r"[\s,]+", configured.strip())[0]):
                return cls.parse(configured, source=f"{PREFIX}SECRETS_MASTER_KEYS"), False
            try:
                return cls._read(Path(configured)), False
            except SettingsError:
                # never echo the value: it may be a key that lost its "VERSION:" prefix
                raise SettingsError(
                    f"{PREFIX}SECRETS_MASTER_KEYS is neither a key ring (VERSION:BASE64KEY,...) nor a readable file"
                ) from None
        path = settings.data_path / RING_FILE
        if path.exists():
            return cls._read(path), False
        settings.data_path.mkdir(parents=True, exist_ok=True)
        staging = path.with_name(f".{RING_FILE}.{os.getpid()}.{random.token_hex(4)}")
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(
                "# ctrlplane secrets master key ring: VERSION:BASE64KEY, the newest encrypts.\n"
                "# Back this file up: without it no secret can be decrypted.\n"
                f"1:{new_master_key()}\n"
            )
        try:
            os.link(staging, path)  # atomic, and refuses to replace a ring another process made first
            generated = True
        except FileExistsError:
            generated = False
        finally:
            with contextlib.suppress(OSError):
                staging.unlink()
        return cls._read(path), generated

    @classmethod
    def _read(cls, path: Path) -> MasterKeyRing:
        try:
            text = path.read_text()
        except OSError as exc:
            raise SettingsError(f"{PREFIX}SECRETS_MASTER_KEYS: cannot read {path} ({exc.strerror})") from None
        return cls.parse(text, source=str(path))


class Vault:
    """Seals and opens values for a tenant (see the module docstring for the contract)."""

    def __init__(self, ring: MasterKeyRing) -> None:
        self.ring = ring

    async def _data_key(self, session: AsyncSession, tenant_id: str, *, create: bool) -> bytes:
        row = await session.get(TenantDataKey, tenant_id)
        if row is None:
            if not create:
                raise DecryptionFailed(f"tenant {tenant_id} has no data key")
            version, wrapped = self.ring.wrap(tenant_id, random.token_bytes(KEY_BYTES))
            now = utc_now()
            row = await locked_row(
                session,
                TenantDataKey,
                "tenant_id",
                tenant_id,
                master_key_version=version,
                wrapped_key=wrapped,
                created_at=now,
                rotated_at=now,
            )
        return self.ring.unwrap(tenant_id, row.master_key_version, row.wrapped_key)

    def keyed_digest(self, data: bytes) -> str:
        """HMAC-SHA256 of ``data`` under a key derived from the newest master key: a fingerprint of
        a request that carries a secret, which a copy of the database cannot test guesses against
        (it changes when a new master key becomes the newest)."""
        version = self.ring.newest
        key = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=b"ctrlplane request digest").derive(
            self.ring.keys[version]
        )
        return hmac.new(key, data, hashlib.sha256).hexdigest()

    async def seal(self, session: AsyncSession, tenant_id: str, plaintext: bytes, *, aad: bytes) -> bytes:
        key = await self._data_key(session, tenant_id, create=True)
        return _encrypt(key, plaintext, _aead(b"value", tenant_id, aad))

    async def open(self, session: AsyncSession, tenant_id: str, sealed: bytes, *, aad: bytes) -> bytes:
        key = await self._data_key(session, tenant_id, create=False)
        try:
            return _decrypt(key, sealed, _aead(b"value", tenant_id, aad))
        except InvalidTag:
            raise DecryptionFailed("a sealed value does not open (tampered with, or moved from another row)") from None


@dataclass(frozen=True)
class RotationReport:
    rewrapped: int
    already_current: int
    newest: int


async def rotate_master(db: Database, ring: MasterKeyRing) -> RotationReport:
    """Re-wrap every data key under ``ring.newest``, one locked row per transaction.

    A data key under a version the ring lacks stops the rotation with ``DecryptionFailed`` (rows
    done before it stay done; running it again after fixing the ring resumes).
    """
    async with db.read() as session:
        tenants = list(
            (await session.execute(select(TenantDataKey.tenant_id).order_by(TenantDataKey.tenant_id))).scalars()
        )
    rewrapped = current = 0
    for tenant_id in tenants:
        async with db.write() as session, session.begin():
            row = (
                await session.execute(
                    select(TenantDataKey)
                    .where(TenantDataKey.tenant_id == tenant_id)
                    .with_for_update()
                    .execution_options(populate_existing=True)
                )
            ).scalar_one_or_none()
            if row is None:
                continue
            if row.master_key_version == ring.newest:
                current += 1
                continue
            data_key = ring.unwrap(tenant_id, row.master_key_version, row.wrapped_key)
            row.master_key_version, row.wrapped_key = ring.wrap(tenant_id, data_key)
            row.rotated_at = utc_now()
            rewrapped += 1
    log.info("secrets_master_rotated", rewrapped=rewrapped, already_current=current, newest=ring.newest)
    return RotationReport(rewrapped=rewrapped, already_current=current, newest=ring.newest)
