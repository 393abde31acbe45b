"""The server's own JWT signing key, and minting tokens with it (``ctrlplane token issue``)."""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from datetime import timedelta

import jwt

from ctrlplane.settings import Settings
from ctrlplane.timeutil import utc_now

ROLES = ("read", "deploy", "admin")
"""Tenant roles, each including the ones before it (here, not beside the credential providers,
so that the CLI names them without importing the server)."""


def load_signing_secret(settings: Settings) -> str | None:
    """The HMAC secret: configured, or the one generated in the data directory, or None."""
    if settings.jwt_secret:
        return settings.jwt_secret
    path = settings.signing_key_path
    return path.read_text().strip() if path.exists() else None


def ensure_signing_secret(settings: Settings) -> tuple[str, bool]:
    """The HMAC secret, generating one (mode 0600) in the data directory if none exists.

    Returns the secret and whether it was generated just now.
    """
    existing = load_signing_secret(settings)
    if existing:
        return existing, False
    settings.data_path.mkdir(parents=True, exist_ok=True)
    secret = secrets.token_urlsafe(48)
    fd = os.open(settings.signing_key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(secret + "\n")
    return secret, True


def issue_token(
    settings: Settings,
    *,
    subject: str,
    tenant_id: str | None,
    roles: Sequence[str],
    ttl: timedelta,
) -> str:
    """A signed token; without ``tenant_id`` a system-admin token (the explicit ``system_admin``
    claim). Longer than ``CTRLPLANE_JWT_MAX_TTL`` is refused here, as the server would refuse it."""
    if ttl.total_seconds() > settings.jwt_max_ttl_seconds:
        raise ValueError(f"a token lives at most {settings.jwt_max_ttl_seconds:.0f} s (CTRLPLANE_JWT_MAX_TTL)")
    now = utc_now()
    claims: dict[str, object] = {"sub": subject, "iat": now, "nbf": now, "exp": now + ttl, "roles": list(roles)}
    if tenant_id is not None:
        claims["tenant_id"] = tenant_id
    else:
        claims["system_admin"] = True
    if settings.jwt_issuer:
        claims["iss"] = settings.jwt_issuer
    if settings.jwt_audience:
        claims["aud"] = settings.jwt_audience
    hmac = [a for a in settings.jwt_algorithms if a.startswith("HS")]
    if hmac:
        secret, _ = ensure_signing_secret(settings)
        return jwt.encode(claims, secret, algorithm=hmac[0])
    if not settings.jwt_private_key:
        raise RuntimeError("the server accepts only asymmetric tokens; set CTRLPLANE_JWT_PRIVATE_KEY to mint them here")
    return jwt.encode(claims, settings.jwt_private_key, algorithm=settings.jwt_algorithms[0])
