from __future__ import annotations

import pytest
from typeid import TypeID

from ctrlplane.auth.providers import Principal
from ctrlplane.errors import InvalidInput
from ctrlplane.ids import TenantId, new_id
from ctrlplane.settings import DEFAULT_PLANS, Settings, SettingsError
from ctrlplane.timeutil import parse_duration
from ctrlplane.web.pagination import decode_cursor, encode_cursor


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("5s", 5), ("1m30s", 90), ("1h", 3600), ("500ms", 0.5), ("7d", 604800)]
)
def test_durations_parse(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30", "s", "1x", "1h 30m", "-5s", "30s1"])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_ids_are_prefixed_and_sort_by_creation() -> None:
    ids = [new_id("inst") for _ in range(50)]
    assert all(TypeID.from_string(i).prefix == "inst" and TypeID.from_string(i).uuid.version == 7 for i in ids)
    assert ids == sorted(ids)
    with pytest.raises(ValueError):
        new_id("bogus")


def test_cursor_round_trips_and_rejects_forgeries() -> None:
    assert decode_cursor(encode_cursor("ten_123")) == "ten_123"
    for forged in ("", "abc", encode_cursor("x").replace("d", "e") + "!!", encode_cursor("inst_" + "a" * 100)):
        with pytest.raises(InvalidInput):
            decode_cursor(forged)


def test_roles_include_the_ones_below() -> None:
    deploy = Principal(subject="s", kind="api_key", tenant_id=TenantId("ten_a"), roles=frozenset({"deploy"}))
    assert deploy.has_role("read") and deploy.has_role("deploy") and not deploy.has_role("admin")
    assert not deploy.is_system_admin
    admin = Principal(subject="root", kind="user", tenant_id=None, roles=frozenset({"admin"}), system_admin=True)
    assert admin.is_system_admin and admin.has_role("admin")
    tenantless = Principal(subject="root", kind="user", tenant_id=None, roles=frozenset({"admin"}))
    assert not tenantless.is_system_admin
    tenant_admin = Principal(subject="a", kind="user", tenant_id=TenantId("ten_a"), roles=frozenset({"admin"}))
    assert not tenant_admin.is_system_admin
    assert not deploy.grantable(["admin"]) and deploy.grantable(["read", "deploy"])


def test_settings_from_env_reads_prefixed_variables_only() -> None:
    settings = Settings.from_env(
        {
            "CTRLPLANE_PORT": "9000",
            "CTRLPLANE_PROVIDERS": "docker, kubernetes",
            "CTRLPLANE_IDEMPOTENCY_TTL": "1h",
            "PORT": "1",
        }
    )
    assert settings.port == 9000
    assert settings.providers == ("docker", "kubernetes")
    assert settings.idempotency_ttl_seconds == 3600
    assert settings.plans == DEFAULT_PLANS
    assert settings.resolved_database_url.startswith("sqlite+aiosqlite:///")


@pytest.mark.parametrize(
    "environ",
    [
        {"CTRLPLANE_PORT": "eighty"},
        {"CTRLPLANE_JWT_ALGORITHMS": "none"},
        {"CTRLPLANE_JWT_ALGORITHMS": "RS256"},
        {"CTRLPLANE_DEFAULT_PLAN": "gold"},
        {"CTRLPLANE_PLANS": "{not json"},
        {"CTRLPLANE_PLANS": '{"x": {"max_instances": 1}}'},
        {"CTRLPLANE_LOG_FORMAT": "xml"},
        {"CTRLPLANE_IDEMPOTENCY_TTL": "forever"},
        {"CTRLPLANE_JWT_PUBLIC_KEY": "/does/not/exist.pem", "CTRLPLANE_JWT_ALGORITHMS": "RS256"},
    ],
)
def test_bad_settings_are_refused_with_a_clear_error(environ: dict[str, str]) -> None:
    with pytest.raises(SettingsError):
        Settings.from_env(environ)
