"""The Docker provider's usage samples: a replica going away while sampled has none; other failures
come out as themselves, never as an exception group (the sampler handles ctrlplane errors only)."""

from __future__ import annotations

from typing import Any

import pytest
import requests
from ctrlplane_docker import DockerProvider
from docker.errors import APIError

from ctrlplane.provisioning.contract import ProviderSettings
from ctrlplane.provisioning.errors import ProviderError


class FakeStatsApi:
    """Answers ``stats`` per container id the way the engine does."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers

    def stats(self, container_id: str, stream: bool) -> dict[str, Any]:
        answer = self.answers[container_id]
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


def provider_with(answers: dict[str, Any]) -> DockerProvider:
    provider = DockerProvider(ProviderSettings())
    provider._api = lambda: FakeStatsApi(answers)  # type: ignore[method-assign]
    return provider


def api_error(status: int) -> APIError:
    response = requests.Response()
    response.status_code = status
    return APIError(f"{status}", response=response, explanation=f"engine said {status}")


async def test_a_replica_stopping_or_gone_while_sampled_has_no_sample() -> None:
    empty_body = requests.exceptions.JSONDecodeError("Expecting value", "", 0)
    provider = provider_with({"up": {"cpu_stats": {}}, "stopping": empty_body, "gone": api_error(404)})
    samples = await provider._stats("inst_1", ["up", "stopping", "gone"])
    assert samples == {"up": {"cpu_stats": {}}}


async def test_an_engine_failure_is_raised_as_itself_not_as_a_group() -> None:
    provider = provider_with({"up": {"cpu_stats": {}}, "broken": api_error(500)})
    with pytest.raises(ProviderError, match="engine said 500"):
        await provider._stats("inst_1", ["up", "broken"])
