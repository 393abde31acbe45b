"""The wire contract between the control plane and its node agent (seed 002), shared by both sides.

Everything a node and the control plane send each other is one of these msgspec Structs; the agent
imports this module and nothing else of the server. Three pieces of cryptography live here too, so
that both sides run the very same code (``docs/nodes.md`` describes them for other implementations):

**Event envelopes are signed with Ed25519.** The control plane signs; the agent verifies with the
signing public key it received at registration (``signing_keys`` in ``GET .../state`` names the
current and, during a transition period, the previous key). The signed bytes are::

    b"ctrlplane-node-event-v1\\n" + msgspec.json.encode(fields, order="sorted")

where ``fields`` is the envelope as builtins *without* its ``signature`` field (every other field,
``payload`` included, keys sorted at every depth, no whitespace). ``signature`` is the base64 of
the 64-byte Ed25519 signature. ``sign_envelope`` and ``verify_envelope`` are the two halves; a
verifier decodes the SSE ``data`` into ``Envelope`` and calls ``verify_envelope``, which re-derives
the same bytes, so re-encoding never depends on how the JSON was laid out on the wire.

**The node secret key (NSK)** is 32 random bytes per node, an AES-256 key. It never travels in
the clear: ``node_secret_key`` in the registration (and key rotation) answer is the NSK *sealed to
the node's X25519 public key*: an ephemeral X25519 key pair, the shared secret through HKDF-SHA256
(salt: the ephemeral public key followed by the node's public key; info:
``b"ctrlplane-node-nsk-v1"``) into an AES-256-GCM key, and ``base64(ephemeral_public(32) ||
nonce(12) || ciphertext+tag)``. Only the holder of the node's X25519 private key opens it
(``open_node_secret_key``).

**Secrets travel AES-256-GCM-encrypted under the NSK** (``encrypt_secret``/``decrypt_secret``),
with a random 96-bit nonce and, as associated data, ``node_id|key|version``, so a ciphertext fetched
for one node, key or version does not open as another.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ctrlplane.provisioning.contract import RetainedReplicas, SecretFile, WorkloadSpec, WorkloadStatus

ENROLL_TOKEN_PREFIX = "cpx_enroll_"
"""Bootstrap tokens: one-time, expiring, scoped to a node pool and optionally a tenant."""
NODE_CREDENTIAL_PREFIX = "cpx_node_"
"""Node identity credentials (``Authorization: Bearer cpx_node_...``); never accepted on tenant routes."""

SIGNATURE_CONTEXT = b"ctrlplane-node-event-v1\n"
NSK_INFO = b"ctrlplane-node-nsk-v1"

Base64Key = Annotated[str, msgspec.Meta(min_length=40, max_length=64, pattern=r"^[A-Za-z0-9+/]{43}=$")]
"""A 32-byte key (X25519 or Ed25519 public key, raw), standard base64 with padding."""
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
HOSTNAME_PATTERN = r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$"
Hostname = Annotated[str, msgspec.Meta(min_length=1, max_length=253, pattern=HOSTNAME_PATTERN)]

EventType = Literal[
    "workload_assigned",
    "workload_updated",
    "workload_removed",
    "action_request",
    "rotate_keys",
    "signing_key_rotated",
    "node_secrets_updated",
]


class ContractError(Exception):
    """A malformed key, a bad signature or a ciphertext that does not open. The message never
    carries key material or plaintext."""


# --- registration -------------------------------------------------------------------------


class BinaryInfo(msgspec.Struct, kw_only=True):
    version: Annotated[str, msgspec.Meta(max_length=100)] = ""
    checksum: Annotated[str, msgspec.Meta(max_length=200)] = ""


class ActionParameter(msgspec.Struct, kw_only=True):
    name: Name
    type: Annotated[str, msgspec.Meta(max_length=50)] = "string"
    required: bool = False
    description: Annotated[str, msgspec.Meta(max_length=1000)] = ""


class BuiltinAction(msgspec.Struct, kw_only=True):
    name: Name
    description: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    parameters: Annotated[list[ActionParameter], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=list)


class Hook(msgspec.Struct, kw_only=True):
    name: Name
    description: Annotated[str, msgspec.Meta(max_length=1000)] = ""
    source: Annotated[str, msgspec.Meta(max_length=200)] = "script"
    checksum: Annotated[str, msgspec.Meta(max_length=200)] = ""
    parameters: Annotated[list[ActionParameter], msgspec.Meta(max_length=50)] = msgspec.field(default_factory=list)
    timeout: Annotated[str, msgspec.Meta(max_length=20)] = "300s"
    sandbox: Annotated[str, msgspec.Meta(max_length=50)] = "namespaced"


class NodeCapacity(msgspec.Struct, kw_only=True):
    """What the node offers to instances (ctrlplane's addition to seed 002's capabilities)."""

    cpu_millis: Annotated[int, msgspec.Meta(ge=0)] = 0
    memory_mb: Annotated[int, msgspec.Meta(ge=0)] = 0


class Capabilities(msgspec.Struct, kw_only=True):
    binary: BinaryInfo = msgspec.field(default_factory=BinaryInfo)
    builtin_actions: Annotated[list[BuiltinAction], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    hooks: Annotated[list[Hook], msgspec.Meta(max_length=100)] = msgspec.field(default_factory=list)
    capacity: NodeCapacity = msgspec.field(default_factory=NodeCapacity)


class RegisterRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    token: Annotated[str, msgspec.Meta(min_length=1, max_length=200)]
    public_key: Base64Key
    """The node's X25519 public key."""
    hostname: Hostname
    metadata: dict[str, str] = msgspec.field(default_factory=dict)
    capabilities: Capabilities = msgspec.field(default_factory=Capabilities)


