"""The key ring and the sealing primitives of ``ctrlplane.secrets.crypto``, without a database."""

from __future__ import annotations

import base64
import os
import stat
from pathlib import Path

import pytest

from ctrlplane.errors import InvalidInput
from ctrlplane.secrets.crypto import (
    KEY_BYTES,
    RING_FILE,
    DecryptionFailed,
    MasterKeyRing,
    _aead,
    _decrypt,
    _encrypt,
    new_master_key,
)
from ctrlplane.secrets.service import validate_key
from ctrlplane.settings import Settings, SettingsError


def ring(*versions: int) -> MasterKeyRing:
    return MasterKeyRing.parse(",".join(f"{v}:{new_master_key()}" for v in versions), source="test")


def test_newest_master_key_wraps_and_every_key_in_the_ring_unwraps() -> None:
    old = ring(1)
    both = MasterKeyRing(keys={**old.keys, **ring(2).keys}, source="test")
    version, wrapped = old.wrap("ten_a", b"k" * KEY_BYTES)
    assert version == 1
    assert both.unwrap("ten_a", 1, wrapped) == b"k" * KEY_BYTES
    assert both.wrap("ten_a", b"k" * KEY_BYTES)[0] == 2


def test_a_wrapped_data_key_does_not_unwrap_for_another_tenant_or_version() -> None:
    keys = ring(1, 2)
    _, wrapped = keys.wrap("ten_a", os.urandom(KEY_BYTES))
    with pytest.raises(DecryptionFailed, match="does not unwrap"):
        keys.unwrap("ten_b", 2, wrapped)
    with pytest.raises(DecryptionFailed, match="does not unwrap"):
        keys.unwrap("ten_a", 1, wrapped)


def test_a_version_missing_from_the_ring_is_named_without_key_material() -> None:
    keys = ring(2)
    _, wrapped = ring(1).wrap("ten_a", os.urandom(KEY_BYTES))
    with pytest.raises(DecryptionFailed) as caught:
        keys.unwrap("ten_a", 1, wrapped)
    assert "version 1" in caught.value.message
    assert base64.b64encode(keys.keys[2]).decode() not in caught.value.message + repr(keys)


def test_sealed_values_refuse_tampering_and_other_associated_data() -> None:
    key = os.urandom(KEY_BYTES)
    blob = _encrypt(key, b"hunter2", _aead(b"value", "ten_a", b"secret|inst_1|env|1|DB"))
    assert b"hunter2" not in blob
    assert _decrypt(key, blob, _aead(b"value", "ten_a", b"secret|inst_1|env|1|DB")) == b"hunter2"
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    flipped_body = blob[:14] + bytes([blob[14] ^ 0x80]) + blob[15:]
    from cryptography.exceptions import InvalidTag

    for bad, aad in [
        (tampered, b"secret|inst_1|env|1|DB"),
        (flipped_body, b"secret|inst_1|env|1|DB"),
        (blob, b"secret|inst_2|env|1|DB"),
        (blob, b"secret|inst_1|env|2|DB"),
        (blob[:10], b"secret|inst_1|env|1|DB"),
    ]:
        with pytest.raises(InvalidTag):
            _decrypt(key, bad, _aead(b"value", "ten_a", aad))
    with pytest.raises(InvalidTag):
        _decrypt(key, blob, _aead(b"value", "ten_b", b"secret|inst_1|env|1|DB"))


