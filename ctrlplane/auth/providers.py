"""Who is calling: the ``AuthProvider`` contract and the two providers that ship (JWT and API keys).

A provider turns a bearer token into an ``Authenticated`` (the ``Principal``, and the tenant's
standing when the provider read it anyway) or raises ``Unauthenticated``. It is given the request's
database session, so a key lookup is one statement in the request's own session, not a session of
its own. The ``Authenticator`` asks each configured provider in turn whether the token has its
shape (``accepts``); the first that does decides. API keys start with ``cpk_``; anything else is a
JWT.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal, Protocol, TypeVar

import anyio
import jwt
import msgspec
import requests
import structlog
from sqlalchemy import bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.auth.models import ApiKey
from ctrlplane.auth.tokens import ROLES
from ctrlplane.db import Database
from ctrlplane.errors import Unauthenticated
from ctrlplane.ids import TenantId
from ctrlplane.outbound import BlockedDestination, OutboundPolicy, fetch_json
from ctrlplane.settings import Settings
from ctrlplane.tenants.models import Tenant
from ctrlplane.timeutil import utc_now

log = structlog.get_logger("ctrlplane.auth")


API_KEY_PREFIX = "cpk_"

PrincipalKind = Literal["user", "api_key", "system"]


class Principal(msgspec.Struct, frozen=True):
    subject: str
    kind: PrincipalKind
    tenant_id: TenantId | None
    roles: frozenset[str]
    key_id: str | None = None
    expires_at: datetime | None = None
    system_admin: bool = False
    """Only a JWT with the explicit claim ``"system_admin": true`` (and no ``tenant_id``) sets it."""

    @property
    def is_system_admin(self) -> bool:
        return self.system_admin and self.tenant_id is None and "admin" in self.roles

    def has_role(self, required: str) -> bool:
        if self.is_system_admin:
            return True
        rank = _RANK.get(required)
        if rank is None:
            raise ValueError(f"{required!r} is not a role")
        return any(_RANK.get(role, -1) >= rank for role in self.roles)

    def grantable(self, roles: Sequence[str]) -> bool:
        return all(self.has_role(role) for role in roles)


_RANK = {role: rank for rank, role in enumerate(ROLES)}

ANONYMOUS = Principal(subject="anonymous", kind="user", tenant_id=None, roles=frozenset())


class TenantStanding(msgspec.Struct, frozen=True):
    """What the request boundary needs of the caller's tenant: may it act, and its plan's limits."""

    status: str
    plan: str


class Authenticated(msgspec.Struct, frozen=True):
    principal: Principal
    tenant: TenantStanding | None = None
    """The tenant's standing, when the provider read it in the same statement (API keys); None
    leaves it to the boundary (``tenant_standing``)."""
    confirm: Callable[[], Awaitable[None]] | None = None
    """What must still pass before anything is answered to this caller, raising ``Unauthenticated``
    if not: a cached API key's check behind the row cache's barrier (PostgreSQL). ``Authenticator``
    awaits it unless its caller defers it (a read, which runs its handler meanwhile)."""


TENANT_STANDING = select(Tenant.status, Tenant.plan).where(Tenant.id == bindparam("tenant_id"))
"""Built once and executed with ``{"tenant_id": ...}``: building a statement per request cost
about as much as running it (tests/profile_request.py)."""


class AuthProvider(Protocol):
    """Turns a bearer token into an Authenticated principal.

    ``accepts`` looks only at the token's shape and must not raise; ``authenticate`` verifies it
    completely (reading, if it must, through the request's ``session``, in autocommit and
    read-only) and raises ``Unauthenticated`` with a reason that never repeats the token.
    """

    name: str

    def accepts(self, token: str) -> bool: ...

    async def authenticate(self, token: str, session: AsyncSession) -> Authenticated: ...


def hash_api_key(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


K = TypeVar("K")
V = TypeVar("V")


def remember(memory: dict[K, V], key: K, value: V, *, limit: int) -> V:
    """``memory[key] = value`` in a dict kept under ``limit`` entries, emptied when full (what these
    dicts hold is cheap to work out or to lose); ``value``."""
    if len(memory) >= limit:
        memory.clear()
    memory[key] = value
    return value


class GuardedJWKClient(jwt.PyJWKClient):
    """PyJWT's JWKS client, fetching only where the outbound policy allows (``outbound.py``)."""

    def __init__(self, uri: str, policy: OutboundPolicy) -> None:
        super().__init__(uri, cache_keys=True)
        self.policy = policy

    def fetch_data(self) -> Any:
        """PyJWT's fetch, but connecting only to the address the policy vetted (no second lookup)."""
        try:
            document = fetch_json(self.policy, self.uri, headers=self.headers, timeout=self.timeout)
        except BlockedDestination as exc:
            log.warning("jwks_url_refused", url=self.uri, reason=str(exc))
            raise jwt.PyJWKClientConnectionError(
                "JWKS URL refused by the outbound policy (see the server log)"
            ) from exc
        except (requests.RequestException, ValueError) as exc:
            raise jwt.PyJWKClientConnectionError(f"cannot fetch the JWKS: {exc}") from exc
        if not isinstance(document, dict):
            raise jwt.PyJWKClientError("The JWKS endpoint did not return a JSON object")
        if self.jwk_set_cache is not None:
            self.jwk_set_cache.put(document)
        return document