class Peer(msgspec.Struct, kw_only=True):
    """Seed 002's WireGuard peer; ctrlplane has no mesh, so every list of peers is empty."""

    id: str
    public_key: str
    mesh_ip: str
    endpoint: str
    allowed_ips: list[str]
    psk: str


class RegisterResponse(msgspec.Struct, kw_only=True):
    node_id: str
    credential: str
    """The node identity credential (``cpx_node_...``), shown only here; send it as a bearer token."""
    credential_expires_at: datetime
    signing_public_key: str
    """The control plane's current Ed25519 public key (raw, base64)."""
    node_secret_key: str
    """The NSK sealed to the node's X25519 public key (see the module docstring)."""
    mesh_ip: str | None = None
    peers: list[Peer] = msgspec.field(default_factory=list)


# --- heartbeat, deregister, key rotation, capabilities -----------------------------------


class HeartbeatRequest(msgspec.Struct, kw_only=True):
    node_id: str
    timestamp: datetime
    status: Annotated[str, msgspec.Meta(max_length=50)] = "healthy"
    uptime: Annotated[str, msgspec.Meta(max_length=50)] = ""
    binary_checksum: Annotated[str, msgspec.Meta(max_length=200)] = ""
    mesh: dict[str, Any] | None = None
    nat: dict[str, Any] | None = None


