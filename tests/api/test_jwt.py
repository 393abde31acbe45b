"""JWT attacks against the bearer-token boundary, each refused with a JSON 401.

Every attack has a control next to it (the same server accepting the honest token) so a 401 can only
come from the attack. Tokens are built by hand where PyJWT would refuse to build them (``alg: none``,
HMAC keyed with a PEM public key, tampered segments).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import jwt
import msgspec
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from ctrlplane.auth.tokens import issue_token
from ctrlplane.db import Database
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from tests.conftest import JWT_SECRET, bearer, worker_app
from tests.fakes import FakeProvider

WHOAMI = "/v1/keys/self"
LEEWAY = 30
DROP = object()
"""A claim override that removes the claim."""


# --- building tokens by hand -------------------------------------------------------------------


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def encode_segment(value: dict[str, Any]) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def claims(**overrides: Any) -> dict[str, Any]:
    """Valid system-admin claims (no tenant, so no tenant row is needed), with overrides applied."""
    now = int(time.time())
    values: dict[str, Any] = {
        "sub": "root",
        "roles": ["admin"],
        "system_admin": True,
        "iat": now,
        "nbf": now,
        "exp": now + 3600,
    }
    for name, value in overrides.items():
        if value is DROP:
            values.pop(name, None)
        else:
            values[name] = value
    return values


def hs256(payload: dict[str, Any], key: bytes, header: dict[str, Any] | None = None) -> str:
    """An HS256 token with any key bytes (PyJWT refuses PEM-looking HMAC keys, an attacker does not)."""
    signing_input = f"{encode_segment(header or {'alg': 'HS256', 'typ': 'JWT'})}.{encode_segment(payload)}"
    signature = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64url(signature)}"


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )


# --- apps with their own settings --------------------------------------------------------------


@asynccontextmanager
async def client_for(settings: Settings, db: Database) -> AsyncIterator[httpx.AsyncClient]:
    app = worker_app(settings, db, ProviderRegistry([FakeProvider()]))
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://ctrlplane.test") as http:
        yield http


async def whoami(client: httpx.AsyncClient, token: str) -> httpx.Response:
    return await client.get(WHOAMI, headers=bearer(token))


def assert_unauthenticated(response: httpx.Response) -> None:
    assert response.status_code == 401, f"expected 401, got {response.status_code}: {response.text}"
    body = response.json()
    assert set(body) >= {"message", "code", "request_id"}, body
    assert body["code"] == "unauthenticated", body
    assert isinstance(body["message"], str) and body["message"], body
    assert body["request_id"] == response.headers["X-Request-ID"], body


def assert_accepted(response: httpx.Response, subject: str = "root") -> None:
    assert response.status_code == 200, f"expected 200, got {response.status_code}: {response.text}"
    assert response.json()["subject"] == subject


@pytest.fixture
def rsa_private() -> rsa.RSAPrivateKey:
    return rsa_key()


@pytest.fixture
def rs256_settings(settings: Settings, rsa_private: rsa.RSAPrivateKey) -> Settings:
    return msgspec.structs.replace(
        settings, jwt_algorithms=("RS256",), jwt_secret=None, jwt_public_key=public_pem(rsa_private)
    )


# --- alg: none ---------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_token_is_rejected(client: httpx.AsyncClient, alg: str) -> None:
    assert_accepted(await whoami(client, jwt.encode(claims(), JWT_SECRET, algorithm="HS256")))
    unsigned = f"{encode_segment({'alg': alg, 'typ': 'JWT'})}.{encode_segment(claims())}."
    assert_unauthenticated(await whoami(client, unsigned))


async def test_alg_none_token_with_a_leftover_signature_is_rejected(client: httpx.AsyncClient) -> None:
    honest = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
    _, payload, signature = honest.split(".")
    forged = f"{encode_segment({'alg': 'none', 'typ': 'JWT'})}.{payload}.{signature}"
    assert_unauthenticated(await whoami(client, forged))


# --- HS/RS key confusion -----------------------------------------------------------------------


@pytest.mark.parametrize("strip", [False, True], ids=["pem-as-is", "pem-stripped"])
async def test_hs256_token_signed_with_rsa_public_key_is_rejected_by_rs256_only_server(
    rs256_settings: Settings, rsa_private: rsa.RSAPrivateKey, db: Database, strip: bool
) -> None:
    pem = public_pem(rsa_private)
    forged = hs256(claims(), (pem.strip() if strip else pem).encode())
    async with client_for(rs256_settings, db) as client:
        assert_accepted(await whoami(client, jwt.encode(claims(), rsa_private, algorithm="RS256")))
        assert_unauthenticated(await whoami(client, forged))


@pytest.mark.parametrize("secret", [JWT_SECRET, None], ids=["with-hmac-secret", "without-hmac-secret"])
@pytest.mark.parametrize("strip", [False, True], ids=["pem-as-is", "pem-stripped"])
async def test_hs256_token_signed_with_rsa_public_key_is_rejected_when_hs256_is_also_accepted(
    rs256_settings: Settings, rsa_private: rsa.RSAPrivateKey, db: Database, secret: str | None, strip: bool
) -> None:
    mixed = msgspec.structs.replace(rs256_settings, jwt_algorithms=("RS256", "HS256"), jwt_secret=secret)
    pem = public_pem(rsa_private)
    forged = hs256(claims(), (pem.strip() if strip else pem).encode())
    async with client_for(mixed, db) as client:
        assert_accepted(await whoami(client, jwt.encode(claims(), rsa_private, algorithm="RS256")))
        if secret is not None:
            assert_accepted(await whoami(client, hs256(claims(), secret.encode())))
        assert_unauthenticated(await whoami(client, forged))


# --- tampering ---------------------------------------------------------------------------------


async def test_token_with_tampered_signature_is_rejected(client: httpx.AsyncClient) -> None:
    honest = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
    assert_accepted(await whoami(client, honest))
    header, payload, signature = honest.split(".")
    raw = bytearray(b64url_decode(signature))
    raw[0] ^= 0x01
    assert_unauthenticated(await whoami(client, f"{header}.{payload}.{b64url(bytes(raw))}"))


async def test_token_with_truncated_signature_is_rejected(client: httpx.AsyncClient) -> None:
    honest = jwt.encode(claims(), JWT_SECRET, algorithm="HS256")
    header, payload, signature = honest.split(".")
    assert_unauthenticated(await whoami(client, f"{header}.{payload}.{signature[:10]}"))
    assert_unauthenticated(await whoami(client, f"{header}.{payload}."))


async def test_token_with_tampered_payload_is_rejected(client: httpx.AsyncClient) -> None:
    honest = jwt.encode(claims(sub="alice", roles=["read"], tenant_id="ten_x"), JWT_SECRET, algorithm="HS256")
    header, payload, signature = honest.split(".")
    elevated = json.loads(b64url_decode(payload))
    elevated.update(sub="root", roles=["admin"])
    del elevated["tenant_id"]
    assert_unauthenticated(await whoami(client, f"{header}.{encode_segment(elevated)}.{signature}"))


async def test_token_signed_with_another_secret_is_rejected(client: httpx.AsyncClient) -> None:
    assert_unauthenticated(await whoami(client, hs256(claims(), b"another-secret-that-is-long-enough-0123456789")))


# --- audience and issuer -----------------------------------------------------------------------

AUDIENCE = "ctrlplane-api"
ISSUER = "https://issuer.ctrlplane.test"


@pytest.mark.parametrize(
    "overrides",
    [
        {"aud": "someone-else"},
        {"aud": DROP},
        {"aud": ["someone-else", "another"]},
        {"iss": "https://evil.test"},
        {"iss": DROP},
    ],
    ids=["wrong-aud", "missing-aud", "wrong-aud-list", "wrong-iss", "missing-iss"],
)
async def test_token_for_another_audience_or_issuer_is_rejected(
    settings: Settings, db: Database, overrides: dict[str, Any]
) -> None:
    strict = msgspec.structs.replace(settings, jwt_audience=AUDIENCE, jwt_issuer=ISSUER)
    token = hs256(claims(**{"aud": AUDIENCE, "iss": ISSUER, **overrides}), JWT_SECRET.encode())
    async with client_for(strict, db) as client:
        assert_unauthenticated(await whoami(client, token))


@pytest.mark.parametrize("aud", [AUDIENCE, [AUDIENCE, "other"]], ids=["aud-string", "aud-list"])
async def test_token_with_the_configured_audience_and_issuer_is_accepted(
    settings: Settings, db: Database, aud: str | list[str]
) -> None:
    strict = msgspec.structs.replace(settings, jwt_audience=AUDIENCE, jwt_issuer=ISSUER)
    async with client_for(strict, db) as client:
        assert_accepted(await whoami(client, hs256(claims(aud=aud, iss=ISSUER), JWT_SECRET.encode())))


# --- time claims -------------------------------------------------------------------------------


async def test_expired_token_is_rejected(client: httpx.AsyncClient) -> None:
    now = int(time.time())
    expired = claims(iat=now - 7200, nbf=now - 7200, exp=now - LEEWAY - 60)
    assert_unauthenticated(await whoami(client, jwt.encode(expired, JWT_SECRET, algorithm="HS256")))


async def test_token_expired_within_the_leeway_is_still_accepted(client: httpx.AsyncClient) -> None:
    now = int(time.time())
    just_expired = claims(iat=now - 600, nbf=now - 600, exp=now - LEEWAY // 3)
    assert_accepted(await whoami(client, jwt.encode(just_expired, JWT_SECRET, algorithm="HS256")))


async def test_not_yet_valid_token_is_rejected(client: httpx.AsyncClient) -> None:
    future = claims(nbf=int(time.time()) + LEEWAY + 120)
    assert_unauthenticated(await whoami(client, jwt.encode(future, JWT_SECRET, algorithm="HS256")))


@pytest.mark.parametrize("claim", ["exp", "iat", "sub"])
async def test_token_missing_a_required_claim_is_rejected(client: httpx.AsyncClient, claim: str) -> None:
    assert_unauthenticated(await whoami(client, jwt.encode(claims(**{claim: DROP}), JWT_SECRET, algorithm="HS256")))


async def test_token_with_an_empty_subject_is_rejected(client: httpx.AsyncClient) -> None:
    assert_unauthenticated(await whoami(client, hs256(claims(sub=""), JWT_SECRET.encode())))


# --- tenant binding ----------------------------------------------------------------------------


@pytest.mark.parametrize("roles", [[], ["read"], ["deploy"], "read deploy"], ids=["none", "read", "deploy", "str"])
async def test_token_without_tenant_and_without_admin_role_is_rejected(
    client: httpx.AsyncClient, roles: list[str] | str
) -> None:
    assert_unauthenticated(await whoami(client, jwt.encode(claims(roles=roles), JWT_SECRET, algorithm="HS256")))


async def test_admin_role_without_tenant_and_without_the_system_admin_claim_is_rejected(
    client: httpx.AsyncClient,
) -> None:
    refused = await whoami(client, jwt.encode(claims(system_admin=DROP), JWT_SECRET, algorithm="HS256"))
    assert_unauthenticated(refused)
    assert "system_admin" in refused.json()["message"]
    for value in ("true", 1, False):
        assert_unauthenticated(await whoami(client, jwt.encode(claims(system_admin=value), JWT_SECRET, "HS256")))


async def test_system_admin_claim_with_a_tenant_is_rejected(client: httpx.AsyncClient) -> None:
    token = jwt.encode(claims(tenant_id="ten_x"), JWT_SECRET, algorithm="HS256")
    assert_unauthenticated(await whoami(client, token))


async def test_token_living_longer_than_the_maximum_ttl_is_rejected(client: httpx.AsyncClient) -> None:
    now = int(time.time())
    day_and_a_minute = jwt.encode(claims(iat=now, nbf=now, exp=now + 86400 + 60), JWT_SECRET, algorithm="HS256")
    refused = await whoami(client, day_and_a_minute)
    assert_unauthenticated(refused)
    assert "lifetime" in refused.json()["message"]
    backdated = jwt.encode(claims(iat=now - 86400 * 30, nbf=now - 60, exp=now + 60), JWT_SECRET, algorithm="HS256")
    assert_unauthenticated(await whoami(client, backdated))
    assert_accepted(await whoami(client, jwt.encode(claims(exp=now + 86000), JWT_SECRET, algorithm="HS256")))


async def test_maximum_ttl_is_configurable(settings: Settings, db: Database) -> None:
    now = int(time.time())
    token = jwt.encode(claims(iat=now, nbf=now, exp=now + 1800), JWT_SECRET, algorithm="HS256")
    async with client_for(msgspec.structs.replace(settings, jwt_max_ttl_seconds=600.0), db) as client:
        assert_unauthenticated(await whoami(client, token))


def test_issuing_a_token_longer_than_the_maximum_ttl_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="at most"):
        issue_token(settings, subject="root", tenant_id=None, roles=["admin"], ttl=timedelta(days=2))


async def test_unauthenticated_message_never_repeats_header_values(client: httpx.AsyncClient) -> None:
    marker = "<script>kid-echo</script>"
    token = jwt.encode(claims(), JWT_SECRET, algorithm="HS256", headers={"alg": "HS256", "kid": marker})
    header, payload, _ = token.split(".")
    forged_alg = json.loads(b64url_decode(header))
    forged_alg["alg"] = marker
    response = await whoami(client, f"{encode_segment(forged_alg)}.{payload}.sig")
    assert_unauthenticated(response)
    assert "kid-echo" not in response.text


async def test_token_for_a_tenant_that_does_not_exist_is_rejected(client: httpx.AsyncClient) -> None:
    token = jwt.encode(claims(sub="alice", tenant_id="ten_doesnotexist"), JWT_SECRET, algorithm="HS256")
    assert_unauthenticated(await whoami(client, token))


# --- asymmetric keys ---------------------------------------------------------------------------


async def test_rs256_token_verified_with_pem_public_key_is_accepted(
    rs256_settings: Settings, rsa_private: rsa.RSAPrivateKey, db: Database
) -> None:
    async with client_for(rs256_settings, db) as client:
        assert_accepted(await whoami(client, jwt.encode(claims(), rsa_private, algorithm="RS256")))
        assert_unauthenticated(await whoami(client, jwt.encode(claims(), rsa_key(), algorithm="RS256")))


async def test_es256_token_verified_with_pem_public_key_is_accepted(settings: Settings, db: Database) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    es256 = msgspec.structs.replace(
        settings, jwt_algorithms=("ES256",), jwt_secret=None, jwt_public_key=public_pem(key)
    )
    async with client_for(es256, db) as client:
        assert_accepted(await whoami(client, jwt.encode(claims(), key, algorithm="ES256")))
        other = ec.generate_private_key(ec.SECP256R1())
        assert_unauthenticated(await whoami(client, jwt.encode(claims(), other, algorithm="ES256")))


async def test_rs256_token_is_rejected_by_an_es256_only_server(
    settings: Settings, rsa_private: rsa.RSAPrivateKey, db: Database
) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    es256 = msgspec.structs.replace(
        settings, jwt_algorithms=("ES256",), jwt_secret=None, jwt_public_key=public_pem(key)
    )
    async with client_for(es256, db) as client:
        assert_unauthenticated(await whoami(client, jwt.encode(claims(), rsa_private, algorithm="RS256")))


async def test_hs256_token_is_rejected_by_an_rs256_only_server_even_with_the_old_secret(
    rs256_settings: Settings, db: Database
) -> None:
    async with client_for(rs256_settings, db) as client:
        assert_unauthenticated(await whoami(client, jwt.encode(claims(), JWT_SECRET, algorithm="HS256")))


# --- JWKS --------------------------------------------------------------------------------------


class JWKSServer:
    """A JWKS document served over HTTP on 127.0.0.1 from a thread."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.requests = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.requests += 1
                if self.path != "/jwks.json":
                    self.send_error(404)
                    return
                body = json.dumps(outer.document).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}/jwks.json"

    def __enter__(self) -> JWKSServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


