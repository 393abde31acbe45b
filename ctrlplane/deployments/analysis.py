"""Deploys judged by traffic: the rules of a deploy's ``analysis`` and of canary weight ``steps``.

An analysis holds thresholds on the **new replicas' own** requests, as the router saw them
(``network/access.py``: the reverse proxy's round trips to each upstream, stored per replica):

* ``max_error_ratio``: 5xx answers / requests, at most this (0 to 1);
* ``max_p99_ms``: the 99th percentile of the time to the upstream's response headers, at most this
  (bucketed like the request metrics, interpolated inside a bucket);
* ``min_requests``: below this many requests nothing is judged yet (default 1);
* ``window``: how long each observation lasts at least (a duration, default
  ``CTRLPLANE_CANARY_OBSERVATION_SECONDS``).

``judge`` is the pure rule: with fewer than ``min_requests`` the answer is ``insufficient`` (the
engine keeps observing, bounded by the deployment's progress deadline); otherwise ``failed`` when
any threshold is exceeded, naming the measured value, else ``passed``.

Canary ``steps`` are the new generation's share of the requests in percent, strictly increasing,
each from 1 to 100, ending at 100 (at most ``MAX_STEPS``); only a canary takes them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from ctrlplane.errors import InvalidInput
from ctrlplane.network.access import merge_buckets, quantile
from ctrlplane.network.models import UpstreamRequestSample
from ctrlplane.timeutil import parse_duration, parse_duration_input

MAX_STEPS = 10
MAX_WINDOW_SECONDS = 3600.0


class Analysis(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Thresholds on the new replicas' own traffic; at least one of the two maxima."""

    max_error_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    max_p99_ms: Annotated[float, msgspec.Meta(gt=0, le=600_000)] | None = None
    min_requests: Annotated[int, msgspec.Meta(ge=0, le=1_000_000)] = 1
    window: Annotated[str, msgspec.Meta(max_length=32, description="Duration, e.g. 30s")] | None = None


class Measurement(msgspec.Struct, omit_defaults=True):
    """What the new replicas' traffic measured over one observation."""

    requests: int
    errors: int
    error_ratio: float | None = None
    p99_ms: float | None = None


class AnalysisResult(msgspec.Struct, omit_defaults=True):
    """One judgement, as kept in a deployment's step."""

    outcome: Literal["passed", "failed", "insufficient"]
    measured: Measurement
    weight: int | None = None
    """The new generation's share of the requests (percent) while measured, for a canary step."""
    exceeded: list[str] = msgspec.field(default_factory=list)
    """Which thresholds the measurement exceeded (``max_error_ratio``, ``max_p99_ms``)."""


def window_seconds(analysis: Analysis, default: float) -> float:
    return parse_duration(analysis.window) if analysis.window is not None else default


def check(analysis: Analysis | None, steps: Sequence[int] | None, strategy: str) -> None:
    """400 for an analysis or canary steps that cannot be carried out."""
    if analysis is not None:
        if analysis.max_error_ratio is None and analysis.max_p99_ms is None:
            raise InvalidInput("analysis needs max_error_ratio or max_p99_ms", details={"analysis": "no threshold"})
        if analysis.window is not None:
            seconds = parse_duration_input("analysis.window", analysis.window)
            if not 1 <= seconds <= MAX_WINDOW_SECONDS:
                raise InvalidInput(
                    "analysis.window must be from 1s to 1h", details={"analysis.window": analysis.window}
                )
    if steps is None:
        return
    if strategy != "canary":
        raise InvalidInput("steps are canary weights: only the canary strategy takes them", details={"steps": steps})
    problem = _steps_problem(steps)
    if problem:
        raise InvalidInput(f"steps {problem}", details={"steps": list(steps)})


def _steps_problem(steps: Sequence[int]) -> str | None:
    if not steps:
        return "must name at least one weight"
    if len(steps) > MAX_STEPS:
        return f"has more than {MAX_STEPS} weights"
    if any(not 1 <= weight <= 100 for weight in steps):
        return "must be percentages from 1 to 100"
    if any(b <= a for a, b in itertools.pairwise(steps)):
        return "must be strictly increasing"
    if steps[-1] != 100:
        return "must end at 100"
    return None


def measure(rows: Iterable[tuple[int, int, Sequence[int]]]) -> Measurement:
    """(requests, 5xx answers, latency buckets) rows added up."""
    items = list(rows)
    requests = sum(r[0] for r in items)
    errors = sum(r[1] for r in items)
    if not requests:
        return Measurement(requests=0, errors=0)
    p99 = quantile(merge_buckets(r[2] for r in items), 0.99)
    return Measurement(
        requests=requests,
        errors=errors,
        error_ratio=round(errors / requests, 4),
        p99_ms=round(p99 * 1000, 1) if p99 is not None else None,
    )


def judge(analysis: Analysis, measured: Measurement, *, weight: int | None = None) -> AnalysisResult:
    if measured.requests < max(1, analysis.min_requests):
        return AnalysisResult(outcome="insufficient", measured=measured, weight=weight)
    exceeded: list[str] = []
    if analysis.max_error_ratio is not None and (measured.error_ratio or 0.0) > analysis.max_error_ratio:
        exceeded.append("max_error_ratio")
    if analysis.max_p99_ms is not None and (measured.p99_ms or 0.0) > analysis.max_p99_ms:
        exceeded.append("max_p99_ms")
    return AnalysisResult(
        outcome="failed" if exceeded else "passed", measured=measured, weight=weight, exceeded=exceeded
    )


def describe(analysis: Analysis, result: AnalysisResult) -> str:
    """One line for the step's message and the deployment's error."""
    m = result.measured
    at = f" at {result.weight}%" if result.weight is not None else ""
    if result.outcome == "insufficient":
        return f"analysis{at}: {m.requests} requests, fewer than the {analysis.min_requests} needed to judge"
    parts = []
    if m.error_ratio is not None:
        limit = f" (max {analysis.max_error_ratio:g})" if analysis.max_error_ratio is not None else ""
        parts.append(f"error ratio {m.error_ratio:g}{limit}")
    if m.p99_ms is not None:
        limit = f" (max {analysis.max_p99_ms:g})" if analysis.max_p99_ms is not None else ""
        parts.append(f"p99 {m.p99_ms:g}ms{limit}")
    verdict = "exceeded " + ", ".join(result.exceeded) if result.exceeded else "passed"
    return f"analysis{at} {verdict}: {m.requests} requests, " + ", ".join(parts)


async def replica_rows(
    session: AsyncSession,
    *,
    instance_id: str,
    generation: int,
    since: datetime,
    until: datetime,
    replicas: Iterable[int] | None = None,
) -> list[tuple[int, int, list[int]]]:
    """The stored round trips of ``generation``'s replicas (all, or those named) in the window."""
    statement = select(
        UpstreamRequestSample.requests, UpstreamRequestSample.errors, UpstreamRequestSample.duration_buckets
    ).where(
        UpstreamRequestSample.instance_id == instance_id,
        UpstreamRequestSample.generation == generation,
        UpstreamRequestSample.taken_at > since,
        UpstreamRequestSample.taken_at <= until,
    )
    if replicas is not None:
        statement = statement.where(UpstreamRequestSample.replica.in_(list(replicas)))
    return [(int(r[0]), int(r[1]), list(r[2])) for r in (await session.execute(statement)).all()]


def as_record(result: AnalysisResult) -> dict[str, Any]:
    return msgspec.to_builtins(result)  # type: ignore[no-any-return]
