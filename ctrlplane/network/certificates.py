"""The certificate issuer: obtains and renews domains' certificates in the background.

A certificate row is **due** when it is ``pending``, ``renewing`` or ``failed`` and its
``next_attempt_at`` has come, or ``issued`` and within ``CTRLPLANE_ACME_RENEW_BEFORE_DAYS`` (30) of
its ``not_after`` (it becomes ``renewing``). Only certificates of verified domains are due. The
issuer claims one due row with a lease (``FOR UPDATE SKIP LOCKED``, so several servers never work
on one), then, with no transaction open:

1. loads (or registers, once per directory URL) this installation's ACME account;
2. opens an order with a fresh key and CSR for the hostname and takes its HTTP-01 challenge;
3. writes the challenge's token and answer onto the row and pushes the router, which then answers
   ``/.well-known/acme-challenge/<token>`` for that hostname;
4. tells the CA to validate and waits for the certificate.

Success stores the chain, the key sealed (``keys.seal_private_key``), issuer, serial and validity,
and the router loads it for HTTPS. A failure stores the CA's reason in ``error``, keeps any older
certificate serving, and schedules a retry after ``CTRLPLANE_ACME_RETRY_BASE_SECONDS`` * 2^(attempts-1),
capped at 6 hours. The challenge is cleared either way.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import structlog
from sqlalchemy import and_, or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.db import Database
from ctrlplane.events.service import append as append_event
from ctrlplane.ids import new_id
from ctrlplane.network.acme import AcmeFailure, AcmeSession, IssuedCertificate, new_account_key
from ctrlplane.network.keys import open_private_key, seal_private_key
from ctrlplane.network.models import AcmeAccount, Certificate, Domain
from ctrlplane.network.router import Router
from ctrlplane.outbound import OutboundPolicy
from ctrlplane.settings import Settings
from ctrlplane.timeutil import rfc3339, utc_now

log = structlog.get_logger("ctrlplane.certificates")

MAX_BACKOFF = timedelta(hours=6)


def retry_delay(settings: Settings, attempts: int) -> timedelta:
    return min(MAX_BACKOFF, timedelta(seconds=settings.acme_retry_base_seconds * 2 ** max(0, attempts - 1)))


class CertificateIssuer:
    def __init__(self, settings: Settings, db: Database, router: Router) -> None:
        self.settings = settings
        self.db = db
        self.router = router
        self.owner = new_id("cert").replace("cert_", "issuer_")

    READS = frozenset({Certificate.__tablename__, Domain.__tablename__})
    """The tables a claim reads (``_claim``): a commit that wrote neither cannot make one due."""

    async def run_once(self) -> bool:
        """Work on one due certificate; False when none is due."""
        claimed = await self._claim()
        if claimed is None:
            return False
        certificate_id, hostname = claimed
        try:
            issued = await self._obtain(certificate_id, hostname)
        except AcmeFailure as exc:
            await self._record_failure(certificate_id, str(exc))
        else:
            await self._record_success(certificate_id, issued)
        await self.router.sync_quietly()
        return True

    async def _claim(self) -> tuple[str, str] | None:
        now = utc_now()
        renew_by = now + timedelta(days=self.settings.acme_renew_before_days)
        due = or_(
            and_(Certificate.status.in_(("pending", "renewing", "failed")), Certificate.next_attempt_at <= now),
            and_(Certificate.status == "issued", Certificate.not_after <= renew_by),
        )
        candidates = (
            select(Certificate.id)
            .join(Domain, Domain.id == Certificate.domain_id)
            .where(
                Domain.status == "verified", due, or_(Certificate.lease_until.is_(None), Certificate.lease_until < now)
            )
        )
        async with self.db.read() as session:
            if (await session.execute(candidates.limit(1))).first() is None:
                return None
        statement = (
            select(Certificate, Domain.hostname)
            .where(Certificate.id.in_(candidates.scalar_subquery()))
            .join(Domain, Domain.id == Certificate.domain_id)
            .order_by(Certificate.next_attempt_at)
            .limit(1)
            .with_for_update(skip_locked=True, of=Certificate)
        )
        async with self.db.write() as session, session.begin():
            row = (await session.execute(statement)).first()
            if row is None:
                return None
            certificate, hostname = row
            if certificate.status == "issued":
                certificate.status = "renewing"
                certificate.attempts = 0
            certificate.attempts += 1
            certificate.next_attempt_at = now
            certificate.lease_owner = self.owner
            certificate.lease_until = now + timedelta(seconds=self.settings.acme_timeout_seconds * 2 + 60)
            certificate.updated_at = now
            log.info("certificate_claimed", certificate=certificate.id, hostname=hostname, status=certificate.status)
            return certificate.id, str(hostname)

    async def _account(self) -> AcmeSession:
        url = self.settings.acme_directory_url
        async with self.db.read() as session:
            account = await session.get(AcmeAccount, url)
            stored = (open_private_key(self.settings, account.key_sealed), account.registration) if account else None
        if stored is not None:
            key_pem, registration = stored
            return await anyio.to_thread.run_sync(self._session, key_pem, registration)
        key_pem = new_account_key()
        acme = await anyio.to_thread.run_sync(self._session, key_pem, None)
        registration = await anyio.to_thread.run_sync(acme.register, self.settings.acme_email)
        try:
            async with self.db.write() as session, session.begin():
                session.add(
                    AcmeAccount(
                        directory_url=url,
                        key_sealed=seal_private_key(self.settings, key_pem),
                        registration=registration,
                        created_at=utc_now(),
                    )
                )
        except IntegrityError:
            return await self._account()
        return acme

    def _session(self, key_pem: bytes, registration: dict[str, Any] | None) -> AcmeSession:
        return AcmeSession(
            self.settings.acme_directory_url,
            key_pem,
            registration=registration,
            ca_bundle=self.settings.acme_ca_bundle,
            timeout=self.settings.acme_timeout_seconds,
            policy=OutboundPolicy(self.settings.outbound_allow_cidrs),
        )

    async def _obtain(self, certificate_id: str, hostname: str) -> IssuedCertificate:
        acme = await self._account()
        pending = await anyio.to_thread.run_sync(acme.order, hostname)
        await self._set_challenge(certificate_id, pending.token, pending.validation)
        if self.router.enabled:
            try:
                await self.router.sync(force=True)
            except Exception as exc:
                raise AcmeFailure(f"the router could not serve the challenge: {exc}") from exc
        return await anyio.to_thread.run_sync(acme.finish, pending)

    async def _set_challenge(self, certificate_id: str, token: str | None, validation: str | None) -> None:
        async with self.db.write() as session, session.begin():
            certificate = await session.get(Certificate, certificate_id, with_for_update=True)
            if certificate is not None:
                certificate.challenge_token, certificate.challenge_validation = token, validation

    async def _record_success(self, certificate_id: str, issued: IssuedCertificate) -> None:
        async with self.db.write() as session, session.begin():
            certificate = await session.get(Certificate, certificate_id, with_for_update=True)
            if certificate is None:
                return
            certificate.status = "issued"
            certificate.chain_pem = issued.chain_pem
            certificate.key_sealed = seal_private_key(self.settings, issued.key_pem)
            certificate.issuer, certificate.serial = issued.issuer, issued.serial
            certificate.not_before, certificate.not_after = issued.not_before, issued.not_after
            certificate.error, certificate.attempts, certificate.next_attempt_at = None, 0, None
            self._release(certificate)
            await self._event(session, certificate, "certificate.issued", serial=issued.serial)
        log.info(
            "certificate_issued", certificate=certificate_id, serial=issued.serial, not_after=str(issued.not_after)
        )

    async def _record_failure(self, certificate_id: str, reason: str) -> None:
        async with self.db.write() as session, session.begin():
            certificate = await session.get(Certificate, certificate_id, with_for_update=True)
            if certificate is None:
                return
            certificate.status = "failed"
            certificate.error = reason
            retry_at = utc_now() + retry_delay(self.settings, certificate.attempts)
            certificate.next_attempt_at = retry_at
            self._release(certificate)
            await self._event(
                session,
                certificate,
                "certificate.failed",
                error=reason,
                next_attempt_at=rfc3339(retry_at),
            )
        log.warning("certificate_failed", certificate=certificate_id, reason=reason)

    @staticmethod
    async def _event(session: AsyncSession, certificate: Certificate, type: str, **data: Any) -> None:
        domain = await session.get(Domain, certificate.domain_id)
        if domain is not None:
            await append_event(
                session,
                tenant_id=domain.tenant_id,
                instance_id=domain.instance_id,
                type=type,
                data={"certificate_id": certificate.id, "domain_id": domain.id, "hostname": domain.hostname, **data},
            )

    @staticmethod
    def _release(certificate: Certificate) -> None:
        certificate.challenge_token = certificate.challenge_validation = None
        certificate.lease_owner = certificate.lease_until = None
        certificate.updated_at = utc_now()