class HeartbeatResponse(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Empty (``{}``) when nothing is wanted."""

    reconcile: bool = False
    rotate_keys: bool = False


class Acknowledged(msgspec.Struct, kw_only=True):
    status: Literal["ok"] = "ok"


class KeyRotateRequest(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    node_id: str
    new_public_key: Base64Key


class KeyRotateResponse(msgspec.Struct, kw_only=True):
    """A new credential (the old one stops working) and a new NSK sealed to the new public key."""

    updated_peers: list[Peer]
    credential: str
    credential_expires_at: datetime
    node_secret_key: str


# --- desired state, drift, secrets -------------------------------------------------------


class SecretRef(msgspec.Struct, kw_only=True):
    key: str
    version: int


class NodeWorkload(msgspec.Struct, kw_only=True):
    """One instance placed on the node. ``spec`` carries no secret material: its ``env`` is empty and
    its ``files`` are empty. The whole environment and every file are in the secret ``secret.key``
    (a ``WorkloadSecrets`` JSON document, see ``merge_secrets``), fetched from ``GET .../secrets/{key}``."""

    instance_id: str
    revision: int
    """The number of the event that announced this version of the workload: grows with every
    change on this node (a removal and a new assignment too). ``secret.version`` equals it."""
    spec: WorkloadSpec
    secret: SecretRef
    retained: list[RetainedReplicas] = msgspec.field(default_factory=list)
    """A gated deploy in progress (ctrlplane's deploy engine): these replicas of older (or, going
    back, newer) generations keep running beside ``spec``'s generation until the control plane
    drops them, after taking them out of the router's rotation. Every replica of another generation
    not listed is removed. Empty: the node replaces every other generation with ``spec``'s."""


class WorkloadSecrets(msgspec.Struct, kw_only=True):
    """The plaintext of a workload's secret: the full env (OTLP variables, the instance's env, its env
    secrets) and its secret files."""

    env: dict[str, str] = msgspec.field(default_factory=dict)
    files: list[SecretFile] = msgspec.field(default_factory=list)

    def __repr__(self) -> str:
        return f"WorkloadSecrets(env={sorted(self.env)}, files={[f.path for f in self.files]})"


class SigningKeys(msgspec.Struct, kw_only=True):
    current: str
    previous: str | None = None
    transition_expires: datetime | None = None


class NodeState(msgspec.Struct, kw_only=True):
    """``GET /v1/nodes/{id}/state``: everything the node should run, for a reconcile."""

    node_id: str
    workloads: list[NodeWorkload]
    signing_keys: SigningKeys
    metadata: dict[str, str]
    secret_refs: list[SecretRef]
    last_event_id: int
    """The newest event this state includes; resume the stream after it."""
    peers: list[Peer] = msgspec.field(default_factory=list)
    policies: list[dict[str, Any]] = msgspec.field(default_factory=list)
    data: list[dict[str, Any]] = msgspec.field(default_factory=list)


class DriftCorrection(msgspec.Struct, kw_only=True):
    type: Annotated[str, msgspec.Meta(min_length=1, max_length=100)]
    detail: Annotated[str, msgspec.Meta(max_length=4000)] = ""
    instance_id: str | None = None


class DriftReport(msgspec.Struct, kw_only=True):
    timestamp: datetime
    corrections: Annotated[list[DriftCorrection], msgspec.Meta(max_length=1000)]


class EncryptedSecret(msgspec.Struct, kw_only=True):
    key: str
    ciphertext: str
    nonce: str
    version: int


# --- reports and executions --------------------------------------------------------------

INSTANCE_REPORT_PREFIX = "instance/"
"""A report entry keyed ``instance/{instance_id}`` carries that instance's ``WorkloadStatus``
(``application/json``) as the node last observed it."""


class ReportEntry(msgspec.Struct, kw_only=True):
    key: Annotated[str, msgspec.Meta(min_length=1, max_length=300)]
    content_type: Annotated[str, msgspec.Meta(max_length=100)] = "application/json"
    payload: Any = None
    version: Annotated[int, msgspec.Meta(ge=0)]
    updated_at: datetime


class ReportBatch(msgspec.Struct, kw_only=True):
    entries: Annotated[list[ReportEntry], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=list)
    deleted: Annotated[list[str], msgspec.Meta(max_length=1000)] = msgspec.field(default_factory=list)


class ExecutionAck(msgspec.Struct, kw_only=True):
    execution_id: str
    status: Literal["accepted", "rejected"]
    reason: Annotated[str, msgspec.Meta(max_length=4000)] = ""


class TriggeredBy(msgspec.Struct, kw_only=True):
    type: str = "control_plane"
    session_id: str = ""
    user_id: str = ""
    email: str = ""


class ExecutionResult(msgspec.Struct, kw_only=True):
    execution_id: str
    status: Literal["success", "failure", "timeout", "cancelled"]
    exit_code: int | None = None
    stdout: Annotated[str, msgspec.Meta(max_length=65536)] = ""
    stderr: Annotated[str, msgspec.Meta(max_length=65536)] = ""
    duration: Annotated[str, msgspec.Meta(max_length=50)] = ""
    finished_at: datetime
    triggered_by: TriggeredBy = msgspec.field(default_factory=TriggeredBy)


# --- telemetry batches (gzip) ------------------------------------------------------------


class MetricRecord(msgspec.Struct, kw_only=True):
    """One element of the gzip'd JSON array of ``POST .../metrics``. ``group: "instance"`` with
    ``instance_id`` and ``data`` of ``cpu_percent``, ``memory_used``, ``memory_total``,
    ``network_rx_bytes``, ``network_tx_bytes``, ``restarts`` is stored as that instance's sample;
    other groups are node-level and counted only."""

    timestamp: datetime
    group: Annotated[str, msgspec.Meta(max_length=100)]
    data: dict[str, float | int]
    instance_id: str | None = None
    replica: int = 0
    peer_id: str | None = None


class LogRecord(msgspec.Struct, kw_only=True):
    """One line of the gzip'd NDJSON of ``POST .../logs``. With ``instance_id`` it lands in that
    instance's logs (``source`` ``stdout``/``stderr``); without, it is the node's own log."""

    timestamp: datetime
    message: str
    source: str = "stdout"
    severity: str = "info"
    unit: str = ""
    hostname: str = ""
    instance_id: str | None = None
    replica: int = 0


class AuditRecord(msgspec.Struct, kw_only=True):
    """One line of the gzip'd NDJSON of ``POST .../audit``; kept in the system audit chain."""

    timestamp: datetime
    source: str = ""
    event_type: str = ""
    action: str = ""
    result: str = ""
    hostname: str = ""
    subject: dict[str, Any] = msgspec.field(default_factory=dict)
    object: dict[str, Any] = msgspec.field(default_factory=dict)
    raw: str = ""


class BatchAccepted(msgspec.Struct, kw_only=True):
    accepted: int
    rejected: int = 0
    """Records about instances not placed on this node: dropped."""


# --- the event stream --------------------------------------------------------------------


class Envelope(msgspec.Struct, kw_only=True):
    """One SSE event's ``data``; its SSE ``id`` is ``event_id`` and its SSE ``event`` is ``type``."""

    event_id: int
    type: str
    node_id: str
    issued_at: str
    """RFC 3339 UTC, as text so that re-encoding for verification is exact."""
    payload: dict[str, Any]
    key_id: str
    """``signing_key_id`` of the public key that verifies ``signature``."""
    signature: str = ""


class EventPage(msgspec.Struct, kw_only=True):
    """``GET .../events`` without ``Accept: text/event-stream``: the signed events after
    ``Last-Event-ID`` (at most 200), for a node that polls instead of streaming."""

    items: list[Envelope]
    last_event_id: int


class WorkloadAssigned(msgspec.Struct, kw_only=True):
    """``workload_assigned`` and ``workload_updated``."""

    workload: NodeWorkload


class WorkloadRemoved(msgspec.Struct, kw_only=True):
    instance_id: str
    revision: int


class ActionRequest(msgspec.Struct, kw_only=True):
    execution_id: str
    action: str
    type: Literal["builtin", "hook"] = "builtin"
    parameters: dict[str, Any] = msgspec.field(default_factory=dict)
    timeout: str = "300s"
    callback_url: str = ""


class RotateKeys(msgspec.Struct, kw_only=True):
    reason: str = ""


class SigningKeyRotated(msgspec.Struct, kw_only=True):
    signing_public_key: str
    key_id: str
    valid_from: datetime
    transition_expires: datetime


class NodeSecretsUpdated(msgspec.Struct, kw_only=True):
    """A workload's secrets (env or files) changed while its spec did not. It follows the
    ``workload_updated`` that carries the new revision (whose ``secret`` is the one named here):
    drop any cached copy and roll the instance's containers onto the new secret."""

    secrets: list[SecretRef]


PAYLOAD_TYPES: dict[str, type[msgspec.Struct]] = {
    "workload_assigned": WorkloadAssigned,
    "workload_updated": WorkloadAssigned,
    "workload_removed": WorkloadRemoved,
    "action_request": ActionRequest,
    "rotate_keys": RotateKeys,
    "signing_key_rotated": SigningKeyRotated,
    "node_secrets_updated": NodeSecretsUpdated,
}


def decode_payload(envelope: Envelope) -> msgspec.Struct:
    """The envelope's payload as its type's Struct (call only after ``verify_envelope``)."""
    kind = PAYLOAD_TYPES.get(envelope.type)
    if kind is None:
        raise ContractError(f"unknown event type {envelope.type!r}")
    try:
        return msgspec.convert(envelope.payload, kind)
    except msgspec.ValidationError as exc:
        raise ContractError(f"malformed {envelope.type} payload: {exc}") from None


# --- keys and signatures -----------------------------------------------------------------


def b64encode(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def b64decode(text: str, *, length: int | None = None, what: str = "value") -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ContractError(f"{what} is not valid base64") from None
    if length is not None and len(raw) != length:
        raise ContractError(f"{what} must be {length} bytes")
    return raw


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey | X25519PrivateKey | X25519PublicKey) -> str:
    """The raw 32-byte public key, base64: how every public key appears on the wire."""
    public = key.public_key() if isinstance(key, (Ed25519PrivateKey, X25519PrivateKey)) else key
    return b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw))