@pytest.fixture
def jwks_key() -> rsa.RSAPrivateKey:
    return rsa_key()


@pytest.fixture
def jwks_server(jwks_key: rsa.RSAPrivateKey, monkeypatch: pytest.MonkeyPatch) -> Iterator[JWKSServer]:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(jwks_key.public_key()))
    jwk.update(kid="key-1", use="sig", alg="RS256")
    with JWKSServer({"keys": [jwk]}) as server:
        yield server


@pytest.fixture
def jwks_settings(settings: Settings, jwks_server: JWKSServer) -> Settings:
    return msgspec.structs.replace(
        settings,
        jwt_algorithms=("RS256",),
        jwt_secret=None,
        jwt_jwks_url=jwks_server.url,
        outbound_allow_cidrs=("127.0.0.0/8",),  # the outbound guard refuses loopback unless allowed
    )


async def test_jwks_token_with_matching_kid_is_accepted(
    jwks_settings: Settings, jwks_server: JWKSServer, jwks_key: rsa.RSAPrivateKey, db: Database
) -> None:
    token = jwt.encode(claims(), jwks_key, algorithm="RS256", headers={"kid": "key-1"})
    async with client_for(jwks_settings, db) as client:
        assert_accepted(await whoami(client, token))
    assert jwks_server.requests >= 1