def test_two_seals_of_one_value_differ() -> None:
    key = os.urandom(KEY_BYTES)
    aad = _aead(b"value", "ten_a", b"x")
    assert _encrypt(key, b"same", aad) != _encrypt(key, b"same", aad)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "holds no key"),
        ("1", "VERSION:BASE64KEY"),
        ("x:" + new_master_key(), "VERSION:BASE64KEY"),
        ("1:" + base64.b64encode(b"short").decode(), "not 32 bytes"),
        ("1:!!!!", "VERSION:BASE64KEY"),
        ("1:abc", "not base64"),
        (f"1:{new_master_key()},1:{new_master_key()}", "given twice"),
        (f"0:{new_master_key()}", "not positive"),
    ],
    ids=["empty", "no-key", "bad-version", "short-key", "bad-chars", "bad-base64", "duplicate", "zero"],
)
def test_malformed_rings_are_refused_without_echoing_keys(text: str, problem: str) -> None:
    with pytest.raises(SettingsError, match=problem) as caught:
        MasterKeyRing.parse(text, source="CTRLPLANE_SECRETS_MASTER_KEYS")
    for entry in text.split(","):
        secret_part = entry.partition(":")[2]
        if len(secret_part) > 8:
            assert secret_part not in str(caught.value)


def test_ring_files_take_comments_and_newlines() -> None:
    k1, k2 = new_master_key(), new_master_key()
    parsed = MasterKeyRing.parse(f"# backup me\n1:{k1}\n2:{k2}  # newest\n", source="file")
    assert sorted(parsed.keys) == [1, 2]
    assert parsed.newest == 2
    assert parsed.keys[1] == base64.b64decode(k1)


def test_first_start_generates_a_private_ring_in_the_data_directory_once(tmp_path: Path) -> None:
    settings = Settings(data_dir=str(tmp_path / "data"))
    first, generated = MasterKeyRing.from_settings(settings)
    assert generated
    path = tmp_path / "data" / RING_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    again, generated_again = MasterKeyRing.from_settings(settings)
    assert not generated_again
    assert again.keys == first.keys
    assert first.newest == 1
    assert [p.name for p in path.parent.iterdir()] == [RING_FILE]


def test_a_configured_ring_is_used_inline_or_from_a_file(tmp_path: Path) -> None:
    entry = f"3:{new_master_key()}"
    inline, generated = MasterKeyRing.from_settings(Settings(data_dir=str(tmp_path), secrets_master_keys=entry))
    assert not generated and sorted(inline.keys) == [3]
    keyfile = tmp_path / "ring"
    keyfile.write_text(entry + "\n")
    from_file, _ = MasterKeyRing.from_settings(Settings(data_dir=str(tmp_path), secrets_master_keys=str(keyfile)))
    assert from_file.keys == inline.keys
    assert not (tmp_path / RING_FILE).exists()
    with pytest.raises(SettingsError, match="nor a readable file"):
        MasterKeyRing.from_settings(Settings(data_dir=str(tmp_path), secrets_master_keys=str(tmp_path / "nope")))
    bare_key = new_master_key()
    with pytest.raises(SettingsError) as caught:
        MasterKeyRing.from_settings(Settings(data_dir=str(tmp_path), secrets_master_keys=bare_key))
    assert bare_key not in str(caught.value)


def test_settings_read_the_master_key_ring_variable() -> None:
    entry = f"1:{new_master_key()}"
    assert Settings.from_env({"CTRLPLANE_SECRETS_MASTER_KEYS": entry}).secrets_master_keys == entry


@pytest.mark.parametrize(
    ("key", "type"),
    [
        ("1BAD", "env"),
        ("HAS-DASH", "env"),
        ("A" * 256, "env"),
        ("/etc/app/x", "env"),
        ("relative/path", "file"),
        ("/", "file"),
        ("/etc/../shadow", "file"),
        ("/etc//x", "file"),
        ("/etc/x/", "file"),
        ("/proc/self/environ", "file"),
        ("/run/ctrlplane/files/f0", "file"),
        ("/etc/\nx", "file"),
        ("DATABASE_URL", "file"),
    ],
)
def test_secret_keys_are_validated_by_type(key: str, type: str) -> None:
    with pytest.raises(InvalidInput):
        validate_key(key, type)


@pytest.mark.parametrize(("key", "type"), [("DATABASE_URL", "env"), ("_x1", "env"), ("/etc/app/token", "file")])
def test_valid_secret_keys_pass(key: str, type: str) -> None:
    validate_key(key, type)
