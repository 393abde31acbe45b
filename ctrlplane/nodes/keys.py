"""The control plane's node keys at rest: the Ed25519 event-signing keys and each node's NSK.

Both are sealed (AES-256-GCM) under a key derived with HKDF from the newest secrets master key
(``secrets/crypto.py``'s ring; nodes belong to no tenant, so the tenants' data keys do not apply).
A sealed value is ``version(4, big-endian) || nonce(12) || ciphertext+tag``; the purpose and the
owning row are bound as associated data, so a value moved to another row does not open.

The newest signing key is current. ``rotate_signing_key`` makes a new one current and keeps the
previous one valid for ``CTRLPLANE_NODE_SIGNING_TRANSITION`` (seed 002's ``previous`` and
``transition_expires``); the key before that stops verifying.
"""

from __future__ import annotations

import os
from datetime import datetime, timedelta

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.nodes.contract import SigningKeys, private_key_bytes, public_key_text, signing_key_id
from ctrlplane.nodes.models import NodeSigningKey
from ctrlplane.secrets.crypto import DecryptionFailed, MasterKeyRing
from ctrlplane.timeutil import utc_now


def _key(ring: MasterKeyRing, version: int) -> bytes:
    master = ring.keys.get(version)
    if master is None:
        raise DecryptionFailed(f"a node key is sealed under master key version {version}, which the ring lacks")
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"ctrlplane nodes").derive(master)


def seal(ring: MasterKeyRing, plaintext: bytes, *, aad: bytes) -> bytes:
    version = ring.newest
    nonce = os.urandom(12)
    return version.to_bytes(4, "big") + nonce + AESGCM(_key(ring, version)).encrypt(nonce, plaintext, aad)


def open_sealed(ring: MasterKeyRing, sealed: bytes, *, aad: bytes) -> bytes:
    version = int.from_bytes(sealed[:4], "big")
    try:
        return AESGCM(_key(ring, version)).decrypt(sealed[4:16], sealed[16:], aad)
    except InvalidTag:
        raise DecryptionFailed("a sealed node key does not open (tampered with, or moved)") from None


class SigningKeyPair:
    def __init__(self, key_id: str, private: Ed25519PrivateKey) -> None:
        self.key_id = key_id
        self.private = private


async def _newest(session: AsyncSession, limit: int) -> list[NodeSigningKey]:
    statement = select(NodeSigningKey).order_by(NodeSigningKey.created_at.desc(), NodeSigningKey.key_id).limit(limit)
    return list((await session.execute(statement)).scalars())


async def _create(session: AsyncSession, ring: MasterKeyRing, *, transition: datetime | None) -> NodeSigningKey:
    private = Ed25519PrivateKey.generate()
    public = public_key_text(private)
    key_id = signing_key_id(public)
    row = NodeSigningKey(
        key_id=key_id,
        public_key=public,
        private_sealed=seal(ring, private_key_bytes(private), aad=b"node-signing-key|" + key_id.encode()),
        created_at=utc_now(),
        transition_expires=transition,
    )
    session.add(row)
    await session.flush()
    return row


async def current_signing_key(session: AsyncSession, ring: MasterKeyRing) -> SigningKeyPair:
    """The current key, created on first use (in the caller's transaction)."""
    rows = await _newest(session, 1)
    row = rows[0] if rows else await _create(session, ring, transition=None)
    raw = open_sealed(ring, row.private_sealed, aad=b"node-signing-key|" + row.key_id.encode())
    return SigningKeyPair(row.key_id, Ed25519PrivateKey.from_private_bytes(raw))


async def signing_keys(session: AsyncSession, ring: MasterKeyRing) -> SigningKeys:
    """Seed 002's ``signing_keys``: the current public key and, until the transition ends, the previous."""
    rows = await _newest(session, 2)
    if not rows:
        await current_signing_key(session, ring)
        rows = await _newest(session, 2)
    current = rows[0]
    transition = current.transition_expires
    if len(rows) < 2 or transition is None or transition <= utc_now():
        return SigningKeys(current=current.public_key)
    return SigningKeys(current=current.public_key, previous=rows[1].public_key, transition_expires=transition)


async def rotate_signing_key(session: AsyncSession, ring: MasterKeyRing, transition: timedelta) -> NodeSigningKey:
    """A new current key; the previous one verifies until ``now + transition``."""
    await current_signing_key(session, ring)
    return await _create(session, ring, transition=utc_now() + transition)
