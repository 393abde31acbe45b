"""The node contract's cryptography: envelope signatures, the sealed node secret key, secrets under it."""

from __future__ import annotations

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ctrlplane.nodes import contract
from ctrlplane.nodes.contract import ContractError, Envelope
from ctrlplane.provisioning.contract import Resources, SecretFile, WorkloadSpec


def signed(key: Ed25519PrivateKey, **payload: object) -> bytes:
    envelope = Envelope(
        event_id=7,
        type="rotate_keys",
        node_id="node_1",
        issued_at="2026-01-01T00:00:00Z",
        payload=dict(payload),
        key_id="",
    )
    return msgspec.json.encode(contract.sign_envelope(envelope, key))


def test_signed_envelope_verifies_with_the_published_key_after_a_round_trip() -> None:
    key = Ed25519PrivateKey.generate()
    wire = signed(key, reason="expiring", nested={"b": [1.5, None], "a": "x"})
    contract.verify_envelope(msgspec.json.decode(wire, type=Envelope), [contract.public_key_text(key)])


def test_tampered_envelope_fails_verification() -> None:
    key = Ed25519PrivateKey.generate()
    envelope = msgspec.json.decode(signed(key, reason="a"), type=Envelope)
    for tampered in (
        msgspec.structs.replace(envelope, payload={"reason": "b"}),
        msgspec.structs.replace(envelope, node_id="node_2"),
        msgspec.structs.replace(envelope, event_id=8),
    ):
        with pytest.raises(ContractError, match="does not verify"):
            contract.verify_envelope(tampered, [contract.public_key_text(key)])


def test_unsigned_or_foreign_envelope_is_refused() -> None:
    key = Ed25519PrivateKey.generate()
    envelope = msgspec.json.decode(signed(key, reason="a"), type=Envelope)
    with pytest.raises(ContractError, match="not signed"):
        contract.verify_envelope(msgspec.structs.replace(envelope, signature=""), [contract.public_key_text(key)])
    other = Ed25519PrivateKey.generate()
    with pytest.raises(ContractError, match="unknown key"):
        contract.verify_envelope(envelope, [contract.public_key_text(other)])
    forged = msgspec.json.decode(signed(other, reason="a"), type=Envelope)
    forged = msgspec.structs.replace(forged, key_id=envelope.key_id)
    with pytest.raises(ContractError, match="does not verify"):
        contract.verify_envelope(forged, [contract.public_key_text(key)])


def test_previous_key_still_verifies_during_transition() -> None:
    old, new = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    envelope = msgspec.json.decode(signed(old, reason="a"), type=Envelope)
    contract.verify_envelope(envelope, [contract.public_key_text(new), contract.public_key_text(old)])


def test_node_secret_key_opens_only_with_the_nodes_private_key() -> None:
    node, stranger = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    nsk = contract.new_node_secret_key()
    sealed = contract.seal_node_secret_key(nsk, contract.public_key_text(node))
    assert contract.open_node_secret_key(sealed, node) == nsk
    with pytest.raises(ContractError):
        contract.open_node_secret_key(sealed, stranger)


def test_secret_decrypts_only_with_the_nsk_for_its_node_key_and_version() -> None:
    nsk = contract.new_node_secret_key()
    encrypted = contract.encrypt_secret(nsk, b"hunter2", node_id="node_1", key="k", version=3)
    assert b"hunter2" not in msgspec.json.encode(encrypted)
    assert contract.decrypt_secret(nsk, encrypted, node_id="node_1") == b"hunter2"
    with pytest.raises(ContractError):
        contract.decrypt_secret(contract.new_node_secret_key(), encrypted, node_id="node_1")
    with pytest.raises(ContractError):
        contract.decrypt_secret(nsk, encrypted, node_id="node_2")
    with pytest.raises(ContractError):
        contract.decrypt_secret(nsk, msgspec.structs.replace(encrypted, version=4), node_id="node_1")


def test_merge_secrets_restores_env_and_files() -> None:
    resources = Resources(cpu_millis=100, memory_mb=64)
    spec = WorkloadSpec(instance_id="i", tenant_id="t", name="n", image="img", resources=resources)
    bundle = contract.WorkloadSecrets(env={"A": "1"}, files=[SecretFile(path="/run/s", content=b"\x00x")])
    merged = contract.merge_secrets(spec, msgspec.json.encode(bundle))
    assert merged.env == {"A": "1"} and merged.files == (SecretFile(path="/run/s", content=b"\x00x"),)
