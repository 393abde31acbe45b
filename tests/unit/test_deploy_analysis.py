"""The rules of a deploy's traffic analysis and canary steps, and the per-replica round trips the
router reports (Caddy's ``upstream roundtrip`` lines) that feed them."""

from __future__ import annotations

import json

import pytest

from ctrlplane.deployments.analysis import Analysis, check, describe, judge, measure
from ctrlplane.errors import InvalidInput
from ctrlplane.network.access import (
    DURATION_BUCKETS,
    Destination,
    HostTable,
    RequestBook,
    bucket_index,
    parse_line,
    parse_roundtrip,
)
from ctrlplane.network.caddy import RouterOptions, RouterState, caddy_config


def buckets(*seconds: float) -> list[int]:
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    for value in seconds:
        counts[bucket_index(value)] += 1
    return counts


def test_a_ratio_above_the_maximum_fails_naming_the_measured_value() -> None:
    analysis = Analysis(max_error_ratio=0.05, min_requests=10)
    result = judge(analysis, measure([(20, 2, buckets(*[0.01] * 20))]), weight=10)
    assert result.outcome == "failed" and result.exceeded == ["max_error_ratio"]
    assert result.measured.error_ratio == 0.1 and result.measured.requests == 20 and result.weight == 10
    assert "error ratio 0.1 (max 0.05)" in describe(analysis, result)


def test_a_slow_p99_fails_and_a_fast_healthy_one_passes() -> None:
    analysis = Analysis(max_error_ratio=0.5, max_p99_ms=100, min_requests=1)
    slow = judge(analysis, measure([(10, 0, buckets(*[0.01] * 8, 2.0, 2.0))]))
    assert slow.outcome == "failed" and slow.exceeded == ["max_p99_ms"] and (slow.measured.p99_ms or 0) > 1000
    fast = judge(analysis, measure([(6, 0, buckets(*[0.004] * 6)), (4, 1, buckets(*[0.02] * 4))]))
    assert fast.outcome == "passed" and fast.measured.error_ratio == 0.1 and fast.measured.requests == 10


def test_fewer_requests_than_the_minimum_are_not_judged() -> None:
    analysis = Analysis(max_error_ratio=0.01, min_requests=50)
    result = judge(analysis, measure([(49, 49, buckets(*[0.01] * 49))]))
    assert result.outcome == "insufficient"
    assert judge(Analysis(max_error_ratio=0.01, min_requests=0), measure([])).outcome == "insufficient"


@pytest.mark.parametrize(
    ("steps", "strategy"),
    [
        ([50, 10, 100], "canary"),
        ([10, 10, 100], "canary"),
        ([10, 150], "canary"),
        ([0, 100], "canary"),
        ([10, 50], "canary"),
        ([], "canary"),
        ([10, 100], "rolling"),
    ],
)
def test_bad_canary_steps_are_refused(steps: list[int], strategy: str) -> None:
    with pytest.raises(InvalidInput):
        check(None, steps, strategy)


def test_an_analysis_needs_a_threshold_and_a_sane_window() -> None:
    with pytest.raises(InvalidInput):
        check(Analysis(min_requests=5), None, "rolling")
    for window in ("soon", "0s", "2h"):
        with pytest.raises(InvalidInput):
            check(Analysis(max_error_ratio=0.1, window=window), None, "rolling")
    check(Analysis(max_p99_ms=500, window="30s"), [10, 50, 100], "canary")


def roundtrip(upstream: str, status: int, host: str = "web.acme.localhost:8080", duration: float = 0.002) -> bytes:
    return json.dumps(
        {
            "level": "debug",
            "ts": 1796448006.8,
            "logger": "http.handlers.reverse_proxy",
            "msg": "upstream roundtrip",
            "upstream": upstream,
            "duration": duration,
            "request": {"method": "GET", "host": host, "uri": "/", "headers": {}},
            "headers": {},
            "status": status,
        }
    ).encode()


def test_round_trips_are_counted_per_replica_of_the_hostnames_instance() -> None:
    hosts = HostTable()
    hosts.replace(
        {
            "web.acme.localhost": Destination(
                "inst_1", "ten_1", ("/",), {"127.0.0.1:4001": (1, 0), "127.0.0.1:4002": (2, 0)}
            )
        }
    )
    book = RequestBook(hosts)
    for status in (200, 500, 200):
        record = parse_roundtrip(roundtrip("127.0.0.1:4002", status))
        assert record is not None
        book.add_roundtrip(record)
    other = parse_roundtrip(roundtrip("127.0.0.1:9999", 500))
    assert other is not None
    book.add_roundtrip(other)
    batch = book.drain()
    assert set(batch.replicas) == {("inst_1", "ten_1", 2, 0)}
    tally = batch.replicas[("inst_1", "ten_1", 2, 0)]
    assert (tally.requests, tally.errors) == (3, 1)
    assert not book.drain()


def test_other_proxy_lines_are_neither_round_trips_nor_requests() -> None:
    selected = json.dumps(
        {"level": "debug", "logger": "http.handlers.reverse_proxy", "msg": "selected upstream", "dial": "x:1"}
    ).encode()
    assert parse_roundtrip(selected) is None and parse_line(selected) is None
    assert parse_roundtrip(b'{"msg":"upstream roundtrip"') is None


def test_the_sink_gets_the_reverse_proxys_debug_lines() -> None:
    options = RouterOptions(
        admin_address="127.0.0.1:2019", http_listen=":80", https_listen=":443", access_log_address="127.0.0.1:5000"
    )
    logs = caddy_config(RouterState(), options)["logging"]["logs"]
    upstreams = logs["ctrlplane_upstreams"]
    assert upstreams["level"] == "DEBUG" and upstreams["include"] == ["http.handlers.reverse_proxy"]
    assert upstreams["writer"]["address"] == "tcp/127.0.0.1:5000"