def private_key_bytes(key: Ed25519PrivateKey | X25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption())


def signing_key_id(public_key: str) -> str:
    """A short, stable name of an Ed25519 public key: the first 16 hex digits of SHA-256 of its raw bytes."""
    return hashlib.sha256(b64decode(public_key, length=32, what="signing key")).hexdigest()[:16]


def load_x25519_public(text: str) -> X25519PublicKey:
    """The key, refusing (``ContractError``) one that no key agreement works with (a low-order point)."""
    key = X25519PublicKey.from_public_bytes(b64decode(text, length=32, what="X25519 public key"))
    try:
        X25519PrivateKey.generate().exchange(key)
    except ValueError:
        raise ContractError("X25519 public key is unusable (low order)") from None
    return key


def load_ed25519_public(text: str) -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(b64decode(text, length=32, what="Ed25519 public key"))


def signed_bytes(envelope: Envelope) -> bytes:
    fields = msgspec.to_builtins(envelope)
    fields.pop("signature", None)
    return SIGNATURE_CONTEXT + msgspec.json.encode(fields, order="sorted")


def sign_envelope(envelope: Envelope, key: Ed25519PrivateKey) -> Envelope:
    """A copy of ``envelope`` with ``key_id`` set to ``key``'s and ``signature`` filled in."""
    unsigned = msgspec.structs.replace(envelope, key_id=signing_key_id(public_key_text(key)), signature="")
    return msgspec.structs.replace(unsigned, signature=b64encode(key.sign(signed_bytes(unsigned))))