async def test_jwks_token_with_unknown_kid_is_rejected(
    jwks_settings: Settings, jwks_server: JWKSServer, db: Database
) -> None:
    token = jwt.encode(claims(), rsa_key(), algorithm="RS256", headers={"kid": "key-unknown<echo>"})
    async with client_for(jwks_settings, db) as client:
        refused = await whoami(client, token)
    assert_unauthenticated(refused)
    assert "key-unknown" not in refused.text and "echo" not in refused.text, "the 401 must not repeat the kid"
    assert jwks_server.requests >= 1


async def test_jwks_token_with_known_kid_but_another_key_is_rejected(
    jwks_settings: Settings, jwks_key: rsa.RSAPrivateKey, db: Database
) -> None:
    forged = jwt.encode(claims(), rsa_key(), algorithm="RS256", headers={"kid": "key-1"})
    honest = jwt.encode(claims(), jwks_key, algorithm="RS256", headers={"kid": "key-1"})
    async with client_for(jwks_settings, db) as client:
        assert_accepted(await whoami(client, honest))
        assert_unauthenticated(await whoami(client, forged))


async def test_jwks_server_rejects_hs256_token_keyed_with_the_jwk(
    jwks_settings: Settings, jwks_key: rsa.RSAPrivateKey, db: Database
) -> None:
    jwk = jwt.algorithms.RSAAlgorithm.to_jwk(jwks_key.public_key())
    forged_with_jwk = hs256(claims(), jwk.encode(), header={"alg": "HS256", "typ": "JWT", "kid": "key-1"})
    forged_with_pem = hs256(claims(), public_pem(jwks_key).encode(), header={"alg": "HS256", "kid": "key-1"})
    async with client_for(jwks_settings, db) as client:
        assert_unauthenticated(await whoami(client, forged_with_jwk))
        assert_unauthenticated(await whoami(client, forged_with_pem))


