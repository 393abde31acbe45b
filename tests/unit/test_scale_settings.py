"""Settings of replicas and rate limits, read from the environment."""

from __future__ import annotations

import pytest

from ctrlplane.settings import PlanRateLimit, Settings, SettingsError

FREE = '{"tenant_per_minute": 60, "tenant_burst": 10, "credential_per_minute": 30, "credential_burst": 5}'


def test_rate_limits_per_plan_come_from_json() -> None:
    settings = Settings.from_env({"CTRLPLANE_RATE_LIMITS": '{"free": ' + FREE + "}"})
    assert settings.rate_limits == {
        "free": PlanRateLimit(tenant_per_minute=60, tenant_burst=10, credential_per_minute=30, credential_burst=5)
    }


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ('{"pro": ' + FREE + "}", "no entry for the default plan"),
        ('{"free": {"tenant_per_minute": 1}}', "CTRLPLANE_RATE_LIMITS"),
        ("not json", "CTRLPLANE_RATE_LIMITS"),
        ('{"free": ' + FREE.replace("60", "0") + "}", "at least 1"),
    ],
)
def test_bad_rate_limits_are_refused_with_the_variable_named(raw: str, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        Settings.from_env({"CTRLPLANE_RATE_LIMITS": raw})


def test_replica_settings() -> None:
    settings = Settings.from_env(
        {"CTRLPLANE_REPLICA_NAME": "web-1", "CTRLPLANE_LEADER_LEASE_SECONDS": "5", "CTRLPLANE_RATE_LIMITS_ENABLED": "0"}
    )
    assert (settings.replica_name, settings.leader_lease_seconds, settings.rate_limits_enabled) == ("web-1", 5.0, False)
    with pytest.raises(SettingsError, match="REPLICA_NAME"):
        Settings.from_env({"CTRLPLANE_REPLICA_NAME": "has spaces"})
    with pytest.raises(SettingsError, match="LEADER_LEASE_SECONDS"):
        Settings.from_env({"CTRLPLANE_LEADER_LEASE_SECONDS": "0"})
