"""What the agent keeps between runs, in its state directory (mode 0700, every file 0600).

``node.key`` holds the node's X25519 private key (raw, 32 bytes); ``identity.json`` the node ID,
the node credential, the NSK *as sealed to that key* (so the file alone does not give it away) and
the control plane's signing keys, plus the last event acted on. Files are replaced atomically
(write a sibling, fsync, rename), so a SIGKILL leaves either the old or the new file, never half
of one. Registration writes the key before it calls ``POST /v1/register``, so a crash after the
call cannot lose the key the control plane now knows.
"""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path

import msgspec
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from ctrlplane.nodes.contract import ContractError, SigningKeys, open_node_secret_key, private_key_bytes

KEY_FILE = "node.key"
NEXT_KEY_FILE = "node.key.next"
IDENTITY_FILE = "identity.json"


class Identity(msgspec.Struct, kw_only=True):
    url: str
    node_id: str
    hostname: str
    credential: str
    credential_expires_at: datetime
    sealed_node_secret_key: str
    signing_keys: SigningKeys
    last_event_id: int = 0

    def __repr__(self) -> str:
        return f"Identity(node_id={self.node_id!r}, url={self.url!r}, credential=<hidden>)"


class StateDir:
    """The agent's state directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def prepare(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)

    def _write(self, name: str, content: bytes) -> None:
        target = self.path / name
        temporary = self.path / f".{name}.tmp"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, content)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temporary, target)
        directory = os.open(self.path, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)

    def key(self) -> X25519PrivateKey:
        """The node's X25519 private key, generated (and stored) on first use."""
        path = self.path / KEY_FILE
        if path.exists():
            return X25519PrivateKey.from_private_bytes(path.read_bytes())
        key = X25519PrivateKey.generate()
        self._write(KEY_FILE, private_key_bytes(key))
        return key

    def next_key(self) -> X25519PrivateKey:
        """The key a rotation moves to: kept apart until the control plane has accepted it."""
        path = self.path / NEXT_KEY_FILE
        if path.exists():
            return X25519PrivateKey.from_private_bytes(path.read_bytes())
        key = X25519PrivateKey.generate()
        self._write(NEXT_KEY_FILE, private_key_bytes(key))
        return key

    def promote_next_key(self) -> None:
        os.replace(self.path / NEXT_KEY_FILE, self.path / KEY_FILE)

    def identity(self) -> Identity | None:
        path = self.path / IDENTITY_FILE
        if not path.exists():
            return None
        return msgspec.json.decode(path.read_bytes(), type=Identity)

    def save(self, identity: Identity) -> None:
        self._write(IDENTITY_FILE, msgspec.json.encode(identity))

    def node_secret_key(self, identity: Identity) -> bytes:
        """The NSK. A rotation killed between saving the new identity and promoting the new key
        left an NSK sealed to ``node.key.next``: that key is promoted here."""
        try:
            return open_node_secret_key(identity.sealed_node_secret_key, self.key())
        except ContractError:
            if not (self.path / NEXT_KEY_FILE).exists():
                raise
        nsk = open_node_secret_key(identity.sealed_node_secret_key, self.next_key())
        self.promote_next_key()
        return nsk
