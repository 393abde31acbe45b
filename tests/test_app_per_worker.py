"""The seam the suite's one app per worker rests on: ``use_services`` gives a built app services
composed exactly as ``create_app`` composes its own, and refuses what cannot be swapped."""

from __future__ import annotations

import dataclasses

import msgspec
import pytest

from ctrlplane import app as app_module
from ctrlplane.app import build_services, create_app, prebuild_app, use_services
from ctrlplane.db import Database
from ctrlplane.provisioning.registry import ProviderRegistry
from ctrlplane.settings import Settings
from ctrlplane.web.access_log import RequestContextASGI
from ctrlplane.web.context import AppServices
from ctrlplane.web.unit_of_work import UnitOfWork


def _registrations(services: AppServices) -> dict[str, list[object]]:
    """Every list held by a dataclass the services hold (handler registries such as idle handlers)."""
    found: dict[str, list[object]] = {}
    for field in dataclasses.fields(services):
        value = getattr(services, field.name)
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for inner in dataclasses.fields(value):
                held = getattr(value, inner.name)
                if isinstance(held, list):
                    found[f"{field.name}.{inner.name}"] = list(held)
    return found


async def test_services_given_to_a_built_app_are_composed_like_create_apps_and_reach_every_seam(
    settings: Settings, db: Database, providers: ProviderRegistry
) -> None:
    app = create_app(settings, providers=providers, db=db)
    created: AppServices = app.state.services
    given = build_services(settings, providers=providers, db=db)
    assert given is not created
    assert _registrations(given) == _registrations(created)
    assert any(_registrations(created).values()), "nothing registered: the comparison would be vacuous"
    for field in dataclasses.fields(AppServices):
        assert type(getattr(given, field.name)) is type(getattr(created, field.name)), field.name

    use_services(app, given)
    assert app.state.services is given
    [unit_of_work] = [m for m in app.middleware if isinstance(m, UnitOfWork)]
    assert unit_of_work.services is given
    context = app.asgi_handler
    assert isinstance(context, RequestContextASGI)
    assert context.meter is given.telemetry


async def test_services_with_another_body_limit_are_refused(
    settings: Settings, db: Database, providers: ProviderRegistry
) -> None:
    app = create_app(settings, providers=providers, db=db)
    other = msgspec.structs.replace(settings, max_body_bytes=settings.max_body_bytes * 2)
    with pytest.raises(ValueError, match="max_body_bytes"):
        use_services(app, build_services(other, providers=providers, db=db))


async def test_create_app_serves_its_services_on_the_app_built_ahead_once(
    settings: Settings, db: Database, providers: ProviderRegistry
) -> None:
    """``prebuild_app`` (the fork server's preload) builds the app a later ``create_app`` of the same
    body limit takes, once; that app then serves the services ``create_app`` composed, and the
    next ``create_app`` builds its own again."""
    prebuild_app(settings.max_body_bytes)
    ahead = app_module._PREBUILT[settings.max_body_bytes]
    assert ahead.state.get("services") is None  # built without any, by design
    app = create_app(settings, providers=providers, db=db)
    assert app is ahead
    assert settings.max_body_bytes not in app_module._PREBUILT
    services: AppServices = app.state.services
    assert services.settings is settings and services.db is db
    [unit_of_work] = [m for m in app.middleware if isinstance(m, UnitOfWork)]
    assert unit_of_work.services is services
    assert unit_of_work.admission.services is services
    assert app.state.owns_db is False  # the caller's database: not disposed when the app stops
    assert create_app(settings, providers=providers, db=db) is not ahead
