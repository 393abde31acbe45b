"""Sealing private keys (certificate and ACME account keys) before they reach the database.

AES-256-GCM with a random 96-bit nonce under a 32-byte key kept in ``<data dir>/network-key``
(generated with mode 0600 on first use). A sealed value is ``v1:`` + base64url(nonce || ciphertext);
the key's purpose is bound as associated data so a sealed value cannot be replayed elsewhere.
These two functions are the only place that knows how; pointing them at the secrets subsystem's key
ring changes nothing else.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ctrlplane.settings import Settings

PREFIX = "v1:"
ASSOCIATED_DATA = b"ctrlplane.network.private-key"


def _key(settings: Settings) -> bytes:
    path = settings.data_path / "network-key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "wb") as file:
                file.write(AESGCM.generate_key(bit_length=256))
    key = Path(path).read_bytes()
    if len(key) != 32:
        raise ValueError(f"{path} must hold exactly 32 bytes")
    return key


def seal_private_key(settings: Settings, pem: bytes) -> str:
    nonce = os.urandom(12)
    sealed = AESGCM(_key(settings)).encrypt(nonce, pem, ASSOCIATED_DATA)
    return PREFIX + base64.urlsafe_b64encode(nonce + sealed).decode()


def open_private_key(settings: Settings, sealed: str) -> bytes:
    if not sealed.startswith(PREFIX):
        raise ValueError("not a sealed private key")
    raw = base64.urlsafe_b64decode(sealed[len(PREFIX) :])
    return AESGCM(_key(settings)).decrypt(raw[:12], raw[12:], ASSOCIATED_DATA)