async def test_jwks_server_ignores_a_jku_header_pointing_at_the_attackers_keys(
    jwks_settings: Settings, db: Database
) -> None:
    attacker_key = rsa_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(attacker_key.public_key()))
    jwk.update(kid="key-1", use="sig", alg="RS256")
    with JWKSServer({"keys": [jwk]}) as attacker:
        forged = jwt.encode(claims(), attacker_key, algorithm="RS256", headers={"kid": "key-1", "jku": attacker.url})
        async with client_for(jwks_settings, db) as client:
            assert_unauthenticated(await whoami(client, forged))
        assert attacker.requests == 0


async def test_jwks_tokens_with_unknown_kids_do_not_refetch_the_jwks_on_every_request(
    jwks_settings: Settings, jwks_server: JWKSServer, jwks_key: rsa.RSAPrivateKey, db: Database
) -> None:
    async with client_for(jwks_settings, db) as client:
        for attempt in range(5):
            token = jwt.encode(claims(), rsa_key(), algorithm="RS256", headers={"kid": f"unknown-{attempt}"})
            assert_unauthenticated(await whoami(client, token))
        assert_accepted(
            await whoami(client, jwt.encode(claims(), jwks_key, algorithm="RS256", headers={"kid": "key-1"}))
        )
    assert 1 <= jwks_server.requests <= 2, f"{jwks_server.requests} JWKS fetches for 6 tokens"
