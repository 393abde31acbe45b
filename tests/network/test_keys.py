"""Private keys are sealed (AES-256-GCM) before they reach the database."""

from __future__ import annotations

import base64
import stat
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidTag

from ctrlplane.network.acme import new_certificate_key
from ctrlplane.network.keys import open_private_key, seal_private_key
from ctrlplane.settings import Settings


def test_a_sealed_key_opens_to_the_same_bytes_and_shows_nothing_of_them(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path))
    pem = new_certificate_key()
    sealed = seal_private_key(settings, pem)
    assert sealed.startswith("v1:") and "PRIVATE KEY" not in sealed
    assert seal_private_key(settings, pem) != sealed, "every seal uses a new nonce"
    assert open_private_key(settings, sealed) == pem
    assert stat.S_IMODE((tmp_path / "network-key").stat().st_mode) == 0o600


def test_a_tampered_value_or_another_key_does_not_open(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "a"))
    sealed = seal_private_key(settings, b"secret")
    raw = bytearray(base64.urlsafe_b64decode(sealed[3:]))
    raw[14] ^= 0x01
    flipped = "v1:" + base64.urlsafe_b64encode(bytes(raw)).decode()
    with pytest.raises(InvalidTag):
        open_private_key(settings, flipped)
    with pytest.raises(InvalidTag):
        open_private_key(Settings(data_dir=str(tmp_path / "b")), sealed)
