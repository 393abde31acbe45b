"""Webhook rules that need no server: the signature against the Standard Webhooks example, event
type patterns, the retry schedule and the check of a target URL."""

from __future__ import annotations

import random
import time

import msgspec
import pytest

from ctrlplane.outbound import BlockedDestination, OutboundPolicy, check_target, redacted
from ctrlplane.settings import Settings
from ctrlplane.webhooks import signing
from ctrlplane.webhooks.delivery import Attempt, backoff, post
from ctrlplane.webhooks.service import matches
from tests.webhooks.receiver import VerificationError, verify


def test_signature_matches_the_standard_webhooks_example() -> None:
    # The example of the Standard Webhooks reference libraries (secret, id, timestamp, payload).
    signature = signing.sign(
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}'
    )
    assert signature == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_headers_carry_one_signature_per_secret_and_each_verifies() -> None:
    old, new = signing.new_secret(), signing.new_secret()
    assert old.startswith("whsec_") and len(signing.secret_key(old)) == signing.SECRET_BYTES
    now = int(time.time())
    headers = signing.headers([new, old], "msg_1", now, b'{"type":"x"}')
    assert headers["webhook-id"] == "msg_1" and headers["webhook-timestamp"] == str(now)
    assert len(headers["webhook-signature"].split(" ")) == 2
    assert verify(new, headers, b'{"type":"x"}') == {"type": "x"}
    assert verify(old, headers, b'{"type":"x"}') == {"type": "x"}
    with pytest.raises(VerificationError):
        verify(signing.new_secret(), headers, b'{"type":"x"}')
    with pytest.raises(VerificationError):
        verify(new, headers, b'{"type":"y"}')
    stale = signing.headers([new], "msg_1", now - 3600, b"{}")
    with pytest.raises(VerificationError):
        verify(new, stale, b"{}")


@pytest.mark.parametrize(
    ("patterns", "event_type", "wanted"),
    [
        (["*"], "deploy.succeeded", True),
        (["deploy.*"], "deploy.succeeded", True),
        (["deploy.*"], "deployment.created", False),
        (["deploy.*"], "deploy", False),
        (["instance.state_changed"], "instance.state_changed", True),
        (["instance.state_changed"], "instance.restarted", False),
        (["health.*", "deploy.failed"], "deploy.failed", True),
    ],
)
def test_event_type_patterns(patterns: list[str], event_type: str, wanted: bool) -> None:
    assert matches(patterns, event_type) is wanted


def test_backoff_doubles_up_to_the_cap_with_jitter() -> None:
    settings = msgspec.structs.replace(Settings(), webhook_retry_base_seconds=5, webhook_retry_max_seconds=60)
    rng = random.Random(7)
    for attempts, full in [(1, 5), (2, 10), (3, 20), (4, 40), (5, 60), (12, 60)]:
        delays = [backoff(settings, attempts, rng) for _ in range(200)]
        assert full * 0.5 <= min(delays) and max(delays) <= full
        assert max(delays) - min(delays) > full * 0.3, "jittered"


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/x",
        "http://10.0.0.1/",
        "http://[::ffff:169.254.169.254]/",
        "http://metadata.test/",
        "gopher://x/",
    ],
)
def test_a_target_on_a_refused_address_is_refused(url: str) -> None:
    policy = OutboundPolicy(resolver=lambda host, port: ["169.254.169.254"])
    with pytest.raises(BlockedDestination):
        check_target(policy, url)


def test_a_target_allowed_by_cidr_or_not_resolvable_yet_is_accepted() -> None:
    check_target(OutboundPolicy(["127.0.0.0/8"]), "http://127.0.0.1:9/hook")

    def unresolvable(host: str, port: int) -> list[str]:
        raise OSError("no such name")

    check_target(OutboundPolicy(resolver=unresolvable), "https://hooks.example.invalid/x")
    check_target(OutboundPolicy(resolver=lambda host, port: ["93.184.216.34"]), "https://hooks.example.com/x")


def test_a_delivery_to_an_address_the_guard_refuses_is_never_connected() -> None:
    attempt = Attempt(
        delivery_id="whd_x", url="http://127.0.0.1:9/hook", message_id="m", body=b"{}", secrets=["whsec_AA=="]
    )
    outcome = post(OutboundPolicy().session(), attempt, timeout=2, max_bytes=1024)
    assert outcome.status is None and not outcome.ok
    assert outcome.error is not None and "refused by the outbound guard" in outcome.error


def test_urls_are_recorded_without_query_or_fragment() -> None:
    assert redacted("https://h.example.com:8443/in?token=s3cret#x") == "https://h.example.com:8443/in"
    assert redacted("http://[::1]:9/hooks?k=1") == "http://[::1]:9/hooks"
