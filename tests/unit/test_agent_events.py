"""The agent acts only on envelopes signed for it by the control plane's key (ctrlplane.agent.events)."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from ctrlplane.agent.events import RefusedEvent, open_event
from ctrlplane.agent.state import Identity, StateDir
from ctrlplane.nodes.contract import (
    Envelope,
    SigningKeys,
    WorkloadRemoved,
    new_node_secret_key,
    public_key_text,
    seal_node_secret_key,
    sign_envelope,
)

NODE = "node_01jabc"


def envelope(node_id: str = NODE, payload: dict[str, object] | None = None) -> Envelope:
    return Envelope(
        event_id=7,
        type="workload_removed",
        node_id=node_id,
        issued_at="2026-12-05T05:00:00Z",
        payload=payload if payload is not None else {"instance_id": "inst_1", "revision": 3},
        key_id="",
    )


@pytest.fixture
def signing_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


def keys_of(key: Ed25519PrivateKey) -> SigningKeys:
    return SigningKeys(current=public_key_text(key))


def wire(event: Envelope) -> str:
    return msgspec.json.encode(event).decode()


def test_signed_event_for_this_node_is_opened(signing_key: Ed25519PrivateKey) -> None:
    opened, payload = open_event(wire(sign_envelope(envelope(), signing_key)), node_id=NODE, keys=keys_of(signing_key))
    assert opened.event_id == 7
    assert payload == WorkloadRemoved(instance_id="inst_1", revision=3)


def test_unsigned_event_is_refused(signing_key: Ed25519PrivateKey) -> None:
    with pytest.raises(RefusedEvent, match="not signed"):
        open_event(wire(envelope()), node_id=NODE, keys=keys_of(signing_key))


def test_tampered_payload_is_refused(signing_key: Ed25519PrivateKey) -> None:
    signed = sign_envelope(envelope(), signing_key)
    tampered = msgspec.structs.replace(signed, payload={"instance_id": "inst_2", "revision": 3})
    with pytest.raises(RefusedEvent, match="does not verify"):
        open_event(wire(tampered), node_id=NODE, keys=keys_of(signing_key))


def test_event_signed_by_another_key_is_refused(signing_key: Ed25519PrivateKey) -> None:
    forged = sign_envelope(envelope(), Ed25519PrivateKey.generate())
    with pytest.raises(RefusedEvent, match="unknown key") as refused:
        open_event(wire(forged), node_id=NODE, keys=keys_of(signing_key))
    assert refused.value.unknown_key  # the agent pulls the state at once: it may be a rotated key


def test_forged_signature_under_the_right_key_id_is_refused(signing_key: Ed25519PrivateKey) -> None:
    forged = sign_envelope(envelope(), Ed25519PrivateKey.generate())
    posing = msgspec.structs.replace(forged, key_id=sign_envelope(envelope(), signing_key).key_id)
    with pytest.raises(RefusedEvent, match="does not verify"):
        open_event(wire(posing), node_id=NODE, keys=keys_of(signing_key))


def test_event_for_another_node_is_refused(signing_key: Ed25519PrivateKey) -> None:
    other = sign_envelope(envelope(node_id="node_other"), signing_key)
    with pytest.raises(RefusedEvent, match="not to this node"):
        open_event(wire(other), node_id=NODE, keys=keys_of(signing_key))


def test_garbage_and_malformed_payloads_are_refused(signing_key: Ed25519PrivateKey) -> None:
    with pytest.raises(RefusedEvent):
        open_event("{not json", node_id=NODE, keys=keys_of(signing_key))
    malformed = sign_envelope(envelope(payload={"instance_id": 5}), signing_key)
    with pytest.raises(RefusedEvent, match="malformed"):
        open_event(wire(malformed), node_id=NODE, keys=keys_of(signing_key))


def test_previous_key_is_trusted_only_during_its_transition(signing_key: Ed25519PrivateKey) -> None:
    new_key = Ed25519PrivateKey.generate()
    old_signed = wire(sign_envelope(envelope(), signing_key))
    later = datetime.now(UTC) + timedelta(hours=1)
    during = SigningKeys(
        current=public_key_text(new_key), previous=public_key_text(signing_key), transition_expires=later
    )
    open_event(old_signed, node_id=NODE, keys=during)
    open_event(wire(sign_envelope(envelope(), new_key)), node_id=NODE, keys=during)
    after = msgspec.structs.replace(during, transition_expires=datetime.now(UTC) - timedelta(seconds=1))
    with pytest.raises(RefusedEvent, match="unknown key"):
        open_event(old_signed, node_id=NODE, keys=after)


def test_state_dir_keeps_identity_and_key_private_and_opens_the_nsk(tmp_path: object) -> None:
    state = StateDir(f"{tmp_path}/agent")
    state.prepare()
    key = state.key()
    assert public_key_text(state.key()) == public_key_text(key)  # generated once, then reloaded
    nsk = new_node_secret_key()
    identity = Identity(
        url="http://127.0.0.1:1",
        node_id=NODE,
        hostname="web-01",
        credential="cpx_node_secret",
        credential_expires_at=datetime.now(UTC),
        sealed_node_secret_key=seal_node_secret_key(nsk, public_key_text(key)),
        signing_keys=SigningKeys(current=public_key_text(Ed25519PrivateKey.generate())),
    )
    state.save(identity)
    assert state.identity() == identity
    assert "cpx_node_secret" not in repr(identity)
    assert state.node_secret_key(identity) == nsk
    assert stat.S_IMODE(state.path.stat().st_mode) == 0o700
    for name in ("node.key", "identity.json"):
        assert stat.S_IMODE((state.path / name).stat().st_mode) == 0o600


def test_rotation_killed_before_the_key_was_promoted_recovers_the_nsk(tmp_path: object) -> None:
    state = StateDir(f"{tmp_path}/agent")
    state.prepare()
    state.key()
    next_key = state.next_key()
    nsk = new_node_secret_key()
    identity = Identity(
        url="http://127.0.0.1:1",
        node_id=NODE,
        hostname="web-01",
        credential="cpx_node_new",
        credential_expires_at=datetime.now(UTC),
        sealed_node_secret_key=seal_node_secret_key(nsk, public_key_text(next_key)),
        signing_keys=SigningKeys(current=public_key_text(Ed25519PrivateKey.generate())),
    )
    state.save(identity)
    assert state.node_secret_key(identity) == nsk
    assert public_key_text(state.key()) == public_key_text(next_key)
    assert not (state.path / "node.key.next").exists()
