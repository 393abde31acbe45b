"""Providers depend on the contract only: their own settings Struct and ``ctrlplane.provisioning``."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from ctrlplane_docker.settings import DockerSettings

from ctrlplane.provisioning.contract import ProviderSettings
from ctrlplane.provisioning.errors import (
    ImageNotFound,
    ProviderError,
    ProviderLoadError,
    ProviderUnavailable,
    WorkloadNotFound,
)
from ctrlplane.provisioning.registry import provider_settings
from ctrlplane.settings import Settings

PROVIDERS = Path(__file__).resolve().parents[2] / "providers"
PLUGIN_API = "ctrlplane.provisioning"
"""The one part of ctrlplane a provider may import (docs/architecture.md, "Providers: plugins")."""
FORBIDDEN_NAMES = frozenset({"CtrlplaneError", "Settings", "SettingsError"})


def violations(source: str) -> list[str]:
    """What in ``source`` reaches past the contract: an import of ctrlplane outside
    ``ctrlplane.provisioning``, or a use of the core's root error or settings."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
            found += [f"imports {alias.name}" for alias in node.names if alias.name in FORBIDDEN_NAMES]
        elif isinstance(node, ast.Name) and node.id in FORBIDDEN_NAMES:
            found.append(f"uses {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_NAMES:
            found.append(f"uses .{node.attr}")
        elif isinstance(node, ast.Call) and _imports_by_name(node):
            modules = [node.args[0].value]  # type: ignore[attr-defined]
        for module in modules:
            core = module == "ctrlplane" or module.startswith("ctrlplane.")
            if core and not (module == PLUGIN_API or module.startswith(PLUGIN_API + ".")):
                found.append(f"imports {module}")
    return found


def _imports_by_name(call: ast.Call) -> bool:
    """``importlib.import_module("ctrlplane....")`` or ``__import__("ctrlplane....")``."""
    name = call.func.attr if isinstance(call.func, ast.Attribute) else getattr(call.func, "id", "")
    first = call.args[0] if call.args else None
    literal = isinstance(first, ast.Constant) and isinstance(first.value, str)
    return name in ("import_module", "__import__") and literal


def provider_modules() -> list[Path]:
    return sorted(PROVIDERS.glob("*/ctrlplane_*/**/*.py"))


def test_every_provider_package_is_checked() -> None:
    packages = {path.relative_to(PROVIDERS).parts[0] for path in provider_modules()}
    assert packages >= {"docker", "kubernetes", "nodes"}


@pytest.mark.parametrize("path", provider_modules(), ids=lambda p: str(p.relative_to(PROVIDERS)))
def test_a_provider_imports_nothing_of_ctrlplane_but_the_contract(path: Path) -> None:
    assert violations(path.read_text()) == []


@pytest.mark.parametrize(
    "source",
    [
        "from ctrlplane.settings import Settings",
        "import ctrlplane.settings",
        "from ctrlplane import settings",
        "from ctrlplane.errors import CtrlplaneError",
        "from ctrlplane.errors import ProviderUnavailable",
        "from ctrlplane.provisioning.errors import ProviderError\nexcept_ = errors.CtrlplaneError",
        "import importlib\nimportlib.import_module('ctrlplane.settings')",
    ],
)
def test_the_check_finds_a_provider_that_reaches_past_the_contract(source: str) -> None:
    assert violations(source)


def test_the_check_lets_the_contract_and_the_providers_own_modules_through() -> None:
    source = (
        "import docker\nfrom ctrlplane.provisioning.contract import ProviderSettings\n"
        "from ctrlplane.provisioning.errors import ProviderError\nfrom ctrlplane_docker.naming import x\n"
    )
    assert violations(source) == []


def test_a_provider_gets_the_cluster_name_and_installation_of_the_core_settings() -> None:
    settings = Settings(cluster_name="prod", installation_id="abc123")
    handed = provider_settings(settings, environ={"CTRLPLANE_DOCKER_PIDS_LIMIT": "64"})
    assert handed == ProviderSettings(
        cluster_name="prod", installation_id="abc123", environ={"CTRLPLANE_DOCKER_PIDS_LIMIT": "64"}
    )
    assert DockerSettings.from_env(handed.variables()).pids_limit == 64


def test_every_provisioning_error_is_a_provider_error_with_its_own_status() -> None:
    errors = (ProviderError, ProviderUnavailable, ImageNotFound, WorkloadNotFound)
    assert all(issubclass(cls, ProviderError) for cls in errors)
    assert {cls: (cls.status, cls.code) for cls in errors} == {
        ProviderError: (502, "provider_error"),
        ProviderUnavailable: (503, "provider_unavailable"),
        ImageNotFound: (400, "image_not_found"),
        WorkloadNotFound: (404, "workload_not_found"),
    }


def test_the_docker_settings_keep_their_variables_and_defaults() -> None:
    assert DockerSettings.from_env({}) == DockerSettings(
        host_address="127.0.0.1", subnet_pool="10.224.0.0/12", subnet_size=24, pids_limit=512
    )
    assert DockerSettings.from_env({"CTRLPLANE_DOCKER_HOST_ADDRESS": "", "CTRLPLANE_DOCKER_PIDS_LIMIT": ""}) == (
        DockerSettings()
    )
    read = DockerSettings.from_env(
        {"CTRLPLANE_DOCKER_HOST_ADDRESS": "0.0.0.0", "CTRLPLANE_DOCKER_PIDS_LIMIT": "128", "DOCKER_PIDS_LIMIT": "1"}
    )
    assert (read.host_address, read.pids_limit) == ("0.0.0.0", 128)


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CTRLPLANE_DOCKER_SUBNET_SIZE": "abc"}, "CTRLPLANE_DOCKER_SUBNET_SIZE='abc': expected `int`"),
        ({"CTRLPLANE_DOCKER_PIDS_LIMIT": "8"}, "CTRLPLANE_DOCKER_PIDS_LIMIT must be at least 16"),
        ({"CTRLPLANE_DOCKER_SUBNET_POOL": "docker0"}, "CTRLPLANE_DOCKER_SUBNET_POOL must be an IPv4 network"),
    ],
)
def test_an_unusable_docker_setting_stops_the_provider_naming_the_variable(
    environ: dict[str, str], message: str
) -> None:
    with pytest.raises(ProviderLoadError, match=message):
        DockerSettings.from_env(environ)


def test_the_core_settings_hold_no_docker_setting() -> None:
    assert not [field for field in Settings.__struct_fields__ if field.startswith("docker")]
