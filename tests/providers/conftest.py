"""What the provider tests share."""

from __future__ import annotations

import functools
from collections.abc import Iterator

import kubernetes_validate.utils
import pytest

_schema_contents = functools.cache(kubernetes_validate.utils.schema_contents)


@pytest.fixture(autouse=True)
def _parsed_kubernetes_schemas_kept(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``kubernetes_validate.validate`` reads and parses the JSON schema of the kind and the whole
    ``_definitions.json`` of the version again at every call: most of the CPU of the manifest
    tests. The parsed schemas are only read (by ``jsonschema``), so one parse per file serves the
    run."""
    monkeypatch.setattr(kubernetes_validate.utils, "schema_contents", _schema_contents)
    yield
