"""The outbound guard through the API: a JWKS URL on a refused address is never fetched, so its
tokens are refused; allowing the network by configuration makes the same setup work."""

from __future__ import annotations

import jwt
import msgspec
from cryptography.hazmat.primitives.asymmetric import rsa

from ctrlplane.db import Database
from ctrlplane.settings import Settings
from tests.api.test_jwt import (  # noqa: F401 - fixtures
    JWKSServer,
    assert_accepted,
    assert_unauthenticated,
    claims,
    client_for,
    jwks_key,
    jwks_server,
    whoami,
)


def jwks_on(settings: Settings, url: str, allow: tuple[str, ...] = ()) -> Settings:
    return msgspec.structs.replace(
        settings, jwt_algorithms=("RS256",), jwt_secret=None, jwt_jwks_url=url, outbound_allow_cidrs=allow
    )


async def test_a_jwks_url_on_loopback_is_not_fetched_unless_allowed(
    settings: Settings, jwks_server: JWKSServer, jwks_key: rsa.RSAPrivateKey, db: Database
) -> None:
    token = jwt.encode(claims(), jwks_key, algorithm="RS256", headers={"kid": "key-1"})
    async with client_for(jwks_on(settings, jwks_server.url), db) as client:
        refused = await whoami(client, token)
    assert_unauthenticated(refused)
    assert "JWKS URL refused" in refused.json()["message"]
    assert jwks_server.requests == 0

    async with client_for(jwks_on(settings, jwks_server.url, ("127.0.0.0/8",)), db) as client:
        assert_accepted(await whoami(client, token))
    assert jwks_server.requests == 1


async def test_a_jwks_name_resolving_to_loopback_is_refused_too(
    settings: Settings, jwks_server: JWKSServer, jwks_key: rsa.RSAPrivateKey, db: Database
) -> None:
    by_name = jwks_server.url.replace("127.0.0.1", "localhost")
    token = jwt.encode(claims(), jwks_key, algorithm="RS256", headers={"kid": "key-1"})
    async with client_for(jwks_on(settings, by_name), db) as client:
        assert_unauthenticated(await whoami(client, token))
    assert jwks_server.requests == 0
