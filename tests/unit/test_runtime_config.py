"""What a runtime that serves them itself is given from ctrlplane's rows: health checks as probes
(which check is readiness, which liveness) and routes with domains as host/path rules."""

from __future__ import annotations

from ctrlplane.health.models import HealthCheck
from ctrlplane.health.probes import runtime_probes
from ctrlplane.network.models import Route
from ctrlplane.network.router import http_routes
from ctrlplane.provisioning.contract import HttpRoute, Probe


def check(
    name: str, type: str, target: str, *, enabled: bool = True, interval: float = 30, retries: int = 3
) -> HealthCheck:
    return HealthCheck(
        id=f"chk_{name}",
        name=name,
        type=type,
        target=target,
        interval_seconds=interval,
        timeout_seconds=1.5,
        retries=retries,
        enabled=enabled,
    )


def route(id: str, path: str, port: int, weight: int = 100) -> Route:
    return Route(id=id, path=path, port=port, weight=weight, protocol="http", strip_prefix=False)


def test_one_check_is_both_readiness_and_liveness_with_its_timing() -> None:
    (probe,) = runtime_probes([check("web", "http", "http://localhost:8080/healthz?full=1", interval=7.5, retries=5)])
    assert probe == Probe(
        kind="http",
        port=8080,
        path="/healthz?full=1",
        use="both",
        period_seconds=8,
        timeout_seconds=2,
        failure_threshold=5,
    )


def test_http_is_readiness_and_tcp_is_liveness_whatever_their_order() -> None:
    probes = runtime_probes(
        [
            check("alive", "tcp", "localhost:9000"),
            check("cmd", "command", "check --quick"),
            check("ready", "http", "http://localhost:8080/"),
        ]
    )
    assert [(p.kind, p.use, p.port) for p in probes] == [("http", "readiness", 8080), ("tcp", "liveness", 9000)]


def test_command_fills_in_for_a_missing_kind_and_disabled_checks_do_not_count() -> None:
    probes = runtime_probes(
        [
            check("ready", "http", "http://localhost:8080/", enabled=False),
            check("cmd", "command", "check --quick"),
            check("alive", "tcp", "localhost:9000"),
        ]
    )
    assert [(p.kind, p.use, p.command) for p in probes] == [
        ("command", "readiness", ("check", "--quick")),
        ("tcp", "liveness", ()),
    ]
    assert runtime_probes([check("off", "tcp", "localhost:1", enabled=False)]) == ()


def test_routes_are_served_on_the_default_host_and_verified_domains_with_tls_only_on_domains() -> None:
    rules = http_routes("web.acme.apps.example", ["shop.example.com"], [route("rte_1", "/api", 9000)])
    assert set(rules) == {
        HttpRoute(host="web.acme.apps.example", path="/", container_port=None, tls=False),
        HttpRoute(host="web.acme.apps.example", path="/api", container_port=9000, tls=False),
        HttpRoute(host="shop.example.com", path="/", container_port=None, tls=True),
        HttpRoute(host="shop.example.com", path="/api", container_port=9000, tls=True),
    }


def test_of_routes_sharing_a_path_the_heaviest_wins_and_weight_zero_serves_nothing() -> None:
    rules = http_routes(
        "web.acme.apps.example",
        [],
        [route("rte_1", "/", 8080, 20), route("rte_2", "/", 9000, 80), route("rte_3", "/old", 8080, 0)],
    )
    assert [(r.path, r.container_port) for r in rules] == [("/", 9000)]