class JWTProvider:
    """HS256/384/512 with a shared secret, RS/ES with a PEM public key or a JWKS URL.

    Only algorithms in ``CTRLPLANE_JWT_ALGORITHMS`` are accepted; the key is chosen by the algorithm
    family the server configured, never by what the token claims, so an HS token signed with the
    RSA public key (key confusion) and ``alg: none`` both fail.
    """

    name = "jwt"

    VERIFIED_CACHE_SIZE = 4096
    VERIFIED_CACHE_SECONDS = 60.0

    def __init__(self, settings: Settings, *, secret: str | None, clock: Callable[[], float] = time.time) -> None:
        self._verified: dict[str, tuple[float, Principal]] = {}
        """Tokens this process verified: token -> (trusted until, principal). Verification is a
        pure function of the token and the configured keys, so a repeat of a token (a client's
        every request) skips the signature check until the earlier of its ``exp`` and a minute
        (a JWKS key withdrawn stops being honoured within that minute, as PyJWKClient's own key
        cache already allows)."""
        self._clock = clock
        self._algorithms = list(settings.jwt_algorithms)
        self._secret = secret
        self._public_key = settings.jwt_public_key
        self._issuer = settings.jwt_issuer
        self._audience = settings.jwt_audience
        self._leeway = settings.jwt_leeway_seconds
        self._max_ttl = settings.jwt_max_ttl_seconds
        self._jwks = (
            GuardedJWKClient(settings.jwt_jwks_url, OutboundPolicy(settings.outbound_allow_cidrs))
            if settings.jwt_jwks_url
            else None
        )

    def accepts(self, token: str) -> bool:
        return token.count(".") == 2

    async def authenticate(self, token: str, session: AsyncSession) -> Authenticated:
        now = self._clock()
        cached = self._verified.get(token)
        if cached is not None and now < cached[0]:
            return Authenticated(cached[1])
        principal = await self.verify(token)
        if principal.expires_at is not None:
            until = min(principal.expires_at.timestamp(), now + self.VERIFIED_CACHE_SECONDS)
            remember(self._verified, token, (until, principal), limit=self.VERIFIED_CACHE_SIZE)
        return Authenticated(principal)

    async def verify(self, token: str) -> Principal:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed token") from exc
        algorithm = header.get("alg")
        if algorithm not in self._algorithms:  # the message never repeats header values: attacker input
            raise Unauthenticated("token algorithm is not accepted")
        key = await self._key_for(str(algorithm), token)
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key=key,
                algorithms=[algorithm],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options={"require": ["exp", "iat", "sub"], "verify_aud": self._audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.ImmatureSignatureError as exc:
            raise Unauthenticated("token not yet valid") from exc
        except jwt.InvalidAudienceError as exc:
            raise Unauthenticated("token audience is not accepted") from exc
        except jwt.InvalidIssuerError as exc:
            raise Unauthenticated("token issuer is not accepted") from exc
        except jwt.MissingRequiredClaimError as exc:
            raise Unauthenticated(f"token lacks the {exc.claim!r} claim") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("token signature or claims are invalid") from exc
        lifetime = claims["exp"] - claims["iat"]
        if not isinstance(lifetime, int | float) or lifetime > self._max_ttl:
            raise Unauthenticated(
                f"token lifetime (exp - iat) is longer than this server accepts ({self._max_ttl:.0f} s)"
            )
        return _principal_from_claims(claims)

    async def _key_for(self, algorithm: str, token: str) -> Any:
        if algorithm.startswith("HS"):
            if not self._secret:
                raise Unauthenticated("HMAC tokens are not accepted by this server")
            return self._secret
        if self._public_key:
            return self._public_key
        if self._jwks is not None:
            jwks = self._jwks
            try:
                signing_key = await anyio.to_thread.run_sync(jwks.get_signing_key_from_jwt, token)
            except jwt.PyJWKClientConnectionError as exc:  # the server's own words about its JWKS URL
                raise Unauthenticated(f"no JWKS key for this token: {exc}") from exc
            except jwt.PyJWKClientError as exc:  # its message repeats the token's kid: attacker input
                raise Unauthenticated("no JWKS key matches this token") from exc
            return signing_key.key
        raise Unauthenticated("asymmetric tokens are not accepted by this server")


def _principal_from_claims(claims: dict[str, Any]) -> Principal:
    subject = claims.get("sub")
    if not isinstance(subject, str) or not subject:
        raise Unauthenticated("token subject must be a non-empty string")
    raw_roles = claims.get("roles", [])
    if isinstance(raw_roles, str):
        raw_roles = raw_roles.split()
    if not isinstance(raw_roles, list) or not all(isinstance(r, str) for r in raw_roles):
        raise Unauthenticated("token roles must be a list of strings")
    tenant_id = claims.get("tenant_id")
    if tenant_id is not None and (not isinstance(tenant_id, str) or not tenant_id):
        raise Unauthenticated("token tenant_id must be a string")
    roles = frozenset(raw_roles)
    system_admin = claims.get("system_admin", False)
    if not isinstance(system_admin, bool):
        raise Unauthenticated("token system_admin must be true or false")
    if system_admin and (tenant_id is not None or "admin" not in roles):
        raise Unauthenticated("a system_admin token carries the admin role and no tenant_id")
    if tenant_id is None and not system_admin:
        raise Unauthenticated("a token names a tenant_id, or is a system-admin token (system_admin: true)")
    try:
        expires_at = datetime.fromtimestamp(claims["exp"], tz=UTC)
    except (OverflowError, OSError, ValueError, TypeError):
        raise Unauthenticated("token exp is out of range") from None
    return Principal(
        subject=subject,
        kind="user",
        tenant_id=TenantId(tenant_id) if tenant_id else None,
        roles=roles,
        expires_at=expires_at,
        system_admin=system_admin,
    )


class CachedKey(msgspec.Struct, frozen=True):
    """What authentication needs of an API key, as the row cache keeps it."""

    id: str
    tenant_id: str
    roles: frozenset[str]
    expires_at: datetime | None
    last_used_at: datetime | None
    revoked: bool
    principal: Principal
    """Who the key authenticates, built once with the entry."""


DIGESTS_KEPT = 10_000
"""Tokens whose digest (and keys whose last touch) an ``APIKeyProvider`` remembers (all forgotten
when it is full)."""


class APIKeyProvider:
    """Keys created through ``POST /v1/keys``; revoked or expired keys stop working at once.

    A key is read from the row cache when it holds it (``rowcache.py``; the digest names the key,
    the key's row is invalidated by the database on every change, revocation included), but it is
    trusted only after ``barrier`` (PostgreSQL): the cache has then applied every change committed
    anywhere before this request began, and the entry must not have been invalidated since it was
    read (else the key is read again), so a key revoked on another replica is refused here on the
    next request. That check is the result's ``confirm``: a write awaits it before anything else,
    a read runs its handler meanwhile and awaits it before its answer leaves (``UnitOfWork``), so
    the barrier's round trip overlaps the handler. On a miss, the key and its tenant's standing
    are read in one statement and cached.

    ``last_used_at`` is written at most once per ``CTRLPLANE_API_KEY_TOUCH_SECONDS`` per key and
    replica, so a busy CI key does not turn every read into a write (each write invalidates the
    cached key), nor do the requests in flight when the touch falls due each write it.
    """

    name = "api_key"

    def __init__(self, settings: Settings, db: Database) -> None:
        self._db = db
        self._touch_every = timedelta(seconds=settings.api_key_touch_seconds)
        self._digests: dict[str, str] = {}
        """Token -> its SHA-256 digest, which a busy key's every request would compute again."""
        self._touched: dict[str, datetime] = {}
        """Key id -> when this replica last wrote its ``last_used_at``: the requests in flight when
        a touch falls due all see the cached, stale time, and one of them writes."""

    def accepts(self, token: str) -> bool:
        return token.startswith(API_KEY_PREFIX)

    def _digest(self, token: str) -> str:
        digest = self._digests.get(token)
        return digest if digest is not None else remember(self._digests, token, hash_api_key(token), limit=DIGESTS_KEPT)

    def _touch_due(self, key: CachedKey, now: datetime) -> bool:
        if key.last_used_at is not None and now - key.last_used_at < self._touch_every:
            return False
        touched = self._touched.get(key.id)
        if touched is not None and now - touched < self._touch_every:
            return False
        remember(self._touched, key.id, now, limit=DIGESTS_KEPT)
        return True

    def _cached(self, digest: str) -> tuple[CachedKey | None, int]:
        """The key the row cache holds for ``digest``, and the ticket taken before reading it."""
        rows = self._db.rows
        if not rows.live:
            return None, 0
        ticket = rows.ticket()
        key_id = rows.get("api_key_digests", digest)
        return (rows.get("api_keys", key_id) if key_id is not None else None), ticket

    async def _load(self, session: AsyncSession, digest: str) -> tuple[CachedKey, TenantStanding]:
        """The key and its tenant's standing from the database (one statement), cached."""
        rows = self._db.rows
        ticket = rows.ticket()
        statement = (
            select(ApiKey, Tenant.status, Tenant.plan)
            .outerjoin(Tenant, Tenant.id == ApiKey.tenant_id)
            .where(ApiKey.secret_hash == digest)
        )
        row = (await session.execute(statement)).one_or_none()
        if row is None:
            raise Unauthenticated("unknown API key")
        found, status, plan = row
        if status is None:
            raise Unauthenticated("the tenant of this token no longer exists")
        roles = frozenset(found.roles)
        key = CachedKey(
            id=found.id,
            tenant_id=found.tenant_id,
            roles=roles,
            expires_at=found.expires_at,
            last_used_at=found.last_used_at,
            revoked=found.revoked_at is not None,
            principal=Principal(
                subject=found.id,
                kind="api_key",
                tenant_id=TenantId(found.tenant_id),
                roles=roles,
                key_id=found.id,
                expires_at=found.expires_at,
            ),
        )
        rows.put("api_key_digests", digest, ticket, key.id)
        rows.put("api_keys", key.id, ticket, key)
        return key, TenantStanding(status, plan)

    @staticmethod
    def _check(key: CachedKey, now: datetime) -> None:
        if key.revoked:
            raise Unauthenticated("API key revoked")
        if key.expires_at is not None and key.expires_at <= now:
            raise Unauthenticated("API key expired")

    async def _accept(self, key: CachedKey) -> None:
        """Refuse a revoked or expired key; note its use when the touch is due."""
        now = utc_now()
        self._check(key, now)
        if self._touch_due(key, now):
            async with self._db.write() as writer, writer.begin():
                await writer.execute(update(ApiKey).where(ApiKey.id == key.id).values(last_used_at=now))

    async def _confirm(self, digest: str, key: CachedKey, ticket: int, barrier: asyncio.Event | None) -> None:
        """Accept a key read from the row cache once the barrier asked for with the read has applied
        every change committed anywhere before the request began: the entry still unchanged since
        it was read, or else the key as the database has it now."""
        rows = self._db.rows
        if barrier is not None:
            await barrier.wait()
        if rows.changed_since("api_keys", key.id, ticket):
            async with self._db.query() as session:
                key, _ = await self._load(session, digest)
        await self._accept(key)

    async def authenticate(self, token: str, session: AsyncSession) -> Authenticated:
        digest = self._digest(token)
        key, ticket = self._cached(digest)
        if key is None:
            key, standing = await self._load(session, digest)
            await self._accept(key)
            return Authenticated(key.principal, standing)
        barrier = self._db.rows.start_barrier()  # asked for now, waited for once the answer is ready
        if barrier is None:  # one process (SQLite): its invalidations are applied already
            await self._accept(key)
            return Authenticated(key.principal)
        self._check(key, utc_now())  # what the cache already says is refused at once
        return Authenticated(key.principal, confirm=partial(self._confirm, digest, key, ticket, barrier))


class Authenticator:
    def __init__(self, providers: Sequence[AuthProvider]) -> None:
        self.providers = list(providers)

    async def authenticate(
        self, authorization: str | None, session: AsyncSession, *, defer: bool = False
    ) -> Authenticated:
        """The caller, or ``Unauthenticated``. With ``defer`` the result's ``confirm`` is left to the
        caller, who must await it before its answer leaves; without, it has passed."""
        if not authorization:
            raise Unauthenticated("missing Authorization: Bearer <token> header")
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise Unauthenticated("Authorization header must be 'Bearer <token>'")
        for provider in self.providers:
            if provider.accepts(token):
                authenticated = await provider.authenticate(token, session)
                if authenticated.confirm is None or defer:
                    return authenticated
                await authenticated.confirm()
                return Authenticated(authenticated.principal, authenticated.tenant)
        raise Unauthenticated("token format not recognised")
