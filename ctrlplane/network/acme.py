"""Talking to an ACME CA (RFC 8555) with the ``acme`` library, HTTP-01 challenges only.

Why HTTP-01: a domain that carries traffic already points at the router, so the router can answer
``/.well-known/acme-challenge/<token>`` for it (the answer is a route in Caddy's configuration,
derived from the certificate row like everything else) and no DNS provider's API is needed. DNS-01
would need write access to every tenant's DNS zone on every renewal; it is the only way to wildcard
certificates, which ctrlplane does not issue.

Everything here blocks (the library uses ``requests``); callers run it in a worker thread. Errors
come out as ``AcmeFailure`` carrying the CA's own explanation. Every connection to the CA, to the
directory and to each URL it hands back, goes through the outbound guard (``ctrlplane.outbound``):
a CA, or a directory URL, that points at a private or metadata address is refused.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any, cast

import requests
from acme import challenges, client, crypto_util, errors, messages
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from josepy.jwk import JWKRSA

from ctrlplane.outbound import OutboundPolicy, blocked_cause, guard

USER_AGENT = "ctrlplane"


class AcmeFailure(Exception):
    """The CA refused, or could not be reached; ``str()`` says why in the CA's words."""


@dataclass(frozen=True)
class IssuedCertificate:
    chain_pem: str
    key_pem: bytes
    issuer: str
    serial: str
    not_before: datetime.datetime
    not_after: datetime.datetime


@dataclass
class PendingOrder:
    order: messages.OrderResource
    challenge: messages.ChallengeBody
    response: challenges.HTTP01Response
    token: str
    validation: str
    key_pem: bytes
    authorized: bool = False
    """the CA reused an authorization that is valid already (a renewal): nothing to answer"""


def new_account_key() -> bytes:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def new_certificate_key() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def describe(exc: BaseException) -> str:
    """The CA's reason for a failure, as precisely as the library exposes it."""
    if isinstance(exc, errors.ValidationError):
        reasons = []
        for authzr in exc.failed_authzrs:
            for challenge in authzr.body.challenges:
                if challenge.error is not None:
                    reasons.append(f"{authzr.body.identifier.value}: {challenge.error.detail or challenge.error}")
        return "the CA could not validate the challenge: " + ("; ".join(reasons) or str(exc))
    if isinstance(exc, errors.IssuanceError):
        return f"the CA refused to issue: {exc.error.detail or exc.error}"
    if isinstance(exc, messages.Error):
        return f"the CA refused: {exc.detail or exc.typ}" + (f" ({exc.typ})" if exc.detail and exc.typ else "")
    if isinstance(exc, errors.TimeoutError):
        return "the CA did not finish the order in time"
    if (blocked := blocked_cause(exc)) is not None:
        return f"the ACME CA's address is refused by the outbound policy: {blocked}"
    if isinstance(exc, requests.RequestException):
        return f"cannot reach the ACME CA: {exc}"
    return f"{type(exc).__name__}: {exc}"


class AcmeSession:
    """One ACME directory with one account key; ``registration`` is the account once registered."""

    def __init__(
        self,
        directory_url: str,
        account_key_pem: bytes,
        *,
        registration: dict[str, Any] | None,
        ca_bundle: str | None,
        timeout: float,
        policy: OutboundPolicy,
    ) -> None:
        private = serialization.load_pem_private_key(account_key_pem, password=None)
        self.key = JWKRSA(key=cast(rsa.RSAPrivateKey, private))
        account = messages.RegistrationResource.from_json(registration) if registration else None
        self.net = client.ClientNetwork(self.key, account=account, user_agent=USER_AGENT, timeout=int(timeout))
        self.net.session.trust_env = False
        guard(self.net.session, policy)
        if ca_bundle:
            self.net.verify_ssl = cast(Any, ca_bundle)
        self.timeout = timeout
        try:
            directory = client.ClientV2.get_directory(directory_url, self.net)
        except Exception as exc:
            raise AcmeFailure(describe(exc)) from exc
        self.client = client.ClientV2(directory, self.net)

    def register(self, email: str | None) -> dict[str, Any]:
        """Create the account (terms of service agreed) and return it for storage."""
        try:
            registration = self.client.new_account(
                messages.NewRegistration.from_data(email=email, terms_of_service_agreed=True)
            )
        except Exception as exc:
            raise AcmeFailure(describe(exc)) from exc
        self.net.account = registration
        return cast(dict[str, Any], registration.to_json())

    def order(self, hostname: str) -> PendingOrder:
        """Open an order for ``hostname`` with a new key; its HTTP-01 challenge is to be served next."""
        key_pem = new_certificate_key()
        csr = crypto_util.make_csr(key_pem, [hostname])
        try:
            order = self.client.new_order(csr)
        except Exception as exc:
            raise AcmeFailure(describe(exc)) from exc
        for authorization in order.authorizations:
            for challenge in authorization.body.challenges:
                if isinstance(challenge.chall, challenges.HTTP01):
                    response, validation = challenge.response_and_validation(self.key)
                    return PendingOrder(
                        order=order,
                        challenge=challenge,
                        response=response,
                        token=challenge.chall.encode("token"),
                        validation=validation,
                        key_pem=key_pem,
                        authorized=authorization.body.status == messages.STATUS_VALID,
                    )
        raise AcmeFailure("the CA offered no http-01 challenge for " + hostname)

    def finish(self, pending: PendingOrder) -> IssuedCertificate:
        """Tell the CA the challenge is ready, wait for validation and issuance."""
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=self.timeout)
        try:
            if not pending.authorized:  # a valid challenge cannot be answered again
                self.client.answer_challenge(pending.challenge, pending.response)
            order = self.client.poll_and_finalize(pending.order, deadline=deadline)
        except Exception as exc:
            raise AcmeFailure(describe(exc)) from exc
        chain = order.fullchain_pem
        if not chain:
            raise AcmeFailure("the CA finished the order without a certificate")
        leaf = x509.load_pem_x509_certificates(chain.encode())[0]
        return IssuedCertificate(
            chain_pem=chain,
            key_pem=pending.key_pem,
            issuer=leaf.issuer.rfc4514_string(),
            serial=format(leaf.serial_number, "x"),
            not_before=leaf.not_valid_before_utc,
            not_after=leaf.not_valid_after_utc,
        )