def verify_envelope(envelope: Envelope, public_keys: list[str]) -> None:
    """Raises ``ContractError`` unless one of ``public_keys`` (base64 raw Ed25519; the current and,
    during a transition, the previous) with the envelope's ``key_id`` verifies its signature."""
    if not envelope.signature:
        raise ContractError("the event is not signed")
    signature = b64decode(envelope.signature, length=64, what="signature")
    for text in public_keys:
        if signing_key_id(text) != envelope.key_id:
            continue
        try:
            load_ed25519_public(text).verify(signature, signed_bytes(envelope))
        except InvalidSignature:
            raise ContractError("the event's signature does not verify") from None
        return
    raise ContractError("the event is signed by an unknown key")


# --- the node secret key -----------------------------------------------------------------


def new_node_secret_key() -> bytes:
    return AESGCM.generate_key(bit_length=256)


def _nsk_wrapping_key(shared: bytes, ephemeral_public: bytes, node_public: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=ephemeral_public + node_public, info=NSK_INFO).derive(shared)


def seal_node_secret_key(nsk: bytes, node_public_key: str) -> str:
    """The NSK sealed to the node's X25519 public key (base64): only its private key opens it."""
    node_public = load_x25519_public(node_public_key)
    ephemeral = X25519PrivateKey.generate()
    ephemeral_public = b64decode(public_key_text(ephemeral))
    wrapping = _nsk_wrapping_key(ephemeral.exchange(node_public), ephemeral_public, b64decode(node_public_key))
    nonce = os.urandom(12)
    return b64encode(ephemeral_public + nonce + AESGCM(wrapping).encrypt(nonce, nsk, NSK_INFO))


def open_node_secret_key(sealed: str, node_private_key: X25519PrivateKey) -> bytes:
    """The NSK from ``node_secret_key``; ``ContractError`` if it was not sealed to this key."""
    raw = b64decode(sealed, what="node secret key")
    if len(raw) != 32 + 12 + 32 + 16:
        raise ContractError("node secret key has the wrong length")
    ephemeral_public, nonce, ciphertext = raw[:32], raw[32:44], raw[44:]
    node_public = b64decode(public_key_text(node_private_key))
    shared = node_private_key.exchange(X25519PublicKey.from_public_bytes(ephemeral_public))
    try:
        return AESGCM(_nsk_wrapping_key(shared, ephemeral_public, node_public)).decrypt(nonce, ciphertext, NSK_INFO)
    except InvalidTag:
        raise ContractError("the node secret key was not sealed to this node's key") from None


def _secret_aad(node_id: str, key: str, version: int) -> bytes:
    return f"{node_id}|{key}|{version}".encode()


def encrypt_secret(nsk: bytes, plaintext: bytes, *, node_id: str, key: str, version: int) -> EncryptedSecret:
    nonce = os.urandom(12)
    ciphertext = AESGCM(nsk).encrypt(nonce, plaintext, _secret_aad(node_id, key, version))
    return EncryptedSecret(key=key, ciphertext=b64encode(ciphertext), nonce=b64encode(nonce), version=version)


def decrypt_secret(nsk: bytes, secret: EncryptedSecret, *, node_id: str) -> bytes:
    nonce = b64decode(secret.nonce, length=12, what="nonce")
    ciphertext = b64decode(secret.ciphertext, what="ciphertext")
    try:
        return AESGCM(nsk).decrypt(nonce, ciphertext, _secret_aad(node_id, secret.key, secret.version))
    except InvalidTag:
        raise ContractError("the secret does not open with this node's key") from None


def merge_secrets(spec: WorkloadSpec, plaintext: bytes) -> WorkloadSpec:
    """The spec to hand the Docker provider: the state's secret-free spec with its secret's env and files."""
    secrets = msgspec.json.decode(plaintext, type=WorkloadSecrets)
    return msgspec.structs.replace(spec, env=dict(secrets.env), files=tuple(secrets.files))


def instance_status(entry: ReportEntry) -> WorkloadStatus:
    return msgspec.convert(entry.payload, WorkloadStatus)
