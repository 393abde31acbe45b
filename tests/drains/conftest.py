from __future__ import annotations

from datetime import UTC, datetime

import msgspec
import pytest

from ctrlplane.settings import Settings
from tests.fakes import FakeProvider
from tests.webhooks.conftest import receiver  # noqa: F401 - fixture


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback receivers allowed; flushes and retries fast enough for a test."""
    return msgspec.structs.replace(
        settings,
        outbound_allow_cidrs=("127.0.0.0/8",),
        log_drain_flush_seconds=0.2,
        log_drain_retries=1,
        log_drain_timeout_seconds=2.0,
    )


@pytest.fixture
def fake() -> FakeProvider:
    """Lines stamped with the real time, as an engine stamps them (the shipper resumes by time)."""
    return FakeProvider(clock=lambda: datetime.now(UTC))
