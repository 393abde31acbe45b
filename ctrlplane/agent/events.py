"""Checking the events the control plane sends before the agent acts on any.

An SSE event is acted on only when its ``data`` is an ``Envelope`` for this node whose Ed25519
signature verifies with the control plane's current signing key or, until its transition period
ends, the previous one. Anything else (unsigned, signed by another key, altered in transit,
addressed to another node, malformed) is refused: logged as ``event_refused`` and dropped.
"""

from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import structlog

from ctrlplane.nodes.contract import ContractError, Envelope, SigningKeys, decode_payload, verify_envelope

log = structlog.get_logger("ctrlplane.agent")


class RefusedEvent(Exception):
    """An event the agent does not act on; the message says why (never any key material).
    ``unknown_key``: signed by a key the agent does not know (yet): a rotated signing key is
    learnt from the next ``GET .../state``, which the agent pulls at once."""

    def __init__(self, message: str, *, unknown_key: bool = False) -> None:
        super().__init__(message)
        self.unknown_key = unknown_key


def trusted_keys(keys: SigningKeys, now: datetime | None = None) -> list[str]:
    """The keys an envelope may be signed with now: the current one, and the previous one until
    ``transition_expires``."""
    trusted = [keys.current]
    if keys.previous and (keys.transition_expires is None or (now or datetime.now(UTC)) < keys.transition_expires):
        trusted.append(keys.previous)
    return trusted


def open_event(data: str, *, node_id: str, keys: SigningKeys) -> tuple[Envelope, msgspec.Struct]:
    """The verified envelope of an SSE event's ``data`` and its decoded payload; ``RefusedEvent``
    unless it is well formed, addressed to ``node_id`` and signed with a trusted key."""
    try:
        envelope = msgspec.json.decode(data, type=Envelope)
    except msgspec.DecodeError as exc:
        raise RefusedEvent(f"not an envelope: {exc}") from None
    try:
        verify_envelope(envelope, trusted_keys(keys))
    except ContractError as exc:
        raise RefusedEvent(str(exc), unknown_key="unknown key" in str(exc)) from None
    if envelope.node_id != node_id:
        raise RefusedEvent(f"addressed to node {envelope.node_id}, not to this node")
    try:
        return envelope, decode_payload(envelope)
    except ContractError as exc:
        raise RefusedEvent(str(exc)) from None
