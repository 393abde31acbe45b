from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from ctrlplane.settings import Settings
from tests.webhooks.receiver import Receiver, serve


@pytest.fixture
def settings(settings: Settings) -> Settings:
    """Loopback receivers allowed, and retries fast enough for a test."""
    return msgspec.structs.replace(
        settings,
        outbound_allow_cidrs=("127.0.0.0/8",),
        webhook_timeout_seconds=3.0,
        webhook_retry_base_seconds=0.2,
        webhook_retry_max_seconds=1.0,
        webhook_retry_period_seconds=2.5,
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    server = serve(found)
    yield found
    server.shutdown()
    server.server_close()
